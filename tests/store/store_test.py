"""Store tests through the real binaries: tampering with segment files, inclusion proofs,
`flowseal cat` filters and formats, writerd killed over and over, and a full disk.

Run by meson as `python3 -m pytest -q store_test.py` (pytest -k NAME picks tests). Environment:
FLOWSEAL (the flowseal binary), FLOWSEAL_TEST_DATA (tests/data), FLOWSEAL_TAMPER (the test-only
flowseal-tamper of tests/tools).

Damage that only the seal can catch (a record's content changed, a record or batch dropped,
batches swapped, a batch re-signed with another key) is made with flowseal-tamper, which
rewrites a segment with valid frames, CRCs and index, so the failure verify reports comes from
the Merkle roots, signatures and chain, not from a CRC. Every process a test starts is bounded
in time; only processes this test started are killed.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time

import pytest

FLOWSEAL = os.environ["FLOWSEAL"]
DATA = os.environ["FLOWSEAL_TEST_DATA"]
TAMPER = os.environ["FLOWSEAL_TAMPER"]
SYNSCAN = os.path.join(DATA, "synscan.pcap")
TIMEOUT = 120


def instance(tag):
    return f"st{os.getpid()}-{tag}"


def run(args, **kw):
    return subprocess.run([FLOWSEAL] + args, capture_output=True, text=True, timeout=TIMEOUT, **kw)


def tamper(args):
    return subprocess.run([TAMPER] + args, capture_output=True, text=True, timeout=TIMEOUT)


def run_args(pcaps, out, tag, extra=()):
    args = [FLOWSEAL, "run", "-o", out, "--instance", instance(tag),
            "--set", "supervisor.stats_interval_s=0"]
    for p in pcaps:
        args += ["-r", p]
    return args + list(extra)


def pipeline(pcaps, out, tag, extra=()):
    r = subprocess.run(run_args(pcaps, out, tag, extra), capture_output=True, text=True,
                       timeout=TIMEOUT)
    assert r.returncode == 0, f"run {tag} exits 0 (got {r.returncode}: {r.stderr[-1500:]})"
    return r


def segments(d):
    return sorted(f for f in os.listdir(d) if f.startswith("seg-"))


def verify(d, *extra):
    return run(["verify", d] + list(extra))


def event_ids(d, *extra):
    r = run(["cat", d, "--events"] + list(extra))
    assert r.returncode == 0, f"cat --events {d} exits 0 ({r.stderr.strip()})"
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    return [f"{e['uid']}:{e['event']}:{e['event_number']}" for e in rows]


# ---------------------------------------------------------------------------- tampering

def batch_seqs(d, seg):
    """Batch seqs of a segment, from its frame headers (48 bytes each, after an 80-byte header)."""
    seqs = []
    with open(os.path.join(d, seg), "rb") as f:
        data = f.read()
    off = 80
    while off + 48 <= len(data) and data[off:off + 4] == b"FSFR":
        comp = int.from_bytes(data[off + 4:off + 8], "little")
        seqs.append(int.from_bytes(data[off + 16:off + 24], "little"))
        off += 48 + comp
    return seqs


class Sealed:
    """synscan in batches of <= 64 records, the segment split into segments of two batches;
    the damage of each tampering case is made to a copy of it."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.clean = os.path.join(tmp, "clean")
        pipeline([SYNSCAN], self.clean, "clean",
                 ["--set", "seal.batch_records=64", "--set", "writer.segment_max_mb=1"])
        for seg in segments(self.clean):
            r = tamper([os.path.join(self.clean, seg), "--split", "2"])
            assert r.returncode == 0, f"flowseal-tamper --split works ({r.stderr.strip()})"
        self.segs = segments(self.clean)
        assert len(self.segs) >= 3, f"the store has at least three segments (has {self.segs})"
        self.middle = self.segs[1]
        self.seqs = batch_seqs(self.clean, self.middle)
        self.a, self.b = self.seqs[0], self.seqs[-1]
        self.other_key = os.path.join(tmp, "other.key")
        run(["keygen", "-o", self.other_key])

    def damaged(self, name, action, *expect):
        """A copy of the store with `action` done to its middle segment (flowseal-tamper's
        arguments, or a function of (dir, path)): verify exits 65 and its first FAILED line
        names every part of `expect`. Returns that line."""
        d = os.path.join(self.tmp, "damaged-" + name)
        shutil.copytree(self.clean, d)
        path = os.path.join(d, self.middle)
        if isinstance(action, list):
            r = tamper([path] + action)
            assert r.returncode == 0, f"{name}: the damage could be made ({r.stderr.strip()})"
        else:
            action(d, path)
        v = verify(d)
        assert v.returncode == 65, \
            f"{name}: verify exits 65 (got {v.returncode}: {v.stderr.strip()})"
        failed = [l for l in v.stderr.splitlines() if "FAILED" in l]
        line = failed[0] if failed else ""
        for part in expect:
            assert part in line, f"{name}: verify's verdict names '{part}': {line!r}"
        return line


