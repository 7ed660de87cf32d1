#!/usr/bin/env python3
"""A live capture whose disk fills up: it drops and counts, says why, and resumes.

usage: disk_full_test.py FLOWSEAL_BINARY TEST_DATA_DIR

As root: a network namespace and a veth pair (live_test.Veth), a 4 MiB tmpfs this test mounts
for the output directory, `flowseal run -i <host end>` while tcpreplay loops captures into the
other end. Once records are stored the tmpfs is filled up, and the test checks that
  - writerd logs the full disk and keeps retrying, and the run goes on;
  - live capture never blocks: once the rings behind writerd are full it drops, and counts
    those drops as ring full *while writerd could not write* in `flowseal status --json`
    (drops.writer_stalled, writer.stalled) and says so in its log;
then frees the space and checks that writing resumes (the log says so, more records are
stored, status no longer says stalled), that the run drains with exit 0 and a summary naming
the writer-stalled drops with every packet accounted for, and that the store verifies and
every record reads back. The requirement: "a live run drops and counts, `status` and the log say why,
and writing resumes when space frees. No segment is corrupted."

Without root, `ip netns`, tcpreplay or a tmpfs it prints why and exits 77 (meson: SKIP). The
namespace, the veth pair and the mount are removed whatever happens; only the processes this
test started are signalled, by pid; every wait is bounded.
"""
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import live_test  # noqa: E402  (Veth, Flowseal, can_run, sh)

STEP_TIMEOUT = live_test.STEP_TIMEOUT
SKIP = live_test.SKIP
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


def run(flowseal, data, tmp, veth):
    failures = []

    def check(ok, what):
        if not ok:
            failures.append(what)
        print(f"{'ok  ' if ok else 'FAIL'} {what}", flush=True)

    mnt = os.path.join(tmp, "small")
    os.mkdir(mnt)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", mnt],
                       capture_output=True, text=True, timeout=STEP_TIMEOUT)
    if r.returncode != 0:
        print(f"live disk full: skipped: cannot mount a tmpfs: {r.stderr.strip()}")
        return None
    replay = None
    try:
        out = os.path.join(mnt, "out")
        instance = f"livefull{os.getpid()}"
        args = [flowseal, "run", "-i", veth.host, "-o", out, "--instance", instance]
        for s in SETTINGS:
            args += ["--set", s]
        with live_test.Flowseal(args, os.path.join(tmp, "run.log")) as fs:
            if not fs.wait_for("listening on " + veth.host):
                return [f"flowseal never said it was listening:\n{fs.text()[-2000:]}"]
            # Looped for ever at 20 kpps; stopped below by its pid.
            replay = subprocess.Popen(
                ["ip", "netns", "exec", veth.netns, "tcpreplay", "-q", "--pps=20000",
                 "--loop=0", "--unique-ip", "-i", veth.peer] + [os.path.join(data, f) for f in REPLAYED],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            st, ok = wait_status(flowseal, instance,
                                 lambda s: stage(s, "writerd").get("out_total", 0) > 0)
            check(ok, "records are stored before the disk fills")
            filler = os.path.join(mnt, "filler")
            written = fill(filler)
            print(f"     filled the tmpfs with {written} bytes", flush=True)

            check(fs.wait_for("No space left on device"), "writerd logs that the disk is full")
            st, ok = wait_status(
                flowseal, instance,
                lambda s: s["drops"].get("writer_stalled", 0) > 0 and s["writer"]["stalled"])
            check(ok, "status --json counts drops while writerd cannot write "
                      f"(drops {st and st['drops']}, writer {st and st.get('writer')})")
            if st:
                check(st["drops"]["writer_stalled"] <= st["drops"]["ring_full"],
                      "writer-stalled drops are counted among the ring-full drops")
                check(st["writer"]["write_errors"] > 0, "status counts writerd's failed writes")
                check(st["supervisor_alive"] and
                      all(s["state"] == "running" for s in st["stages"]),
                      f"the run goes on while the disk is full ({[s['state'] for s in st['stages']]})")
            check(fs.wait_for("the rings are full because writerd cannot write"),
                  "capture's log says why it drops")
            text = subprocess.run([flowseal, "status", "--instance", instance], capture_output=True,
                                  text=True, timeout=STEP_TIMEOUT).stdout
            check("writer: STALLED" in text, f"plain status says the writer is stalled:\n{text}")

            stored_full = stage(st or {"stages": []}, "writerd").get("out_total", 0)
            os.remove(filler)
            check(fs.wait_for("writing works again", timeout=STEP_TIMEOUT),
                  "writerd says writing works again once space is free")
            st, ok = wait_status(flowseal, instance,
                                 lambda s: not s["writer"]["stalled"] and
                                 stage(s, "writerd").get("out_total", 0) > stored_full + 1000)
            check(ok, f"writing resumes: more records stored after the space came back "
                      f"({stored_full} -> {st and stage(st, 'writerd').get('out_total')})")

            replay.send_signal(signal.SIGINT)
            replay.wait(timeout=STEP_TIMEOUT)
            time.sleep(1.0)
            code = fs.stop()
            log = fs.text()
        check(code == 0, f"the live run drains and exits 0 (got {code}):\n{log[-1500:]}")
        summary = next((l for l in log.splitlines() if l.strip().startswith("packets   received")), "")
        check("while writerd could not write: writer stalled" in summary,
              f"the summary names the writer-stalled drops: {summary!r}")
        check("accounting received = processed + sampled out + dropped: yes" in log,
              "every packet is accounted for")
        check(not live_test.sanitizer_alarms(log), "no sanitizer alarms")
        v = subprocess.run([flowseal, "verify", out], capture_output=True, text=True,
                           timeout=STEP_TIMEOUT)
        check(v.returncode == 0, f"the store verifies after the full disk ({v.stderr.strip()[-800:]})")
        c = subprocess.run([flowseal, "cat", out, "--events"], capture_output=True, text=True,
                           timeout=STEP_TIMEOUT)
        rows = [json.loads(l) for l in c.stdout.splitlines() if l.strip()]
        check(c.returncode == 0 and len(rows) > stored_full,
              f"every stored record reads back ({len(rows)} records, cat exit {c.returncode})")
    finally:
        if replay is not None and replay.poll() is None:
            replay.kill()
            replay.wait(timeout=STEP_TIMEOUT)
        subprocess.run(["umount", mnt], capture_output=True, timeout=STEP_TIMEOUT)
    return failures


def main():
    if len(sys.argv) != 3:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 64
    why_not = live_test.can_run()
    if why_not:
        print(f"live disk full: skipped: {why_not}")
        return SKIP
    flowseal = os.path.abspath(sys.argv[1])
    data = os.path.abspath(sys.argv[2])
    tmp = tempfile.mkdtemp(prefix="flowseal-livefull-")
    try:
        with live_test.Veth() as veth:
            failures = run(flowseal, data, tmp, veth)
    except (subprocess.TimeoutExpired, RuntimeError, OSError) as e:
        failures = [f"{type(e).__name__}: {e}"]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if failures is None:
        return SKIP
    for line in failures:
        print(f"FAIL: {line}", flush=True)
    print(f"live disk full: {'FAILED' if failures else 'ok'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
