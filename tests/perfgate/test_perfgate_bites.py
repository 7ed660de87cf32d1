"""The callgrind gate catches a deliberate slowdown ("prove it bites").

perfgate adds N instructions per item to one part when FLOWSEAL_PERFGATE_BURN=PART:N is set
(compiled into the gate program only). A baseline is measured first in this same build, so
the slowdown is exactly the share asked for whatever the committed baseline says: just over
10 % must fail the gate and name the part; 5 % must pass.
"""
import json
import math
import os
import subprocess
import sys

import pytest

RUNNER = os.environ["PERFGATE_RUNNER"]
EXE = os.environ["PERFGATE_EXE"]
CAPTURES = os.environ["PERFGATE_CAPTURES"].split(":")


def run_gate(args, burn=None):
    env = dict(os.environ)
    env.pop("FLOWSEAL_PERFGATE_BURN", None)
    if burn:
        env["FLOWSEAL_PERFGATE_BURN"] = burn
    return subprocess.run([sys.executable, RUNNER, "--exe", EXE, *args, *CAPTURES],
                          capture_output=True, text=True, env=env, timeout=240)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    path = tmp_path_factory.mktemp("perfgate") / "baseline.json"
    run = run_gate(["--write-baseline", str(path)])
    assert run.returncode == 0, run.stdout + run.stderr
    with open(path, encoding="utf-8") as f:
        return path, json.load(f)


def extra(figures, share):
    # Instructions per item that make the smaller of the two gated figures (own code, or
    # everything) grow by `share`: the gate must react to its most sensitive figure.
    return math.ceil(share * min(figures["ir_per_item"], figures["own_ir_per_item"])) + 2


def test_ten_percent_more_work_in_one_part_fails_the_gate_naming_it(baseline):
    path, doc = baseline
    part = "writerd"
    run = run_gate(["--baseline", str(path)], burn=f"{part}:{extra(doc['parts'][part], 0.11)}")
    assert run.returncode == 1, run.stdout + run.stderr
    failures = run.stdout.split("run-perfgate: FAILED", 1)[1].split("If the growth")[0]
    # 11 %, not 10 %: the burn loop's realised cost per unit varies by a few tenths of a percent,
    # and a burn aimed at exactly 10 % once measured +9.99 % (CI, stop 11).
    assert f"{part}: own instructions per record grew +1" in failures
    for other in {"capture", "flowd", "dedupd", "signerd"}:
        assert f"{other}:" not in failures


def test_five_percent_more_work_passes_and_the_other_parts_count_the_same(baseline, tmp_path):
    # Also determinism: the gate may use a 10 % threshold because a rerun moves nothing.
    path, doc = baseline
    out = tmp_path / "again.json"
    run = run_gate(["--baseline", str(path), "--json-out", str(out)],
                   burn=f"signerd:{extra(doc['parts']['signerd'], 0.05)}")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "run-perfgate: ok" in run.stdout
    with open(out, encoding="utf-8") as f:
        again = json.load(f)
    for part in ("capture", "flowd", "dedupd", "writerd"):
        assert again[part]["items"] == doc["parts"][part]["items"]
        assert again[part]["ir_per_item"] == pytest.approx(doc["parts"][part]["ir_per_item"],
                                                           rel=0.001)
    assert again["signerd"]["own_ir_per_item"] == pytest.approx(
        doc["parts"]["signerd"]["own_ir_per_item"] * 1.05, rel=0.01)
