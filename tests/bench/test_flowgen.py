"""benchmarks/flowbench/flowgen.py: captures with exactly N new connections per second.

Run by meson: python3 -m pytest -q tests/bench/test_flowgen.py (see tests/conftest.py).
The generated pcap is read back here with a reader of its own (not the generator's code):
the new 5-tuples (either direction counts as the same connection) first seen in each second
of capture time must number exactly the rate, the file must be in time order, the mix must
hold every kind, the same seed must give the same bytes and another seed other bytes; and
flowseal must find as many flows in it as the generator started connections.
"""
import collections
import hashlib
import json
import os
import struct
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
from flowbench import flowgen  # noqa: E402


def read_pcap(path):
    """[(seconds, proto, (src, sport), (dst, dport), tcp_flags, ip_len)] of an Ethernet pcap."""
    with open(path, "rb") as f:
        blob = f.read()
    assert struct.unpack_from("<I", blob)[0] == 0xA1B2C3D4
    assert struct.unpack_from("<I", blob, 20)[0] == 1  # Ethernet
    out, at = [], 24
    while at < len(blob):
        sec, usec, caplen, wire = struct.unpack_from("<IIII", blob, at)
        frame = blob[at + 16:at + 16 + caplen]
        assert len(frame) == caplen == wire
        at += 16 + caplen
        assert frame[12:14] == b"\x08\x00"
        ip = frame[14:]
        ip_len = struct.unpack_from("!H", ip, 2)[0]
        assert ip_len == len(ip)
        proto, src, dst = ip[9], ip[12:16], ip[16:20]
        sport, dport = struct.unpack_from("!HH", ip, 20)
        flags = ip[33] if proto == 6 else 0
        out.append((sec + usec / 1e6, proto, (src, sport), (dst, dport), flags, ip_len))
    return out


@pytest.mark.parametrize("rate,seconds", [(1000, 3), (10000, 2)])
def test_exactly_rate_new_connections_each_second(tmp_path, rate, seconds):
    path = str(tmp_path / "g.pcap")
    packets, conns = flowgen.generate(path, rate, seconds, seed=7)
    assert conns == rate * seconds
    pkts = read_pcap(path)
    assert len(pkts) == packets
    times = [p[0] for p in pkts]
    assert times == sorted(times), "packets are in time order"
    first = {}
    kinds = collections.Counter()
    for t, proto, a, b, flags, _ in pkts:
        key = (proto, frozenset((a, b)))
        if key not in first:
            first[key] = t
            kinds[(proto, flags)] += 1
    per_second = collections.Counter(int(t) - flowgen.T0 for t in first.values())
    assert dict(per_second) == {s: rate for s in range(seconds)}
    # The mix: TCP handshakes (a SYN that is answered), UDP pairs, one-packet SYN attempts.
    answered = collections.Counter()
    for t, proto, a, b, flags, _ in pkts:
        answered[(proto, frozenset((a, b)))] += 1
    syn_only = sum(1 for k, n in answered.items() if k[0] == 6 and n == 1)
    tcp_full = sum(1 for k, n in answered.items() if k[0] == 6 and n == 8)
    udp_pairs = sum(1 for k, n in answered.items() if k[0] == 17 and n == 2)
    assert syn_only + tcp_full + udp_pairs == conns
    for share, n in ((0.2, syn_only), (0.5, tcp_full), (0.3, udp_pairs)):
        assert abs(n / conns - share) < 0.05, (syn_only, tcp_full, udp_pairs)
    sizes = [p[5] for p in pkts]
    assert min(sizes) == 40 and max(sizes) > 1200, "sizes from bare ACKs to near-MTU"


def test_seeded_and_deterministic(tmp_path):
    digest = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        path = str(tmp_path / f"{name}.pcap")
        flowgen.generate(path, 500, 2, seed=seed)
        with open(path, "rb") as f:
            digest.append(hashlib.sha256(f.read()).hexdigest())
    assert digest[0] == digest[1]
    assert digest[0] != digest[2]


def test_flowseal_finds_every_connection(tmp_path, flowseal, instance):
    path = str(tmp_path / "g.pcap")
    _, conns = flowgen.generate(path, 2000, 2, seed=11)
    out = str(tmp_path / "store")
    r = subprocess.run([flowseal, "run", "-r", path, "-o", out, "--set", "dedup.enabled=false",
                        "--set", f"supervisor.instance={instance('flowgen')}"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    c = subprocess.run([flowseal, "cat", out, "--events"], capture_output=True, text=True,
                       timeout=300)
    assert c.returncode == 0, c.stderr[-1000:]
    ends = [json.loads(l) for l in c.stdout.splitlines() if l.strip()]
    ends = [e for e in ends if e["event"] == "end"]
    assert len(ends) == conns
