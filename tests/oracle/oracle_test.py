#!/usr/bin/env python3
"""End-to-end oracle: flowseal's per-direction packet and IP-byte counts must equal tshark's.

Run by meson: python3 -m pytest -q tests/oracle/oracle_test.py (see tests/conftest.py);
skipped without tshark.

For each capture below, flowseal runs the whole pipeline (timeouts so large that no flow is
split by time, dedup off so no record is folded into a summary) and `flowseal cat` prints the
finished flows. Independently, tshark dissects the same file packet by packet. Both sides are
reduced to the same map:

    directed key (src, sport, dst, dport, proto)  ->  (packets, IP bytes)

where IP bytes are what Zeek's *_ip_bytes count: IPv4 total length, IPv6 payload length + 40.
A flow record contributes orig->resp with orig_pkts/orig_ip_bytes and resp->orig with
resp_pkts/resp_ip_bytes, summed over records with the same key (so a flow split by a closed
connection's linger time, an eviction or a reused 5-tuple still adds up). Directed sums do not
depend on which side flowseal calls the originator; they only depend on every TCP/UDP packet
landing in exactly one flow and being counted once, with the right length.

Packets where the two tools legitimately see different things are set aside, counted and
printed, and every key they touch is left out on both sides:
  - IP fragments (tshark can reassemble them; flowd's fragment handling is its own test),
  - tunnelled packets (two IP layers under TCP/UDP: the inner flow is a later issue's),
  - TCP/UDP packets whose ports tshark could not read (truncated by the snaplen).
ICMP errors quote an IP header plus the first bytes of the offending TCP/UDP header; tshark
prints those quoted ports, but the packet is ICMP, so it is not a TCP/UDP packet here.

The tshark side needs no flowseal binary: `python3 oracle_test.py --tshark-only DATA_DIR`
prints what tshark sees per capture, to check the oracle itself.
"""
import ipaddress
import json
import os
import shutil
import subprocess
import sys
from collections import Counter, defaultdict

import pytest

TIMEOUT = 300  # s per subprocess: the largest capture takes a few seconds

# Each capture and what it exercises. All are real traffic; see tests/data/SOURCES.md.
CAPTURES = [
    ("sample.pcap", "Ethernet, IPv4 + IPv6, TCP/UDP/ICMPv6, complete TCP connections"),
    ("tumblr.pcap", "Ethernet, IPv6-only TCP"),
    ("ultrasurf.pcap", "802.1Q VLAN-tagged TCP"),
    ("q-in-q.pcap", "802.1ad QinQ double-tagged UDP"),
    ("mixed-vlan-mpls.pcap", "plain, 802.1Q and MPLS-labelled TCP, Ethernet trailers"),
    ("KakaoTalk_talk.pcap", "Linux cooked capture (SLL), mostly UDP"),
    ("sites.pcapng", "pcapng with 22 interfaces, IPv4 + IPv6, years apart"),
    ("synscan.pcap", "a SYN scan: ~2000 short flows, RSTs"),
    ("iphone.pcap", "IPv4 + IPv6, ICMP errors quoting UDP headers"),
    ("wikipedia.pcap", "IPv4 + IPv6, non-IP LLC frames"),
    ("pppoe-over-qinq.pcap", "PPPoE session over QinQ tags"),
    ("dns-edns-ecs.pcap", "IPv4 + IPv6 DNS, 4 fragmented responses (set aside)"),
]

# Large enough that time never splits a flow (the config allows up to one year).
NO_SPLIT = [
    "flowd.tcp_idle_timeout=30000000",
    "flowd.tcp_attempt_timeout=30000000",
    "flowd.udp_idle_timeout=30000000",
    "flowd.icmp_idle_timeout=30000000",
    "flowd.other_idle_timeout=30000000",
    "flowd.active_timeout=0",
    "dedup.enabled=false",
    "supervisor.stats_interval_s=0",
]

