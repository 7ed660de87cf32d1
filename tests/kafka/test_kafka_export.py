"""The Kafka export (issue 16 part 2): flowseal-shipd exports every stored record as
`flowseal cat`'s JSON line plus its event id and where it is sealed, to librdkafka's mock
cluster (kafka-mock-cluster: real Kafka protocol on loopback; Debian ships no broker), read
back with Debian's kcat. Every record arrives once, a broker outage mid-run loses and repeats
nothing, a full local queue is counted and waited out, and the position survives a restart."""
import json
import os
import subprocess
import time
import uuid

import pytest

FLOWSEAL = os.environ.get("FLOWSEAL", "flowseal")
SHIPD = os.environ.get("FLOWSEAL_SHIPD", "flowseal-shipd")
MOCK = os.environ.get("KAFKA_MOCK_CLUSTER", "kafka-mock-cluster")
KCAT = os.environ.get("KCAT", "kcat")
DATA = os.environ.get("FLOWSEAL_DATA", "tests/data")
TIMEOUT = 300
SEAL_MEMBERS = ("event_id", "stream_id", "batch_seq", "leaf_index")


class MockCluster:
    """kafka-mock-cluster with one topic; commands go through its stdin, each answered."""

    def __init__(self, topic, brokers=1, partitions=3):
        self.proc = subprocess.Popen([MOCK, str(brokers), topic, str(partitions)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.bootstrap = self.proc.stdout.readline().strip()
        assert self.bootstrap, f"kafka-mock-cluster printed no bootstrap servers ({self.proc.poll()})"

    def command(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline().strip()
        assert reply == "ok", f"{line}: {reply}"

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)


@pytest.fixture
def topic():
    return f"flows-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def cluster(topic):
    c = MockCluster(topic)
    yield c
    c.kill()


def probe(tmp_path, pcaps=("sample.pcap", "synscan.pcap", "tumblr.pcap")):
    """A store from an offline run, in small batches (many of them, several segments)."""
    out = str(tmp_path / "probe")
    args = [FLOWSEAL, "run", "-o", out, "--instance", f"kafka-{uuid.uuid4().hex[:8]}",
            "--set", "supervisor.stats_interval_s=0", "--set", "seal.batch_records=64",
            "--set", "writer.segment_max_mb=1"]
    for p in pcaps:
        args += ["-r", os.path.join(DATA, p)]
    r = subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def export_args(store, cluster, topic, extra=()):
    args = [SHIPD, "--set", f"writer.dir={store}", "--set", f"export.kafka.brokers={cluster.bootstrap}",
            "--set", f"export.kafka.topic={topic}", "--until-shipped"]
    for setting in extra:
        args += ["--set", setting]
    return args


def export(store, cluster, topic, extra=()):
    r = subprocess.run(export_args(store, cluster, topic, extra), capture_output=True, text=True,
                       timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def consume(cluster, topic):
    """Every message of the topic: dicts with key and payload (kcat -J)."""
    r = subprocess.run([KCAT, "-C", "-b", cluster.bootstrap, "-t", topic, "-e", "-J", "-q"],
                       capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


def cat_lines(store):
    """`flowseal cat --events`'s JSON lines, by event id."""
    r = subprocess.run([FLOWSEAL, "cat", "--events", store], capture_output=True, text=True,
                       timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr
    lines = {}
    for line in r.stdout.splitlines():
        record = json.loads(line)
        lines[f"{record['uid']}:{record['event']}:{record['event_number']}"] = line
    return lines


def check_every_record_once(messages, store, may_repeat=lambda record: False):
    """Each stored record arrived, and exactly once unless `may_repeat` allows it; each payload
    is cat's line with the four sealing members appended."""
    expected = cat_lines(store)
    ids = [json.loads(m["payload"])["event_id"] for m in messages]
    seen, repeated = set(), []
    for m in messages:
        record = json.loads(m["payload"])
        if record["event_id"] in seen and not may_repeat(record):
            repeated.append(record["event_id"])
        seen.add(record["event_id"])
    assert not repeated, f"{len(repeated)} records arrived twice, e.g. {repeated[:3]}"
    assert set(ids) == set(expected), (
        f"{len(set(expected) - set(ids))} records missing, {len(set(ids) - set(expected))} unknown")
    for m in messages:
        record = json.loads(m["payload"])
        line = expected[record["event_id"]]
        assert m["payload"].startswith(line[:-1] + ',"event_id":'), m["payload"]
        assert list(record)[-4:] == list(SEAL_MEMBERS)
    return len(ids)


def test_every_record_arrives_once_as_cats_line_and_is_provable(tmp_path, cluster, topic):
    store = probe(tmp_path)
    r = export(store, cluster, topic)
    messages = consume(cluster, topic)
    count = check_every_record_once(messages, store)
    assert count > 1000
    assert f"kafka done: {count} records delivered" in r.stderr, r.stderr[-2000:]

    # Keys: a flow's Community ID; a summary's its group's (a Community ID too).
    for m in messages:
        record = json.loads(m["payload"])
        if record["event"] != "summary":
            assert m["key"] == record["community_id"]
        else:
            assert m["key"].startswith("1:")

    # Where a record is sealed is what verify --proof proves.
    picked = [json.loads(m["payload"]) for m in messages[:: max(1, len(messages) // 3)]]
    for record in picked:
        p = subprocess.run([FLOWSEAL, "verify", store, "--proof", record["event_id"]],
                           capture_output=True, text=True, timeout=TIMEOUT)
        assert p.returncode == 0, p.stderr
        proof = json.loads(p.stdout)
        assert proof["leaf_index"] == record["leaf_index"]
        assert proof["header"]["seq"] == record["batch_seq"]
        assert proof["header"]["stream_id"] == record["stream_id"]

    # The position is durable: a second export sends nothing again.
    with open(os.path.join(store, "kafka-exported")) as f:
        assert f.readline() == "flowseal-shipped 1\n"
    again = export(store, cluster, topic)
    assert "kafka done: 0 records delivered" in again.stderr, again.stderr[-2000:]
    assert len(consume(cluster, topic)) == count


def wait_for(predicate, what, proc=None, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"shipd exited {proc.returncode} before {what}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_broker_outage_mid_run_loses_and_repeats_nothing(tmp_path, cluster, topic):
    store = probe(tmp_path)
    # One batch in flight at a time over a slow broker: the export surely spans the outage.
    cluster.command("rtt 1 100")
    log = tmp_path / "shipd.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(export_args(store, cluster, topic,
                                            ["export.kafka.max_inflight=1"]),
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        position = os.path.join(store, "kafka-exported")
        wait_for(lambda: os.path.exists(position), "the first delivered batch", proc)
        cluster.command("down 1")
        wait_for(lambda: "ALL_BROKERS_DOWN" in log.read_text(), "the outage to be seen", proc)
        with open(position) as f:
            during = f.read()
        delivered_before = int(during.split("seq ")[1])
        time.sleep(3)  # the outage itself: a few seconds down
        with open(position) as f:
            assert f.read() == during, "the position moved while the broker was down"
        cluster.command("up 1")
        assert proc.wait(timeout=TIMEOUT) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert "kafka: delivering again after" in text, text[-3000:]
    # librdkafka re-sends the produce request the drop cut off with the same producer id and
    # sequence numbers: a Kafka broker appends it once. The mock cluster checks sequences only
    # for transactional producers (rd_kafka_mock_validate_records returns early without a
    # TransactionalId), so it may append that one request twice: repeats are allowed there
    # and nowhere else, that is only in the one batch in flight (max_inflight=1) at the drop.
    check_every_record_once(consume(cluster, topic), store,
                            may_repeat=lambda r: r["batch_seq"] == delivered_before + 1)


def test_a_full_queue_is_counted_and_waited_out_never_dropped(tmp_path, cluster, topic):
    store = probe(tmp_path)
    cluster.command("down 1")
    log = tmp_path / "shipd.log"
    with open(log, "w") as err:
        # A 1 MiB queue holds fewer records than the store: it fills while the broker is away.
        proc = subprocess.Popen(export_args(store, cluster, topic, ["export.kafka.queue_mb=1"]),
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        wait_for(lambda: "the local queue is full" in log.read_text(), "a full queue", proc)
        cluster.command("up 1")
        assert proc.wait(timeout=TIMEOUT) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    done = [line for line in text.splitlines() if "kafka done:" in line]
    assert done and "queue full 0 times" not in done[0], text[-3000:]
    check_every_record_once(consume(cluster, topic), store)


def test_bad_kafka_settings_are_refused_before_anything_runs(tmp_path):
    store = str(tmp_path / "empty")
    os.makedirs(store)
    for setting, named in [("export.kafka.brokers=localhost", "HOST:PORT"),
                           ("export.kafka.topic=a/b", "not a Kafka topic")]:
        r = subprocess.run([SHIPD, "--set", f"writer.dir={store}", "--set",
                            "export.kafka.brokers=127.0.0.1:1", "--set", setting],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 78, r.stderr
        assert named in r.stderr and setting.split("=")[0] in r.stderr
    r = subprocess.run([FLOWSEAL, "config", "check", "--set", "export.kafka.brokers=h:99999"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 78 and "export.kafka.brokers" in r.stderr, r.stderr
