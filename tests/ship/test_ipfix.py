"""IPFIX export (issue 16 part 1): flowseal-shipd sends a store's records to real IPFIX
collectors on loopback, and what they decode equals what `flowseal cat` shows.

- uniflow to Debian's nfcapd over UDP (a large socket buffer, paced export): `nfdump -R` shows,
  per 5-tuple and direction, the packets and bytes of `flowseal cat`, with long-flow updates in
  the store (their deltas add up to the flow's totals); with dedup summaries, the same totals;
  nfcapd counts no IPFIX sequence failure (a UDP loss would show there, not hide).
- biflow over TCP to a plain socket receiver: libfixbuf's ipfixDump decodes the stream, the
  templates carry RFC 5103 reverse elements, totals match, the observation domain is the
  configured one and every message's sequence number counts the data records before it.
- a stopped or killed exporter resumes after its saved position: every record arrives, the
  batches exported before the stop are not sent again.
- bad export.ipfix.* values are refused (exit 78) before anything runs.

Each test starts its own collector on a free loopback port and kills only what it started, by
PID. Waits are on events (a log line, a file, a record count), never fixed sleeps."""
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from shiplib import DATA, FLOWSEAL, SHIPD, TIMEOUT, run_probe  # noqa: E402

NFCAPD = os.environ.get("NFCAPD", "nfcapd")
NFDUMP = os.environ.get("NFDUMP", "nfdump")
IPFIXDUMP = os.environ.get("IPFIXDUMP", "ipfixDump")
PCAPS = sorted(os.path.join(DATA, f) for f in os.listdir(DATA) if f.endswith((".pcap", ".pcapng")))


