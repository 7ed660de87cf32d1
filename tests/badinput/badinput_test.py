#!/usr/bin/env python3
"""Bad input: damaged, truncated and odd captures through the whole pipeline.

usage: badinput_test.py FLOWSEAL_BINARY GOOD_DATA_DIR (--crafted | --corpus [--subset])

--crafted: files made here from a good capture (GOOD_DATA_DIR/sample.pcap and sites.pcapng),
  each with a known defect at a known place: a file cut mid-record and mid-record-header, a
  pcapng cut mid-block, a file that is not a capture, records whose caplen exceeds the
  snaplen, a zero-length packet, a missing file. Each must end with exit 65 (66 for the
  missing file), a message naming the file and the byte offset of the bad record, and the
  good packets processed: the flows must equal those of a file holding only the good records.

--corpus: every capture in tests/badinput/data (tcpdump's regression captures, many of them
  fuzzing reproducers; see data/SOURCES.md) goes through `flowseal run -r`. Each must end
  with exit 0, or 65 with a message naming the file and an offset; never a signal, a
  timeout, another exit code or a sanitizer report, and the run summary must account for
  every packet. --subset takes only the deliberately malformed ones (names with oobr,
  overflow, trunc, bad, ...) plus every 10th other file: the sanitizer build's share.
"""
import concurrent.futures
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict

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
    def __init__(self, flowseal, tmp):
        self.flowseal = flowseal
        self.tmp = tmp
        self.key = os.path.join(tmp, "key", "flowseal.key")
        os.makedirs(os.path.dirname(self.key))
        # One signing key for every run: making a key per run would only cost time.
        subprocess.run([flowseal, "keygen", "-o", self.key], check=True, capture_output=True,
                       timeout=RUN_TIMEOUT)

    def run(self, files, tag):
        """(exit code, stderr, output dir) of `flowseal run -r FILES`."""
        tag = re.sub(r"[^A-Za-z0-9]", "", tag)
        out = os.path.join(self.tmp, f"out-{tag}")
        args = [self.flowseal, "run", "-o", out, "--instance", f"bad{os.getpid()}x{tag}",
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
        if c.returncode != 0:
            raise RuntimeError(f"flowseal cat {out} exited {c.returncode}: {c.stderr[-800:]}")
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


def expect_error(runner, name, path, code_wanted, phrase, offset, good_path=None,
                 good_packets=None):
    """Failure lines for a crafted file: exit code, message with file and offset, good part."""
    code, stderr, out = runner.run([path], name)
    failures = common_failures(name, code, stderr)
    if code != code_wanted:
        failures.append(f"{name}: exit {code}, expected {code_wanted}:\n{stderr[-1500:]}")
    lines = [l for l in stderr.splitlines() if path in l and phrase in l]
    where = f"offset {offset}" if offset is not None else ""
    if not any(where in l for l in lines):
        failures.append(f"{name}: no message naming {path}, '{where}' and '{phrase}':\n"
                        f"{stderr[-1500:]}")
    if code_wanted == 65 and "accounting received = processed + sampled out + dropped: yes" \
            not in stderr:
        failures.append(f"{name}: the summary does not account for every packet")
    if good_packets is not None and received(stderr) != good_packets:
        failures.append(f"{name}: {received(stderr)} packets received, expected the "
                        f"{good_packets} good ones")
    if good_path is not None and not failures:
        good_code, good_err, good_out = runner.run([good_path], name + "-good")
        if good_code != 0:
            failures.append(f"{name}: the good part alone exited {good_code}: {good_err[-800:]}")
        elif runner.directed(out) != runner.directed(good_out):
            failures.append(f"{name}: the flows differ from those of the good records alone")
    print(f"{'FAIL' if failures else 'ok  '} {name}: exit {code}; "
          f"{lines[0].split(' capture: ')[-1] if lines else '(no message)'}", flush=True)
    return failures


def crafted(runner, good_dir, tmp):
    header, records = pcap_records(os.path.join(good_dir, "sample.pcap"))
    d = os.path.join(tmp, "crafted")
    os.makedirs(d)
    blobs = [r[1] + r[2] for r in records]
    failures = []

    k = len(records) // 2  # the record the damage hits (0-based); k records before it are good
    at = records[k][0]
    good = write(os.path.join(d, "good-prefix.pcap"), header, *blobs[:k])

    path = write(os.path.join(d, "cut-mid-record.pcap"), header, *blobs[:k], blobs[k][:30])
    failures += expect_error(runner, "truncated mid-record", path, 65,
                             f"record {k + 1} at offset {at}: the file stops mid-record", at,
                             good, k)

    path = write(os.path.join(d, "cut-mid-header.pcap"), header, *blobs[:k], blobs[k][:9])
    failures += expect_error(runner, "truncated mid-record-header", path, 65,
                             "9 of 16 record header bytes", at, good, k)

    path = write(os.path.join(d, "not-a-capture.pcap"),
                 b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n" * 4)
    failures += expect_error(runner, "not a capture", path, 65, "not a pcap or pcapng file",
                             0, None, 0)

    path = write(os.path.join(d, "header-only.pcap"), header[:20])
    failures += expect_error(runner, "truncated file header", path, 65,
                             "the pcap file header is cut short", 0, None, 0)

    # caplen over snaplen: the same records under a file header claiming snaplen 100.
    small = header[:16] + struct.pack("<I", 100) + header[20:]
    over = [i for i, r in enumerate(records) if len(r[2]) > 100]
    kept = [b for r, b in zip(records, blobs) if len(r[2]) <= 100]
    path = write(os.path.join(d, "caplen-over-snaplen.pcap"), small, *blobs)
    good_small = write(os.path.join(d, "caplen-within-snaplen.pcap"), small, *kept)
    failures += expect_error(runner, "caplen exceeds snaplen", path, 65,
                             f"caplen {len(records[over[0]][2])} exceeds snaplen 100",
                             records[over[0]][0], good_small, len(kept))

    # A caplen larger than what is left of the file: a record header pointing past the end.
    big = bytearray(blobs[k])
    struct.pack_into("<I", big, 8, 70000)
    path = write(os.path.join(d, "caplen-past-end.pcap"), header, *blobs[:k], bytes(big))
    failures += expect_error(runner, "caplen exceeds the file", path, 65,
                             "the file stops mid-record: caplen 70000", at, good, k)

    # A zero-length packet between good ones: reported, skipped, the rest goes on.
    zero = struct.pack("<IIII", 1582454769, 0, 0, 60)
    path = write(os.path.join(d, "zero-length.pcap"), header, *blobs[:k], zero, *blobs[k:])
    whole = write(os.path.join(d, "whole.pcap"), header, *blobs)
    failures += expect_error(runner, "zero-length packet", path, 65, "zero-length packet", at,
                             whole, len(records))

    # pcapng cut in the middle of a block.
    with open(os.path.join(good_dir, "sites.pcapng"), "rb") as f:
        ng = f.read()
    blocks, o = [], 0
    while o < len(ng):
        blocks.append(o)
        o += struct.unpack_from("<I", ng, o + 4)[0]
    cut_block = blocks[len(blocks) // 2]
    path = write(os.path.join(d, "cut-mid-block.pcapng"), ng[:cut_block + 20])
    good_ng = write(os.path.join(d, "cut-at-block.pcapng"), ng[:cut_block])
    failures += expect_error(runner, "pcapng truncated mid-block", path, 65,
                             "the file stops mid-block", cut_block, good_ng)

    missing = os.path.join(d, "no-such-file.pcap")
    failures += expect_error(runner, "missing file", missing, 66, "no such capture file", None)
    return failures


# ---------------------------------------------------------------------------- corpus

def corpus(runner, subset, workers):
    names = sorted(n for n in os.listdir(DATA) if n.endswith((".pcap", ".pcapng", ".cap")))
    if subset:
        names = [n for i, n in enumerate(names) if MALFORMED.search(n) or i % 10 == 0]

    def one(item):
        i, name = item
        path = os.path.join(DATA, name)
        code, stderr, out = runner.run([path], str(i))
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
        heartbeat_kills = stderr.count("sent no heartbeat")
        return name, code, failures, reasons[:1], heartbeat_kills

    started = time.monotonic()
    codes, why, failures, kills = Counter(), Counter(), [], 0
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        for name, code, f, reasons, heartbeat_kills in pool.map(one, enumerate(names)):
            kills += heartbeat_kills
            codes[code] += 1
            for r in reasons:
                why[re.sub(r"\d+", "N", r.strip())] += 1
            failures += f
            if f:
                print(f"FAIL {name}", flush=True)
    print(f"{len(names)} captures in {time.monotonic() - started:.0f} s: "
          + ", ".join(f"exit {c}: {n}" for c, n in sorted(codes.items(), key=str)))
    for reason, n in why.most_common():
        print(f"  {n:4d} x {reason}")
    if kills:
        print(f"note: the supervisor killed a stage for a missed heartbeat {kills} times "
              f"(restarted; not caused by the input)")
    return failures


def main():
    args = sys.argv[1:]
    if len(args) < 3 or args[2] not in ("--crafted", "--corpus"):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 64
    flowseal, good_dir = os.path.abspath(args[0]), os.path.abspath(args[1])
    tmp = tempfile.mkdtemp(prefix="flowseal-badinput-")
    try:
        runner = Runner(flowseal, tmp)
        if args[2] == "--crafted":
            failures = crafted(runner, good_dir, tmp)
        else:
            workers = max(2, min(4, (os.cpu_count() or 2) * 2))
            failures = corpus(runner, "--subset" in args, workers)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for line in failures:
        print(line, flush=True)
    print("badinput: " + ("FAILED" if failures else "every input ended cleanly"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
