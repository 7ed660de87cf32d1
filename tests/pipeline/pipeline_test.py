#!/usr/bin/env python3
"""End-to-end tests of the whole process set: real processes, real shared memory, real files.

usage: pipeline_test.py FLOWSEAL_BINARY TEST_DATA_DIR

Each check runs `flowseal` as a user would and looks only at what a user sees: exit codes,
messages, `flowseal cat` output and `flowseal verify`. Every process a check starts is
waited for (bounded); shared memory uses a per-test instance name so parallel test runs do not
collide.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

FLOWSEAL = os.path.abspath(sys.argv[1])
DATA = os.path.abspath(sys.argv[2])
SAMPLE = os.path.join(DATA, "sample.pcap")
TIMEOUT = 120

failures = []
checks = 0


def check(condition, what):
    global checks
    checks += 1
    if not condition:
        failures.append(what)
        print(f"FAIL: {what}", flush=True)


def instance(tag):
    return f"t{os.getpid()}-{tag}"


def run(args, **kw):
    return subprocess.run([FLOWSEAL] + args, capture_output=True, text=True, timeout=TIMEOUT, **kw)


def run_pipeline(pcaps, out, tag, extra=()):
    args = ["run", "-o", out, "--instance", instance(tag), "--set", "supervisor.stats_interval_s=0"]
    for p in pcaps:
        args += ["-r", p]
    return run(args + list(extra))


def cat(out, *extra):
    r = run(["cat", out] + list(extra))
    check(r.returncode == 0, f"cat {out} exits 0 (got {r.returncode}: {r.stderr.strip()})")
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


def test_sample_runs_seals_and_verifies(tmp):
    out = os.path.join(tmp, "sample")
    r = run_pipeline([SAMPLE], out, "sample")
    check(r.returncode == 0, f"run on the sample exits 0 (got {r.returncode}: {r.stderr[-2000:]})")
    check("accounting received = processed + sampled out + dropped: yes" in r.stderr,
          "the run summary says every packet is accounted for")
    v = run(["verify", out])
    check(v.returncode == 0, f"verify of a fresh run exits 0 (got {v.returncode}: {v.stdout} {v.stderr})")
    flows = cat(out)
    check(len(flows) > 0, "cat prints flows for the sample")
    for f in flows[:50]:
        for field in ("ts", "uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "proto",
                      "orig_pkts", "orig_ip_bytes", "resp_pkts", "resp_ip_bytes", "conn_state",
                      "history", "community_id"):
            check(field in f, f"cat line has Zeek field {field}")
    events = cat(out, "--events")
    check(len(events) >= len(flows), "--events prints at least every end event")
    ends = [e for e in events if e["event"] == "end"]
    check(len(ends) == len(flows), "cat without --events prints exactly the end events")
    uids = [f["uid"] for f in flows]
    check(len(uids) == len(set(uids)), "every finished flow has its own uid")
    return out, flows


def test_same_input_gives_same_records(tmp, first_flows):
    out = os.path.join(tmp, "again")
    r = run_pipeline([SAMPLE], out, "again")
    check(r.returncode == 0, "a second run exits 0")
    strip = lambda fs: sorted(json.dumps(f, sort_keys=True) for f in fs)
    check(strip(cat(out)) == strip(first_flows), "a replay of the same capture gives the same records")


def test_tampering_is_named(tmp, out):
    segs = sorted(f for f in os.listdir(out) if not f.startswith(".") and os.path.isfile(os.path.join(out, f)))
    check(len(segs) > 0, "the run wrote at least one segment file")
    if not segs:
        return
    bad = os.path.join(tmp, "tampered")
    shutil.copytree(out, bad)
    path = os.path.join(bad, segs[0])
    data = bytearray(open(path, "rb").read())
    # Flip one byte in the middle of the file: inside a compressed frame.
    data[len(data) // 2] ^= 0x40
    open(path, "wb").write(bytes(data))
    v = run(["verify", bad])
    check(v.returncode != 0, "verify fails on a segment with one byte changed")
    check(segs[0] in (v.stdout + v.stderr), f"verify names the damaged segment {segs[0]}")


def test_not_a_capture(tmp):
    junk = os.path.join(tmp, "junk.pcap")
    with open(junk, "wb") as f:
        f.write(b"this is not a capture file\n" * 10)
    r = run_pipeline([junk], os.path.join(tmp, "junk-out"), "junk")
    check(r.returncode == 65, f"a file that is not a capture exits 65 (got {r.returncode})")
    check("junk.pcap" in r.stderr, "the message names the file")


def test_truncated_capture_keeps_good_packets(tmp):
    data = open(SAMPLE, "rb").read()
    cut = os.path.join(tmp, "cut.pcap")
    with open(cut, "wb") as f:
        f.write(data[: len(data) * 2 // 3 + 7])  # stops mid-record
    out = os.path.join(tmp, "cut-out")
    r = run_pipeline([cut], out, "cut")
    check(r.returncode == 65, f"a capture that stops mid-record exits 65 (got {r.returncode})")
    check("cut.pcap" in r.stderr and "offset" in r.stderr,
          "the message names the file and the offset of the damaged record")
    v = run(["verify", out])
    check(v.returncode == 0, "what was read before the damage is sealed and verifies")
    check(len(cat(out)) > 0, "the good packets before the damage became flows")


def test_missing_file(tmp):
    r = run_pipeline([os.path.join(tmp, "nope.pcap")], os.path.join(tmp, "nope-out"), "nope")
    check(r.returncode == 66, f"a missing capture file exits 66 (got {r.returncode})")
    check("nope.pcap" in r.stderr, "the message names the missing file")


def test_bad_config(tmp):
    conf = os.path.join(tmp, "bad.yaml")
    with open(conf, "w") as f:
        f.write("flowd:\n  shards: 1\n  udp_idle_timeot: 5\n")
    r = run(["run", "-c", conf, "-r", SAMPLE, "-o", os.path.join(tmp, "bad-out")])
    check(r.returncode == 78, f"an unknown config key exits 78 (got {r.returncode})")
    check("udp_idle_timeot" in r.stderr and "bad.yaml:3" in r.stderr,
          f"the message names the key and file:line ({r.stderr.strip()})")
    r = run(["run", "-r", SAMPLE, "-o", os.path.join(tmp, "bad-out"), "--set", "flowd.shards=99"])
    check(r.returncode == 78 and "flowd.shards" in r.stderr, "an out-of-range --set exits 78 naming the key")
    r = run(["run", "-r", SAMPLE, "-o", os.path.join(tmp, "bad-out"), "--set", "dedup.enabled=maybe"])
    check(r.returncode == 78 and "dedup.enabled" in r.stderr, "a wrongly typed --set exits 78 naming the key")


def test_two_shards_give_the_same_flows(tmp):
    # dedupd sees the shards' records interleaved in arrival order, so which short flows it
    # folds into summaries may differ between runs; the flows themselves must not.
    no_dedup = ["--set", "dedup.enabled=false"]
    one = os.path.join(tmp, "one-shard")
    r = run_pipeline([SAMPLE], one, "one-shard", no_dedup)
    check(r.returncode == 0, f"a one-shard run exits 0 ({r.stderr[-1000:]})")
    out = os.path.join(tmp, "shards")
    r = run_pipeline([SAMPLE], out, "shards", no_dedup + ["--set", "flowd.shards=2"])
    check(r.returncode == 0, f"a two-shard run exits 0 ({r.stderr[-1000:]})")
    key = lambda f: (f["id.orig_h"], f["id.orig_p"], f["id.resp_h"], f["id.resp_p"], f["proto"],
                     f["orig_pkts"], f["resp_pkts"], f["orig_ip_bytes"], f["resp_ip_bytes"])
    check(sorted(map(key, cat(out))) == sorted(map(key, cat(one))),
          "two flowd shards produce the same flows as one")


def main():
    tmp = tempfile.mkdtemp(prefix="flowseal-pipeline-")
    try:
        out, flows = test_sample_runs_seals_and_verifies(tmp)
        test_same_input_gives_same_records(tmp, flows)
        test_tampering_is_named(tmp, out)
        test_two_shards_give_the_same_flows(tmp)
        test_not_a_capture(tmp)
        test_truncated_capture_keeps_good_packets(tmp)
        test_missing_file(tmp)
        test_bad_config(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{checks - len(failures)} of {checks} checks passed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
