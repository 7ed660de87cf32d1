"""Fault injection into writerd's file I/O through an LD_PRELOAD shim (fault_shim.cpp).

Run by meson: python3 -m pytest -q tests/faults/faults_test.py (see tests/conftest.py).
FLOWSEAL_FAULT_SHIM names the shim. Each test runs `flowseal run` over a capture with the shim
preloaded (the supervisor passes its environment to the stages; the shim acts only in
flowseal-writerd and only on files under the run's output directory), makes one kind of call
fail a few times (ENOSPC, EIO, a short write, a write torn by a full disk, a failing fsync, a
failing rename, a failing create, a failing ftruncate at a torn frame and at start-up's cut of a
.part, a failing retention delete; slow reads under start-up's recovery), and checks what
issue 13 asks for each fault:
  - no crash: the run exits 0 and writerd is never restarted;
  - a clear log line naming the file and the error;
  - nothing already durable lost: the store holds exactly the events of an undisturbed run;
  - `flowseal verify` passes on what was stored;
  - every packet accounted for in the run summary (the ledger balances, no drops).
The shim appends one line per injected fault to a log, so each test also checks that its
fault really happened.
"""
import datetime
import json
import os
import re
import subprocess

import pytest

TIMEOUT = 120
SETTINGS = ["supervisor.stats_interval_s=0", "seal.batch_records=64", "dedup.enabled=false",
            "writer.fsync=batch"]


@pytest.fixture(scope="session")
def shim():
    path = os.environ.get("FLOWSEAL_FAULT_SHIM")
    if not path:
        raise pytest.UsageError("FLOWSEAL_FAULT_SHIM is not set: run this test through meson")
    return os.path.abspath(path)


def flowseal_run(flowseal, data_dir, out, name, env=None, extra=()):
    args = [flowseal, "run", "-r", os.path.join(data_dir, "synscan.pcap"), "-o", out,
            "--instance", name]
    for s in SETTINGS + list(extra):
        args += ["--set", s]
    return subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT,
                          env=dict(os.environ, **(env or {})))


def event_ids(flowseal, out):
    r = subprocess.run([flowseal, "cat", out, "--events"], capture_output=True, text=True,
                       timeout=TIMEOUT)
    assert r.returncode == 0, f"cat --events {out} exits 0 ({r.stderr.strip()})"
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    return [f"{e['uid']}:{e['event']}:{e['event_number']}" for e in rows]


@pytest.fixture(scope="module")
def calm(flowseal, data_dir, module_tmp, instance):
    """The events of an undisturbed run: what every faulty run must store."""
    out = os.path.join(module_tmp, "calm")
    r = flowseal_run(flowseal, data_dir, out, instance("calm"))
    assert r.returncode == 0, r.stderr[-1500:]
    return sorted(event_ids(flowseal, out))


def faulty_run(flowseal, data_dir, shim, tmp_path, name, fault, after, count, extra=()):
    """A run with `fault` injected into writerd; returns (result, injected fault lines, out)."""
    out = str(tmp_path / "out")
    log = str(tmp_path / "faults.log")
    env = {"LD_PRELOAD": shim, "FLOWSEAL_FAULT": fault, "FLOWSEAL_FAULT_PATH": out,
           "FLOWSEAL_FAULT_AFTER": str(after), "FLOWSEAL_FAULT_COUNT": str(count),
           "FLOWSEAL_FAULT_LOG": log}
    r = flowseal_run(flowseal, data_dir, out, name, env, extra)
    injected = open(log).read().splitlines() if os.path.exists(log) else []
    return r, injected, out


def check_survived(flowseal, calm, r, injected, out, log_needles=()):
    text = r.stderr + r.stdout
    assert injected, "the shim injected the fault"
    assert r.returncode == 0, f"the run completes (exit {r.returncode}): {text[-2000:]}"
    assert "writerd ended" not in text, f"writerd was never restarted: {text[-2000:]}"
    for needle in log_needles:
        assert needle in text, f"the log says {needle!r}: {text[-2000:]}"
    assert "accounting received = processed + sampled out + dropped: yes" in text, \
        f"the ledger balances: {text[-1500:]}"
    assert "dropped: ring full 0, kernel 0" in text, f"nothing dropped: {text[-1500:]}"
    assert not any(f.endswith(".part") for f in os.listdir(out)), "no .part left after drain"
    v = subprocess.run([flowseal, "verify", out], capture_output=True, text=True,
                       timeout=TIMEOUT)
    assert v.returncode == 0, f"the store verifies: {v.stdout}{v.stderr}"
    ids = event_ids(flowseal, out)
    assert len(ids) == len(set(ids)), "no record stored twice"
    assert sorted(ids) == calm, f"the events of an undisturbed run ({len(ids)} vs {len(calm)})"


