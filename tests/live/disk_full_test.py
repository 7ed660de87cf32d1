"""A live capture whose disk fills up: it drops and counts, says why, and resumes.

Run by meson: python3 -m pytest -q tests/live/disk_full_test.py (see tests/conftest.py).

As root: a network namespace and a veth pair (the `veth` fixture), a 4 MiB tmpfs this test
mounts for the output directory, `flowseal run -i <host end>` while tcpreplay loops captures
into the other end. Once records are stored the tmpfs is filled up; later the space is freed
and the run drained. The `disk_full` fixture runs that scenario once and keeps what it saw;
the tests check that
  - writerd logs the full disk and keeps retrying, and the run goes on;
  - live capture never blocks: once the rings behind writerd are full it drops, and counts
    those drops as ring full *while writerd could not write* in `flowseal status --json`
    (drops.writer_stalled, writer.stalled) and says so in its log;
  - writing resumes once the space is free (the log says so, more records are stored, status
    no longer says stalled), the run drains with exit 0 and a summary naming the
    writer-stalled drops with every packet accounted for, and the store verifies and every
    record reads back.
The requirement: "a live run drops and counts, `status` and the log say why, and writing
resumes when space frees. No segment is corrupted."

Without root, `ip netns`, tcpreplay or a tmpfs every test is skipped (meson: SKIP). The
namespace, the veth pair and the mount are removed whatever happens; only the processes this
test started are signalled, by pid; every wait is bounded.
"""
import errno
import json
import os
import signal
import subprocess
import time

import pytest

STEP_TIMEOUT = 60  # s for any single command or wait
REPLAYED = ["synscan.pcap", "sample.pcap", "wikipedia.pcap"]
SETTINGS = [
    # Short timeouts, no dedup: the looped replay keeps producing records to store.
    "flowd.tcp_idle_timeout=0.5",
    "flowd.tcp_attempt_timeout=0.2",
    "flowd.tcp_closed_timeout=0.1",
    "flowd.udp_idle_timeout=0.2",
    "flowd.icmp_idle_timeout=0.2",
    "flowd.other_idle_timeout=0.2",
    "dedup.enabled=false",
    # Small rings (the smallest budget) and a small flow table (flowd holds ended flows while
    # its output ring is full) fill within seconds once writerd stops.
    "memory.budget_mb=16",
    "flowd.max_flows=4096",
    "seal.batch_records=64",
    "writer.segment_max_mb=1",
    "supervisor.stats_interval_s=0",
    "capture.immediate=true",
]
ALARMS = ("ERROR: AddressSanitizer", "runtime error:", "ERROR: LeakSanitizer")


def status(flowseal, instance):
    r = subprocess.run([flowseal, "status", "--json", "--instance", instance],
                       capture_output=True, text=True, timeout=STEP_TIMEOUT)
    if r.returncode != 0:
        return None
    try:
        return json.loads(r.stdout)
    except ValueError:
        return None


def stage(st, name):
    return next((s for s in st["stages"] if s["stage"] == name), {})


