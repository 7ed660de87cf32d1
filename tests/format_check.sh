#!/usr/bin/env bash
# format_check.sh: do C++ changes follow .clang-format? Prints what clang-format would change
# and exits 1 if anything; exits 0 when all is formatted (or nothing to check).
#
#   tests/format_check.sh BASE           the lines changed since git revision BASE (committed
#                                        or not), e.g. main or HEAD~1: untouched lines of a
#                                        file are not judged
#   tests/format_check.sh --files F...   whole files
#   tests/format_check.sh --tree         every C++ file of the tree (git's list in a clone,
#                                        else every *.cpp/*.h outside build directories):
#                                        the meson test `format` runs this
#
# Needs clang-format (Debian's clang-format, which ./setup installs; clang-format-diff for BASE).
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,10p' "$0" >&2; exit 64; }
[ $# -ge 1 ] || usage

if [ "$1" = "--tree" ]; then
  command -v clang-format >/dev/null || { echo "format_check: clang-format not found (apt-get install clang-format)" >&2; exit 69; }
  if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    mapfile -t files < <(git ls-files '*.cpp' '*.h')
  else
    mapfile -t files < <(find . -path './build*' -prune -o \( -name '*.cpp' -o -name '*.h' \) -print)
  fi
  exec "$0" --files "${files[@]}"
fi

if [ "$1" = "--files" ]; then
  shift
  status=0
  for file in "$@"; do
    case "$file" in *.cpp|*.h|*.cc|*.hpp) ;; *) continue ;; esac
    if ! clang-format --style=file "$file" | diff -u --label "$file" --label "$file (formatted)" "$file" -; then
      status=1
    fi
  done
  exit $status
fi

base=$1
git rev-parse --verify -q "$base^{commit}" >/dev/null || { echo "format_check: no revision $base" >&2; exit 64; }
format_diff=$(command -v clang-format-diff || command -v clang-format-diff-14 || true)
[ -n "$format_diff" ] || { echo "format_check: clang-format-diff not found (apt-get install clang-format)" >&2; exit 69; }
changes=$(git diff -U0 --no-color "$base" -- '*.cpp' '*.h' | "$format_diff" -p1 -style=file)
if [ -n "$changes" ]; then
  printf '%s\n' "$changes"
  echo "format_check: the lines above changed since $base are not formatted (.clang-format)" >&2
  exit 1
fi