def wait_for(predicate, what, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def read(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def free_udp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_store(tmp, name, extra):
    out = os.path.join(tmp, name)
    run_probe(PCAPS, out, f"ipfix-{name}-{uuid.uuid4().hex[:8]}", extra)
    return out


def copy_store(store, tmp):
    """A fresh copy (the exporter keeps its position in the store directory)."""
    copy = os.path.join(tmp, "store")
    shutil.copytree(store, copy)
    return copy


def shipd(store, settings, until_shipped=True, timeout=TIMEOUT):
    args = [SHIPD, "--set", f"writer.dir={store}"]
    for s in settings:
        args += ["--set", s]
    if until_shipped:
        args.append("--until-shipped")
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout)


def records_sent(stderr):
    """The exporter's own count of IPFIX data records sent, from its last stats line."""
    counts = re.findall(r"\((\d+) events, (\d+) IPFIX records\) exported", stderr)
    assert counts, stderr[-2000:]
    return int(counts[-1][1])


def cat(store, events=False):
    args = [FLOWSEAL, "cat", store] + (["--events"] if events else [])
    r = subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


def addr(text):
    return str(ipaddress.ip_address(text.strip()))


def is_icmp(proto):
    return proto in (1, 58)


def key(proto, src, sport, dst, dport):
    # ICMP type and code travel as the destination port (type * 256 + code); nfdump prints
    # them its own way: compare ICMP flows by addresses.
    if is_icmp(proto):
        sport = dport = 0
    return (proto, addr(src), int(sport), addr(dst), int(dport))


def add(table, k, pkts, octets):
    have = table.setdefault(k, [0, 0])
    have[0] += pkts
    have[1] += octets


def cat_uniflows(store):
    """Per 5-tuple and direction: packets and IP bytes of every flow end and summary that
    `flowseal cat` shows (each direction that sent packets)."""
    table = {}
    for r in cat(store):
        proto = r["ip_proto"]
        o, op, p, pp = r["id.orig_h"], r["id.orig_p"], r["id.resp_h"], r["id.resp_p"]
        if r.get("orig_pkts", 0) > 0:
            add(table, key(proto, o, op, p, pp), r["orig_pkts"], r.get("orig_ip_bytes", 0))
        if r.get("resp_pkts", 0) > 0:
            add(table, key(proto, p, pp, o, op), r["resp_pkts"], r.get("resp_ip_bytes", 0))
    return table


def cat_totals(store):
    packets = octets = 0
    for r in cat(store):
        packets += r.get("orig_pkts", 0) + r.get("resp_pkts", 0)
        octets += r.get("orig_ip_bytes", 0) + r.get("resp_ip_bytes", 0)
    return packets, octets


class Nfcapd:
    """Debian's nfcapd on a loopback UDP port with a large socket buffer, printing every
    record it decodes (-E) so that the test can wait until all have arrived."""

    def __init__(self, workdir):
        self.flows = os.path.join(workdir, "flows")
        os.makedirs(self.flows)
        self.out_path = os.path.join(workdir, "nfcapd.out")
        self.err_path = os.path.join(workdir, "nfcapd.err")
        self.port = free_udp_port()
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            # stdbuf: -E's lines reach the file as they are printed, not at exit.
            self.proc = subprocess.Popen(
                ["stdbuf", "-oL", NFCAPD, "-b", "127.0.0.1", "-p", str(self.port), "-w", self.flows,
                 "-B", str(32 << 20), "-t", "3600", "-E"], stdout=out, stderr=err)
        wait_for(lambda: "Startup" in read(self.err_path) or self.proc.poll() is not None,
                 "nfcapd to start")
        assert self.proc.poll() is None, read(self.err_path)

    @property
    def url(self):
        return f"udp://127.0.0.1:{self.port}"

    def received(self):
        return read(self.out_path).count("Flow Record:")

    def stop(self):
        """SIGTERM: nfcapd closes its file (renamed from nfcapd.current.*)."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=60)

    def kill(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def uniflows(self):
        """Per 5-tuple: packets and bytes of what nfcapd stored (nfdump's JSON: full IPv6
        addresses, unlike its text formats)."""
        r = subprocess.run([NFDUMP, "-R", self.flows, "-q", "-N", "-o", "json"],
                           capture_output=True, text=True, timeout=TIMEOUT)
        assert r.returncode == 0, r.stderr
        text = r.stdout.strip()
        if not text.startswith("["):
            text = "[" + text.rstrip(",") + "]"
        table = {}
        for f in json.loads(text):
            if f.get("type") != "FLOW":
                continue
            src = f.get("src4_addr", f.get("src6_addr"))
            dst = f.get("dst4_addr", f.get("dst6_addr"))
            add(table, key(f["proto"], src, f.get("src_port", 0), dst, f.get("dst_port", 0)),
                f["in_packets"],
                f["in_bytes"])
        return table

    def stats(self):
        r = subprocess.run([NFDUMP, "-R", self.flows, "-I"], capture_output=True, text=True,
                           timeout=TIMEOUT)
        assert r.returncode == 0, r.stderr
        return {k.strip(): v.strip() for k, v in
                (line.split(":", 1) for line in r.stdout.splitlines() if ":" in line)}


@pytest.fixture
def nfcapd(tmp_path):
    n = Nfcapd(str(tmp_path / "nfcapd"))
    yield n
    n.kill()


class TcpReceiver:
    """A TCP IPFIX collector that only records: each accepted connection's bytes go to its own
    file (IPFIX over TCP is a stream of messages, the same bytes as an IPFIX file)."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.files = []
        self.closed = 0
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def url(self):
        return f"tcp://127.0.0.1:{self.port}"

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            path = os.path.join(self.workdir, f"conn{len(self.files)}.ipfix")
            with self.lock:
                self.files.append(path)
            threading.Thread(target=self._drain, args=(conn, path), daemon=True).start()

    def _drain(self, conn, path):
        with conn, open(path, "wb") as f:
            while True:
                data = conn.recv(1 << 16)
                if not data:
                    break
                f.write(data)
        with self.lock:
            self.closed += 1

    def wait_closed(self, n):
        wait_for(lambda: self.closed >= n, f"{n} IPFIX connections to end")

    def close(self):
        self.sock.close()


@pytest.fixture
def receiver(tmp_path):
    r = TcpReceiver(str(tmp_path))
    yield r
    r.close()


def ipfix_dump(path, whole=True):
    """ipfixDump's text of an IPFIX stream. whole=False: the stream may end inside a message
    (a killed exporter's connection); what came before it is decoded."""
    r = subprocess.run([IPFIXDUMP, "-i", path], capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 0 or not whole, r.stderr
    return r.stdout


def parse_dump(text):
    """ipfixDump's text as messages: [{seq, domain, templates: {tid: [names]}, records: [{}]}]."""
    messages = []
    template = record = None
    for line in text.splitlines():
        m = re.match(r"--- Message Header ---", line)
        if m:
            messages.append({"templates": {}, "records": []})
            continue
        m = re.search(r"observation domain id: (\d+)", line)
        if m:
            messages[-1]["domain"] = int(m.group(1))
        m = re.search(r"sequence number: (\d+)", line)
        if m:
            messages[-1]["seq"] = int(m.group(1))
        m = re.match(r"\s*tid:\s+(\d+) \(0x[0-9a-f]+\)\s+field count", line)
        if m:
            template = messages[-1]["templates"].setdefault(int(m.group(1)), [])
            record = None
            continue
        m = re.match(r"\s*ent:\s+\d+\s+id:\s+\d+\s+type:\s+\S+\s+len:\s+\d+\s+(\w+)", line)
        if m and template is not None:
            template.append(m.group(1))
            continue
        if re.match(r"--- data record \d+ ---", line):
            record = {}
            messages[-1]["records"].append(record)
            template = None
            continue
        m = re.match(r"\s*\([0-9/]+\)\s+(\w+) : (.*)$", line)
        if m and record is not None:
            record[m.group(1)] = m.group(2).strip()
    return messages


# ------------------------------------------------------------------------------------ stores

@pytest.fixture(scope="module")
def plain_store(tmp_path_factory):
    """Every test capture, dedup off, a 2-s active timeout: ends and long-flow updates."""
    store = make_store(str(tmp_path_factory.mktemp("plain")), "store",
                       ["--set", "dedup.enabled=false", "--set", "flowd.active_timeout=2"])
    kinds = {r["event"] for r in cat(store, events=True)}
    assert "update" in kinds, "the store should hold long-flow updates"
    return store


def repeated_flows_pcap(path, flows=60):
    """A DNS client asking one server again and again from new ports, one second apart (what
    dedupd folds into summaries), plus a few flows of other clients."""
    def udp(src, dst, sport, dport, payload):
        header = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0)
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28 + len(payload), 0, 0, 64, 17, 0,
                         bytes(src), bytes(dst))
        return bytes.fromhex("020000000002020000000001" "0800") + ip + header + payload

    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    t0 = 1_700_000_000
    for i in range(flows):
        client = (10, 1, 0, 1 + (i % 7 == 6))
        for ts, frame in ((t0 + i, udp(client, (10, 2, 0, 1), 20000 + i, 53, b"q" * 30)),
                          (t0 + i + 0.01, udp((10, 2, 0, 1), client, 53, 20000 + i, b"a" * 90))):
            sec, usec = int(ts), int(round((ts - int(ts)) * 1e6))
            out.append(struct.pack("<IIII", sec, usec, len(frame), len(frame)) + frame)
    with open(path, "wb") as f:
        f.write(b"".join(out))


