"""A run into a directory that already holds a store continues its stream (issue 13, finding
2): sequential runs, a rerun after the supervisor was SIGKILLed mid-run, and the refusals,
each before any stage starts: a store of another key (78), a damaged newest batch (65), a
second run into the same directory while one runs (75).

Through the real binaries (pytest, run by meson). Waits are for events (a log line, a
process's exit), each bounded; only processes this test started are signalled, by PID.
"""
import glob
import hashlib
import os
import re
import signal
import tempfile
import struct
import subprocess
import time

import pytest

FLOWSEAL = os.environ["FLOWSEAL"]
DATA = os.environ["FLOWSEAL_TEST_DATA"]
SANITIZED = os.environ.get("FLOWSEAL_SANITIZED") == "1"
CAPTURE = os.path.join(DATA, "sample.pcap")
TIMEOUT = 240
STAGES = ["capture", "flowd", "dedupd", "signerd", "writerd"]


def instance(tag):
    return f"adopt{os.getpid()}-{tag}"


@pytest.fixture(scope="module", autouse=True)
def shm_cleanup():
    yield
    for leftover in glob.glob(f"/dev/shm/flowseal.adopt{os.getpid()}-*"):
        try:
            os.remove(leftover)
        except OSError:
            pass


def run_args(out, tag, extra=()):
    return [FLOWSEAL, "run", "-r", CAPTURE, "-o", out,
            "--set", f"supervisor.instance={instance(tag)}",
            "--set", "supervisor.stats_interval_s=0",
            "--set", "seal.batch_records=64", "--set", "seal.batch_ms=5"] + list(extra)


def run(out, tag, extra=()):
    return subprocess.run(run_args(out, tag, extra), capture_output=True, text=True,
                          timeout=TIMEOUT)


def flowseal(*args):
    return subprocess.run([FLOWSEAL] + list(args), capture_output=True, text=True,
                          timeout=TIMEOUT)


def verify(d):
    v = flowseal("verify", d)
    return v.returncode, v.stdout + v.stderr


def batches(d):
    """(first seq, last seq) of the one chain verify read."""
    code, text = verify(d)
    assert code == 0, f"{d} verifies as one chain ({text[-1500:]})"
    line = next(l for l in text.splitlines() if l.startswith("batches:"))
    first, last = line.split("(seq ")[1].rstrip(")").split("..")
    return int(first), int(last)


def records(d):
    """The record count verify read (cat would show a repeated event id once: the same input
    run twice gives the same flow uids)."""
    code, text = verify(d)
    assert code == 0, text[-1500:]
    return int(next(l for l in text.splitlines() if l.startswith("records:")).split()[1])


def snapshot(d):
    """Every file under d with its bytes' hash: what "the store is unchanged" compares."""
    files = {}
    for root, _, names in os.walk(d):
        for n in names:
            p = os.path.join(root, n)
            with open(p, "rb") as f:
                files[os.path.relpath(p, d)] = hashlib.sha256(f.read()).hexdigest()
    return files


def stage_pids(parent):
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            exe = os.readlink(f"/proc/{pid}/exe")
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and any(exe.endswith("/flowseal-" + s) for s in STAGES):
            pids.append(int(pid))
    return pids


def wait_for(condition, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


class Background:
    """A `flowseal run` in the background, its output in a file."""

    def __init__(self, args, log):
        self.log_path = log
        self.log = open(log, "w")
        self.p = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)

    def text(self):
        with open(self.log_path) as f:
            return f.read()

    def wait_for(self, needle, seconds=120):
        return wait_for(lambda: needle in self.text() or self.p.poll() is not None,
                        seconds) and needle in self.text()

    def kill(self):
        """SIGKILL of the supervisor and the stages it started, by PID."""
        if self.p.poll() is None:
            stages = stage_pids(self.p.pid)
            self.p.kill()
            self.p.wait()
            for pid in stages:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.log.close()


def no_stage_started(text):
    return "instance '" not in text and "running:" not in text


def test_two_sequential_runs_continue_one_chain(tmp_path):
    out = str(tmp_path / "store")
    first = run(out, "seq")
    assert first.returncode == 0, first.stderr[-1500:]
    _, last = batches(out)
    n_first = records(out)
    second = run(out, "seq")
    assert second.returncode == 0, f"a second run into the store exits 0 ({second.stderr[-1500:]})"
    assert f"this run continues it at batch {last + 1}" in second.stderr, second.stderr[-1500:]
    first_seq, last_seq = batches(out)
    assert first_seq == 0 and last_seq > last, "verify reads both runs as one chain from seq 0"
    n = records(out)
    assert n == 2 * n_first, \
        f"the records of both runs are stored (the input is not resumed): {n} vs 2 x {n_first}"


