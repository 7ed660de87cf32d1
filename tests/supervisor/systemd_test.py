#!/usr/bin/env python3
"""systemd readiness (Type=notify) through the real binaries, with this test as the service
manager: it binds a unix datagram socket, runs `flowseal run` with NOTIFY_SOCKET pointing at
it and reads what arrives.

Run by meson as `python3 -m pytest -q systemd_test.py`; environment: FLOWSEAL,
FLOWSEAL_TEST_DATA, FLOWSEAL_SANITIZED (see tests/conftest.py).

  - stopped by SIGTERM (filesystem socket, WATCHDOG_USEC set): READY=1 arrives once, with
    MAINPID = the supervisor's pid and a STATUS; when it arrives every stage process is
    running and has heartbeaten (control block) — checked at that moment; WATCHDOG=1
    keep-alives arrive while it runs; after the SIGTERM, STOPPING=1 arrives before the
    supervisor exits 0; nothing comes after READY=1 but keep-alives, STATUS and STOPPING=1;
  - end of input (abstract socket, '@name'): READY=1, then STOPPING=1 at the drain, exit 0;
  - without WATCHDOG_USEC no WATCHDOG=1 is sent; WATCHDOG_PID naming another process
    means the keep-alives are not for flowseal either.
Only processes this test started are signalled, by PID; sockets and temp dirs are removed.
"""
import glob
import mmap
import os
import signal
import socket
import struct
import subprocess
import threading
import time

import pytest

FLOWSEAL = os.environ["FLOWSEAL"]
DATA = os.environ["FLOWSEAL_TEST_DATA"]
SANITIZED = os.environ.get("FLOWSEAL_SANITIZED") == "1"
CAPTURE = os.path.join(DATA, "sample.pcap")
LONG = 100000  # passes over sample.pcap: longer than the test waits; it is stopped
SHORT = 100 if SANITIZED else 400
TIMEOUT = 120
STAGES = ["capture", "flowd", "dedupd", "signerd", "writerd"]

def instance(tag):
    return f"sd{os.getpid()}-{tag}"


@pytest.fixture(scope="module", autouse=True)
def no_shm_left():
    """What a failed run left in /dev/shm under this test's instance names is removed."""
    yield
    for leftover in glob.glob(f"/dev/shm/flowseal.sd{os.getpid()}-*"):
        os.remove(leftover)


def child_pids(parent):
    """{stage: [pid]} of the stage processes whose parent is `parent`."""
    found = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            exe = os.path.basename(os.readlink(f"/proc/{pid}/exe"))
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and exe.startswith("flowseal-"):
            found.setdefault(exe[len("flowseal-"):], []).append(int(pid))
    return found


def slots(tag):
    """(pid, heartbeat_ns) of every stage slot of the instance's control block."""
    with open(f"/dev/shm/flowseal.{instance(tag)}.control", "rb") as f:
        m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    try:
        shards = struct.unpack_from("<I", m, 12)[0]
        # common/control_block.h: slots from offset 128, 256 bytes each; pid at 0, heartbeat at 16.
        return [struct.unpack_from("<i12xq", m, 128 + i * 256) for i in range(4 + shards)]
    finally:
        m.close()


class Manager:
    """The service manager's end: a datagram socket, every message with its arrival time and
    what the process table and control block looked like when READY=1 came."""

    def __init__(self, address, tag):
        self.tag = tag
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.2)
        self.messages = []  # (t, {key: value})
        self.at_ready = None
        self.supervisor = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._receive, daemon=True)
        self.thread.start()

    def _receive(self):
        while not self.done.is_set():
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            fields = dict(line.split("=", 1) for line in data.decode().split("\n") if "=" in line)
            if "READY" in fields and self.at_ready is None and self.supervisor:
                self.at_ready = (child_pids(self.supervisor), slots(self.tag))
            self.messages.append((time.time(), fields))

    def keys(self):
        return [k for _, fields in self.messages for k in fields]

    def first(self, key):
        return next(((t, f) for t, f in self.messages if key in f), (None, None))

    def close(self):
        self.done.set()
        self.thread.join(5)
        self.sock.close()