def wait_status(flowseal, instance, test, timeout=STEP_TIMEOUT):
    """The first status for which test(status) holds, or the last one seen (or None)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        st = status(flowseal, instance)
        if st is not None:
            last = st
            if test(st):
                return st, True
        time.sleep(0.3)
    return last, False


def fill(path):
    """Writes `path` until the file system is full; returns the bytes written."""
    written = 0
    chunk = b"\0" * 65536
    with open(path, "wb", buffering=0) as f:
        while True:
            try:
                n = f.write(chunk)
            except OSError as e:
                if e.errno == errno.ENOSPC:
                    # The last partial page too.
                    for size in (4096, 512, 1):
                        try:
                            while True:
                                written += f.write(b"\0" * size)
                        except OSError:
                            pass
                    return written
                raise
            written += n


@pytest.fixture(scope="module")
def small_disk(veth, tmp_path_factory):
    """A 4 MiB tmpfs mounted for this module (after `veth`, so it is unmounted first)."""
    mnt = str(tmp_path_factory.mktemp("small"))
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", mnt],
                       capture_output=True, text=True, timeout=STEP_TIMEOUT)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", mnt], capture_output=True, timeout=STEP_TIMEOUT)


class Seen:
    """What the scenario saw, step by step (None where a step was not reached)."""
    stored_before = disk_full_logged = stalled_status = stalled_seen = None
    capture_says_why = plain_status = stored_full = resumed_logged = resumed_status = None
    resumed_seen = code = log = verify = cat = None


@pytest.fixture(scope="module")
def disk_full(veth, small_disk, flowseal, data_dir, instance, background, report):
    seen = Seen()
    out = os.path.join(small_disk, "out")
    name = instance("livefull")
    args = [flowseal, "run", "-i", veth.host, "-o", out, "--instance", name]
    for s in SETTINGS:
        args += ["--set", s]
    fs = background(args)
    assert fs.wait_for("listening on " + veth.host), \
        f"flowseal never said it was listening:\n{fs.text()[-2000:]}"
    # Looped for ever at 20 kpps; stopped below by its pid.
    replay = subprocess.Popen(
        ["ip", "netns", "exec", veth.netns, "tcpreplay", "-q", "--pps=20000",
         "--loop=0", "--unique-ip", "-i", veth.peer] + [os.path.join(data_dir, f) for f in REPLAYED],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _, seen.stored_before = wait_status(
            flowseal, name, lambda s: stage(s, "writerd").get("out_total", 0) > 0)
        filler = os.path.join(small_disk, "filler")
        report(f"live disk full: filled the tmpfs with {fill(filler)} bytes")

        seen.disk_full_logged = fs.wait_for("No space left on device")
        seen.stalled_status, seen.stalled_seen = wait_status(
            flowseal, name,
            lambda s: s["drops"].get("writer_stalled", 0) > 0 and s["writer"]["stalled"])
        seen.capture_says_why = fs.wait_for("the rings are full because writerd cannot write")
        seen.plain_status = subprocess.run([flowseal, "status", "--instance", name],
                                           capture_output=True, text=True,
                                           timeout=STEP_TIMEOUT).stdout

        seen.stored_full = stage(seen.stalled_status or {"stages": []}, "writerd").get("out_total", 0)
        os.remove(filler)
        seen.resumed_logged = fs.wait_for("writing works again", timeout=STEP_TIMEOUT)
        seen.resumed_status, seen.resumed_seen = wait_status(
            flowseal, name, lambda s: not s["writer"]["stalled"] and
            stage(s, "writerd").get("out_total", 0) > seen.stored_full + 1000)

        replay.send_signal(signal.SIGINT)
        replay.wait(timeout=STEP_TIMEOUT)
        time.sleep(1.0)
        seen.code = fs.stop()
        seen.log = fs.text()
    finally:
        if replay.poll() is None:
            replay.kill()
            replay.wait(timeout=STEP_TIMEOUT)
    seen.verify = subprocess.run([flowseal, "verify", out], capture_output=True, text=True,
                                 timeout=STEP_TIMEOUT)
    seen.cat = subprocess.run([flowseal, "cat", out, "--events"], capture_output=True, text=True,
                              timeout=STEP_TIMEOUT)
    return seen


def test_records_are_stored_before_the_disk_fills(disk_full):
    assert disk_full.stored_before


def test_writerd_logs_that_the_disk_is_full(disk_full):
    assert disk_full.disk_full_logged


def test_status_counts_the_drops_while_writerd_cannot_write(disk_full):
    st = disk_full.stalled_status
    assert disk_full.stalled_seen, ("status --json counts drops while writerd cannot write "
                                    f"(drops {st and st['drops']}, writer {st and st.get('writer')})")
    assert st["drops"]["writer_stalled"] <= st["drops"]["ring_full"], \
        "writer-stalled drops are counted among the ring-full drops"
    assert st["writer"]["write_errors"] > 0, "status counts writerd's failed writes"


def test_the_run_goes_on_while_the_disk_is_full(disk_full):
    st = disk_full.stalled_status
    assert st is not None, "status answers while the disk is full"
    assert st["supervisor_alive"] and all(s["state"] == "running" for s in st["stages"]), \
        f"every stage keeps running ({[s['state'] for s in st['stages']]})"


def test_capture_and_status_say_why_packets_are_dropped(disk_full):
    assert disk_full.capture_says_why, "capture's log says why it drops"
    assert "writer: STALLED" in disk_full.plain_status, \
        f"plain status says the writer is stalled:\n{disk_full.plain_status}"


def test_writing_resumes_once_space_is_free(disk_full):
    assert disk_full.resumed_logged, "writerd says writing works again once space is free"
    st = disk_full.resumed_status
    assert disk_full.resumed_seen, (f"more records are stored after the space came back "
                                    f"({disk_full.stored_full} -> "
                                    f"{st and stage(st, 'writerd').get('out_total')})")


def test_the_run_drains_with_exit_0_and_its_summary_names_the_stalled_drops(disk_full):
    log = disk_full.log
    assert disk_full.code == 0, f"the live run drains and exits 0 (got {disk_full.code}):\n{log[-1500:]}"
    summary = next((l for l in log.splitlines() if l.strip().startswith("packets   received")), "")
    assert "while writerd could not write: writer stalled" in summary, \
        f"the summary names the writer-stalled drops: {summary!r}"
    assert "accounting received = processed + sampled out + dropped: yes" in log, \
        "every packet is accounted for"
    assert not [a for a in ALARMS if a in log], "no sanitizer alarms"


def test_the_store_verifies_and_every_record_reads_back(disk_full):
    v, c = disk_full.verify, disk_full.cat
    assert v.returncode == 0, f"the store verifies after the full disk ({v.stderr.strip()[-800:]})"
    rows = [json.loads(l) for l in c.stdout.splitlines() if l.strip()]
    assert c.returncode == 0 and len(rows) > disk_full.stored_full, \
        f"every stored record reads back ({len(rows)} records, cat exit {c.returncode})"