def test_a_rerun_after_the_supervisor_was_killed_continues_the_chain(tmp_path):
    out = str(tmp_path / "store")
    tag = "killed"
    # Loop mode keeps the run busy; small batches so batches are durable before the kill.
    r = Background(run_args(out, tag, ["--set", "capture.loop=100000",
                                       "--set", "writer.fsync=batch"]), str(tmp_path / "1.log"))
    try:
        assert r.wait_for("ready: every stage is up"), r.text()[-1500:]
        # Wait for durable batches (a stored segment with frames), not for time.
        assert wait_for(lambda: any(os.path.getsize(f) > 4096
                                    for f in glob.glob(os.path.join(out, "seg-*"))), 120), \
            "the run stores batches"
        r.p.send_signal(signal.SIGKILL)
        r.p.wait()
    finally:
        r.kill()
    # The killed supervisor could not remove its run directory (the effective config).
    run_dirs = os.path.join(tempfile.gettempdir(), f"flowseal.{instance(tag)}.*")
    left = glob.glob(run_dirs)
    assert left, "the killed run left its run directory"
    # Right after the kill: the orphaned stages may still live; the rerun waits for them.
    again = run(out, tag)
    assert again.returncode == 0, f"the rerun exits 0 ({again.stderr[-2000:]})"
    assert "this run continues it at batch" in again.stderr, again.stderr[-1500:]
    # The rerun removed it with the dead run's shared memory, and its own at its end.
    assert not glob.glob(run_dirs), glob.glob(run_dirs)
    assert all(f"removed {d}, left by a supervisor that is gone" in again.stderr for d in left), \
        again.stderr[-1500:]
    first, last = batches(out)
    assert first == 0 and last > 0, "the whole store verifies as one chain"


def test_a_store_of_another_key_is_refused_before_any_stage(tmp_path):
    out = str(tmp_path / "store")
    assert run(out, "key1").returncode == 0
    before = snapshot(out)
    other = tmp_path / "other-keys" / "flowseal.key"
    r = run(out, "key2", ["--set", f"seal.key_file={other}"])
    assert r.returncode == 78, f"exit 78 ({r.returncode}: {r.stderr[-1500:]})"
    assert "key id" in r.stderr and str(other) in r.stderr and out in r.stderr, r.stderr[-1500:]
    assert no_stage_started(r.stderr), "refused before any stage starts"
    assert snapshot(out) == before, "the store is unchanged"