def segment_part(out):
    return os.path.join(out, "seg-00000000000000000000.fsg.part")


@pytest.mark.parametrize("fault,errno_text", [("enospc", "No space left on device"),
                                              ("eio", "Input/output error")])
def test_a_failing_frame_write_is_retried_and_loses_nothing(
        flowseal, data_dir, shim, tmp_path, instance, calm, fault, errno_text):
    # The header and four frames go through; the next three frame writes fail.
    r, injected, out = faulty_run(flowseal, data_dir, shim, tmp_path, instance(fault), fault,
                                  after=5, count=3)
    assert len(injected) == 3, injected
    check_survived(flowseal, calm, r, injected, out,
                   [f"{segment_part(out)}: write at offset", errno_text, "writing works again"])


@pytest.mark.parametrize("fault,errno_text", [("enospc", "No space left on device"),
                                              ("eio", "Input/output error")])
def test_a_failing_segment_header_write_is_retried(flowseal, data_dir, shim, tmp_path, instance,
                                                   calm, fault, errno_text):
    r, injected, out = faulty_run(flowseal, data_dir, shim, tmp_path, instance("h" + fault),
                                  fault, after=0, count=2)
    check_survived(flowseal, calm, r, injected, out,
                   [f"{segment_part(out)}: write at offset 0 failed: {errno_text}"])


def test_short_writes_are_finished_not_taken_for_whole(flowseal, data_dir, shim, tmp_path,
                                                        instance, calm):
    # Every write of the segment writes half of what was asked: the writer must go on writing
    # the rest, never take a short count for the whole.
    r, injected, out = faulty_run(flowseal, data_dir, shim, tmp_path, instance("short"),
                                  "short", after=0, count=-1)
    assert len(injected) > 100, "many short writes"
    check_survived(flowseal, calm, r, injected, out)
    assert "write error" not in r.stderr, "a short write is not an error"


def test_a_frame_torn_by_a_full_disk_is_cut_off(flowseal, data_dir, shim, tmp_path, instance,
                                                calm):
    # Half a frame reaches the file, then the disk is full: the torn half must not stay in
    # front of the next frame.
    r, injected, out = faulty_run(flowseal, data_dir, shim, tmp_path, instance("torn"), "torn",
                                  after=5, count=2)
    check_survived(flowseal, calm, r, injected, out,
                   [f"{segment_part(out)}: write at offset", "No space left on device"])


def test_a_failing_segment_create_is_retried(flowseal, data_dir, shim, tmp_path, instance, calm):
    r, injected, out = faulty_run(flowseal, data_dir, shim, tmp_path, instance("create"),
                                  "open-enospc", after=0, count=2)
    assert len(injected) == 2, injected
    check_survived(flowseal, calm, r, injected, out,
                   [f"{segment_part(out)}: cannot create: No space left on device"])


def test_a_failing_frame_fsync_is_retried_and_loses_nothing(flowseal, data_dir, shim, tmp_path,
                                                             instance, calm):
    # writer.fsync=batch: the segment's fsync and its directory's at create, then one per frame;
    # the fsyncs of the third and fourth frames fail. The frame is cut off and written again.
    r, injected, out = faulty_run(flowseal, data_dir, shim, tmp_path, instance("fsync"),
                                  "fsync-eio", after=4, count=2)
    assert len(injected) == 2, injected
    check_survived(flowseal, calm, r, injected, out,
                   [f"{segment_part(out)}: fsync failed: Input/output error",
                    "writing works again"])


