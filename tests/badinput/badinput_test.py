"""Bad input: damaged, truncated and odd captures through the whole pipeline.

Run by meson: python3 -m pytest -q tests/badinput/badinput_test.py -m crafted|corpus|malformed
(see tests/conftest.py; the markers are registered in tests/pytest.ini).

crafted: files made here from a good capture (tests/data/sample.pcap and sites.pcapng),
  each with a known defect at a known place: a file cut mid-record and mid-record-header, a
  pcapng cut mid-block, a file that is not a capture, records whose caplen exceeds the
  snaplen, a zero-length packet, a missing file. Each must end with exit 65 (66 for the
  missing file), a message naming the file and the byte offset of the bad record, and the
  good packets processed: the flows must equal those of a file holding only the good records.

corpus: every capture in tests/badinput/data (tcpdump's regression captures, many of them
  fuzzing reproducers; see data/SOURCES.md) goes through `flowseal run -r`. Each must end
  with exit 0, or 65 with a message naming the file and an offset; never a signal, a
  timeout, another exit code or a sanitizer report, and the run summary must account for
  every packet. One test per capture; the captures run four at a time.
malformed: the same test over only the deliberately malformed ones (names with oobr,
  overflow, trunc, bad, ...) plus every 10th other file: the sanitizer build's share.
"""
import concurrent.futures
import json
import os
import re
import shutil
import struct
import subprocess
from collections import Counter, defaultdict

import pytest

RUN_TIMEOUT = 60  # s per flowseal run; a healthy one takes well under a second
DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
MALFORMED = re.compile(r"oobr|overflow|overread|trunc|bad|invalid|crash|fuzz|ovfl|underflow|"
                       r"loop|malformed|segv|uaf|cve|nul|short|long|-err|bogus", re.I)
SETTINGS = ["supervisor.stats_interval_s=0", "memory.budget_mb=16",
            "flowd.tcp_idle_timeout=30000000", "flowd.udp_idle_timeout=30000000",
            "flowd.tcp_attempt_timeout=30000000", "flowd.icmp_idle_timeout=30000000",
            "flowd.other_idle_timeout=30000000", "flowd.active_timeout=0",
            "dedup.enabled=false"]
ALARMS = ("ERROR: AddressSanitizer", "runtime error:", "ERROR: LeakSanitizer")


class Runner:
    def __init__(self, flowseal, tmp, instance):
        self.flowseal = flowseal
        self.tmp = tmp
        self.instance = instance
        self.key = os.path.join(tmp, "key", "flowseal.key")
        os.makedirs(os.path.dirname(self.key))
        # One signing key for every run: making a key per run would only cost time.
        subprocess.run([flowseal, "keygen", "-o", self.key], check=True, capture_output=True,
                       timeout=RUN_TIMEOUT)

    def run(self, files, tag):
        """(exit code, stderr, output dir) of `flowseal run -r FILES`."""
        tag = re.sub(r"[^A-Za-z0-9]", "", tag)
        out = os.path.join(self.tmp, f"out-{tag}")
        args = [self.flowseal, "run", "-o", out, "--instance", self.instance(f"bad{tag}"),
                "--set", f"seal.key_file={self.key}"]
        for f in files:
            args += ["-r", f]
        for s in SETTINGS:
            args += ["--set", s]
        try:
            r = subprocess.run(args, capture_output=True, text=True, timeout=RUN_TIMEOUT,
                               start_new_session=True)
        except subprocess.TimeoutExpired as e:
            return None, (e.stderr or b"").decode(errors="replace"), out
        return r.returncode, r.stderr, out

    def directed(self, out):
        """{(src, sport, dst, dport, proto): [packets, ip bytes]} of a run's flows."""
        c = subprocess.run([self.flowseal, "cat", "--no-verify", out], capture_output=True, text=True,
                           timeout=RUN_TIMEOUT)
        assert c.returncode == 0, f"flowseal cat {out} exited {c.returncode}: {c.stderr[-800:]}"
        counts = defaultdict(lambda: [0, 0])
        for line in c.stdout.splitlines():
            f = json.loads(line)
            orig = (f["id.orig_h"], f["id.orig_p"], f["id.resp_h"], f["id.resp_p"], f["proto"])
            resp = (orig[2], orig[3], orig[0], orig[1], orig[4])
            for key, p, b in ((orig, f["orig_pkts"], f["orig_ip_bytes"]),
                              (resp, f["resp_pkts"], f["resp_ip_bytes"])):
                if p or b:
                    counts[key][0] += p
                    counts[key][1] += b
        return dict(counts)


