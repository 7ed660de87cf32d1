#!/usr/bin/env python3
"""Memory pressure end to end: a flood of unique flows into a budget far too small for it,
then quiet traffic, through the real binaries.

usage: pressure_test.py FLOWSEAL_BINARY TEST_DATA_DIR [--sanitized]

The input is two files made here, read in order in one offline run:
  flood.pcap  FLOOD_FLOWS TCP SYNs, each from its own spoofed source (a SYN flood), within
              2 s of packet time: far more flows than the 32 MiB budget's flow table holds
              (about 76,000), all of them alive under the 5 s attempt timeout;
  quiet.pcap  QUIET_CONVERSATIONS UDP conversations taking turns, starting 10 s of packet
              time after the flood, so that flowd's packet-time expiry frees the table while
              input still flows (ending the flood's flows takes the downstream stages a while, and
              the level comes down as they go; the tail must outlast that). Many
              conversations, not one: capture samples whole flows,
              and in an offline run packet time advances only with packets that are kept.
(Loop mode cannot make this shape: `capture.loop` repeats every file, so a looped flood
could never be followed by a quiet tail. The flood starts at synscan.pcap's first packet
time; see make_flood.)

Checks, all read from the run's own output, no timing assertions:
  - the level escalates: the log has a `memory pressure LOW -> ...` line, the summary's
    peak level is HIGH or CRITICAL, capture sampled flows out, flowd evicted under pressure;
  - every level change is logged once, each line starting from the level the previous one
    reached, and the summary counts as many changes as the log has lines;
  - the level is back to LOW before flowd drained: the last change line goes to LOW and
    comes before flowd's `drained:` line. flowd ends every flow at its drain, so a LOW seen
    before that line comes from the flood's flows expiring during the quiet tail;
  - the stages' peak held memory (run summary: PSS without mapped files - the input
    captures alone are 15 MB of page cache in capture's PSS) stays within the budget + 10 %;
    the peak total PSS is printed beside it;
  - nothing was killed or restarted, the run exits 0;
  - every packet is accounted for: received = all packets of both files =
    processed + sampled out + dropped (summary numbers, and its own accounting line);
  - the sealed store verifies.
With --sanitized (an ASan/UBSan build) the stages' private memory is mostly the sanitizers'
shadow and quarantine (up to 256 MiB of quarantine per process by default: ~900 MiB held
for the five stages here), which no budget of the probe's own can hold: the budget is then
1024 MiB, ASan's quarantine is capped at 16 MiB per process (ASAN_OPTIONS, added to what
the caller set), and the flow table is limited by flowd.max_flows instead, so the same flood
still fills it and the same level logic runs under the sanitizers; only the PSS bound is not
checked there (it would measure ASan, not flowseal).

The supervisor samples every 50 ms here (memory.sample_ms) and steps down after 2 samples
in a row below the band, so that the quiet tail is long enough to see the level come down
even on a fast machine; the tail is made longer and the run repeated (up to 3 times) if the
input ended before the level was back at LOW - that says the machine was quick, not that
the pressure logic failed, and the other checks hold on every attempt.
"""
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile

FLOWSEAL = os.path.abspath(sys.argv[1])
DATA = os.path.abspath(sys.argv[2])
SANITIZED = "--sanitized" in sys.argv[3:]
BUDGET_MB = 1024 if SANITIZED else 32
FLOOD_FLOWS = 120_000
QUIET_PACKETS = 1_200_000
QUIET_CONVERSATIONS = 64
TIMEOUT = 240
SETTINGS = [
    f"memory.budget_mb={BUDGET_MB}",
    "memory.sample_ms=50",
    "memory.down_samples=2",
    # A busy build machine must not decide the level: this test is about the budget.
    "memory.system_pressure=false",
    "supervisor.stats_interval_s=0",
] + (["flowd.max_flows=60000"] if SANITIZED else [])

failures = []
checks = 0


def check(condition, what):
    global checks
    checks += 1
    if not condition:
        failures.append(what)
        print(f"FAIL: {what}", flush=True)


def pcap_header():
    return struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)