@pytest.fixture(scope="module")
def dedup_store(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("dedup"))
    pcap = os.path.join(tmp, "repeated.pcap")
    repeated_flows_pcap(pcap)
    out = os.path.join(tmp, "store")
    run_probe([pcap, os.path.join(DATA, "sample.pcap")], out,
              f"ipfix-dedup-{uuid.uuid4().hex[:8]}")
    summaries = [r for r in cat(out) if r["event"] == "summary"]
    assert summaries, "dedup should have folded the repeated flows into summaries"
    return out


# ------------------------------------------------------------------------------------- tests

def export_to_nfcapd(store, nfcapd, extra=()):
    r = shipd(store, [f"export.ipfix.url={nfcapd.url}", "export.ipfix.mode=uniflow",
                      "export.ipfix.max_records_per_s=20000", *extra])
    assert r.returncode == 0, r.stderr[-3000:]
    sent = records_sent(r.stderr)
    assert sent > 0
    wait_for(lambda: nfcapd.received() >= sent, f"nfcapd to decode {sent} records")
    nfcapd.stop()
    stats = nfcapd.stats()
    # A UDP loss shows in the IPFIX sequence numbers: count it, never pass it silently.
    assert stats.get("Sequence failures") == "0", f"nfcapd saw IPFIX sequence failures: {stats}"
    assert int(stats["Flows"]) == sent
    return sent


