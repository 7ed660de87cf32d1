"""Flow-rate captures for the probe model's scenarios (issue 12 target 5).

generate(path, rate, seconds, seed) writes a pcap (Ethernet, microsecond times) in which
exactly `rate` new connections start in every second of capture time, for `seconds` seconds:
connection k of second s starts at s + (k + jitter) / rate, each with its own 5-tuple
(client 10.a.b.c, never reused; servers from a pool of 4,096 in 172.16/12). The mix, drawn
from a seeded random generator (same seed, same bytes):
  - 50 % TCP connections: SYN, SYN-ACK, ACK, a request (40-600 B of payload), a response
    (200-1,460 B), FIN, FIN, last ACK, spread over a few milliseconds;
  - 30 % UDP pairs: a query (30-200 B) and an answer (60-1,200 B);
  - 20 % one-packet attempts: a TCP SYN nobody answers.
The packets of every connection end within 50 ms of its start, and the file is in time order.
Usage: python3 -m flowbench.flowgen OUT.pcap RATE SECONDS [SEED]  (from benchmarks/).
"""
import heapq
import random
import struct
import sys

T0 = 1_750_000_000  # capture time of the first second (2025-06-15)
TCP, UDP, SYN_ONLY = 0, 1, 2


def _ip(n):
    return struct.pack("!I", n)


def _frame(src, dst, proto, sport, dport, flags, payload):
    if proto == 6:
        l4 = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags, 65535, 0, 0)
    else:
        l4 = struct.pack("!HHHH", sport, dport, 8 + payload, 0)
    total = 20 + len(l4) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0x4000, 64, proto, 0,
                     _ip(src), _ip(dst))
    return (b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00" + ip + l4 +
            bytes(payload))


def _connection(rng, index, start):
    """[(time, frame)] of connection `index` starting at `start` (seconds, float)."""
    client = (10 << 24) | (index + 1)
    server = (172 << 24) | (16 << 16) | rng.randrange(4096)
    sport = 1024 + rng.randrange(64000)
    kind = rng.choices((TCP, UDP, SYN_ONLY), (50, 30, 20))[0]
    rtt = rng.uniform(0.0002, 0.008)
    if kind == SYN_ONLY:
        return [(start, _frame(client, server, 6, sport, rng.choice((22, 23, 445, 3389)),
                               0x02, 0))]
    if kind == UDP:
        dport = rng.choice((53, 123, 443, 5353))
        return [(start, _frame(client, server, 17, sport, dport, 0, rng.randint(30, 200))),
                (start + rtt, _frame(server, client, 17, dport, sport, 0,
                                     rng.randint(60, 1200)))]
    dport = rng.choice((80, 443, 8080))
    c, s = (client, server, sport, dport), (server, client, dport, sport)
    steps = [(c, 0x02, 0), (s, 0x12, 0), (c, 0x10, 0), (c, 0x18, rng.randint(40, 600)),
             (s, 0x18, rng.randint(200, 1460)), (c, 0x11, 0), (s, 0x11, 0), (c, 0x10, 0)]
    out, t = [], start
    for (src, dst, sp, dp), flags, payload in steps:
        out.append((t, _frame(src, dst, 6, sp, dp, flags, payload)))
        t += rtt / 2
    return out


def generate(path, rate, seconds, seed=1):
    """Writes the capture; returns (packets, connections)."""
    rng = random.Random(seed)
    pending = []  # heap of (time, sequence, frame): packets not yet written
    seq = packets = 0
    with open(path, "wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))

        def write_until(limit):
            nonlocal packets
            chunk = []
            while pending and pending[0][0] < limit:
                t, _, frame = heapq.heappop(pending)
                us = int(round(t * 1e6))
                chunk.append(struct.pack("<IIII", T0 + us // 1_000_000, us % 1_000_000,
                                         len(frame), len(frame)) + frame)
            packets += len(chunk)
            out.write(b"".join(chunk))

        for second in range(seconds):
            for k in range(rate):
                start = second + (k + rng.random() * 0.999) / rate
                for t, frame in _connection(rng, second * rate + k, start):
                    heapq.heappush(pending, (t, seq, frame))
                    seq += 1
                if k % 1024 == 1023:
                    write_until(start)  # every later packet starts after this one
            write_until(second + 1)
        write_until(float("inf"))
    return packets, rate * seconds


def scenario_seconds(rate):
    """Capture seconds of a scenario: about 1 M connections, 3..20 s of capture time."""
    return max(3, min(20, -(-1_000_000 // rate)))


def run_scenarios(flowseal, rates, extra=(), seed=1):
    """The flow-rate scenarios offline (benchmarks/run-pipeline --flow-rates): for each rate,
    a generated capture through `flowseal run` (default config plus `extra`); Markdown lines."""
    import os
    import shutil
    import tempfile
    from flowbench.probe import run_flowseal  # the harness's run: summary parsed, PSS sampled

    lines = ["", "Flow-rate scenarios (benchmarks/flowbench/flowgen.py, seed "
             f"{seed}, offline, default config), one run each:", "",
             "| new flows/s (capture time) | seconds | connections | packets | flows stored | "
             "of them evicted | packets/s | new flows/s (wall) | drops (ring+kernel) | "
             "sampled out | CPU s per stage | peak PSS, no file pages |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for rate in rates:
        seconds = scenario_seconds(rate)
        tmp = tempfile.mkdtemp(prefix="flowgen-")
        try:
            path = os.path.join(tmp, f"rate{rate}.pcap")
            packets, conns = generate(path, rate, seconds, seed)
            fig = run_flowseal(flowseal, ["-r", path], list(extra), sample=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        wall = fig["wall_s"]
        cpu = ", ".join(f"{k[6:]} {v:.2f}" for k, v in sorted(fig.items())
                        if k.startswith("cpu_s.") and k != "cpu_s.total")
        lines.append(f"| {rate:,} | {seconds} | {conns:,} | {packets:,} | {int(fig['flows']):,} | "
                     f"{int(fig.get('flows_evicted', 0)):,} | {fig['packets'] / wall:,.0f} | {conns / wall:,.0f} | "
                     f"{fig['drops.ring_full'] + fig['drops.kernel']:,} | "
                     f"{fig['drops.sampled_out']:,} | {cpu} | "
                     f"{fig.get('pss_mib.total_without_file_pages', 0):.1f} MiB |")
    return lines


if __name__ == "__main__":
    if len(sys.argv) not in (4, 5):
        sys.exit(__doc__.split("Usage: ")[1])
    n, conns = generate(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]),
                        int(sys.argv[4]) if len(sys.argv) == 5 else 1)
    print(f"{sys.argv[1]}: {conns} connections, {n} packets")