def record(ts_ns, frame):
    return struct.pack("<IIII", ts_ns // 1_000_000_000, (ts_ns % 1_000_000_000) // 1000,
                       len(frame), len(frame)) + frame


def ipv4_checksum(header):
    total = sum(struct.unpack("!10H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return (~total) & 0xFFFF


def ipv4(src, dst, proto, payload):
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0, 64, proto, 0,
                         src, dst)
    header = header[:10] + struct.pack("!H", ipv4_checksum(header)) + header[12:]
    return header + payload


ETHERNET = bytes.fromhex("020000000002" "020000000001" "0800")


def first_syn_time(path):
    """Packet time of synscan.pcap's first record: the flood starts where the scan did."""
    with open(path, "rb") as f:
        data = f.read(40)
    seconds, micros = struct.unpack("<II", data[24:32])
    return seconds * 1_000_000_000 + micros * 1000


def make_flood(path, t0):
    out = [pcap_header()]
    dst = bytes([192, 0, 2, 1])
    for i in range(FLOOD_FLOWS):
        src = bytes([10, (i >> 16) & 0xFF, (i >> 8) & 0xFF, i & 0xFF])
        tcp = struct.pack("!HHIIBBHHH", 40000 + (i % 20000), 80, i, 0, 0x50, 0x02, 65535, 0, 0)
        ts = t0 + i * (2_000_000_000 // FLOOD_FLOWS)
        out.append(record(ts, ETHERNET + ipv4(src, dst, 6, tcp)))
    with open(path, "wb") as f:
        f.write(b"".join(out))


def make_quiet(path, t0, packets):
    # Every conversation's two frames are made once: only the timestamps differ.
    frames = {}
    for c in range(QUIET_CONVERSATIONS):
        client, server = bytes([172, 16, 0, 1 + c]), bytes([172, 16, 1, 1])
        for forward in (True, False):
            udp = struct.pack("!HHHH", 5353 if forward else 53, 53 if forward else 5353, 12, 0)
            udp += b"ping" if forward else b"pong"
            frames[c, forward] = ETHERNET + ipv4(client if forward else server,
                                                 server if forward else client, 17, udp)
    out = [pcap_header()]
    for i in range(packets):
        c = i % QUIET_CONVERSATIONS
        out.append(record(t0 + i * 1_000_000, frames[c, (i // QUIET_CONVERSATIONS) % 2 == 0]))
    with open(path, "wb") as f:
        f.write(b"".join(out))


def number(pattern, text, what):
    m = re.search(pattern, text)
    check(m is not None, f"the run output has {what} ({pattern})")
    return int(m.group(1)) if m else -1


def mib(text):
    value, unit = text.split()
    return float(value) * {"B": 1 / 2**20, "KiB": 1 / 1024, "MiB": 1, "GiB": 1024}[unit]


def one_run(tmp, attempt, quiet_packets):
    flood = os.path.join(tmp, "flood.pcap")
    quiet = os.path.join(tmp, "quiet.pcap")
    t0 = first_syn_time(os.path.join(DATA, "synscan.pcap"))
    if not os.path.exists(flood):
        make_flood(flood, t0)
    make_quiet(quiet, t0 + 12_000_000_000, quiet_packets)
    out = os.path.join(tmp, f"out{attempt}")
    args = [FLOWSEAL, "run", "-r", flood, "-r", quiet, "-o", out,
            "--instance", f"pressure{os.getpid()}-{attempt}"]
    for s in SETTINGS:
        args += ["--set", s]
    env = dict(os.environ)
    if SANITIZED:
        env["ASAN_OPTIONS"] = (env.get("ASAN_OPTIONS", "") + ":quarantine_size_mb=16").lstrip(":")
    r = subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT, env=env)
    log = r.stderr
    with open(os.path.join(tmp, f"run{attempt}.log"), "w") as f:
        f.write(log)
    check(r.returncode == 0, f"run exits 0 (got {r.returncode}: {log[-2000:]})")
    check("restarting in" not in log and "killing it" not in log and "giving up" not in log,
          "no stage died, hung or was killed (no OOM kill, no restart)")

    # Escalation and the change lines.
    changes = re.findall(r"memory pressure (\w+) -> (\w+): usage (\d+)%", log)
    print(f"attempt {attempt}: level changes: "
          + ", ".join(f"{a}->{b} ({u}%)" for a, b, u in changes), flush=True)
    check(len(changes) >= 2, "the level went up and came back (at least two change lines)")
    check(bool(changes) and changes[0][0] == "LOW", "the first change starts from LOW")
    for (_, reached, _), (left, _, _) in zip(changes, changes[1:]):
        check(left == reached, f"a change line starts where the previous one ended ({left} vs {reached})")
    summary_changes = number(r"pressure\s+peak \w+, (\d+) level changes", log, "the pressure summary")
    check(summary_changes == len(changes),
          f"the summary counts every logged change ({summary_changes} vs {len(changes)} lines)")
    peak = re.search(r"pressure\s+peak (\w+),", log)
    check(peak is not None and peak.group(1) in ("HIGH", "CRITICAL"),
          f"the flood drove the level to HIGH or CRITICAL (peak {peak.group(1) if peak else '?'})")
    pressure_evictions = number(r"flows evicted under pressure (\d+)", log, "pressure evictions")
    check(pressure_evictions > 0, "flowd evicted flows to hold its table under pressure")

    # Accounting.
    received = number(r"packets\s+received (\d+)", log, "packets received")
    processed = number(r"processed (\d+) \(", log, "packets processed")
    sampled = number(r"sampled out (\d+)", log, "sampled out")
    ring_dropped = number(r"dropped: ring full (\d+)", log, "ring-full drops")
    kernel_dropped = number(r"dropped: ring full \d+, kernel (\d+)", log, "kernel drops")
    check(received == FLOOD_FLOWS + quiet_packets,
          f"every packet of both files was received ({received} of {FLOOD_FLOWS + quiet_packets})")
    check(received == processed + sampled + ring_dropped + kernel_dropped,
          f"received {received} = processed {processed} + sampled out {sampled} + dropped "
          f"{ring_dropped + kernel_dropped}")
    check("accounting received = processed + sampled out + dropped: yes" in log,
          "the summary's own accounting line says yes")
    check(sampled > 0, "pressure sampled flows out")

    # Memory.
    m = re.search(r"peak total PSS ([\d.]+ \w+) \(budget (\d+) MiB\); peak held ([\d.]+ \w+)", log)
    check(m is not None, "the summary has the peak total PSS and held memory")
    if m:
        peak_pss, peak_held = mib(m.group(1)), mib(m.group(3))
        print(f"attempt {attempt}: peak held {peak_held:.1f} MiB (total PSS {peak_pss:.1f} MiB) "
              f"of a {BUDGET_MB} MiB budget", flush=True)
    if m and not SANITIZED:
        check(peak_held <= 1.10 * BUDGET_MB,
              f"peak held memory {peak_held:.1f} MiB is within the budget + 10 % ({1.1 * BUDGET_MB:.1f})")

    v = subprocess.run([FLOWSEAL, "verify", out], capture_output=True, text=True, timeout=TIMEOUT)
    check(v.returncode == 0, f"the store verifies ({v.stdout[-500:]} {v.stderr[-500:]})")

    # Back to LOW while flowd still had quiet input, before its drain ended every flow.
    flowd_drained = log.find("flowd[0]: drained:")
    last_low = log.rfind("-> LOW: usage")
    back_in_time = bool(changes) and changes[-1][1] == "LOW" and 0 <= last_low < flowd_drained
    return back_in_time


def main():
    tmp = tempfile.mkdtemp(prefix="flowseal-pressure-")
    try:
        quiet_packets = QUIET_PACKETS
        back = False
        for attempt in range(3):
            back = one_run(tmp, attempt, quiet_packets)
            if back or failures:
                break
            print(f"attempt {attempt}: flowd drained before the level was back at LOW; "
                  f"again with a longer quiet tail", flush=True)
            quiet_packets *= 2
        check(back, "the level returned to LOW after the flood, before flowd drained")
    finally:
        if failures:
            print(f"logs kept in {tmp}", flush=True)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"{checks} checks, {len(failures)} failed", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
