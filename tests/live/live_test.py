#!/usr/bin/env python3
"""Live capture, for real: a veth pair, tcpreplay on one end, `flowseal run -i` on the other.

usage: live_test.py FLOWSEAL_BINARY TEST_DATA_DIR

As root, it creates a network namespace and a veth pair (names carry this process's pid, so
parallel runs do not collide), moves one end into the namespace, brings both up (IPv6 off, so
the kernel itself sends nothing: every frame on the link is one we replayed), and starts
`flowseal run -i <host end>` with privileges dropped to `nobody`. Once capture logs that it is
listening, the test checks the capture process: uid nobody, no effective, permitted or
bounding capabilities, no_new_privs. Then it replays each capture below from the namespace
end with tcpreplay, stops flowseal with SIGINT (drain) and checks:
  - every replayed frame was received, none dropped, and the run summary accounts for all;
  - the flows equal what the same file gives offline: per directed 5-tuple
    (src, sport, dst, dport, proto) the same packets and IP bytes (the comparison of
    tests/oracle/oracle_test.py), and the same set of flows.
Packet time differs between the two runs (live stamps are the replay's), so the timeouts are
set so large that time never splits a flow, and dedup is off: both sides are then exact.

Without root, without `ip netns`, or without tcpreplay it prints why and exits 77 (meson:
SKIP). Whatever happens, the namespace and the veth pair are removed and only the processes
this test started are signalled; every wait is bounded.
"""
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict

CAPTURES = ["sample.pcap", "synscan.pcap"]  # complete TCP/UDP connections; a SYN scan
STEP_TIMEOUT = 60  # s for any single command or wait
SETTINGS = [
    "flowd.tcp_idle_timeout=30000000",
    "flowd.tcp_attempt_timeout=30000000",
    "flowd.tcp_closed_timeout=30000000",
    "flowd.udp_idle_timeout=30000000",
    "flowd.icmp_idle_timeout=30000000",
    "flowd.other_idle_timeout=30000000",
    "flowd.active_timeout=0",
    "dedup.enabled=false",
    "supervisor.stats_interval_s=0",
    "memory.budget_mb=64",
]
SKIP = 77


def sh(*args, check=True, netns=None):
    cmd = (["ip", "netns", "exec", netns] if netns else []) + list(args)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=STEP_TIMEOUT)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {r.returncode}: {r.stderr.strip()}")
    return r


class Veth:
    """A namespace and a veth pair with one end in it; removed on exit, whatever happened."""

    def __init__(self):
        pid = os.getpid()
        self.netns, self.host, self.peer = f"fsl{pid}", f"fsl{pid}a", f"fsl{pid}b"

    def __enter__(self):
        try:
            sh("ip", "netns", "add", self.netns)
            sh("ip", "link", "add", self.host, "type", "veth", "peer", "name", self.peer)
            sh("ip", "link", "set", self.peer, "netns", self.netns)
            for end, ns in ((self.host, None), (self.peer, self.netns)):
                # No IPv6 means no router or neighbour solicitations of the kernel's own.
                sh("sysctl", "-q", "-w", f"net.ipv6.conf.{end}.disable_ipv6=1", netns=ns)
                sh("ip", "link", "set", end, "mtu", "9000", "up", netns=ns)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        # Deleting one end deletes the pair; deleting the namespace deletes the end in it.
        sh("ip", "link", "del", self.host, check=False)
        sh("ip", "netns", "del", self.netns, check=False)
        return False


def can_run():
    """None if this machine can run the test, else why not."""
    if os.geteuid() != 0:
        return "not root: creating a network namespace and a veth pair needs root"
    for tool in ("ip", "tcpreplay"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    probe = f"fslprobe{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True,
                       timeout=STEP_TIMEOUT)
    if r.returncode != 0:
        return f"cannot create a network namespace: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=STEP_TIMEOUT)
    return None


