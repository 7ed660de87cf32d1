"""Live capture, for real: a veth pair, tcpreplay on one end, `flowseal run -i` on the other.

Run by meson: python3 -m pytest -q tests/live/live_test.py (see tests/conftest.py).

As root, the `veth` fixture creates a network namespace and a veth pair, one end in the
namespace, both up with IPv6 off (so the kernel itself sends nothing: every frame on the link
is one we replayed). For each capture below, `flowseal run -i <host end>` starts with capture's
privileges dropped to `nobody`; once capture logs that it is listening, its process is
inspected, the capture is replayed from the namespace end with tcpreplay and flowseal is
stopped with SIGINT (drain). The same file also runs offline. Checked per capture:
  - the capture process: uid nobody, no effective, permitted or bounding capabilities,
    no_new_privs;
  - every replayed frame was received, none dropped, and the run summary accounts for all;
  - the flows equal what the same file gives offline: per directed 5-tuple
    (src, sport, dst, dport, proto) the same packets and IP bytes (the comparison of
    tests/oracle/oracle_test.py), and the same number of flows.
Packet time differs between the two runs (live stamps are the replay's), so the timeouts are
set so large that time never splits a flow, and dedup is off: both sides are then exact.

Without root, `ip netns` or tcpreplay every test is skipped (meson: SKIP). The namespace and
the veth pair are removed whatever happens; only the processes this test started are
signalled; every wait is bounded.
"""
import json
import os
import pwd
import subprocess
import time
from collections import defaultdict

import pytest

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
ALARMS = ("ERROR: AddressSanitizer", "runtime error:", "ERROR: LeakSanitizer")


def set_args(settings):
    return [a for s in settings for a in ("--set", s)]


def proc_status(pid):
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.split()
    return fields


def directed_counts(flowseal, out):
    """{(src, sport, dst, dport, proto): [packets, ip bytes]} and the flow count of a run."""
    c = subprocess.run([flowseal, "cat", out], capture_output=True, text=True,
                       timeout=STEP_TIMEOUT)
    assert c.returncode == 0, f"flowseal cat {out} exited {c.returncode}: {c.stderr[-1500:]}"
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


@pytest.fixture(scope="module")
def nobody():
    return pwd.getpwnam("nobody")


class Replay:
    """What one capture gave offline and replayed live (filled in by the `replay` fixture)."""
    name = offline_flows = live_flows = expected_packets = sent = capture_pid = None
    capture_status = code = log = None
    offline = live = None


@pytest.fixture(scope="module", params=CAPTURES)
def replay(request, veth, flowseal, data_dir, nobody, instance, background, tmp_path_factory):
    name = request.param
    pcap = os.path.join(data_dir, name)
    tmp = tmp_path_factory.mktemp("live")
    got = Replay()
    got.name = name
    offline_out = str(tmp / "offline")
    r = subprocess.run([flowseal, "run", "-r", pcap, "-o", offline_out,
                        "--instance", instance(f"capoff{CAPTURES.index(name)}")] + set_args(SETTINGS),
                       capture_output=True, text=True, timeout=STEP_TIMEOUT * 3)
    assert r.returncode == 0, f"{name}: offline run exited {r.returncode}: {r.stderr[-1500:]}"
    got.offline, got.offline_flows = directed_counts(flowseal, offline_out)
    got.expected_packets, _ = summary_numbers(r.stderr)

    live_out = str(tmp / "live")
    run = background([flowseal, "run", "-i", veth.host, "-o", live_out,
                      "--instance", instance(f"caplive{CAPTURES.index(name)}"),
                      "--set", "capture.user=" + nobody.pw_name,
                      "--set", "capture.immediate=true"] + set_args(SETTINGS))
    try:
        assert run.wait_for("listening on " + veth.host), \
            f"{name}: flowseal never said it was listening:\n{run.text()[-2000:]}"
        got.capture_pid = run.child_pid("flowseal-capture")
        if got.capture_pid is not None:
            got.capture_status = proc_status(got.capture_pid)
        replayed = veth.run_in_netns("tcpreplay", "-q", "--pps=2000", "-i", veth.peer, pcap)
        got.sent = next((int(line.split(":")[1]) for line in replayed.stdout.splitlines()
                         if line.strip().startswith("Successful packets:")), None)
        # Let the last frames reach the capture socket before asking it to stop.
        time.sleep(1.0)
        got.code = run.stop()
        got.log = run.text()
    finally:
        run.close()
    got.live, got.live_flows = directed_counts(flowseal, live_out)
    return got


def test_the_capture_process_runs_as_nobody_without_capabilities(replay, nobody):
    assert replay.capture_pid is not None, f"{replay.name}: a flowseal-capture child of the supervisor"
    s, pid, uid, gid = replay.capture_status, replay.capture_pid, nobody.pw_uid, nobody.pw_gid
    assert s["Uid"] == [str(uid)] * 4, f"capture pid {pid}: Uid {s['Uid']}, expected {uid} (nobody) x4"
    assert s["Gid"] == [str(gid)] * 4, f"capture pid {pid}: Gid {s['Gid']}, expected {gid} x4"
    assert s.get("Groups", []) in ([], [str(gid)]), \
        f"capture pid {pid}: supplementary groups {s['Groups']} kept"
    for cap in ("CapEff", "CapPrm", "CapInh", "CapAmb", "CapBnd"):
        assert cap not in s or int(s[cap][0], 16) == 0, f"capture pid {pid}: {cap} {s[cap][0]}, expected none"
    assert s.get("NoNewPrivs", ["1"]) == ["1"], f"capture pid {pid}: NoNewPrivs {s['NoNewPrivs']}, expected 1"


def test_the_live_run_drains_with_exit_0_and_no_sanitizer_report(replay):
    assert replay.code == 0, f"{replay.name}: live run exited {replay.code}:\n{replay.log[-2000:]}"
    for alarm in ALARMS:
        assert alarm not in replay.log, \
            f"{replay.name}: {alarm} in the live run:\n{replay.log[replay.log.index(alarm):][:1500]}"


def test_every_replayed_frame_is_received_and_accounted_for(replay):
    assert "accounting received = processed + sampled out + dropped: yes" in replay.log, \
        f"{replay.name}: the live run accounts for every packet:\n{replay.log[-1500:]}"
    received, kernel_dropped = summary_numbers(replay.log)
    assert (replay.sent, received, kernel_dropped) == (replay.expected_packets,) * 2 + (0,), \
        (f"{replay.name}: {replay.expected_packets} packets in the file, tcpreplay sent "
         f"{replay.sent}, capture received {received}, kernel dropped {kernel_dropped}")


def test_the_live_flows_equal_those_of_the_same_file_offline(replay, report):
    live, offline = replay.live, replay.offline
    keys = sorted(set(live) | set(offline))
    diff = [k for k in keys if live.get(k) != offline.get(k)]
    assert not diff, (f"{replay.name}: {len(diff)} of {len(keys)} directed keys differ between "
                      "live and offline; first ones as [packets, ip bytes]:\n"
                      + "\n".join(f"    {k}: live {live.get(k)} offline {offline.get(k)}"
                                  for k in diff[:10]))
    assert replay.live_flows == replay.offline_flows, \
        f"{replay.name}: {replay.live_flows} flows live, {replay.offline_flows} offline"
    report(f"live {replay.name}: {replay.sent} frames replayed, {len(live)} directed keys, "
           f"{replay.live_flows} flows (offline {replay.offline_flows})")