def start(tmp, tag, loop, address, env_extra):
    env = dict(os.environ, NOTIFY_SOCKET=address, **env_extra)
    for k in ("WATCHDOG_USEC", "WATCHDOG_PID"):
        if k not in env_extra:
            env.pop(k, None)
    out = os.path.join(tmp, tag)
    return subprocess.Popen(
        [FLOWSEAL, "run", "-r", CAPTURE, "-o", out, "--set", f"supervisor.instance={instance(tag)}",
         "--set", f"capture.loop={loop}", "--set", "supervisor.stats_interval_s=0", "--budget", "16"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(p, timeout=TIMEOUT):
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, _ = p.communicate()
        pytest.fail(f"the run ends within {timeout} s ({out[-1500:]})")
    return p.returncode, out


def wait_for(condition, seconds, step=0.05):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(step)
    return condition()


def test_stopped_by_sigterm(tmp_path, report):
    tag = "term"
    address = str(tmp_path / "notify.sock")
    m = Manager(address, tag)
    p = start(str(tmp_path), tag, LONG, address, {"WATCHDOG_USEC": "300000"})  # keep-alive every 150 ms
    m.supervisor = p.pid
    try:
        got_ready = wait_for(lambda: m.at_ready is not None or p.poll() is not None, 60)
        assert got_ready and m.at_ready is not None, "READY=1 arrives while the run goes on"
        time.sleep(1.0)
        p.send_signal(signal.SIGTERM)
        code, out = finish(p)
        wait_for(lambda: "STOPPING" in m.keys(), 5)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        m.close()
    assert code == 0, f"a SIGTERM drains and exits 0 ({code}: {out[-1500:]})"
    t_ready, ready = m.first("READY")
    assert ready is not None and ready.get("READY") == "1", f"READY=1 ({m.messages[:3]})"
    assert ready.get("MAINPID") == str(p.pid), f"MAINPID is the supervisor's pid ({ready})"
    assert "STATUS" in ready and ready["STATUS"], f"READY comes with a STATUS ({ready})"
    assert m.keys().count("READY") == 1, "READY=1 is sent once"
    procs, slot_rows = m.at_ready
    assert all(len(procs.get(s, [])) >= 1 for s in STAGES), \
        f"when READY=1 arrives every stage process runs ({procs})"
    running = sorted(pid for pids in procs.values() for pid in pids)
    assert sorted(pid for pid, _ in slot_rows) == running and all(hb != 0 for _, hb in slot_rows), \
        (f"when READY=1 arrives every stage has attached its control-block slot "
         f"(slots {slot_rows}, processes {running})")
    assert "ready: every stage is up" in out, "the supervisor logs its readiness"
    t_stop, stopping = m.first("STOPPING")
    assert stopping is not None and stopping.get("STOPPING") == "1", "STOPPING=1 arrives"
    assert t_stop > t_ready, "STOPPING=1 comes after READY=1"
    assert "draining" in stopping.get("STATUS", ""), \
        f"STOPPING comes with a draining STATUS ({stopping})"
    dogs = [t for t, f in m.messages if f.get("WATCHDOG") == "1"]
    assert len(dogs) >= 4, \
        f"WATCHDOG=1 keep-alives arrive at half the period ({len(dogs)} in the run)"
    gaps = [b - a for a, b in zip(dogs, dogs[1:])]
    report(f"   watchdog: {len(dogs)} keep-alives, largest gap {max(gaps, default=0):.3f} s")
    unexpected = {k for k in m.keys()} - {"READY", "STATUS", "MAINPID", "WATCHDOG", "STOPPING"}
    assert not unexpected, f"no other assignments are sent ({unexpected})"


def test_end_of_input_abstract_socket(tmp_path):
    tag = "eof"
    name = f"@flowseal-test-{os.getpid()}"
    m = Manager("\0" + name[1:], tag)
    p = start(str(tmp_path), tag, SHORT, name, {})
    m.supervisor = p.pid
    try:
        code, out = finish(p)
        wait_for(lambda: "STOPPING" in m.keys(), 5)
    finally:
        m.close()
    assert code == 0, f"the run to the end of its input exits 0 ({code}: {out[-1500:]})"
    t_ready, ready = m.first("READY")
    t_stop, stopping = m.first("STOPPING")
    assert ready is not None and ready.get("MAINPID") == str(p.pid), \
        f"READY=1 with MAINPID arrives on an abstract socket ({m.messages[:3]})"
    assert stopping is not None, "STOPPING=1 arrives at the drain"
    assert t_stop >= t_ready, "STOPPING=1 comes after READY=1"
    assert "end of input" in stopping.get("STATUS", ""), f"the drain says why ({stopping})"
    assert "WATCHDOG" not in m.keys(), "no keep-alives without WATCHDOG_USEC"


def test_watchdog_for_another_process(tmp_path):
    tag = "otherpid"
    address = str(tmp_path / "other.sock")
    m = Manager(address, tag)
    p = start(str(tmp_path), tag, SHORT, address, {"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"})
    m.supervisor = p.pid
    try:
        code, out = finish(p)
        wait_for(lambda: "STOPPING" in m.keys(), 5)
    finally:
        m.close()
    assert code == 0, f"the run exits 0 ({code}: {out[-1000:]})"
    assert "READY" in m.keys(), "READY=1 arrives"
    assert "WATCHDOG" not in m.keys(), "no keep-alives when WATCHDOG_PID names another process"