def test_a_damaged_newest_batch_is_refused(tmp_path):
    out = str(tmp_path / "store")
    assert run(out, "dmg").returncode == 0
    segs = sorted(glob.glob(os.path.join(out, "seg-*.fsg")))
    newest = segs[-1]
    # A byte inside the newest frame's compressed data: before the index at the end.
    with open(newest, "r+b") as f:
        size = os.path.getsize(newest)
        f.seek(size // 2)
        b = f.read(1)
        f.seek(size // 2)
        f.write(bytes([b[0] ^ 0xFF]))
    before = snapshot(out)
    r = run(out, "dmg")
    assert r.returncode == 65, f"exit 65 ({r.returncode}: {r.stderr[-1500:]})"
    assert os.path.basename(newest) in r.stderr, f"the message names the file: {r.stderr[-1500:]}"
    assert no_stage_started(r.stderr), "refused before any stage starts"
    assert snapshot(out) == before, "the store is unchanged"


def test_a_concurrent_second_run_into_the_directory_is_refused(tmp_path):
    out = str(tmp_path / "store")
    first = Background(run_args(out, "c1", ["--set", "capture.loop=100000"]),
                       str(tmp_path / "1.log"))
    try:
        assert first.wait_for("ready: every stage is up"), first.text()[-1500:]
        second = run(out, "c2")
        assert second.returncode == 75, f"exit 75 ({second.returncode}: {second.stderr[-1500:]})"
        assert f"pid {first.p.pid}" in second.stderr and out in second.stderr, second.stderr
        assert no_stage_started(second.stderr), "refused before any stage starts"
        assert first.p.poll() is None, "the first run goes on"
        first.p.send_signal(signal.SIGINT)
        assert first.p.wait(TIMEOUT) == 0, first.text()[-1500:]
    finally:
        first.kill()
    batches(out)


def sealed_ring_bytes(tag):
    """head - tail of the run's signerd -> writerd ring (common/ring.h: head at 64, tail at
    128), read from /dev/shm."""
    try:
        with open(f"/dev/shm/flowseal.{instance(tag)}.ring.signerd-writerd", "rb") as f:
            header = f.read(192)
    except OSError:
        return 0
    head, = struct.unpack_from("<Q", header, 64)
    tail, = struct.unpack_from("<Q", header, 128)
    return head - tail


def test_sealed_batches_a_killed_run_left_in_its_ring_are_stored_by_the_next(tmp_path):
    """The supervisor SIGKILLed while writerd is stopped, so that the signerd -> writerd ring
    holds sealed batches nothing stored: the next run into the same directory counts what the
    dead instance's rings held, stores those batches first and seals on after them, and the
    store verifies as one chain from seq 0."""
    out = str(tmp_path / "store")
    tag = "sealed"
    r = Background(run_args(out, tag, ["--set", "capture.loop=100000",
                                       "--set", "writer.fsync=batch",
                                       # writerd is stopped on purpose: not replaced meanwhile
                                       "--set", "supervisor.heartbeat_timeout_ms=600000"]),
                   str(tmp_path / "1.log"))
    writerd = None
    try:
        assert r.wait_for("ready: every stage is up"), r.text()[-1500:]
        assert wait_for(lambda: any(os.path.getsize(f) > 4096
                                    for f in glob.glob(os.path.join(out, "seg-*"))), 120), \
            "the run stores batches"
        writerd = next(p for p in stage_pids(r.p.pid)
                       if os.readlink(f"/proc/{p}/exe").endswith("/flowseal-writerd"))
        os.kill(writerd, signal.SIGSTOP)
        # signerd goes on sealing into the ring that writerd no longer empties.
        assert wait_for(lambda: sealed_ring_bytes(tag) > 256 * 1024, 120), \
            f"sealed batches pile up in the ring ({sealed_ring_bytes(tag)} bytes)"
        held = sealed_ring_bytes(tag)
    finally:
        r.kill()  # the supervisor and every stage, the stopped writerd too (SIGKILL)
    again = run(out, tag)
    text = again.stderr
    assert again.returncode == 0, f"the rerun exits 0 ({text[-2500:]})"
    counted = re.search(r"ring signerd-writerd \(sealed batches not yet stored\): (\d+) frame", text)
    assert counted and int(counted.group(1)) > 0, text[-2500:]
    recovered = re.search(r"recovered (\d+) sealed batch\(es\), seq (\d+)\.\.(\d+), (\d+) records",
                          text)
    assert recovered, f"the sealed batches are recovered ({held} bytes held) ({text[-2500:]})"
    n, first, last, _ = map(int, recovered.groups())
    durable = re.search(r"this run continues it at batch (\d+)", text)
    assert durable, text[-2500:]
    assert first == int(durable.group(1)), "recovery starts right after the newest durable batch"
    assert last - first + 1 == n and n > 0
    assert f"signerd goes on at seq {last + 1}" in text
    assert "  leftover  recovered" in text, "the run summary says it"
    store_first, store_last = batches(out)
    assert store_first == 0 and store_last > last, \
        "the recovered batches and the rerun's verify as one chain from seq 0"


def test_key_rotation_continues_the_chain_under_the_new_key(tmp_path):
    """`flowseal keygen` makes a new key; `run` into the store of the old one refuses (78)
    unless asked to rotate (--rotate-key). Rotated, the chain goes on: batches up to seq N are
    the old key's, from N+1 the new key's (a new segment), both public keys in keys/, and the
    store verifies as one chain, by keys/ or pinned with a directory holding both keys; pinned
    with the old key alone it does not."""
    out = str(tmp_path / "store")
    assert run(out, "rot1").returncode == 0
    _, last_before = batches(out)
    old_pub = os.path.join(out, "keys", "flowseal.pub")
    new_key = tmp_path / "rotated" / "flowseal.key"  # same file name as the old one
    os.makedirs(new_key.parent)
    k = flowseal("keygen", "-o", str(new_key))
    assert k.returncode == 0, k.stderr

    before = snapshot(out)
    r = run(out, "rot2", ["--set", f"seal.key_file={new_key}"])
    assert r.returncode == 78, f"exit 78 ({r.returncode}: {r.stderr[-1500:]})"
    assert "--rotate-key" in r.stderr, r.stderr[-1500:]
    assert snapshot(out) == before, "the refused run left the store (and keys/) as it was"

    r = run(out, "rot3", ["--rotate-key", "--set", f"seal.key_file={new_key}"])
    assert r.returncode == 0, f"exit 0 ({r.returncode}: {r.stderr[-2000:]})"
    assert f"key rotation (--rotate-key): batches up to seq {last_before}" in r.stderr, \
        r.stderr[-2000:]
    first, last = batches(out)
    assert first == 0 and last > last_before, (first, last, last_before)
    code, text = verify(out)
    key_ids = [l for l in text.splitlines() if l.startswith("key id:")]
    assert len(key_ids) == 2, text[-1500:]
    pubs = sorted(os.path.basename(p) for p in glob.glob(os.path.join(out, "keys", "*.pub")))
    assert len(pubs) == 2 and "flowseal.pub" in pubs, pubs  # the old one kept, not replaced

    pinned = tmp_path / "pinned"
    os.makedirs(pinned)
    for i, p in enumerate(glob.glob(os.path.join(out, "keys", "*.pub"))):
        with open(p, "rb") as src, open(pinned / f"{i}.pub", "wb") as dst:
            dst.write(src.read())
    v = flowseal("verify", out, "--pubkey", str(pinned))
    assert v.returncode == 0, v.stdout + v.stderr
    v = flowseal("verify", out, "--pubkey", old_pub)
    assert v.returncode != 0, "the new key's batches fail a verify pinned to the old key alone"
