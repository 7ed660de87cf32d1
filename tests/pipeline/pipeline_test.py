"""End-to-end tests of the whole process set: real processes, real shared memory, real files.

Run by meson: python3 -m pytest -q tests/pipeline/pipeline_test.py (FLOWSEAL and
FLOWSEAL_TEST_DATA in the environment, see tests/conftest.py).

Each test runs `flowseal` as a user would and looks only at what a user sees: exit codes,
messages, `flowseal cat` output and `flowseal verify`. Every process a test starts is waited
for (bounded); shared memory uses a per-test instance name so parallel test runs do not
collide.
"""
import json
import os
import re
import shutil
import struct

import pytest

ZEEK_FIELDS = ("ts", "uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "proto",
               "orig_pkts", "orig_ip_bytes", "resp_pkts", "resp_ip_bytes", "conn_state",
               "history", "community_id")


@pytest.fixture(scope="module")
def sample(data_dir):
    return os.path.join(data_dir, "sample.pcap")


@pytest.fixture(scope="module")
def run_pipeline(run_flowseal, instance):
    def run(pcaps, out, tag, extra=()):
        args = ["run", "-o", out, "--instance", instance(tag),
                "--set", "supervisor.stats_interval_s=0"]
        for p in pcaps:
            args += ["-r", p]
        return run_flowseal(args + list(extra))
    return run


@pytest.fixture(scope="module")
def cat(run_flowseal):
    def cat_(out, *extra):
        r = run_flowseal(["cat", out] + list(extra))
        assert r.returncode == 0, f"cat {out} exits 0 (got {r.returncode}: {r.stderr.strip()})"
        return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    return cat_


@pytest.fixture(scope="module")
def sample_run(module_tmp, sample, run_pipeline):
    """The sample capture run once: its output directory and the run's result."""
    out = os.path.join(module_tmp, "sample")
    return out, run_pipeline([sample], out, "sample")


def test_the_sample_runs_seals_and_verifies(sample_run, run_flowseal, cat):
    out, r = sample_run
    assert r.returncode == 0, f"run on the sample exits 0 (got {r.returncode}: {r.stderr[-2000:]})"
    assert "accounting received = processed + sampled out + dropped: yes" in r.stderr, \
        "the run summary says every packet is accounted for"
    v = run_flowseal(["verify", out])
    assert v.returncode == 0, f"verify of a fresh run exits 0 (got {v.returncode}: {v.stdout} {v.stderr})"
    flows = cat(out)
    assert len(flows) > 0, "cat prints flows for the sample"
    for f in flows[:50]:
        for field in ZEEK_FIELDS:
            assert field in f, f"cat line has Zeek field {field}"
    events = cat(out, "--events")
    assert len(events) >= len(flows), "--events prints at least every end event"
    ends = [e for e in events if e["event"] in ("end", "summary")]
    assert len(ends) == len(flows), "cat without --events prints exactly the end and summary events"
    uids = [f["uid"] for f in flows]
    assert len(uids) == len(set(uids)), "every finished flow has its own uid"


def test_the_same_input_gives_the_same_records(sample_run, module_tmp, sample, run_pipeline, cat):
    out = os.path.join(module_tmp, "again")
    r = run_pipeline([sample], out, "again")
    assert r.returncode == 0, "a second run exits 0"
    strip = lambda fs: sorted(json.dumps(f, sort_keys=True) for f in fs)
    assert strip(cat(out)) == strip(cat(sample_run[0])), \
        "a replay of the same capture gives the same records"


def test_cat_by_default_accounts_for_every_finished_flow(sample_run, cat):
    """With dedup on, `cat` without --events prints the flow ends and dedupd's summaries, so
    the flows they stand for (1 per end, flow_count per summary) are every flow that ended."""
    out, r = sample_run
    ended = re.search(r"flows\s+started \d+\s+ended (\d+)", r.stderr)
    assert ended, r.stderr[-2000:]
    rows = cat(out)
    kinds = {row["event"] for row in rows}
    assert kinds == {"end", "summary"}, f"default cat shows ends and summaries, nothing else: {kinds}"
    accounted = sum(row["flow_count"] if row["event"] == "summary" else 1 for row in rows)
    assert accounted == int(ended.group(1)), \
        f"ends + summaries' flow counts ({accounted}) = flows ended ({ended.group(1)})"
    everything = cat(out, "--events")
    assert {row["event"] for row in everything} >= {"start", "end", "summary"}
    assert len(everything) > len(rows)