@pytest.fixture(scope="module")
def sealed(module_tmp):
    return Sealed(module_tmp)


def test_tampering_the_undamaged_store_verifies(sealed):
    v = verify(sealed.clean)
    assert v.returncode == 0, f"the undamaged store verifies ({v.stderr.strip()})"
    assert len(sealed.seqs) == 2, f"the middle segment holds two batches ({sealed.seqs})"


# The signed Merkle root proves that some record of the batch changed; the unsigned leaf
# hints stored beside it (two bytes of each record's leaf hash) say which one.
@pytest.mark.parametrize("k", [0, 5, 40])
def test_tampering_record_changed(sealed, k):
    b = sealed.b
    sealed.damaged(f"record-{k}-changed", ["--edit-record", f"{b}:{k}"], sealed.middle,
                   f"batch seq {b}, record {k}: Merkle root",
                   f"record {k} differs from the record that was sealed")


@pytest.mark.parametrize("k", [0, 7, 63])
def test_tampering_record_removed(sealed, k):
    b = sealed.b
    sealed.damaged(f"record-{k}-removed", ["--drop-record", f"{b}:{k}"], sealed.middle,
                   f"batch seq {b}, record {k}: recordCount",
                   f"a record was removed at record index {k}")


# A tamperer who rewrites the hints to fit the changed record: still caught by the root,
# and verify says it cannot tell which record it was rather than naming a wrong one.
def test_tampering_record_changed_hints_rewritten(sealed):
    b = sealed.b
    line = sealed.damaged("record-changed-hints-rewritten",
                          ["--edit-record", f"{b}:5", "--rehint", str(b)],
                          sealed.middle, f"batch seq {b}: Merkle root", "could not be located")
    assert ", record " not in line, f"no record is named when the hints were rewritten: {line!r}"


def test_tampering_record_removed_hints_rewritten(sealed):
    b = sealed.b
    sealed.damaged("record-removed-hints-rewritten",
                   ["--drop-record", f"{b}:7", "--rehint", str(b)],
                   sealed.middle, f"batch seq {b}: recordCount", "could not be located")


def test_tampering_batch_removed(sealed):
    b = sealed.b
    sealed.damaged("batch-removed", ["--drop-batch", str(b)], f"batch seq {b}", "missing")


def test_tampering_batches_swapped(sealed):
    a, b = sealed.a, sealed.b
    sealed.damaged("batches-swapped", ["--swap", f"{a}:{b}"], sealed.middle, f"batch seq {b}")


def test_tampering_other_key(sealed):
    b = sealed.b
    sealed.damaged("other-key", ["--reseal", str(b), "--key", sealed.other_key], sealed.middle,
                   f"batch seq {b}")


def test_tampering_segment_truncated(sealed):
    def truncate(d, path):
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) - 100)
    sealed.damaged("segment-truncated", truncate, sealed.middle, "truncated", f"seq {sealed.b}")


def test_tampering_segment_removed(sealed):
    def remove(d, path):
        os.remove(path)
    sealed.damaged("segment-removed", remove, sealed.segs[2], f"batch seq {sealed.a}", "missing")


def test_tampering_pinned_foreign_key(sealed):
    # Pinning a key: the original store fails against another key.
    v = verify(sealed.clean, "--pubkey", sealed.other_key.replace(".key", ".pub"))
    assert v.returncode == 65 and "not a trusted key" in v.stderr, \
        f"verify --pubkey with a foreign key fails ({v.returncode}: {v.stderr.strip()})"