def received(stderr):
    m = re.search(r"packets\s+received (\d+)", stderr)
    return int(m.group(1)) if m else None


def common_failures(name, code, stderr):
    """What no run may ever do, whatever its input."""
    failures = []
    if code is None:
        failures.append(f"{name}: flowseal run did not finish within {RUN_TIMEOUT} s")
    elif code < 0:
        failures.append(f"{name}: flowseal run died of signal {-code}")
    for alarm in ALARMS:
        if alarm in stderr:
            at = stderr.index(alarm)
            failures.append(f"{name}: sanitizer report:\n{stderr[at:at + 1500]}")
    # A stage killed by a signal of its own making (SIGSEGV, SIGABRT, ...) crashed. SIGKILL
    # comes from the supervisor (a missed heartbeat), not from the input: counted elsewhere.
    crash = re.search(r"\b(capture|flowd\[\d+\]|dedupd|signerd|writerd) (ended|failed) "
                      r"\((killed by (?!SIGKILL)|exit)[^)]*\)", stderr)
    if crash:
        failures.append(f"{name}: {crash.group(0)}:\n{stderr[-1500:]}")
    return failures


# ---------------------------------------------------------------------------- crafted files

def pcap_records(path):
    """(file header, [(offset, record header, data)]) of a classic little-endian pcap."""
    with open(path, "rb") as f:
        blob = f.read()
    header, records, at = blob[:24], [], 24
    while at < len(blob):
        caplen = struct.unpack_from("<I", blob, at + 8)[0]
        records.append((at, blob[at:at + 16], blob[at + 16:at + 16 + caplen]))
        at += 16 + caplen
    return header, records


def write(path, *parts):
    with open(path, "wb") as f:
        for p in parts:
            f.write(p)
    return path


@pytest.fixture(scope="module")
def runner(flowseal, instance, tmp_path_factory):
    return Runner(flowseal, str(tmp_path_factory.mktemp("badinput")), instance)


def expect_error(runner, name, path, code_wanted, phrase, offset, good_path=None,
                 good_packets=None):
    """A crafted file's run: the exit code, a message with the file and the offset, the
    good part processed."""
    code, stderr, out = runner.run([path], name)
    failures = common_failures(name, code, stderr)
    assert not failures, "\n".join(failures)
    assert code == code_wanted, f"{name}: exit {code}, expected {code_wanted}:\n{stderr[-1500:]}"
    lines = [l for l in stderr.splitlines() if path in l and phrase in l]
    where = f"offset {offset}" if offset is not None else ""
    assert any(where in l for l in lines), \
        f"{name}: a message naming {path}, '{where}' and '{phrase}':\n{stderr[-1500:]}"
    if code_wanted == 65:
        assert "accounting received = processed + sampled out + dropped: yes" in stderr, \
            f"{name}: the summary accounts for every packet"
    if good_packets is not None:
        assert received(stderr) == good_packets, \
            f"{name}: {received(stderr)} packets received, expected the {good_packets} good ones"
    if good_path is not None:
        good_code, good_err, good_out = runner.run([good_path], name + "-good")
        assert good_code == 0, f"{name}: the good part alone exited {good_code}: {good_err[-800:]}"
        assert runner.directed(out) == runner.directed(good_out), \
            f"{name}: the flows equal those of the good records alone"


class Sample:
    """sample.pcap's file header and records; k: the record the damage hits (0-based), the
    k records before it are good; d: where the crafted files go."""

    def __init__(self, data_dir, d):
        self.header, self.records = pcap_records(os.path.join(data_dir, "sample.pcap"))
        self.blobs = [r[1] + r[2] for r in self.records]
        self.k = len(self.records) // 2
        self.at = self.records[self.k][0]
        self.d = d
        self.good = write(self.path("good-prefix.pcap"), self.header, *self.blobs[:self.k])

    def path(self, name):
        return os.path.join(self.d, name)


