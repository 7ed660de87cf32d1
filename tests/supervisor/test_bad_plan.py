"""Configurations whose memory plan cannot run are refused before anything runs (exit 78).

Each bad configuration goes through `flowseal config check` and `flowseal run`: both exit 78
with the reason (the key, the value and the limit), and `run` creates no shared memory, no
output directory and no key. Before the check these started and failed late: a budget too
small for its shards restarted flowd for ~30 s and exited 70, a huge budget created 917 GB of
sparse shared memory, and an unreachable batch size was accepted.

Env: FLOWSEAL (binary), FLOWSEAL_TEST_DATA (tests/data).
"""
import glob
import os
import subprocess

import pytest

BAD = {
    "small_budget_many_shards": (["memory.budget_mb=16", "flowd.shards=8"],
                                 "memory.budget_mb=16 is below the 43 MiB that flowd.shards=8 needs"),
    "unreachable_batch": (["seal.batch_records=100000"],
                          "seal.batch_records=100000 does not fit one frame of the signerd -> "
                          "writerd ring"),
    "budget_past_the_machine": (["memory.budget_mb=1048576"],
                                "memory.budget_mb=1048576 is more than this machine can back"),
}


def sets(overrides):
    return [a for o in overrides for a in ("--set", o)]


@pytest.mark.parametrize("case", sorted(BAD))
def test_config_check_refuses_with_the_reason(flowseal, case):
    overrides, reason = BAD[case]
    r = subprocess.run([flowseal, "config", "check"] + sets(overrides), capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 78, r.stderr
    assert reason in r.stderr


@pytest.mark.parametrize("case", sorted(BAD))
def test_run_refuses_before_anything_is_created(flowseal, data_dir, instance, tmp_path, case):
    overrides, reason = BAD[case]
    name = instance(f"plan-{case}")
    out = tmp_path / "out"
    r = subprocess.run([flowseal, "run", "-r", os.path.join(data_dir, "sample.pcap"), "-o",
                        str(out), "--instance", name] + sets(overrides),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 78, r.stderr
    assert reason in r.stderr
    assert glob.glob(f"/dev/shm/flowseal.{name}.*") == []
    assert not out.exists()


def test_the_named_minimum_runs(flowseal, data_dir, instance, tmp_path):
    r = subprocess.run([flowseal, "run", "-r", os.path.join(data_dir, "sample.pcap"), "-o",
                        str(tmp_path / "out"), "--instance", instance("plan-min"),
                        "--set", "supervisor.stats_interval_s=0"] +
                       sets(["memory.budget_mb=43", "flowd.shards=8"]),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "restarted" not in r.stderr
