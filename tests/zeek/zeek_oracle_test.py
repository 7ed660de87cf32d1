"""Zeek conn.log oracle: flowseal's flows against what Zeek's own test suite expects.

Run by meson: python3 -m pytest -q tests/zeek/zeek_oracle_test.py (see tests/conftest.py);
one trace alone: add `-k core.pppoe`.

tests/zeek/data holds one folder per Zeek btest (see data/SOURCES.md): the trace, the
conn.log baseline Zeek expects for it and the Zeek command line. For each, flowseal runs the
whole pipeline (`flowseal run -r TRACE --set dedup.enabled=false`, Zeek's default timeouts)
and `flowseal cat` prints the finished flows. Connections are then matched one by one:

  - a full conn.log names the endpoints: a Zeek row matches the flowseal record with the same
    address/port pair and protocol (either orientation, so a wrong originator is a direction
    mismatch rather than a missing flow); several records on one pair are paired by the most
    fields in agreement. The baselines mask `ts`, so start time cannot be used.
  - a zeek-cut table (uid and a few columns, no endpoints) is matched as a multiset: each row
    takes the remaining flowseal record that agrees on most of the columns it has.

Compared per connection, where the baseline has the column: direction, proto, orig/resp
pkts, orig/resp ip_bytes, conn_state, history, duration (to the microsecond Zeek prints),
tunnel_parents (uids differ between the two, so a parent is compared as the connection it
names: Zeek's parent uid -> the Zeek row -> the flowseal record matched to it -> its uid;
a Zeek parent that is no connection in its conn.log, a GRE or IP tunnel only tunnel.log
knows, is left out, as flowseal gives those tunnels no uid).
Per-field match rates are printed per trace and overall. One test per trace fails when
  - any packet or IP-byte count or tunnel parent differs (or a Zeek connection has no
    flowseal record), or
and a last test fails when conn_state or history match below 95 % overall; differences
fail unless the difference is in ALLOWED below, each with the reason it is Zeek-specific (the
same reasons, longer, are in docs/zeek-differences.md). An allowed difference is still
printed and counted as a mismatch in the rates: the list excuses, it never hides.
"""
import ipaddress
import json
import os
import shlex
import subprocess
from collections import defaultdict

import pytest

TIMEOUT = 300

SETTINGS = ["dedup.enabled=false", "supervisor.stats_interval_s=0"]

COUNT_FIELDS = ["orig_pkts", "resp_pkts", "orig_ip_bytes", "resp_ip_bytes"]
STATE_FIELDS = ["conn_state", "history"]
# Payload bytes (TCP: from sequence numbers, as Zeek): reported with a match rate, not yet
# enforced per connection.
PAYLOAD_FIELDS = ["orig_bytes", "resp_bytes"]
FIELDS = ["direction", "proto"] + COUNT_FIELDS + PAYLOAD_FIELDS + STATE_FIELDS + ["duration",
                                                                          "tunnel_parents"]
RATE_TARGET = 0.95  # the target for conn_state and history
# Enforced: the target, met since flowd follows Zeek's TCP state machine (97.2 % /
# 96.2 % then). Raise it as flowd improves; never lower it.
RATE_FLOOR = 0.95

# Traces whose counts flowseal does not get right YET: unfinished work, not
# Zeek-specific differences. Their tests are expected to fail (xfail, strict): a listed trace
# that passes fails its test, so the list only shrinks.
KNOWN_GAPS = {
    "core.cisco-fabric-path": "an unknown IPv6 next header: 86 IP bytes where Zeek counts 80, "
        "cause not found yet",
}
PROTO_ALIASES = {"sctp": "132"}  # conn_state and history, over all traces