TSHARK_FIELDS = [
    "frame.number", "frame.protocols",
    "ip.src", "ipv6.src", "ip.dst", "ipv6.dst",
    "tcp.srcport", "tcp.dstport", "udp.srcport", "udp.dstport",
    "ip.proto", "ipv6.nxt", "ip.len", "ipv6.plen",
    "ip.flags.mf", "ip.frag_offset", "ipv6.fraghdr.ident",
]
PROTO_NUMBER = {"tcp": 6, "udp": 17}


def addr(text):
    """One spelling for an address, whichever tool printed it."""
    return str(ipaddress.ip_address(text))


def first(value):
    return value.split(",")[0] if value else ""


def pair_of(a, b, proto):
    """The unordered endpoint pair a set-aside packet taints: every port between them."""
    return (min(a, b), max(a, b), proto)


def tshark_directed_counts(path):
    """tshark's view: ({directed key: [packets, ip bytes]}, set-aside counters, tainted pairs)."""
    cmd = ["tshark", "-n", "-r", path,
           # Never reassemble: flowd sees packets, not datagrams.
           "-o", "ip.defragment:FALSE", "-o", "ipv6.defragment:FALSE",
           # Tab between fields, commas only between repeated values of one field.
           "-T", "fields", "-E", "separator=/t", "-E", "occurrence=a", "-E", "aggregator=,"]
    for f in TSHARK_FIELDS:
        cmd += ["-e", f]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT)
    if r.returncode != 0:
        raise RuntimeError(f"tshark on {path} exited {r.returncode}: {r.stderr.strip()}")

    counts = defaultdict(lambda: [0, 0])
    seen = Counter()
    tainted = set()
    for line in r.stdout.splitlines():
        cols = line.split("\t")
        if len(cols) != len(TSHARK_FIELDS):
            raise RuntimeError(f"{path}: unexpected tshark line {line!r}")
        v = dict(zip(TSHARK_FIELDS, cols))
        seen["packets"] += 1
        layers = v["frame.protocols"].split(":")
        ip_layers = [i for i, p in enumerate(layers) if p in ("ip", "ipv6")]
        if not ip_layers:
            seen["not IP"] += 1
            continue
        outer = layers[ip_layers[0]]
        # The transport is the first layer after the outer IP that is not an IPv6 extension.
        transport = next((p for p in layers[ip_layers[0] + 1:] if not p.startswith("ipv6.")), "")
        # Outer addresses are the first values (tshark lists layers outermost first).
        src = first(v["ip.src"] if outer == "ip" else v["ipv6.src"])
        dst = first(v["ip.dst"] if outer == "ip" else v["ipv6.dst"])
        src, dst = addr(src), addr(dst)
        proto_num = first(v["ip.proto"] if outer == "ip" else v["ipv6.nxt"])

        fragment = (first(v["ip.flags.mf"]) in ("1", "True") or first(v["ip.frag_offset"]) not in ("", "0")
                    or (outer == "ipv6" and v["ipv6.fraghdr.ident"] != ""))
        if fragment:
            seen["IP fragments (set aside)"] += 1
            tainted.add(pair_of(src, dst, "tcp"))
            tainted.add(pair_of(src, dst, "udp"))
            continue
        if transport not in ("tcp", "udp"):
            seen[f"{transport or 'proto ' + proto_num} (not compared)"] += 1
            if len(ip_layers) > 1 and transport in ("icmp", "icmpv6"):
                seen["  of which ICMP errors quoting an IP header"] += 1
            continue
        if len(ip_layers) > 1:
            seen["tunnelled TCP/UDP (set aside)"] += 1
            tainted.add(pair_of(src, dst, transport))
            continue
        sport, dport = v[f"{transport}.srcport"], v[f"{transport}.dstport"]
        if not sport or not dport or "," in sport or "," in dport:
            seen["TCP/UDP without readable ports (set aside)"] += 1
            tainted.add(pair_of(src, dst, transport))
            continue
        if str(PROTO_NUMBER[transport]) != proto_num and outer == "ip":
            raise RuntimeError(f"{path}: frame {v['frame.number']}: ip.proto {proto_num} but "
                               f"tshark dissected {transport}")
        ip_bytes = int(v["ip.len"]) if outer == "ip" else int(v["ipv6.plen"]) + 40
        key = (src, int(sport), dst, int(dport), transport)
        counts[key][0] += 1
        counts[key][1] += ip_bytes
        seen[f"{outer} {transport}"] += 1
    return dict(counts), seen, tainted