def test_uniflow_to_nfcapd_shows_per_5tuple_and_direction_what_cat_shows(
        plain_store, nfcapd, tmp_path):
    store = copy_store(plain_store, str(tmp_path))
    export_to_nfcapd(store, nfcapd)
    expected = cat_uniflows(store)
    got = nfcapd.uniflows()
    missing = {k: v for k, v in expected.items() if got.get(k) != v}
    extra = {k: v for k, v in got.items() if k not in expected}
    assert not missing and not extra, (
        f"{len(missing)} 5-tuples differ (first: {list(missing.items())[:3]} vs "
        f"{[got.get(k) for k in list(missing)[:3]]}), {len(extra)} unexpected "
        f"(first: {list(extra.items())[:3]})")


def test_uniflow_with_dedup_summaries_gives_nfcapd_the_same_totals(dedup_store, nfcapd,
                                                                   tmp_path):
    store = copy_store(dedup_store, str(tmp_path))
    export_to_nfcapd(store, nfcapd)
    packets, octets = cat_totals(store)
    stats = nfcapd.stats()
    assert (int(stats["Packets"]), int(stats["Bytes"])) == (packets, octets)
    # Per protocol and address pair too: a summary carries its group's addresses (its source
    # port is one folded flow's, so 5-tuples differ from cat's per-flow view by design).
    pairs_got, pairs_expected = {}, {}
    for table, pairs in ((nfcapd.uniflows(), pairs_got), (cat_uniflows(store), pairs_expected)):
        for k, v in table.items():
            add(pairs, (k[0], k[1], k[3]), v[0], v[1])
    assert pairs_got == pairs_expected


def test_biflow_over_tcp_decodes_with_reverse_elements_and_counted_sequence_numbers(
        plain_store, receiver, tmp_path):
    store = copy_store(plain_store, str(tmp_path))
    r = shipd(store, [f"export.ipfix.url={receiver.url}", "export.ipfix.observation_domain=4242"])
    assert r.returncode == 0, r.stderr[-3000:]
    receiver.wait_closed(1)
    assert len(receiver.files) == 1
    messages = parse_dump(ipfix_dump(receiver.files[0]))
    assert messages
    templates = {}
    for m in messages:
        templates.update(m["templates"])
        assert m["domain"] == 4242
    assert set(templates) == {256, 257}
    for tid, names in templates.items():
        for name in ("reverseOctetDeltaCount", "reversePacketDeltaCount", "octetDeltaCount",
                     "packetDeltaCount", "flowStartMilliseconds", "flowEndMilliseconds",
                     "protocolIdentifier", "sourceTransportPort", "destinationTransportPort",
                     "flowEndReason", "deltaFlowCount"):
            assert name in names, f"template {tid} lacks {name}: {names}"
    assert "sourceIPv4Address" in templates[256] and "sourceIPv6Address" in templates[257]

    # Sequence numbers count the data records sent before each message.
    records = 0
    for m in messages:
        assert m["seq"] == records, f"message sequence {m['seq']}, {records} records before it"
        records += len(m["records"])
    assert records == records_sent(r.stderr)

    data = [rec for m in messages for rec in m["records"]]
    packets = sum(int(d["packetDeltaCount"]) + int(d["reversePacketDeltaCount"]) for d in data)
    octets = sum(int(d["octetDeltaCount"]) + int(d["reverseOctetDeltaCount"]) for d in data)
    assert (packets, octets) == cat_totals(store)
    # One record per flow end and per update: both directions in it.
    events = [e for e in cat(store, events=True) if e["event"] in ("end", "update", "summary")]
    assert len(data) == len(events)
    assert any(int(d["reversePacketDeltaCount"]) > 0 and int(d["packetDeltaCount"]) > 0
               for d in data)
    assert {int(d["flowEndReason"]) for d in data} >= {2, 3}  # activeTimeout, end of flow