# (test, field) -> reason. "*" as the field excuses every field of that test, and a missing
# connection. Each entry is a deliberate difference documented in docs/zeek-differences.md.
ALLOWED = {
    ("core.tcp.bad-checksum-syn", "*"):
        "Zeek discards a TCP segment whose checksum is wrong (history C, 0 packets); flowseal "
        "does not verify checksums, because NIC checksum offload makes them wrong on most "
        "captures taken on a sending host, and counts the packet",
    ("core.udp-corrupt", "*"):
        "Zeek discards a UDP datagram whose checksum is wrong (history Cc, 0 packets); "
        "flowseal does not verify checksums (checksum offload), and counts the packets",
    ("core.tunnels.vxlan-unknown-internal-packet", "conn_state"):
        "the outer UDP checksums are wrong: Zeek discards the datagrams (history C, state "
        "OTH, 0 packets); flowseal does not verify checksums and counts them",
    ("core.tunnels.vxlan-unknown-internal-packet", "history"): "as conn_state",
    ("core.tunnels.vxlan-unknown-internal-packet", "orig_pkts"): "as conn_state",
    ("core.tunnels.vxlan-unknown-internal-packet", "orig_ip_bytes"): "as conn_state",
    ("core.tunnels.vxlan-unknown-internal-packet", "extra"):
        "flowseal also makes the inner IGMP flows Zeek never saw (it dropped the datagrams)",
    ("core.tunnels.gre-aruba-amsdu", "direction"):
        "the baseline ran `zeek -b` loading only the conn and tunnels scripts: without the SSL "
        "analyzer 443 is none of Zeek's likely server ports, so Zeek kept the sender of the "
        "first segment (mid-connection, from port 443) as originator; flowseal flips by the "
        "ports of Zeek's default scripts, 443 among them",
    ("core.tunnels.gre-aruba-amsdu", "history"): "as direction: Zeek's D is flowseal's ^d",
    ("core.vntag-in-vlan", "orig_pkts"):
        "the snaplen cut the SYN-ACK's TCP header (40 bytes with options, 24 captured): Zeek "
        "drops such a segment before counting it (truncated_header) and keeps an empty "
        "connection; flowseal counts a segment whose header was cut after the ports, as it "
        "counts segments with bad checksums",
    ("core.vntag-in-vlan", "orig_ip_bytes"): "as orig_pkts",
    ("scripts.base.protocols.http.deeply-nested-mime", "history"):
        "Zeek's X is 'connection analysis partial (e.g. limits exceeded)', set by its "
        "application-layer analysis (here HTTP/MIME nested too deep), not by TCP; flowseal "
        "has no application analyzers",
    ("core.tunnels.gtp.different_dl_and_ul", "history"):
        "Zeek's X is 'connection analysis partial (e.g. limits exceeded)', set by its "
        "application-layer analysis (HTTP in the GTP tunnel), not by TCP; flowseal has no "
        "application analyzers",
}


def parse_conn_log(path):
    """Rows of a conn.log baseline (full Zeek log or zeek-cut table) as dicts of strings."""
    rows, fields = [], None
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line or line.startswith("### "):
                continue
            if line.startswith("#fields\t"):
                fields = line.split("\t")[1:]
                continue
            if line.startswith("#"):
                continue
            cols = line.split("\t")
            if fields is None:  # zeek-cut: the first line is the header
                fields = cols
                continue
            rows.append(dict(zip(fields, cols)))
    return rows, fields or []


def trace_of(folder):
    names = [n for n in os.listdir(folder) if n not in ("conn.log", "zeek-command.txt")]
    if len(names) != 1:
        raise RuntimeError(f"{folder}: expected one trace beside conn.log, found {names}")
    return os.path.join(folder, names[0])


def addr(text):
    return str(ipaddress.ip_address(text))


def zeek_proto(row):
    p = row.get("proto")
    if p == "unknown_transport" and "ip_proto" in row:
        return row["ip_proto"]
    return p


def expected(row):
    """The comparable fields a Zeek row has, as flowseal would print them."""
    e = {}
    if "proto" in row:
        e["proto"] = zeek_proto(row)
    for k in COUNT_FIELDS + PAYLOAD_FIELDS:
        if k in row and row[k] != "-":
            e[k] = int(row[k])
    for k in STATE_FIELDS:
        if k in row:
            e[k] = "" if row[k] == "-" else row[k]
    if "duration" in row:
        e["duration"] = 0.0 if row["duration"] == "-" else float(row["duration"])
    return e


def actual(rec, zeek_row):
    a = {"proto": PROTO_ALIASES.get(rec["proto"], rec["proto"])}
    for k in COUNT_FIELDS + PAYLOAD_FIELDS + STATE_FIELDS:
        a[k] = rec[k]
    a["duration"] = float(rec["duration"])
    if "id.orig_h" in zeek_row:
        same = addr(rec["id.orig_h"]) == addr(zeek_row["id.orig_h"]) and \
            (a["proto"] == "132" or int(rec["id.orig_p"]) == int(zeek_row["id.orig_p"]))
        if not same:  # flowseal chose the other originator: compare its view swapped back
            for x, y in (("orig_pkts", "resp_pkts"), ("orig_ip_bytes", "resp_ip_bytes"),
                         ("orig_bytes", "resp_bytes")):
                a[x], a[y] = a[y], a[x]
        a["direction"] = same
    return a


def field_ok(field, want, got):
    if field == "duration":
        return abs(want - got) < 1.5e-6
    return want == got


def agreement(row, rec):
    want, got = expected(row), actual(rec, row)
    return sum(1 for k, v in want.items() if field_ok(k, v, got[k])) + \
        (1 if got.get("direction", True) else 0)