class Flowseal:
    """`flowseal run` in the background; on exit it is stopped (SIGINT, then SIGKILL)."""

    def __init__(self, args, log_path):
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def text(self):
        with open(self.log_path) as f:
            return f.read()

    def wait_for(self, needle, timeout=STEP_TIMEOUT):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.text():
                return True
            if self.proc.poll() is not None:
                return needle in self.text()
            time.sleep(0.05)
        return False

    def stop(self, timeout=STEP_TIMEOUT):
        """SIGINT (drain) and wait; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RuntimeError(f"flowseal did not drain within {timeout} s of SIGINT")

    def kill(self):
        if self.proc.poll() is None:
            # Its own session: the supervisor and the stages it started, nothing else.
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=STEP_TIMEOUT)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()
        self.log.close()
        return False

    def capture_pid(self):
        """The child of the supervisor that runs flowseal-capture."""
        path = f"/proc/{self.proc.pid}/task/{self.proc.pid}/children"
        with open(path) as f:
            children = [int(p) for p in f.read().split()]
        for child in children:
            try:
                if os.readlink(f"/proc/{child}/exe").endswith("flowseal-capture"):
                    return child
            except OSError:
                continue
        return None


def proc_status(pid):
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.split()
    return fields


def check_privileges(pid, user):
    """Failure lines for the capture process's identity and capabilities."""
    uid, gid = user.pw_uid, user.pw_gid
    s = proc_status(pid)
    failures = []
    if s["Uid"] != [str(uid)] * 4:
        failures.append(f"capture pid {pid}: Uid {s['Uid']}, expected {uid} ({user.pw_name}) x4")
    if s["Gid"] != [str(gid)] * 4:
        failures.append(f"capture pid {pid}: Gid {s['Gid']}, expected {gid} x4")
    if s.get("Groups", []) not in ([], [str(gid)]):
        failures.append(f"capture pid {pid}: supplementary groups {s['Groups']} kept")
    for cap in ("CapEff", "CapPrm", "CapInh", "CapAmb", "CapBnd"):
        if cap in s and int(s[cap][0], 16) != 0:
            failures.append(f"capture pid {pid}: {cap} {s[cap][0]}, expected none")
    if s.get("NoNewPrivs", ["1"]) != ["1"]:
        failures.append(f"capture pid {pid}: NoNewPrivs {s['NoNewPrivs']}, expected 1")
    return failures


def directed_counts(flowseal, out):
    """{(src, sport, dst, dport, proto): [packets, ip bytes]} and the flow count of a run."""
    c = subprocess.run([flowseal, "cat", out], capture_output=True, text=True,
                       timeout=STEP_TIMEOUT)
    if c.returncode != 0:
        raise RuntimeError(f"flowseal cat {out} exited {c.returncode}: {c.stderr[-1500:]}")
    counts = defaultdict(lambda: [0, 0])
    flows = 0
    for line in c.stdout.splitlines():
        if not line.strip():
            continue
        f = json.loads(line)
        flows += 1
        orig = (f["id.orig_h"], int(f["id.orig_p"]), f["id.resp_h"], int(f["id.resp_p"]), f["proto"])
        resp = (orig[2], orig[3], orig[0], orig[1], orig[4])
        for key, pkts, ip_bytes in ((orig, f["orig_pkts"], f["orig_ip_bytes"]),
                                    (resp, f["resp_pkts"], f["resp_ip_bytes"])):
            if pkts or ip_bytes:
                counts[key][0] += pkts
                counts[key][1] += ip_bytes
    return dict(counts), flows


def summary_numbers(log):
    """received and kernel-dropped packets from the run summary."""
    for line in log.splitlines():
        words = line.split()
        if words[:2] == ["packets", "received"]:
            return int(words[2]), int(line.split("kernel ")[1].split()[0])
    return None, None


def sanitizer_alarms(log):
    return [a for a in ("ERROR: AddressSanitizer", "runtime error:", "ERROR: LeakSanitizer")
            if a in log]