@pytest.fixture(scope="module")
def sample(data_dir, tmp_path_factory):
    return Sample(data_dir, str(tmp_path_factory.mktemp("crafted")))


@pytest.mark.crafted
def test_a_file_cut_mid_record_exits_65_naming_the_offset_and_keeps_the_good_records(runner, sample):
    s = sample
    path = write(s.path("cut-mid-record.pcap"), s.header, *s.blobs[:s.k], s.blobs[s.k][:30])
    expect_error(runner, "truncated mid-record", path, 65,
                 f"record {s.k + 1} at offset {s.at}: the file stops mid-record", s.at, s.good, s.k)


@pytest.mark.crafted
def test_a_file_cut_mid_record_header_exits_65_and_keeps_the_good_records(runner, sample):
    s = sample
    path = write(s.path("cut-mid-header.pcap"), s.header, *s.blobs[:s.k], s.blobs[s.k][:9])
    expect_error(runner, "truncated mid-record-header", path, 65,
                 "9 of 16 record header bytes", s.at, s.good, s.k)


@pytest.mark.crafted
def test_a_file_that_is_not_a_capture_exits_65(runner, sample):
    path = write(sample.path("not-a-capture.pcap"),
                 b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n" * 4)
    expect_error(runner, "not a capture", path, 65, "not a pcap or pcapng file", 0, None, 0)


@pytest.mark.crafted
def test_a_cut_file_header_exits_65(runner, sample):
    path = write(sample.path("header-only.pcap"), sample.header[:20])
    expect_error(runner, "truncated file header", path, 65,
                 "the pcap file header is cut short", 0, None, 0)


@pytest.mark.crafted
def test_a_caplen_over_the_snaplen_exits_65_and_keeps_the_records_within_it(runner, sample):
    # The same records under a file header claiming snaplen 100.
    s = sample
    small = s.header[:16] + struct.pack("<I", 100) + s.header[20:]
    over = [i for i, r in enumerate(s.records) if len(r[2]) > 100]
    kept = [b for r, b in zip(s.records, s.blobs) if len(r[2]) <= 100]
    path = write(s.path("caplen-over-snaplen.pcap"), small, *s.blobs)
    good_small = write(s.path("caplen-within-snaplen.pcap"), small, *kept)
    expect_error(runner, "caplen exceeds snaplen", path, 65,
                 f"caplen {len(s.records[over[0]][2])} exceeds snaplen 100",
                 s.records[over[0]][0], good_small, len(kept))


@pytest.mark.crafted
def test_a_caplen_past_the_end_of_the_file_exits_65_and_keeps_the_good_records(runner, sample):
    # A record header pointing past the end.
    s = sample
    big = bytearray(s.blobs[s.k])
    struct.pack_into("<I", big, 8, 70000)
    path = write(s.path("caplen-past-end.pcap"), s.header, *s.blobs[:s.k], bytes(big))
    expect_error(runner, "caplen exceeds the file", path, 65,
                 "the file stops mid-record: caplen 70000", s.at, s.good, s.k)


@pytest.mark.crafted
def test_a_zero_length_packet_is_reported_and_skipped_and_the_rest_goes_on(runner, sample):
    s = sample
    zero = struct.pack("<IIII", 1582454769, 0, 0, 60)
    path = write(s.path("zero-length.pcap"), s.header, *s.blobs[:s.k], zero, *s.blobs[s.k:])
    whole = write(s.path("whole.pcap"), s.header, *s.blobs)
    expect_error(runner, "zero-length packet", path, 65, "zero-length packet", s.at,
                 whole, len(s.records))


@pytest.mark.crafted
def test_a_pcapng_cut_mid_block_exits_65_and_keeps_the_blocks_before(runner, sample, data_dir):
    with open(os.path.join(data_dir, "sites.pcapng"), "rb") as f:
        ng = f.read()
    blocks, o = [], 0
    while o < len(ng):
        blocks.append(o)
        o += struct.unpack_from("<I", ng, o + 4)[0]
    cut_block = blocks[len(blocks) // 2]
    path = write(sample.path("cut-mid-block.pcapng"), ng[:cut_block + 20])
    good_ng = write(sample.path("cut-at-block.pcapng"), ng[:cut_block])
    expect_error(runner, "pcapng truncated mid-block", path, 65,
                 "the file stops mid-block", cut_block, good_ng)


@pytest.mark.crafted
def test_a_missing_file_exits_66_naming_it(runner, sample):
    expect_error(runner, "missing file", sample.path("no-such-file.pcap"), 66,
                 "no such capture file", None)


# ---------------------------------------------------------------------------- corpus

CORPUS = sorted(n for n in os.listdir(DATA) if n.endswith((".pcap", ".pcapng", ".cap")))
MALFORMED_SUBSET = [n for i, n in enumerate(CORPUS) if MALFORMED.search(n) or i % 10 == 0]
WORKERS = max(2, min(4, (os.cpu_count() or 2) * 2))


class CorpusRuns:
    """Corpus captures run WORKERS at a time, each once, on the first test that asks: all
    of `names` that this session selected."""

    def __init__(self, runner, selected):
        self.runner = runner
        self.selected = selected
        self.results = {}  # name -> (exit code, failure lines, first reason, heartbeat kills)

    def failures(self, names, name):
        if name not in self.results:
            todo = [n for n in names if n in self.selected and n not in self.results]
            with concurrent.futures.ThreadPoolExecutor(max_workers=WORKERS) as pool:
                self.results.update(zip(todo, pool.map(self.one, todo)))
        return self.results[name][1]

    def one(self, name):
        path = os.path.join(DATA, name)
        code, stderr, out = self.runner.run([path], str(CORPUS.index(name)))
        shutil.rmtree(out, ignore_errors=True)
        failures = common_failures(name, code, stderr)
        if code == 65:
            if not re.search(rf"capture: {re.escape(path)}: .*offset \d+", stderr):
                failures.append(f"{name}: exit 65 without a message naming the file and an "
                                f"offset:\n{stderr[-1500:]}")
        elif code not in (0, None) and code >= 0:
            failures.append(f"{name}: exit {code}:\n{stderr[-1500:]}")
        if code in (0, 65) and "received = processed + sampled out + dropped: yes" not in stderr:
            failures.append(f"{name}: the summary does not account for every packet:\n"
                            f"{stderr[-1500:]}")
        reasons = re.findall(rf"capture: {re.escape(path)}: (?:record \d+ at )?offset \d+: ([^:\n]+)",
                             stderr)
        return code, failures, reasons[:1], stderr.count("sent no heartbeat")

    def summary(self):
        """What the runs ended with, and why the files with exit 65 were bad."""
        codes = Counter(r[0] for r in self.results.values())
        why = Counter(re.sub(r"\d+", "N", reason.strip())
                      for r in self.results.values() for reason in r[2])
        kills = sum(r[3] for r in self.results.values())
        lines = [f"{len(self.results)} captures: "
                 + ", ".join(f"exit {c}: {n}" for c, n in sorted(codes.items(), key=str))]
        lines += [f"  {n:4d} x {reason}" for reason, n in why.most_common()]
        if kills:
            lines.append(f"note: the supervisor killed a stage for a missed heartbeat {kills} "
                         f"times (restarted; not caused by the input)")
        return lines


@pytest.fixture(scope="module")
def corpus_runs(request, runner, report):
    selected = {item.callspec.params["capture"] for item in request.session.items
                if "capture" in getattr(getattr(item, "callspec", None), "params", {})}
    runs = CorpusRuns(runner, selected)
    yield runs
    if runs.results:
        for line in runs.summary():
            report(line)


@pytest.mark.corpus
@pytest.mark.parametrize("capture", CORPUS)
def test_every_corpus_capture_ends_with_exit_0_or_65_naming_the_offset(corpus_runs, capture):
    failures = corpus_runs.failures(CORPUS, capture)
    assert not failures, "\n".join(failures)


@pytest.mark.malformed
@pytest.mark.parametrize("capture", MALFORMED_SUBSET)
def test_every_malformed_capture_ends_with_exit_0_or_65_naming_the_offset(corpus_runs, capture):
    failures = corpus_runs.failures(MALFORMED_SUBSET, capture)
    assert not failures, "\n".join(failures)