def flow_pair(rec):
    proto = PROTO_ALIASES.get(rec["proto"], rec["proto"])
    # Zeek has no SCTP analyzer: it logs SCTP as unknown_transport with ports 0, so SCTP
    # connections pair on addresses alone (flowseal's ports are extra information).
    ports = proto != "132"
    a = (addr(rec["id.orig_h"]), int(rec["id.orig_p"]) if ports else 0)
    b = (addr(rec["id.resp_h"]), int(rec["id.resp_p"]) if ports else 0)
    return (min(a, b), max(a, b), proto)


def match(rows, records):
    """[(zeek row, flowseal record or None)] and the records no row took."""
    left = list(records)
    pairs = []
    by_pair = defaultdict(list)
    for r in left:
        by_pair[flow_pair(r)].append(r)
    for row in rows:
        if "id.orig_h" in row:
            cands = by_pair[flow_pair({"id.orig_h": row["id.orig_h"], "id.orig_p": row["id.orig_p"],
                                       "id.resp_h": row["id.resp_h"], "id.resp_p": row["id.resp_p"],
                                       "proto": zeek_proto(row)})]
        else:
            cands = [r for r in left]
        cands = [r for r in cands if r in left]
        best = max(cands, key=lambda r: agreement(row, r), default=None)
        if best is not None:
            left.remove(best)
        pairs.append((row, best))
    return pairs, left


def show(row):
    if "id.orig_h" in row:
        return f"{zeek_proto(row)} {row['id.orig_h']}:{row['id.orig_p']} -> " \
               f"{row['id.resp_h']}:{row['id.resp_p']}"
    return f"uid {row.get('uid', '?')}"


def zeek_filter(folder):
    """The BPF filter the Zeek test ran with (`-f "..."`), or None."""
    with open(os.path.join(folder, "zeek-command.txt"), encoding="utf-8") as f:
        args = shlex.split(f.readline())
    return args[args.index("-f") + 1] if "-f" in args else None


def run_flowseal(flowseal, folder, out, n):
    instance = f"zeek{os.getpid()}{n}"
    args = [flowseal, "run", "-r", trace_of(folder), "-o", out, "--instance", instance]
    settings = list(SETTINGS)
    if zeek_filter(folder):
        settings.append(f"capture.filter={zeek_filter(folder)}")
    for s in settings:
        args += ["--set", s]
    r = subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT)
    if r.returncode != 0:
        errors = [l for l in r.stderr.splitlines() if " error " in l] or r.stderr.splitlines()[-3:]
        raise RuntimeError(f"flowseal run exited {r.returncode}: " + " | ".join(errors))
    for alarm in ("ERROR: AddressSanitizer", "runtime error:", "ERROR: LeakSanitizer"):
        if alarm in r.stderr:
            at = r.stderr.index(alarm)
            raise RuntimeError(f"a sanitizer reported during the run:\n{r.stderr[at:at + 1500]}")
    c = subprocess.run([flowseal, "cat", out], capture_output=True, text=True, timeout=TIMEOUT)
    if c.returncode != 0:
        raise RuntimeError(f"flowseal cat exited {c.returncode}: {c.stderr[-1500:]}")
    recs = [json.loads(line) for line in c.stdout.splitlines() if line.strip()]
    for r in recs:  # unknown_transport + ip_proto, as Zeek prints it: compared by the number
        r["proto"] = str(zeek_proto(r))
    return [r for r in recs if r.get("event") == "end"]


class Tally:
    def __init__(self):
        self.hit = defaultdict(int)
        self.total = defaultdict(int)

    def add(self, field, ok):
        self.total[field] += 1
        self.hit[field] += 1 if ok else 0

    def merge(self, other):
        for k in other.total:
            self.total[k] += other.total[k]
            self.hit[k] += other.hit[k]

    def rate(self, field):
        return self.hit[field] / self.total[field] if self.total[field] else 1.0

    def line(self):
        return "  ".join(f"{f} {self.hit[f]}/{self.total[f]}" for f in FIELDS if self.total[f])