def test_a_failing_directory_fsync_at_create_is_retried(flowseal, data_dir, shim, tmp_path,
                                                        instance, calm):
    r, injected, out = faulty_run(flowseal, data_dir, shim, tmp_path, instance("dirsync"),
                                  "fsync-eio", after=1, count=1)
    check_survived(flowseal, calm, r, injected, out,
                   [f"{out}: cannot fsync the directory: Input/output error"])


def test_a_failing_rename_at_drain_is_retried(flowseal, data_dir, shim, tmp_path, instance, calm):
    r, injected, out = faulty_run(flowseal, data_dir, shim, tmp_path, instance("rename"),
                                  "rename-eio", after=0, count=2)
    assert len(injected) == 2, injected
    check_survived(flowseal, calm, r, injected, out,
                   [f"{segment_part(out)}: cannot rename to seg-00000000000000000000.fsg: "
                    "Input/output error"])
    assert os.listdir(out).count("seg-00000000000000000000.fsg") == 1


def test_a_failing_rename_at_rotation_keeps_writing(flowseal, data_dir, shim, tmp_path, instance,
                                                    tmp_path_factory):
    # 40 passes over the capture: about 1.1 MiB of segments, so one rotation at 1 MiB before
    # the drain closes the second segment. The rotation's rename fails once: the batch is
    # stored either way, the segment grows on and is closed at the next try.
    loop = ["capture.loop=40", "writer.segment_max_mb=1", "seal.batch_records=256"]
    calm_out = str(tmp_path_factory.mktemp("calm-loop") / "out")
    r = flowseal_run(flowseal, data_dir, calm_out, instance("calmloop"), extra=loop)
    assert r.returncode == 0, r.stderr[-1500:]
    assert len([f for f in os.listdir(calm_out) if f.startswith("seg-")]) >= 2, \
        "the undisturbed run rotates at least once"
    r, injected, out = faulty_run(flowseal, data_dir, shim, tmp_path, instance("rotate"),
                                  "rename-eio", after=0, count=1, extra=loop)
    check_survived(flowseal, sorted(event_ids(flowseal, calm_out)), r, injected, out,
                   [f"{segment_part(out)}: cannot rename to seg-00000000000000000000.fsg: "
                    "Input/output error"])


def test_a_failing_interval_fsync_stores_the_batch_once(flowseal, data_dir, shim, tmp_path,
                                                        instance, calm):
    # writer.fsync=interval with a 1 ms interval: the fsync due after a frame's write fails.
    # append() used to report the failure with the frame still in the file, writerd retried the
    # batch and stored it twice: verify failed with "batch seq N repeated".
    r, injected, out = faulty_run(flowseal, data_dir, shim, tmp_path, instance("isync"),
                                  "fsync-eio", after=3, count=2,
                                  extra=["writer.fsync=interval", "writer.fsync_interval_ms=1"])
    check_survived(flowseal, calm, r, injected, out,
                   [f"{segment_part(out)}: fsync failed: Input/output error"])


def test_a_failing_fsync_names_the_batches_it_may_cost(flowseal, data_dir, shim, tmp_path,
                                                       instance, calm):
    # writer.fsync=interval with an hour's interval: nothing is fsynced between the segment's
    # create (file and directory) and its close at drain, whose fsync fails once. The batches
    # stored meanwhile were released from the ring: the log says which ones a lost page costs.
    r, injected, out = faulty_run(flowseal, data_dir, shim, tmp_path, instance("risk"),
                                  "fsync-eio", after=2, count=1,
                                  extra=["writer.fsync=interval",
                                         "writer.fsync_interval_ms=3600000"])
    check_survived(flowseal, calm, r, injected, out,
                   [f"{segment_part(out)}: fsync failed: Input/output error (batches 0..",
                    "stored since the last good fsync, may not be on disk"])


def test_a_torn_frame_that_cannot_be_cut_off_is_overwritten_by_its_retry(
        flowseal, data_dir, shim, tmp_path, instance, calm):
    # Half a frame reaches the file, the disk is full, and the ftruncate that would cut the
    # torn half off fails too. The retry writes the same batch at the same offset, over it.
    r, injected, out = faulty_run(flowseal, data_dir, shim, tmp_path, instance("torncut"),
                                  "torn-ftruncate", after=5, count=1)
    assert any("ftruncate" in line and "EIO" in line for line in injected), injected
    check_survived(flowseal, calm, r, injected, out,
                   [f"{segment_part(out)}: write at offset", "No space left on device",
                    "and cutting back to offset"])


