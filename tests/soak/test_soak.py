"""The soak's short version (issue 13, item 7), in ./run-tests: soak.py for 75 seconds.

A loop-mode run over tests/data/KakaoTalk_talk.pcap (20 flows and 3,203 packets a pass: the
packet stages run flat out while the stored records stay few enough to compare in seconds),
dedup off, two flowd shards, disturbed every 1.5-4.5 s by a SIGKILL of a random stage process
or a `flowseal restart STAGE` (seeded: FLOWSEAL_SEED=N replays), sampled every second. It
must end with: exit 0, the ledger balanced at every sample and at the end, verify OK, exactly
the records of an undisturbed run of the same input, private memory flat and fd counts
constant (soak.py says how each is checked). The input is sized by a calibration run so that
an undisturbed run would take half of the 75 s: the disturbances last until the run ends or
the 75 s pass, and what is left runs undisturbed.

Under ASan/UBSan (FLOWSEAL_SANITIZED=1) the same checks run except memory: the sanitizer's
allocator holds freed memory in its quarantine and grows by design; the figures are printed.
A sanitizer report in any stage fails the test (the supervisor restarts a stage the sanitizer
stopped like any crashed one, so the run alone would still end 0): soak.py reads the log.

"""
import os
import time

import pytest

import soak

FLOWSEAL = os.environ["FLOWSEAL"]
DATA = os.environ["FLOWSEAL_TEST_DATA"]
SANITIZED = os.environ.get("FLOWSEAL_SANITIZED") == "1"
SEED = int(os.environ.get("FLOWSEAL_SEED") or int(time.time()) % 100000)


def test_a_run_disturbed_every_few_seconds_loses_nothing_and_stays_flat(tmp_path, report):
    report(f"soak seed {SEED} (replay with FLOWSEAL_SEED={SEED})")
    cfg = soak.SoakConfig(flowseal=FLOWSEAL, capture=os.path.join(DATA, "KakaoTalk_talk.pcap"),
                          workdir=str(tmp_path), seed=SEED, duration_s=75, work_factor=0.5,
                          warmup_s=20, timeout_s=900 if SANITIZED else 300,
                          say=lambda line: report(line))
    res = soak.soak(cfg)
    soak.report(res, report)
    failed = soak.problems(res, dedup=False)
    if SANITIZED:
        failed = [p for p in failed if not p.startswith("memory:")]
    assert res.kills() >= 3, f"the run was disturbed while busy ({res.events})"
    if failed:
        pytest.fail("\n".join(failed))