def flowseal_directed_counts(flows):
    """flowseal's view, from `flowseal cat` records, in the same shape as tshark's."""
    counts = defaultdict(lambda: [0, 0])
    for f in flows:
        if f["proto"] not in PROTO_NUMBER:
            continue
        orig = (addr(f["id.orig_h"]), int(f["id.orig_p"]), addr(f["id.resp_h"]), int(f["id.resp_p"]),
                f["proto"])
        resp = (orig[2], orig[3], orig[0], orig[1], orig[4])
        for key, pkts, ip_bytes in ((orig, f["orig_pkts"], f["orig_ip_bytes"]),
                                    (resp, f["resp_pkts"], f["resp_ip_bytes"])):
            if pkts or ip_bytes:
                counts[key][0] += pkts
                counts[key][1] += ip_bytes
    return dict(counts)


def drop_tainted(counts, tainted):
    kept = {k: v for k, v in counts.items() if pair_of(k[0], k[2], k[4]) not in tainted}
    return kept, len(counts) - len(kept)


def show_key(k):
    a, ap, b, bp, proto = k
    fmt = lambda h, p: f"[{h}]:{p}" if ":" in h else f"{h}:{p}"
    return f"{proto} {fmt(a, ap)} -> {fmt(b, bp)}"


def compare(name, tshark_map, flowseal_map):
    """Returns the list of failure lines (empty when the maps are equal)."""
    keys = sorted(set(tshark_map) | set(flowseal_map), key=lambda k: (k[4], show_key(k)))
    diff = [k for k in keys if tshark_map.get(k) != flowseal_map.get(k)]
    if not diff:
        return []
    only_t = sum(1 for k in diff if k not in flowseal_map)
    only_f = sum(1 for k in diff if k not in tshark_map)
    lines = [f"{name}: {len(diff)} of {len(keys)} directed keys differ ({only_t} only in tshark, "
             f"{only_f} only in flowseal, {len(diff) - only_t - only_f} with other counts); "
             f"first {min(20, len(diff))} as [packets, ip bytes]:"]
    for k in diff[:20]:
        lines.append(f"    {show_key(k)}: tshark {tshark_map.get(k)}  flowseal {flowseal_map.get(k)}")
    return lines


def describe(seen):
    return ", ".join(f"{k}: {v}" for k, v in sorted(seen.items()) if k != "packets")


def undirected_pairs(counts):
    return len({(min((k[0], k[1]), (k[2], k[3])), max((k[0], k[1]), (k[2], k[3])), k[4]) for k in counts})


@pytest.fixture(scope="module", params=CAPTURES, ids=[name for name, _ in CAPTURES])
def capture(request, flowseal, data_dir, instance, tmp_path_factory):
    """One capture through tshark and through flowseal: (name, what, tshark's map, what tshark
    saw, tainted pairs, flowseal's run, verify, cat)."""
    if shutil.which("tshark") is None:
        pytest.skip("tshark is not installed (apt-get install tshark)")
    name, what = request.param
    pcap = os.path.join(data_dir, name)
    assert os.path.exists(pcap), f"{name}: missing from {data_dir}"
    tshark_map, seen, tainted = tshark_directed_counts(pcap)
    out = str(tmp_path_factory.mktemp("oracle") / "out")
    args = [flowseal, "run", "-r", pcap, "-o", out,
            "--instance", instance(f"oracle{CAPTURES.index(request.param)}")]
    for s in NO_SPLIT:
        args += ["--set", s]
    r = subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT)
    v = subprocess.run([flowseal, "verify", out], capture_output=True, text=True, timeout=TIMEOUT)
    c = subprocess.run([flowseal, "cat", out], capture_output=True, text=True, timeout=TIMEOUT)
    return name, what, tshark_map, seen, tainted, r, v, c