def received_totals(files, whole):
    packets = octets = 0
    for path in files:
        for m in parse_dump(ipfix_dump(path, whole)):
            for d in m["records"]:
                packets += int(d["packetDeltaCount"]) + int(d["reversePacketDeltaCount"])
                octets += int(d["octetDeltaCount"]) + int(d["reverseOctetDeltaCount"])
    return packets, octets


def position_seq(store):
    text = read(os.path.join(store, "ipfix-exported"))
    m = re.search(r"^seq (\d+)$", text, re.M)
    return int(m.group(1)) if m else None


@pytest.mark.parametrize("how", ["stopped", "killed"])
def test_a_stopped_or_killed_exporter_resumes_after_its_position(how, receiver, tmp_path):
    store = make_store(str(tmp_path), "store",
                       ["--set", "dedup.enabled=false", "--set", "flowd.active_timeout=2",
                        "--set", "seal.batch_records=32"])
    settings = [f"export.ipfix.url={receiver.url}", "export.ipfix.max_records_per_s=400"]
    args = [SHIPD, "--set", f"writer.dir={store}", "--until-shipped"]
    for s in settings:
        args += ["--set", s]
    err_path = os.path.join(str(tmp_path), "first.err")
    with open(err_path, "w") as err:
        first = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err)
    try:
        wait_for(lambda: (position_seq(store) or 0) >= 3 or first.poll() is not None,
                 "the exporter to save a position")
        assert first.poll() is None, "the export ended before the test could stop it"
        os.kill(first.pid, signal.SIGTERM if how == "stopped" else signal.SIGKILL)
        code = first.wait(timeout=TIMEOUT)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert code == (75 if how == "stopped" else -signal.SIGKILL), read(err_path)[-2000:]
    resumed_after = position_seq(store)
    assert resumed_after is not None and resumed_after >= 3

    r = shipd(store, [s for s in settings if "max_records" not in s])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming after it" in r.stderr
    receiver.wait_closed(2)
    # Every batch after the saved position went again, none before it.
    newest = position_seq(store)
    batches = re.findall(r"(\d+) batches \(\d+ events, \d+ IPFIX records\) exported", r.stderr)
    assert int(batches[-1]) == newest - resumed_after

    packets, octets = received_totals(sorted(receiver.files), whole=how == "stopped")
    want_packets, want_octets = cat_totals(store)
    if how == "stopped":
        # A clean stop saves the position of the last batch sent whole: exactly once.
        assert (packets, octets) == (want_packets, want_octets)
    else:
        # A kill repeats at most what was sent after the last save: at least once.
        assert packets >= want_packets and octets >= want_octets