def test_format2_store(tmp_path):
    """A store written before leaf hints existed (segment batches of encoding 1, made by
    commit 58474d0): it still verifies and reads, and damage to it is still found, only not
    located."""
    old = os.path.join(DATA, "store-format2")
    v = verify(old)
    assert v.returncode == 0 and "records:  3988" in v.stdout, \
        f"the format-2 store without leaf hints verifies ({v.returncode}: {v.stderr.strip()})"
    r = run(["cat", old, "--events"])
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 3988, \
        f"cat reads every record of the format-2 store ({r.returncode}: {r.stderr.strip()})"
    d = str(tmp_path / "format2-damaged")
    shutil.copytree(old, d)
    seg = os.path.join(d, segments(d)[0])
    seq = batch_seqs(d, segments(d)[0])[3]
    r = tamper([seg, "--edit-record", f"{seq}:5"])
    assert r.returncode == 0, f"format-2 damage could be made ({r.stderr.strip()})"
    v = verify(d)
    line = next((l for l in v.stderr.splitlines() if "FAILED" in l), "")
    assert v.returncode == 65 and f"batch seq {seq}: Merkle root" in line and \
        "carries no leaf hints" in line, \
        f"a changed record of a format-2 store fails, unlocated: {v.returncode} {line!r}"
    r = run(["verify", old, "--proof", first_event(old)])
    assert r.returncode == 0 and json.loads(r.stdout)["leaf_count"] > 0, \
        f"verify --proof works on the format-2 store ({r.stderr.strip()})"


def first_event(d):
    ids = event_ids(d)
    return ids[0] if ids else "Cnone:end:1"


# ---------------------------------------------------------------------------- proofs