def test_the_run_exits_0_and_accounts_for_every_packet(capture):
    name, r = capture[0], capture[5]
    assert r.returncode == 0, f"{name}: flowseal run exited {r.returncode}: {r.stderr[-2000:]}"
    for alarm in ("ERROR: AddressSanitizer", "runtime error:", "ERROR: LeakSanitizer"):
        at = r.stderr.find(alarm)
        assert at < 0, f"{name}: a sanitizer reported during the run:\n{r.stderr[at:at + 1500]}"
    assert "accounting received = processed + sampled out + dropped: yes" in r.stderr, \
        f"{name}: the run summary says every packet is accounted for:\n{r.stderr[-1500:]}"


def test_the_store_verifies(capture):
    name, v = capture[0], capture[6]
    assert v.returncode == 0, \
        f"{name}: flowseal verify exited {v.returncode}: {(v.stdout + v.stderr)[-1500:]}"


def test_no_record_was_sampled(capture):
    name, c = capture[0], capture[7]
    assert c.returncode == 0, f"{name}: flowseal cat exited {c.returncode}: {c.stderr[-1500:]}"
    sampled = [f for f in map(json.loads, filter(str.strip, c.stdout.splitlines()))
               if f.get("sampling_rate", 1) != 1]
    assert not sampled, (f"{name}: {len(sampled)} records were sampled (rate "
                         f"{sampled and sampled[0]['sampling_rate']}): memory pressure during the test")


def test_every_directed_key_has_tshark_s_packets_and_ip_bytes(capture, report):
    name, what, tshark_map, seen, tainted, r, _, c = capture
    assert c.returncode == 0, f"{name}: flowseal cat exited {c.returncode}: {c.stderr[-1500:]}"
    flows = [json.loads(line) for line in c.stdout.splitlines() if line.strip()]
    tshark_kept, t_dropped = drop_tainted(tshark_map, tainted)
    flowseal_kept, f_dropped = drop_tainted(flowseal_directed_counts(flows), tainted)
    differences = compare(name, tshark_kept, flowseal_kept)
    assert not differences, "\n".join(differences)
    packets = sum(p for p, _ in tshark_kept.values())
    report(f"oracle {name} ({what}): {seen['packets']} packets, "
           f"{packets} TCP/UDP compared over {undirected_pairs(tshark_kept)} endpoint pairs "
           f"({len(tshark_kept)} directed keys), {len(flows)} flow records; {describe(seen)}"
           + (f"; keys left out: tshark {t_dropped}, flowseal {f_dropped}" if tainted else ""))


def tshark_only(data):
    """Prints tshark's side alone: a check of the oracle without any flowseal binary."""
    for name, what in CAPTURES:
        m, seen, tainted = tshark_directed_counts(os.path.join(data, name))
        kept, dropped = drop_tainted(m, tainted)
        print(f"{name} ({what}): {seen['packets']} packets, "
              f"{sum(p for p, _ in kept.values())} TCP/UDP over {undirected_pairs(kept)} endpoint "
              f"pairs ({len(kept)} directed keys, {dropped} left out); {describe(seen)}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "--tshark-only":
        sys.exit("usage: oracle_test.py --tshark-only DATA_DIR (the test itself runs on pytest)")
    sys.exit(tshark_only(os.path.abspath(sys.argv[2])))