def run_live(flowseal, veth, pcap, tmp, n, nobody):
    """Failure lines for one capture replayed on the veth pair."""
    name = os.path.basename(pcap)
    failures = []
    offline_out = os.path.join(tmp, f"offline{n}")
    args = [flowseal, "run", "-r", pcap, "-o", offline_out, "--instance", f"capoff{os.getpid()}{n}"]
    for s in SETTINGS:
        args += ["--set", s]
    r = subprocess.run(args, capture_output=True, text=True, timeout=STEP_TIMEOUT * 3)
    if r.returncode != 0:
        return [f"{name}: offline run exited {r.returncode}: {r.stderr[-1500:]}"]
    offline, offline_flows = directed_counts(flowseal, offline_out)
    expected_packets, _ = summary_numbers(r.stderr)

    live_out = os.path.join(tmp, f"live{n}")
    args = [flowseal, "run", "-i", veth.host, "-o", live_out, "--instance",
            f"caplive{os.getpid()}{n}", "--set", "capture.user=" + nobody.pw_name,
            "--set", "capture.immediate=true"]
    for s in SETTINGS:
        args += ["--set", s]
    with Flowseal(args, os.path.join(tmp, f"live{n}.log")) as run:
        if not run.wait_for("listening on " + veth.host):
            return [f"{name}: flowseal never said it was listening:\n{run.text()[-2000:]}"]
        pid = run.capture_pid()
        if pid is None:
            failures.append(f"{name}: no flowseal-capture child of supervisor {run.proc.pid}")
        else:
            failures += check_privileges(pid, nobody)
        replay = sh("tcpreplay", "-q", "--pps=2000", "-i", veth.peer, pcap, netns=veth.netns)
        sent = next((int(line.split(":")[1]) for line in replay.stdout.splitlines()
                     if line.strip().startswith("Successful packets:")), None)
        # Let the last frames reach the capture socket before asking it to stop.
        time.sleep(1.0)
        code = run.stop()
        log = run.text()
    if code != 0:
        failures.append(f"{name}: live run exited {code}:\n{log[-2000:]}")
    for alarm in sanitizer_alarms(log):
        failures.append(f"{name}: {alarm} in the live run:\n{log[log.index(alarm):][:1500]}")
    if "accounting received = processed + sampled out + dropped: yes" not in log:
        failures.append(f"{name}: the live run does not account for every packet:\n{log[-1500:]}")
    received, kernel_dropped = summary_numbers(log)
    if sent != expected_packets or received != expected_packets or kernel_dropped != 0:
        failures.append(f"{name}: {expected_packets} packets in the file, tcpreplay sent {sent}, "
                        f"capture received {received}, kernel dropped {kernel_dropped}")
    live, live_flows = directed_counts(flowseal, live_out)
    if live != offline:
        keys = sorted(set(live) | set(offline))
        diff = [k for k in keys if live.get(k) != offline.get(k)]
        failures.append(f"{name}: {len(diff)} of {len(keys)} directed keys differ between live "
                        f"and offline; first ones as [packets, ip bytes]:")
        failures += [f"    {k}: live {live.get(k)} offline {offline.get(k)}" for k in diff[:10]]
    if live_flows != offline_flows:
        failures.append(f"{name}: {live_flows} flows live, {offline_flows} offline")
    print(f"{'FAIL' if failures else 'ok  '} {name}: {sent} frames replayed, {received} "
          f"received, {len(live)} directed keys, {live_flows} flows (offline {offline_flows})",
          flush=True)
    return failures


def main():
    if len(sys.argv) != 3:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 64
    why_not = can_run()
    if why_not:
        print(f"live: skipped: {why_not}")
        return SKIP
    flowseal = os.path.abspath(sys.argv[1])
    data = os.path.abspath(sys.argv[2])
    nobody = pwd.getpwnam("nobody")
    tmp = tempfile.mkdtemp(prefix="flowseal-live-")
    failures = []
    try:
        with Veth() as veth:
            for n, name in enumerate(CAPTURES):
                try:
                    failures += run_live(flowseal, veth, os.path.join(data, name), tmp, n, nobody)
                except (subprocess.TimeoutExpired, RuntimeError, OSError) as e:
                    failures.append(f"{name}: {type(e).__name__}: {e}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for line in failures:
        print(line, flush=True)
    print(f"live: {'FAILED' if failures else 'all captures agree with their offline runs'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
