"""What cat shows is decided only by what is signed (issue: unsigned frame-header times once
hid records from `cat --since` while verify said OK), cat says when what it printed is
forged or unverified, and verify says when a chain starts after batch 0.

Stores are copies of tests/data/store-format2, split into segments of two batches and damaged
with flowseal-tamper (frames, CRCs and index stay valid)."""
import json
import os
import shutil
import subprocess

import pytest

FLOWSEAL = os.environ["FLOWSEAL"]
TAMPER = os.environ["FLOWSEAL_TAMPER"]
DATA = os.environ["FLOWSEAL_TEST_DATA"]
TIMEOUT = 120


def run(args):
    return subprocess.run([FLOWSEAL] + args, capture_output=True, text=True, timeout=TIMEOUT)


def tamper(args):
    r = subprocess.run([TAMPER] + args, capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr
    return r


def segments(d):
    return sorted(f for f in os.listdir(d) if f.startswith("seg-"))


def batch_seqs(path):
    """Batch seqs of a segment, from its frame headers (48 bytes each, after an 80-byte header)."""
    with open(path, "rb") as f:
        data = f.read()
    seqs, off = [], 80
    while off + 48 <= len(data) and data[off:off + 4] == b"FSFR":
        comp = int.from_bytes(data[off + 4:off + 8], "little")
        seqs.append(int.from_bytes(data[off + 16:off + 24], "little"))
        off += 48 + comp
    return seqs


def events(r):
    return sorted(f"{e['uid']}:{e['event']}:{e['event_number']}"
                  for e in map(json.loads, r.stdout.splitlines()))


@pytest.fixture(scope="module")
def split_store(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("times") / "store")
    shutil.copytree(os.path.join(DATA, "store-format2"), d)
    for seg in segments(d):
        tamper([os.path.join(d, seg), "--split", "2"])
    assert len(segments(d)) >= 3
    v = run(["verify", d])
    assert v.returncode == 0, v.stderr
    return d


@pytest.fixture
def store(split_store, tmp_path):
    d = str(tmp_path / "store")
    shutil.copytree(split_store, d)
    return d


def test_a_clean_store_cats_quietly_with_exit_0(store):
    r = run(["cat", store, "--events"])
    assert r.returncode == 0 and r.stderr == ""
    assert len(r.stdout.splitlines()) == 3988


def test_rewritten_frame_header_times_fail_verify_and_hide_nothing_from_cat(store):
    clean = run(["cat", store, "--events"])
    first_ts = min(json.loads(l)["ts"] for l in clean.stdout.splitlines())
    since = str(int(first_ts) - 1)
    middle = segments(store)[1]
    seq = batch_seqs(os.path.join(store, middle))[-1]
    # 1970: a reader skipping frames by these times would skip this batch under --since.
    tamper([os.path.join(store, middle), "--frame-times", f"{seq}:1:2"])

    v = run(["verify", store])
    assert v.returncode == 65
    verdict = next(l for l in v.stderr.splitlines() if "FAILED" in l)
    assert middle in verdict and f"batch seq {seq}" in verdict and "frame header" in verdict

    want = events(run(["cat", store, "--events", "--since", since, "--no-verify"]))
    assert want == events(clean)  # nothing hidden, even unverified
    r = run(["cat", store, "--events", "--since", since])
    assert events(r) == events(clean)
    assert r.returncode == 65
    assert "FAILED verification" in r.stderr and f"batch seq {seq}" in r.stderr


def test_cat_of_a_forged_record_says_so_in_stderr_and_exit_code(store):
    middle = segments(store)[1]
    seq = batch_seqs(os.path.join(store, middle))[0]
    tamper([os.path.join(store, middle), "--edit-record", f"{seq}:5"])
    r = run(["cat", store, "--events"])
    assert r.returncode == 65
    last = r.stderr.strip().splitlines()[-1]
    assert "FAILED verification" in r.stderr and f"batch seq {seq}" in r.stderr, last
    r = run(["cat", store, "--events", "--no-verify"])
    assert r.returncode == 0
    assert "NOT VERIFIED (--no-verify)" in r.stderr


def test_cat_with_a_foreign_pinned_key_fails(store, tmp_path):
    key = str(tmp_path / "other.key")
    assert run(["keygen", "-o", key]).returncode == 0
    r = run(["cat", store, "--pubkey", key.replace(".key", ".pub")])
    assert r.returncode == 65 and "not a trusted key" in r.stderr


def test_verify_says_when_the_chain_starts_after_batch_0(store):
    v = run(["verify", store])
    assert v.returncode == 0 and "chain starts" not in v.stdout
    first, second = segments(store)[0], segments(store)[1]
    os.remove(os.path.join(store, first))
    start = batch_seqs(os.path.join(store, second))[0]
    v = run(["verify", store])
    assert v.returncode == 0, v.stderr
    assert f"the chain starts at batch seq {start}: batches 0..{start - 1} are not in this store" \
        in v.stdout
    assert "verify: OK" in v.stdout