def test_a_part_that_cannot_be_cut_back_at_recovery_is_retried_by_the_restarted_writerd(
        flowseal, data_dir, shim, tmp_path, instance, calm):
    # A first run leaves a store; its segment, made a .part again with garbage after its last
    # frame, is what a writerd killed mid-frame leaves. The second run's writerd must cut the
    # garbage off before it appends; that ftruncate fails once: writerd says so naming the file
    # and exits, the supervisor restarts it, the second writerd cuts and goes on.
    out = str(tmp_path / "out")
    r = flowseal_run(flowseal, data_dir, out, instance("recover1"))
    assert r.returncode == 0, r.stderr[-1500:]
    segments = sorted(f for f in os.listdir(out) if f.startswith("seg-"))
    assert len(segments) == 1, segments
    first_run = sorted(event_ids(flowseal, out))
    assert first_run == calm
    # Frames, then the index a close appends: cutting at the last frame's end drops the index;
    # 100 bytes of garbage stand for a torn frame.
    closed = os.path.join(out, segments[0])
    part = closed + ".part"
    os.rename(closed, part)
    with open(part, "ab") as f:
        f.write(b"\xA5" * 100)
    log = str(tmp_path / "faults.log")
    env = {"LD_PRELOAD": shim, "FLOWSEAL_FAULT": "ftruncate-eio", "FLOWSEAL_FAULT_PATH": out,
           "FLOWSEAL_FAULT_AFTER": "0", "FLOWSEAL_FAULT_COUNT": "1", "FLOWSEAL_FAULT_LOG": log,
           "FLOWSEAL_FAULT_ONCE": str(tmp_path / "faulted")}  # the restarted writerd: none
    r = flowseal_run(flowseal, data_dir, out, instance("recover2"), env)
    injected = open(log).read().splitlines() if os.path.exists(log) else []
    text = r.stderr + r.stdout
    assert any("ftruncate" in line for line in injected), injected
    assert r.returncode == 0, f"the second run completes: {text[-2500:]}"
    assert f"{part}: cannot cut back to offset" in text and "Input/output error" in text, \
        f"writerd names the .part it could not cut back: {text[-2500:]}"
    assert "accounting received = processed + sampled out + dropped: yes" in text, text[-1500:]
    v = subprocess.run([flowseal, "verify", out], capture_output=True, text=True,
                       timeout=TIMEOUT)
    assert v.returncode == 0, f"both runs' batches verify as one chain: {v.stdout}{v.stderr}"
    # The second run stores the same flows again (same uids: cat shows an event id once).
    assert re.search(rf"^records:\s+{2 * len(calm)}$", v.stdout, re.M), v.stdout
    assert sorted(event_ids(flowseal, out)) == calm