def test_proof(tmp_path):
    tmp = str(tmp_path)
    out = os.path.join(tmp, "proof")
    pipeline([SYNSCAN], out, "proof", ["--set", "seal.batch_records=64"])
    ids = event_ids(out)
    assert len(ids) > 100, f"the proof store holds events ({len(ids)})"
    for event in (ids[0], ids[len(ids) // 2], ids[-1]):
        r = run(["verify", out, "--proof", event])
        assert r.returncode == 0, f"verify --proof {event} exits 0 ({r.stderr.strip()})"
        proof = json.loads(r.stdout)
        assert proof["event_id"] == event, "the proof names the event"
        path = os.path.join(tmp, "proof.json")
        with open(path, "w") as f:
            f.write(r.stdout)
        v = run(["verify-proof", path])
        assert v.returncode == 0, f"verify-proof accepts the proof of {event} ({v.stderr.strip()})"
        v = run(["verify-proof", path, "--pubkey", os.path.join(out, "keys", "flowseal.pub")])
        assert v.returncode == 0, f"verify-proof accepts the pinned key ({v.stderr.strip()})"
        # A changed count in the record, a flipped proof node: both refused.
        rec = proof["record"]
        bad = r.stdout.replace(f"\"orig_pkts\":{rec['orig_pkts']},",
                               f"\"orig_pkts\":{rec['orig_pkts'] + 1},", 1)
        with open(path, "w") as f:
            f.write(bad)
        v = run(["verify-proof", path])
        assert v.returncode == 65, f"verify-proof refuses a changed record ({v.returncode})"
        canon = proof["record_canonical"]
        flipped = canon[:40] + ("0" if canon[40] != "0" else "1") + canon[41:]
        with open(path, "w") as f:
            f.write(r.stdout.replace(canon, flipped))
        v = run(["verify-proof", path])
        assert v.returncode == 65, f"verify-proof refuses changed canonical bytes ({v.returncode})"
        if proof["proof"]:
            node = proof["proof"][0]
            with open(path, "w") as f:
                f.write(r.stdout.replace(node, node[::-1]))
            v = run(["verify-proof", path])
            assert v.returncode == 65, f"verify-proof refuses a changed path ({v.returncode})"
    r = run(["verify", out, "--proof", "Cnotthere1:end:9"])
    assert r.returncode == 65, "verify --proof of an unknown event exits 65"
    r = run(["verify", out, "--proof", "garbage"])
    assert r.returncode == 64, "verify --proof of a malformed event id exits 64"


# ---------------------------------------------------------------------------- cat

def test_cat(tmp_path):
    tmp = str(tmp_path)
    out = os.path.join(tmp, "cat")
    pipeline([SYNSCAN], out, "cat", ["--set", "seal.batch_records=64"])
    r = run(["cat", out])
    rows = [json.loads(l) for l in r.stdout.splitlines()]
    assert len(rows) > 100, f"cat prints flows ({len(rows)})"
    t = run(["cat", out, "--format", "tsv"])
    lines = t.stdout.splitlines()
    fields = [l for l in lines if l.startswith("#fields\t")]
    assert len(fields) == 1, f"tsv has one #fields line ({fields})"
    data = [l for l in lines if not l.startswith("#")]
    assert len(data) == len(rows), f"tsv has a row per flow ({len(data)} vs {len(rows)})"
    names = fields[0].split("\t")[1:]
    first = dict(zip(names, data[0].split("\t")))
    assert (first.get("uid") == rows[0]["uid"] and
            first.get("id.orig_h") == rows[0]["id.orig_h"] and
            int(first.get("orig_pkts", -1)) == rows[0]["orig_pkts"]), \
        f"the first tsv row says what the first json line says ({first} vs {rows[0]})"
    assert lines[-1].startswith("#close"), f"tsv ends with #close ({lines[-1]!r})"
    # Zeek's header, line by line, and rows that fit it (zeek-cut and Zeek's readers rely on it).
    head = [l for l in lines if l.startswith("#")]
    assert head[:5] == ["#separator \\x09", "#set_separator\t,", "#empty_field\t(empty)",
                        "#unset_field\t-", "#path\tconn"], f"tsv opens with Zeek's header: {head[:5]}"
    stamp = re.compile(r"^#(open|close)\t\d{4}-\d\d-\d\d-\d\d-\d\d-\d\d$")
    assert stamp.match(head[5] if len(head) > 5 else "") and stamp.match(lines[-1]), \
        f"#open and #close carry Zeek's YYYY-MM-DD-HH-MM-SS stamp ({head[5:6]}, {lines[-1]})"
    types = [l for l in lines if l.startswith("#types\t")]
    zeek_types = {"time", "string", "addr", "port", "enum", "interval", "count", "int", "double",
                  "bool", "set[string]"}
    if types:
        kinds = types[0].split("\t")[1:]
        assert len(names) == len(kinds) and set(kinds) <= zeek_types, \
            f"#types names a Zeek type for each of the {len(names)} fields ({kinds})"
        assert all(len(r.split("\t")) == len(names) for r in data), \
            "every tsv row has a value for each field"
        col = dict(zip(names, range(len(names))))
        assert all(float(r.split("\t")[col["ts"]]) > 1e9 and
                   0 <= int(r.split("\t")[col["id.orig_p"]]) <= 65535 for r in data), \
            "ts and port columns hold what their types say"

    def subset(args, keep, what):
        r = run(["cat", out] + args)
        assert r.returncode == 0, f"cat {args} exits 0 ({r.stderr.strip()})"
        got = [json.loads(l)["uid"] for l in r.stdout.splitlines()]
        want = [x["uid"] for x in rows if keep(x)]
        assert got == want and len(want) > 0, f"{what}: {len(got)} flows, expected {len(want)}"

    host = rows[0]["id.resp_h"]
    subset(["--host", host], lambda x: host in (x["id.orig_h"], x["id.resp_h"]), "--host")
    prefix = ".".join(host.split(".")[:2]) + ".0.0/16"
    subset(["--host", prefix], lambda x: any(h.split(".")[:2] == host.split(".")[:2]
                                             for h in (x["id.orig_h"], x["id.resp_h"])),
           "--host CIDR")
    port = rows[0]["id.resp_p"]
    subset(["--port", str(port)], lambda x: port in (x["id.orig_p"], x["id.resp_p"]), "--port")
    ts = sorted(x["ts"] for x in rows)
    mid = ts[len(ts) // 2]
    subset(["--since", str(mid)], lambda x: x["ts"] + x["duration"] >= mid - 1e-6, "--since epoch")
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(mid)))
    subset(["--until", iso], lambda x: x["ts"] < int(mid), "--until RFC 3339")
    # Filters together: both must hold; a port on either side matches.
    subset(["--host", host, "--port", str(port)],
           lambda x: (host in (x["id.orig_h"], x["id.resp_h"]) and
                      port in (x["id.orig_p"], x["id.resp_p"])),
           "--host with --port")
    subset(["--since", str(ts[len(ts) // 4]), "--until", str(mid)],
           lambda x: x["ts"] + x["duration"] >= ts[len(ts) // 4] - 1e-6 and x["ts"] < mid,
           "--since with --until")
    r = run(["cat", out, "--host", "10.0.0.0/99"])
    assert r.returncode == 64 and "--host 10.0.0.0/99" in r.stderr, \
        f"cat --host with a bad prefix exits 64 ({r.returncode}: {r.stderr.strip()})"
    r = run(["cat", out, "--port", "70000"])
    assert r.returncode == 64 and "out of range" in r.stderr, \
        f"cat --port 70000 exits 64 ({r.returncode}: {r.stderr.strip()})"
    r = run(["cat", out, "--host", "10.255.255.254"])
    assert r.returncode == 0 and r.stdout == "", "cat --host of an absent address prints nothing"
    r = run(["cat", out, "--since", "yesterday"])
    assert r.returncode == 64, "cat --since with a bad time exits 64"

    # A record stored twice (a crash replays it into another batch) is printed once.
    dup = os.path.join(tmp, "cat-dup")
    shutil.copytree(out, dup)
    seg = segments(dup)[0]
    shutil.copy(os.path.join(dup, seg), os.path.join(dup, "seg-00000000000000009999.fsg"))
    ids = event_ids(dup, "--no-verify")  # the copied segment repeats batches: not a chain
    assert len(ids) == len(set(ids)) and set(ids) == set(event_ids(out)), \
        "cat drops repeated event ids"


def test_cat_loop_times(tmp_path):
    """Loop mode over all of tests/data (packet times 2000..2024) twenty times: every pass is
    moved past the one before by the whole span, and passes past the year 2262 once wrapped
    around int64 and gave records times near -9.2e9 s, which cat printed as invalid JSON
    ("ts":-9223372036.-854775). Capture now stops at the last pass that fits and says so."""
    out = str(tmp_path / "loop20")
    r = subprocess.run(run_args(big_input(), out, "loop20", ["--set", "capture.loop=20"]),
                       capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 65 and "loop mode: stopped after 10 of 20 passes" in r.stderr, \
        f"capture says it stopped looping before times overflow ({r.returncode}: {r.stderr[-800:]})"
    v = verify(out)
    assert v.returncode == 0, f"the looped store verifies ({v.stderr.strip()})"
    c = run(["cat", out, "--events"])
    assert c.returncode == 0, f"cat of the looped store exits 0 ({c.stderr.strip()})"
    lines = c.stdout.splitlines()
    bad, insane = [], []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            bad.append(line)
            continue
        # 2000-01-01 .. 2262-04-11: the inputs' first time to the end of int64 nanoseconds.
        if not (946684800 <= row["ts"] <= 9223372036 and 0 <= row["duration"] < 86400 * 366):
            insane.append(line)
    assert len(lines) > 10000, f"the looped store holds its records ({len(lines)})"
    assert not bad, f"every line cat prints is JSON ({len(bad)} are not, e.g. {bad[:1]})"
    assert not insane, \
        f"every ts lies within the looped input's time ({len(insane)} do not, e.g. {insane[:1]})"
    t = run(["cat", out, "--events", "--format", "tsv"])
    rows = [l.split("\t") for l in t.stdout.splitlines() if not l.startswith("#")]
    assert len(rows) == len(lines) and all(float(r[0]) >= 946684800 for r in rows), \
        "tsv rows carry the same sane times"


# ---------------------------------------------------------------------------- writerd

def child_pids(parent, exe_name):
    pids = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid == parent and os.readlink(f"/proc/{pid}/exe").endswith("/" + exe_name):
                pids.append(int(pid))
        except (OSError, ValueError, IndexError):
            pass
    return pids


def big_input():
    return sorted(os.path.join(DATA, f) for f in os.listdir(DATA) if f.endswith((".pcap", ".pcapng")))


def test_writerd_killed(tmp_path, report):
    tmp = str(tmp_path)
    # Ten passes over the data (loop mode rewrites the addresses, so flows stay unique): long
    # enough on a fast, idle machine that writerd is seen and killed mid-run, which the
    # single pass was not (CI once finished it before the first poll).
    base = ["--set", "seal.batch_records=32", "--set", "seal.batch_ms=5",
            "--set", "writer.fsync=batch", "--set", "supervisor.max_restarts=100",
            "--set", "capture.loop=10"]
    calm = os.path.join(tmp, "calm")
    pipeline(big_input(), calm, "calm", base)
    out = os.path.join(tmp, "killed")
    p = subprocess.Popen(run_args(big_input(), out, "killed", base), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    kills = 0
    deadline = time.time() + TIMEOUT
    try:
        while p.poll() is None and time.time() < deadline:
            # A bounded number of kills: a slow (sanitizer) build must not turn the test into
            # "kill until the supervisor gives up".
            for pid in child_pids(p.pid, "flowseal-writerd") if kills < 8 else []:
                try:
                    os.kill(pid, signal.SIGKILL)
                    kills += 1
                except ProcessLookupError:
                    pass
            # Poll quickly until the first kill, then give each replacement time to work.
            time.sleep(0.15 if kills else 0.01)
        output, _ = p.communicate(timeout=TIMEOUT)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    report(f"writerd killed {kills} times")
    assert kills >= 1, "writerd was killed at least once during the run"
    assert p.returncode == 0, \
        f"the run with writerd killed completes ({p.returncode}: {output[-1500:]})"
    v = verify(out)
    assert v.returncode == 0, f"the store verifies after writerd was killed ({v.stderr.strip()})"
    raw = run(["cat", out, "--events"]).stdout.splitlines()
    ids = event_ids(out)
    want = event_ids(calm)
    assert len(ids) == len(set(ids)) == len(raw), "every record is stored exactly once"
    assert set(ids) == set(want), \
        f"the same events as an undisturbed run ({len(ids)} vs {len(want)})"


def test_disk_full(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("disk full: needs root to mount a tmpfs")
    mnt = str(tmp_path / "small")
    os.mkdir(mnt)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", mnt],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"disk full: cannot mount a tmpfs: {r.stderr.strip()}")
    try:
        filler = os.path.join(mnt, "filler")
        # Leave about 16 KiB: the two key files take a 4 KiB page each, and synscan's segments
        # (~18 KiB in 64-record batches since segment format 2) do not fit the rest.
        st = os.statvfs(mnt)
        with open(filler, "wb") as f:
            f.write(b"\0" * (st.f_bavail * st.f_frsize - 16 * 1024))
        out = os.path.join(mnt, "out")
        p = subprocess.Popen(run_args([SYNSCAN], out, "full",
                                      ["--set", "seal.batch_records=64",
                                       "--set", "writer.segment_max_mb=1"]),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines = []
        saw_full = threading.Event()

        def reader():
            for line in p.stdout:
                lines.append(line)
                if "No space left" in line:
                    saw_full.set()
        t = threading.Thread(target=reader, daemon=True)
        t.start()
        try:
            saw_full.wait(60)
            assert saw_full.is_set(), "writerd logs that the disk is full"
            assert p.poll() is None, "the run waits while the disk is full"
            os.remove(filler)
            p.wait(TIMEOUT)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        t.join(10)
        text = "".join(lines)
        assert p.returncode == 0, \
            f"the run completes once space is free ({p.returncode}: {text[-1500:]})"
        assert "writing works again" in text, "writerd says writing resumed"
        v = verify(out)
        assert v.returncode == 0, f"the store verifies after a full disk ({v.stderr.strip()})"
        assert len(event_ids(out)) > 1000, "the records are all there after a full disk"
    finally:
        subprocess.run(["umount", mnt], capture_output=True)