def test_an_exporter_following_a_running_probe_sends_every_flow_once(receiver, tmp_path):
    """shipd started before the probe follows the segments as writerd writes them."""
    store = str(tmp_path / "store")
    os.makedirs(store)
    err_path = str(tmp_path / "shipd.err")
    with open(err_path, "w") as err:
        follower = subprocess.Popen([SHIPD, "--set", f"writer.dir={store}", "--set",
                                     f"export.ipfix.url={receiver.url}"],
                                    stdout=subprocess.DEVNULL, stderr=err)
    try:
        run_probe(PCAPS, store, f"ipfix-live-{uuid.uuid4().hex[:8]}",
                  ["--set", "dedup.enabled=false", "--set", "seal.batch_records=64"])
        v = subprocess.run([FLOWSEAL, "verify", store], capture_output=True, text=True,
                           timeout=TIMEOUT)
        last = int(re.search(r"batches:\s+\d+ \(seq \d+\.\.(\d+)\)", v.stdout).group(1))
        wait_for(lambda: position_seq(store) == last or follower.poll() is not None,
                 f"the exporter to reach batch seq {last}")
        assert follower.poll() is None, read(err_path)[-2000:]
        os.kill(follower.pid, signal.SIGTERM)
        assert follower.wait(timeout=TIMEOUT) == 75
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    receiver.wait_closed(1)
    assert received_totals(receiver.files, whole=True) == cat_totals(store)


def test_udp_export_sends_the_templates_again_every_refresh_interval(plain_store, tmp_path):
    """A UDP collector that starts late learns the templates within
    export.ipfix.template_refresh_s: the export (paced to last some seconds) repeats them."""
    store = copy_store(plain_store, str(tmp_path))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 20)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    path = str(tmp_path / "udp.ipfix")
    done = threading.Event()

    def receive():
        sock.settimeout(0.1)
        with open(path, "wb") as f:
            while not done.is_set():
                try:
                    f.write(sock.recv(1 << 16))
                    f.flush()
                except socket.timeout:
                    pass

    thread = threading.Thread(target=receive, daemon=True)
    thread.start()
    try:
        start = time.monotonic()
        r = shipd(store, [f"export.ipfix.url=udp://127.0.0.1:{port}",
                          "export.ipfix.template_refresh_s=1",
                          "export.ipfix.max_records_per_s=1000"])
        took = time.monotonic() - start
        assert r.returncode == 0, r.stderr[-3000:]
        sent = records_sent(r.stderr)

        def received():
            m = re.search(r"File Stats: \d+ Messages, (\d+) Data Records",
                          ipfix_dump(path, whole=False))
            return int(m.group(1)) if m else 0
        wait_for(lambda: received() >= sent, f"{sent} records over UDP")
    finally:
        done.set()
        thread.join()
        sock.close()
    messages = parse_dump(ipfix_dump(path))
    with_templates = [i for i, m in enumerate(messages) if m["templates"]]
    assert with_templates[0] == 0
    # The export took `took` s: the templates went at its start and about once a second after.
    assert len(with_templates) >= max(2, int(took) - 1), (took, with_templates)
    assert sum(len(m["records"]) for m in messages) == sent


@pytest.mark.parametrize("setting, words", [
    ("export.ipfix.url=http://127.0.0.1:4739", "udp://HOST:PORT"),
    ("export.ipfix.url=udp://127.0.0.1", "HOST:PORT"),
    ("export.ipfix.url=tcp://127.0.0.1:70000", "port"),
    ("export.ipfix.mode=both", "biflow, uniflow"),
    ("export.ipfix.observation_domain=-1", "out of range"),
    ("export.ipfix.template_refresh_s=0", "out of range"),
])
def test_bad_export_settings_are_refused_before_anything_runs(setting, words, tmp_path):
    store = str(tmp_path / "store")
    r = shipd(store, ["export.ipfix.url=udp://127.0.0.1:4739", setting])
    assert r.returncode == 78, r.stderr
    assert setting.split("=")[0] in r.stderr and words in r.stderr, r.stderr
    r = subprocess.run([FLOWSEAL, "run", "-r", os.path.join(DATA, "sample.pcap"), "-o", store,
                        "--set", setting], capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 78, r.stderr
    assert setting.split("=")[0] in r.stderr
    assert not os.path.exists(store), "nothing may run with a bad export setting"