def test_a_recovery_read_longer_than_the_heartbeat_timeout_is_not_killed(
        flowseal, data_dir, shim, tmp_path, instance):
    # The soak's finding 4 (docs/RELIABILITY.md): a writerd reading a long .part back at start
    # sent no heartbeat and was killed past supervisor.heartbeat_timeout_ms, again and again.
    # A first run leaves a segment of many small batches, made a .part again (what a killed
    # writerd leaves); the second run's writerd reads it back with every read delayed, several
    # times the heartbeat timeout (500 ms), and must neither be killed nor restarted.
    out = str(tmp_path / "out")
    many = ["capture.loop=40", "seal.batch_records=4"]
    r = flowseal_run(flowseal, data_dir, out, instance("slow1"), extra=many)
    assert r.returncode == 0, r.stderr[-1500:]
    segments = sorted(f for f in os.listdir(out) if f.startswith("seg-"))
    assert len(segments) == 1, segments
    v = subprocess.run([flowseal, "verify", out], capture_output=True, text=True, timeout=TIMEOUT)
    first = int(re.search(r"^batches:\s+(\d+)", v.stdout, re.M).group(1))
    records = int(re.search(r"^records:\s+(\d+)$", v.stdout, re.M).group(1))
    assert first >= 300, f"enough batches for a recovery of seconds ({v.stdout})"
    os.rename(os.path.join(out, segments[0]), os.path.join(out, segments[0] + ".part"))
    log = str(tmp_path / "faults.log")
    env = {"LD_PRELOAD": shim, "FLOWSEAL_FAULT": "slow-read", "FLOWSEAL_FAULT_PATH": out,
           "FLOWSEAL_FAULT_AFTER": "0", "FLOWSEAL_FAULT_COUNT": "-1",
           "FLOWSEAL_FAULT_DELAY_MS": "4", "FLOWSEAL_FAULT_LOG": log}
    r = flowseal_run(flowseal, data_dir, out, instance("slow2"), env,
                     many + ["supervisor.heartbeat_timeout_ms=500"])
    injected = open(log).read().splitlines() if os.path.exists(log) else []
    text = r.stderr + r.stdout
    assert injected, "the shim slowed writerd's reads"
    assert "sent no heartbeat" not in text, f"writerd is not killed as hung: {text[-2500:]}"
    assert "writerd ended" not in text, f"writerd is never restarted: {text[-2500:]}"
    assert r.returncode == 0, f"the second run completes: {text[-2500:]}"
    # How long the recovery took, at most: from the run's first log line to the recovery note.
    m = re.search(rf"^(\S+) \S+ writerd: recovery: \S+\.part: continuing after batch \d+ "
                  rf"\({first} batches\)", text, re.M)
    assert m, f"writerd continues the .part after its {first} batches: {text[-2500:]}"
    start = re.search(r"^(\S+) \S+ (?:writerd|supervisor|flowseal): ", text, re.M)
    took = (parse_log_time(m.group(1)) - parse_log_time(start.group(1))).total_seconds()
    print(f"run start to the recovery of {first} batches (every read delayed 4 ms): {took:.1f} s")
    assert took > 1.0, f"the recovery outlasted the heartbeat timeout twice ({took:.2f} s)"
    v = subprocess.run([flowseal, "verify", out], capture_output=True, text=True, timeout=TIMEOUT)
    assert v.returncode == 0, f"both runs' batches verify as one chain: {v.stdout}{v.stderr}"
    # The second run stores the same flows again (same uids).
    assert re.search(rf"^records:\s+{2 * records}$", v.stdout, re.M), v.stdout


def parse_log_time(stamp):
    return datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%f")


def test_a_failing_retention_delete_is_named_and_tried_again(flowseal, data_dir, shim,
                                                             tmp_path, instance,
                                                             tmp_path_factory):
    # 40 passes in 1 MiB segments with a 1 MiB disk limit: retention deletes the oldest
    # segment as new ones close. The first deletion fails: it is named, the run goes on, a
    # later pass deletes it, and what is kept verifies (the chain starting at a later batch).
    loop = ["capture.loop=120", "writer.segment_max_mb=1", "seal.batch_records=256",
            "writer.retention_max_mb=1"]
    out = str(tmp_path / "out")
    log = str(tmp_path / "faults.log")
    env = {"LD_PRELOAD": shim, "FLOWSEAL_FAULT": "unlink-eio", "FLOWSEAL_FAULT_PATH": out,
           "FLOWSEAL_FAULT_AFTER": "0", "FLOWSEAL_FAULT_COUNT": "1", "FLOWSEAL_FAULT_LOG": log}
    r = flowseal_run(flowseal, data_dir, out, instance("retention"), env, extra=loop)
    injected = open(log).read().splitlines() if os.path.exists(log) else []
    text = r.stderr + r.stdout
    assert injected, "the shim failed a deletion"
    assert r.returncode == 0, f"the run completes: {text[-2500:]}"
    assert "writerd ended" not in text, text[-2000:]
    assert "retention: " in text and "cannot delete: Input/output error" in text, text[-2500:]
    oldest = "seg-00000000000000000000.fsg"
    assert oldest not in os.listdir(out), \
        f"the segment whose deletion failed is deleted later: {sorted(os.listdir(out))}"
    v = subprocess.run([flowseal, "verify", out], capture_output=True, text=True,
                       timeout=TIMEOUT)
    assert v.returncode == 0, f"what retention kept verifies: {v.stdout}{v.stderr}"
