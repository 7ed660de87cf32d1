#!/usr/bin/env bash
# run_fuzz.sh TARGET CORPUS_DIR SECONDS: runs a libFuzzer target for SECONDS over its
# checked-in corpus (read only: new inputs go to a temporary directory that is removed).
# Fails if the target finds a crash, a leak, a timeout or an out-of-memory; the input that
# did it is kept in the build directory's fuzz-artifacts/ and named in the log.
set -uo pipefail
target=$1 corpus=$2 seconds=$3
[ -d "$corpus" ] || { echo "run_fuzz: no corpus directory $corpus" >&2; exit 1; }
work=$(mktemp -d "${TMPDIR:-/tmp}/flowseal-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT
artifacts=$(dirname "$target")/fuzz-artifacts/
mkdir -p "$artifacts"
# -timeout: one input taking this long is a finding (hangs); -rss_limit_mb: so is a memory blow-up.
"$target" -max_total_time="$seconds" -timeout=25 -rss_limit_mb=2048 -print_final_stats=1 \
  -artifact_prefix="$artifacts$(basename "$target")-" "$work" "$corpus" 2>&1 |
  grep -v -E '^#[0-9]+[[:space:]]+(NEW|REDUCE|pulse)' 
rc=${PIPESTATUS[0]}
if [ "$rc" -ne 0 ]; then
  echo "run_fuzz: $(basename "$target") failed (exit $rc); inputs kept: $(ls "$artifacts" | tr '\n' ' ')" >&2
fi
exit "$rc"
