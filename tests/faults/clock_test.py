"""The wall clock jumping back and forward during a run, through Debian's libfaketime (never by
setting the machine's clock).

Run by meson: python3 -m pytest -q tests/faults/clock_test.py (see tests/conftest.py).
A looped offline run (the wall clock is what writerd ages segments by and stamps them with,
whatever the input) runs with libfaketime preloaded into the supervisor and every stage:
FAKETIME_TIMESTAMP_FILE holds the offset and is rewritten by the test, FAKETIME_NO_CACHE makes
each process read it on every clock call, FAKETIME_DONT_FAKE_MONOTONIC keeps the monotonic
clock real (the kernel never steps it; heartbeats and timeouts run on it). Segments rotate by
age every second. The clock goes back two hours, forward a day, then back to now: writerd says
when the clock went back and closes the open segment rather than keeping it open for the two
hours (the bug this test found), the run goes on and drains with exit 0, no stage restarts,
every sealed record is stored, the ledger balances and the store verifies.
Skipped without libfaketime (apt-get install faketime; ./setup installs it).
"""
import os
import re
import subprocess
import time

import pytest

LIBFAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1"
TIMEOUT = 120


def closed_segments(out):
    try:
        return sorted(f for f in os.listdir(out) if f.startswith("seg-") and f.endswith(".fsg"))
    except FileNotFoundError:
        return []


def preload(flowseal):
    """LD_PRELOAD for libfaketime. A sanitized build needs its ASan runtime first in the list
    ("ASan runtime does not come first in initial library list"), so it is named before."""
    linked = subprocess.run(["ldd", flowseal], capture_output=True, text=True).stdout
    asan = re.search(r"=>\s*(\S*libasan\.so[.\d]*)\s", linked)
    return f"{asan.group(1)}:{LIBFAKETIME}" if asan else LIBFAKETIME


def wait_until(run, test, timeout=60):
    """True once test() holds (polled), False on timeout or when the run ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and run.proc.poll() is None:
        if test():
            return True
        time.sleep(0.05)
    return test()


def test_the_wall_clock_jumping_back_and_forward_loses_nothing(flowseal, data_dir, tmp_path,
                                                              instance, background, report):
    if not os.path.exists(LIBFAKETIME):
        pytest.skip(f"{LIBFAKETIME} is missing: apt-get install faketime")
    out = str(tmp_path / "out")
    offset = tmp_path / "offset"
    offset.write_text("+0\n")
    env = dict(os.environ, LD_PRELOAD=preload(flowseal), FAKETIME_TIMESTAMP_FILE=str(offset),
               FAKETIME_NO_CACHE="1", FAKETIME_DONT_FAKE_MONOTONIC="1")
    args = [flowseal, "run", "-r", os.path.join(data_dir, "synscan.pcap"), "-o", out,
            "--instance", instance("clock")]
    for s in ["supervisor.stats_interval_s=0", "capture.loop=1000000", "dedup.enabled=false",
              "writer.segment_max_age=1", "seal.batch_records=256"]:
        args += ["--set", s]
    run = background(args, env=env)
    assert wait_until(run, lambda: len(closed_segments(out)) >= 1), \
        f"a segment is closed by age before the clock moves: {run.text()[-2000:]}"

    offset.write_text("-2h\n")
    assert run.wait_for("the wall clock went back 7"), \
        f"writerd says the clock went back two hours: {run.text()[-2000:]}"
    after_back = len(closed_segments(out))
    offset.write_text("+1d\n")
    assert wait_until(run, lambda: len(closed_segments(out)) >= after_back + 2), \
        f"segments keep closing after the clock jumped a day forward: {run.text()[-2000:]}"
    offset.write_text("+0\n")
    assert wait_until(run, lambda: len(re.findall("the wall clock went back", run.text())) >= 2), \
        f"writerd says the clock went back a day: {run.text()[-2000:]}"
    after_return = len(closed_segments(out))
    assert wait_until(run, lambda: len(closed_segments(out)) >= after_return + 1), \
        "segments close by age again once the clock is back"

    code = run.stop(timeout=TIMEOUT)
    text = run.text()
    assert code == 0, f"the run drains with exit 0 ({code}): {text[-2000:]}"
    assert " ended (" not in text, f"no stage ended or restarted: {text[-2000:]}"
    assert "accounting received = processed + sampled out + dropped: yes" in text, text[-1500:]
    sealed = re.search(r"sealed (\d+) in (\d+) batches", text)
    stored = re.search(r"stored\s+(\d+) batches", text)
    assert sealed and stored and stored.group(1) == sealed.group(2), \
        f"every sealed batch is stored: {text[-1500:]}"
    v = subprocess.run([flowseal, "verify", out], capture_output=True, text=True, timeout=TIMEOUT)
    assert v.returncode == 0, f"the store verifies: {v.stdout}{v.stderr}"
    records = re.search(r"records:\s+(\d+)", v.stdout)
    assert records and records.group(1) == sealed.group(1), \
        f"the store holds every sealed record: {v.stdout}"
    report(f"clock jumps: {len(closed_segments(out))} segments, {sealed.group(1)} records")