def check(flowseal, folder, tmp, n, tally_all, say):
    """(failure lines, notes) for one trace; reports its summary."""
    name = os.path.basename(folder)
    rows, _ = parse_conn_log(os.path.join(folder, "conn.log"))
    records = run_flowseal(flowseal, folder, os.path.join(tmp, f"out{n}"), n)
    pairs, extra = match(rows, records)
    tally = Tally()
    failures, notes = [], []

    def allowed(field):
        return ALLOWED.get((name, field)) or ALLOWED.get((name, "*"))

    def report(field, msg):
        (notes if allowed(field) else failures).append(
            f"{name}: {msg}" + (" [allowed: Zeek-specific]" if allowed(field) else ""))

    for row, rec in pairs:
        want = expected(row)
        if rec is None:
            for f in list(want) + (["direction"] if "id.orig_h" in row else []):
                tally.add(f, False)
            report("missing", f"{show(row)}: no flowseal record (Zeek: {want})")
            continue
        got = actual(rec, row)
        if "direction" in got:
            tally.add("direction", got["direction"])
            if not got["direction"]:
                report("direction", f"{show(row)}: flowseal's originator is "
                       f"{rec['id.orig_h']}:{rec['id.orig_p']}")
        for f, v in want.items():
            ok = field_ok(f, v, got[f])
            tally.add(f, ok)
            if not ok:
                report(f, f"{show(row)}: {f} Zeek {v!r} flowseal {got[f]!r}")
    # Tunnel parents, once every row has its record: a parent is the record of a Zeek row.
    record_of_uid = {row["uid"]: rec for row, rec in pairs if rec is not None and "uid" in row}
    zeek_uids = {row["uid"] for row in rows if "uid" in row}
    for row, rec in pairs:
        if rec is None or "tunnel_parents" not in row:
            continue
        parents = [] if row["tunnel_parents"] in ("-", "(empty)") else \
            row["tunnel_parents"].split(",")
        want = sorted(record_of_uid[p]["uid"] if p in record_of_uid else f"(no record for {p})"
                      for p in parents if p in zeek_uids)
        got = sorted(rec.get("tunnel_parents", []))
        tally.add("tunnel_parents", want == got)
        if want != got:
            report("tunnel_parents", f"{show(row)}: tunnel_parents Zeek {want} flowseal {got}")
    for rec in extra:
        report("extra", f"flowseal record with no Zeek connection: {rec['proto']} "
               f"{rec['id.orig_h']}:{rec['id.orig_p']} -> {rec['id.resp_h']}:{rec['id.resp_p']} "
               f"{rec['orig_pkts']}/{rec['resp_pkts']} pkts")
    # Only counts are must-match per connection; states count toward the overall rate.
    hard = [f for f in failures if any(k in f for k in COUNT_FIELDS + [
        "tunnel_parents", "no flowseal", "with no Zeek"])]
    soft = [f for f in failures if f not in hard]
    say(f"{'FAIL' if hard else 'ok  '} {name}: {len(rows)} conns, {len(records)} records; "
           f"{tally.line()}")
    tally_all.merge(tally)
    return hard, soft + notes


DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
TRACES = sorted(d for d in os.listdir(DATA) if os.path.isdir(os.path.join(DATA, d)))


@pytest.fixture(scope="module")
def compared(flowseal, instance, tmp_path_factory, report):
    """Every trace compared once: ({trace: (count differences, other differences)}, the
    overall Tally). A trace whose run fails has that failure as its one count difference."""
    tmp = str(tmp_path_factory.mktemp("zeek"))
    tally = Tally()
    results = {}
    for n, name in enumerate(TRACES):
        try:
            results[name] = check(flowseal, os.path.join(DATA, name), tmp, n, tally, report)
        except (subprocess.TimeoutExpired, RuntimeError, ValueError, KeyError) as e:
            results[name] = [f"{name}: {type(e).__name__}: {e}"], []
            report(f"FAIL {name}: {e}")
    for name in TRACES:
        for line in results[name][1]:
            report(f"  differs: {line}")
    report("overall match rates:")
    for f in FIELDS:
        if tally.total[f]:
            report(f"  {f:14} {tally.hit[f]:5}/{tally.total[f]:<5} {100 * tally.rate(f):6.2f} %")
    for f in STATE_FIELDS:
        if tally.rate(f) < RATE_TARGET:
            report(f"note: {f} at {100 * tally.rate(f):.2f} % is below the target of "
                   f"{100 * RATE_TARGET:.0f} % (enforced floor {100 * RATE_FLOOR:.0f} %)")
    report(f"known gaps (unfinished): {len(KNOWN_GAPS)} traces")
    return results, tally


@pytest.mark.parametrize("trace", TRACES)
def test_every_connection_has_zeek_s_counts_and_tunnel_parents(compared, trace):
    hard = compared[0][trace][0]
    if trace in KNOWN_GAPS:
        assert hard, f"{trace}: listed in KNOWN_GAPS but passes now: remove it from the list"
        pytest.xfail(f"known gap: {KNOWN_GAPS[trace]}: " + "; ".join(hard))
    assert not hard, f"{len(hard)} count differences not allowed:\n" + "\n".join(hard)


@pytest.mark.parametrize("field", STATE_FIELDS)
def test_conn_state_and_history_match_zeek_for_95_percent_of_connections(compared, field):
    tally = compared[1]
    assert tally.rate(field) >= RATE_FLOOR, \
        f"{field} matches {100 * tally.rate(field):.2f} % < {100 * RATE_FLOOR:.0f} %"