def test_tampering_is_found_and_the_segment_named(sample_run, module_tmp, run_flowseal):
    out = sample_run[0]
    segs = sorted(f for f in os.listdir(out)
                  if not f.startswith(".") and os.path.isfile(os.path.join(out, f)))
    assert len(segs) > 0, "the run wrote at least one segment file"
    bad = os.path.join(module_tmp, "tampered")
    shutil.copytree(out, bad)
    path = os.path.join(bad, segs[0])
    data = bytearray(open(path, "rb").read())
    # Flip one byte in the middle of the file: inside a compressed frame.
    data[len(data) // 2] ^= 0x40
    open(path, "wb").write(bytes(data))
    v = run_flowseal(["verify", bad])
    assert v.returncode != 0, "verify fails on a segment with one byte changed"
    assert segs[0] in (v.stdout + v.stderr), f"verify names the damaged segment {segs[0]}"


def test_two_flowd_shards_give_the_same_flows_as_one(tmp_path, sample, run_pipeline, cat):
    # dedupd sees the shards' records interleaved in arrival order, so which short flows it
    # folds into summaries may differ between runs; the flows themselves must not.
    no_dedup = ["--set", "dedup.enabled=false"]
    one = str(tmp_path / "one-shard")
    r = run_pipeline([sample], one, "one-shard", no_dedup)
    assert r.returncode == 0, f"a one-shard run exits 0 ({r.stderr[-1000:]})"
    out = str(tmp_path / "shards")
    r = run_pipeline([sample], out, "shards", no_dedup + ["--set", "flowd.shards=2"])
    assert r.returncode == 0, f"a two-shard run exits 0 ({r.stderr[-1000:]})"
    key = lambda f: (f["id.orig_h"], f["id.orig_p"], f["id.resp_h"], f["id.resp_p"], f["proto"],
                     f["orig_pkts"], f["resp_pkts"], f["orig_ip_bytes"], f["resp_ip_bytes"])
    assert sorted(map(key, cat(out))) == sorted(map(key, cat(one))), \
        "two flowd shards produce the same flows as one"


def test_a_file_that_is_not_a_capture_exits_65_naming_it(tmp_path, run_pipeline):
    junk = tmp_path / "junk.pcap"
    junk.write_bytes(b"this is not a capture file\n" * 10)
    r = run_pipeline([str(junk)], str(tmp_path / "junk-out"), "junk")
    assert r.returncode == 65, f"a file that is not a capture exits 65 (got {r.returncode})"
    assert "junk.pcap" in r.stderr, "the message names the file"


def test_a_truncated_capture_exits_65_and_keeps_the_good_packets(tmp_path, sample, run_pipeline,
                                                                 run_flowseal, cat):
    data = open(sample, "rb").read()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[: len(data) * 2 // 3 + 7])  # stops mid-record
    out = str(tmp_path / "cut-out")
    r = run_pipeline([str(cut)], out, "cut")
    assert r.returncode == 65, f"a capture that stops mid-record exits 65 (got {r.returncode})"
    assert "cut.pcap" in r.stderr and "offset" in r.stderr, \
        "the message names the file and the offset of the damaged record"
    v = run_flowseal(["verify", out])
    assert v.returncode == 0, "what was read before the damage is sealed and verifies"
    assert len(cat(out)) > 0, "the good packets before the damage became flows"


def test_a_missing_capture_file_exits_66_naming_it(tmp_path, run_pipeline):
    r = run_pipeline([str(tmp_path / "nope.pcap")], str(tmp_path / "nope-out"), "nope")
    assert r.returncode == 66, f"a missing capture file exits 66 (got {r.returncode})"
    assert "nope.pcap" in r.stderr, "the message names the missing file"


def test_a_bad_config_exits_78_naming_the_key(tmp_path, sample, run_flowseal):
    conf = tmp_path / "bad.yaml"
    conf.write_text("flowd:\n  shards: 1\n  udp_idle_timeot: 5\n")
    out = str(tmp_path / "bad-out")
    r = run_flowseal(["run", "-c", str(conf), "-r", sample, "-o", out])
    assert r.returncode == 78, f"an unknown config key exits 78 (got {r.returncode})"
    assert "udp_idle_timeot" in r.stderr and "bad.yaml:3" in r.stderr, \
        f"the message names the key and file:line ({r.stderr.strip()})"
    r = run_flowseal(["run", "-r", sample, "-o", out, "--set", "flowd.shards=99"])
    assert r.returncode == 78 and "flowd.shards" in r.stderr, \
        "an out-of-range --set exits 78 naming the key"
    r = run_flowseal(["run", "-r", sample, "-o", out, "--set", "dedup.enabled=maybe"])
    assert r.returncode == 78 and "dedup.enabled" in r.stderr, \
        "a wrongly typed --set exits 78 naming the key"


def _udp4(src, dst, sport, dport, data):
    """An IPv4 UDP datagram (checksums 0: flowseal does not check them)."""
    udp = struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                       bytes(map(int, src.split("."))), bytes(map(int, dst.split(".")))) + udp


def _amsdu_frame(msdus, lengths=None):
    """An 802.11 QoS data frame (to DS) with the A-MSDU bit, carrying `msdus` (each LLC/SNAP +
    IPv4) as subframes padded to 4 bytes but the last; `lengths` overrides length fields."""
    frame = bytes([0x88, 0x01, 0, 0]) + bytes(range(18)) + b"\x00\x00" + b"\x80\x00"
    for i, msdu in enumerate(msdus):
        msdu = b"\xaa\xaa\x03\x00\x00\x00\x08\x00" + msdu
        length = len(msdu) if lengths is None else lengths[i]
        sub = bytes([0x30 + i] * 12) + struct.pack("!H", length) + msdu
        if i + 1 < len(msdus):
            sub += b"\x00" * (-len(sub) % 4)
        frame += sub
    return frame


def test_an_802_11_a_msdu_frame_is_split_into_packets_of_their_own_flows(tmp_path, run_pipeline,
                                                                          cat):
    # One A-MSDU frame with three datagrams of three flows, then two malformed frames (a
    # subframe length past the frame; an empty subframe): 3 packets in flows, 2 malformed.
    datagrams = [_udp4("10.0.0.1", "10.0.0.2", 5000 + i, 53, b"x" * (30 + 7 * i))
                 for i in range(3)]
    frames = [_amsdu_frame(datagrams),
              _amsdu_frame(datagrams[:2], [len(datagrams[0]) + 8, len(datagrams[1]) + 9]),
              _amsdu_frame(datagrams[:2], [0, len(datagrams[1]) + 8])]
    pcap = tmp_path / "amsdu.pcap"
    with open(pcap, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 105))  # DLT_IEEE802_11
        for n, frame in enumerate(frames):
            f.write(struct.pack("<IIII", 1700000000, n, len(frame), len(frame)) + frame)
    out = str(tmp_path / "amsdu-out")
    r = run_pipeline([str(pcap)], out, "amsdu",
                     ["--set", "dedup.enabled=false", "--set", "flowd.shards=2"])
    assert r.returncode == 0, f"the run exits 0 ({r.stderr[-1000:]})"
    assert re.search(r"received 5 +processed 5 \(3 in flows, 0 not IP, 2 malformed\)", r.stderr), \
        f"each subframe counts as a packet, each malformed frame as one ({r.stderr[-1500:]})"
    assert "accounting received = processed + sampled out + dropped: yes" in r.stderr
    flows = sorted((f["id.orig_p"], f["orig_pkts"], f["orig_ip_bytes"]) for f in cat(out))
    assert flows == [(5000 + i, 1, len(d)) for i, d in enumerate(datagrams)], \
        "each subframe's datagram is one packet of its own flow"
