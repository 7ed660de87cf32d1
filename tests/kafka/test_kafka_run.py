"""The Kafka export as a user runs it (issue 16 part 2): `flowseal run` with export.kafka.*
set starts flowseal-shipd as its sixth stage, which exports every stored record to
librdkafka's mock cluster (kafka-mock-cluster), read back with kcat; an offline run ends only
once everything is delivered. Each record is `flowseal cat`'s line of the run's own store and
proves with `flowseal verify --proof`; a broker outage mid-run loses and repeats nothing; a
restarted or killed shipd loses nothing (at least once: a repeat is a record already seen)."""
import json
import os
import re
import signal
import subprocess
import time
import uuid

import pytest

from test_kafka_export import DATA, FLOWSEAL, SEAL_MEMBERS, TIMEOUT, MockCluster, cat_lines, consume

# Under ASan everything is several times slower: waits scale (they wait for events; the
# factor only bounds how long before a test gives up).
SCALE = 4 if os.environ.get("FLOWSEAL_ASAN") or "asan" in FLOWSEAL else 1
PCAPS = ("sample.pcap", "synscan.pcap", "tumblr.pcap")


@pytest.fixture
def topic():
    return f"flows-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def cluster(topic):
    c = MockCluster(topic)
    yield c
    c.kill()


def instance_name(tag):
    return f"kafkarun-{tag}-{uuid.uuid4().hex[:8]}"


def run_args(store, instance, cluster, topic, settings=(), loop=1, config=None):
    """`flowseal run` over the test captures, exporting to the mock cluster, in small batches
    (many of them). The Kafka settings as a user gives them: in `config` (a YAML file), or
    with --set when there is none."""
    args = [FLOWSEAL, "run", "-o", store, "--instance", instance, "--loop", str(loop),
            "--set", "supervisor.stats_interval_s=1", "--set", "seal.batch_records=64",
            "--set", "writer.segment_max_mb=1"]
    if config is not None:
        config.write_text(f'export:\n  kafka.brokers: "{cluster.bootstrap}"\n'
                          f'  kafka.topic: "{topic}"\n')
        args += ["-c", str(config)]
    else:
        args += ["--set", f"export.kafka.brokers={cluster.bootstrap}",
                 "--set", f"export.kafka.topic={topic}"]
    for p in PCAPS:
        args += ["-r", os.path.join(DATA, p)]
    for s in settings:
        args += ["--set", s]
    return args


def flowseal(*args, timeout=60):
    return subprocess.run([FLOWSEAL] + list(args), capture_output=True, text=True,
                          timeout=timeout * SCALE)


def status(instance):
    """`flowseal status --json`, or None between samples (the run starting or ending)."""
    r = flowseal("status", "--instance", instance, "--json")
    return json.loads(r.stdout) if r.returncode == 0 else None


def shipd_of(st):
    return next(s for s in st["stages"] if s["stage"] == "shipd")


def kafka_of(st):
    return st["export"]["kafka"]


def wait_status(instance, proc, log, predicate, what, timeout=120):
    deadline = time.monotonic() + timeout * SCALE
    while True:
        assert proc.poll() is None, f"the run ended before {what}: {log.read_text()[-3000:]}"
        st = status(instance)
        if st is not None and "export" in st and predicate(st):
            return st
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {st}"
        time.sleep(0.1)


def wait_for(predicate, what, proc, log, timeout=120):
    deadline = time.monotonic() + timeout * SCALE
    while not predicate():
        assert proc.poll() is None, f"the run ended before {what}: {log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


class Run:
    """`flowseal run` in the background, its stderr (the run's log and summary) in a file."""

    def __init__(self, tmp_path, args):
        self.log = tmp_path / "run.log"
        with open(self.log, "w") as err:
            self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err)

    def wait(self):
        self.proc.wait(timeout=TIMEOUT * 2 * SCALE)
        return self.log.read_text()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def summary_int(text, pattern):
    m = re.search(pattern, text)
    assert m, f"no /{pattern}/ in the summary:\n{text[-3000:]}"
    return int(m.group(1))


def check_records(messages, store, may_repeat):
    """Every record of the store arrived; each message is cat's line of the record it names
    (its event id) with the four sealing members appended; a repeat only where may_repeat
    allows it. Returns the event ids in arrival order."""
    expected = cat_lines(store)
    ids = []
    for m in messages:
        payload = m["payload"]
        record = json.loads(payload)
        event_id = record["event_id"]
        assert event_id in expected, f"a record the store does not hold: {payload[:300]}"
        assert payload.startswith(expected[event_id][:-1] + ',"event_id":'), payload
        assert list(record)[-4:] == list(SEAL_MEMBERS), payload
        ids.append(event_id)
    missing = set(expected) - set(ids)
    assert not missing, f"{len(missing)} of {len(expected)} records missing, e.g. {sorted(missing)[:3]}"
    seen, repeated = set(), []
    for m, event_id in zip(messages, ids):
        if event_id in seen and not may_repeat(json.loads(m["payload"])):
            repeated.append(event_id)
        seen.add(event_id)
    assert not repeated, f"{len(repeated)} records arrived twice, e.g. {repeated[:3]}"
    return ids


def test_a_run_exports_every_record_once_as_its_stores_cat_line_provably(tmp_path, cluster,
                                                                          topic):
    store = str(tmp_path / "probe")
    r = subprocess.run(run_args(store, instance_name("all"), cluster, topic,
                                config=tmp_path / "flowseal.yaml"),
                       capture_output=True, text=True, timeout=TIMEOUT * SCALE)
    assert r.returncode == 0, r.stderr[-4000:]
    # shipd ran as a stage and drained before the run ended: the summary says all went out.
    assert re.search(r"stages .* shipd cpu", r.stderr), r.stderr[-3000:]
    assert "kafka done:" in r.stderr, r.stderr[-3000:]
    messages = consume(cluster, topic)
    ids = check_records(messages, store, may_repeat=lambda record: False)
    assert len(ids) > 1000
    stored = summary_int(r.stderr, r"stored\s+(\d+) batches")
    assert summary_int(r.stderr, r"(?m)^  kafka\s+(\d+) records") == len(ids), r.stderr[-3000:]
    assert summary_int(r.stderr, r"(?m)^  kafka\s+\d+ records \((\d+) batches\)") == stored
    assert summary_int(r.stderr, r"undelivered (\d+) batches") == 0
    assert summary_int(r.stderr, r"(\d+) delivery failures") == 0

    # Where each record is sealed proves with verify --proof (about 0.1 s each: a sample,
    # the first and last of each batch among them).
    records = [json.loads(m["payload"]) for m in messages]
    by_batch = {}
    for record in records:
        by_batch.setdefault(record["batch_seq"], []).append(record)
    picked = []
    for batch in by_batch.values():
        batch.sort(key=lambda rec: rec["leaf_index"])
        assert [rec["leaf_index"] for rec in batch] == list(range(len(batch)))
        picked += [batch[0], batch[-1]]
    picked += records[:: max(1, len(records) // 10)]
    for record in picked:
        p = flowseal("verify", store, "--proof", record["event_id"])
        assert p.returncode == 0, p.stderr
        proof = json.loads(p.stdout)
        assert proof["leaf_index"] == record["leaf_index"], record["event_id"]
        assert proof["header"]["seq"] == record["batch_seq"], record["event_id"]
        assert proof["header"]["stream_id"] == record["stream_id"], record["event_id"]
    print(f"{len(ids)} records in {len(by_batch)} batches read back; {len(picked)} proofs checked")


def test_a_broker_outage_mid_run_loses_and_repeats_nothing_and_the_run_waits_for_it(
        tmp_path, cluster, topic):
    store = str(tmp_path / "probe")
    instance = instance_name("outage")
    # One batch in flight at a time over a slow broker: the export surely spans the outage.
    # The drain may take long on a loaded machine: no giving up meanwhile.
    cluster.command("rtt 1 100")
    run = Run(tmp_path, run_args(store, instance, cluster, topic,
                                 ["export.kafka.max_inflight=1",
                                  "export.kafka.drain_timeout_s=600"], loop=3))
    try:
        position = os.path.join(store, "kafka-exported")
        wait_for(lambda: os.path.exists(position), "the first delivered batch", run.proc, run.log)
        cluster.command("down 1")
        wait_for(lambda: "ALL_BROKERS_DOWN" in run.log.read_text(), "the outage to be seen",
                 run.proc, run.log)
        with open(position) as f:
            during = f.read()
        delivered_before = int(during.split("seq ")[1])
        st = wait_status(instance, run.proc, run.log, lambda s: kafka_of(s)["lag_batches"] > 0,
                         "the lag in status --json")
        delivered = kafka_of(st)["records_delivered"]
        time.sleep(5)  # the outage itself: 5 s down (issue 16)
        st = wait_status(instance, run.proc, run.log, lambda s: True, "status during the outage")
        assert kafka_of(st)["records_delivered"] == delivered, st
        assert kafka_of(st)["lag_batches"] > 0, st
        text = flowseal("status", "--instance", instance)
        assert re.search(r"kafka export: \d+ batches \(\d+ records\) delivered, lag [1-9]",
                         text.stdout), text.stdout
        with open(position) as f:
            assert f.read() == during, "the position moved while the broker was down"
        cluster.command("up 1")
        log = run.wait()
    finally:
        run.kill()
    assert run.proc.returncode == 0, log[-4000:]
    assert "kafka: delivering again after" in log, log[-3000:]
    assert summary_int(log, r"undelivered (\d+) batches") == 0
    # librdkafka re-sends the produce request the outage cut off with the same producer id
    # and sequence numbers: a Kafka broker appends it once, but the mock cluster checks
    # sequences only for transactional producers, so it may append that one request twice
    # (test_kafka_export.py says more): repeats are allowed there and nowhere else, that is
    # only in the one batch in flight (max_inflight=1) when the broker went down.
    ids = check_records(consume(cluster, topic), store,
                        may_repeat=lambda r: r["batch_seq"] == delivered_before + 1)
    print(f"{len(ids)} messages, {len(ids) - len(set(ids))} repeats (mock cluster), "
          f"outage at batch seq {delivered_before + 1}")


def test_an_outage_longer_than_ship_drain_timeout_is_waited_out_by_the_kafka_drain_timeout(
        tmp_path, cluster, topic):
    """The supervisor gives shipd export.kafka.drain_timeout_s to drain, not only
    ship.drain_timeout_s (a setting of the NATS shipping, here unused): with the broker down
    past writerd's drain, shipd is neither killed nor gives up, and delivers it all later."""
    store = str(tmp_path / "probe")
    instance = instance_name("longdrain")
    cluster.command("down 1")
    run = Run(tmp_path, run_args(store, instance, cluster, topic,
                                 ["ship.drain_timeout_s=0", "export.kafka.drain_timeout_s=600"]))
    try:
        st = wait_status(instance, run.proc, run.log,
                         lambda s: next(x for x in s["stages"] if x["stage"] == "writerd")["state"]
                         == "done" and kafka_of(s)["lag_batches"] > 0,
                         "writerd done, the export waiting")
        pid = shipd_of(st)["pid"]
        # Longer than the supervisor's grace after ship.drain_timeout_s (15 s): the time is
        # the point here.
        time.sleep(18)
        st = wait_status(instance, run.proc, run.log, lambda s: True, "status after 18 s")
        assert shipd_of(st)["pid"] == pid and shipd_of(st)["restarts"] == 0, st["stages"]
        cluster.command("up 1")
        log = run.wait()
    finally:
        run.kill()
    assert run.proc.returncode == 0, log[-4000:]
    assert "did not drain" not in log, log[-3000:]
    check_records(consume(cluster, topic), store, may_repeat=lambda record: False)


def test_shipd_restarted_and_killed_mid_run_loses_nothing(tmp_path, cluster, topic):
    store = str(tmp_path / "probe")
    instance = instance_name("restart")
    cluster.command("rtt 1 100")
    run = Run(tmp_path, run_args(store, instance, cluster, topic,
                                 ["export.kafka.max_inflight=1",
                                  "export.kafka.drain_timeout_s=600"], loop=3))
    try:
        st = wait_status(instance, run.proc, run.log,
                         lambda s: kafka_of(s)["records_delivered"] > 0
                         and kafka_of(s)["lag_batches"] > 0, "records delivered, more to go")
        first = shipd_of(st)["pid"]
        r = flowseal("restart", "--instance", instance, "shipd", timeout=120)
        assert r.returncode == 0 and "shipd restarted" in r.stdout, r.stdout + r.stderr
        # Its successor delivers, and is then SIGKILLed (a crash) with records in flight. The
        # slot's count is the run's (the successor adds to what its predecessor counted), so
        # "delivering" is a count past the one seen when the successor was up.
        st = wait_status(instance, run.proc, run.log,
                         lambda s: shipd_of(s)["pid"] not in (0, first)
                         and shipd_of(s)["state"] == "running", "the successor running")
        at_start = kafka_of(st)["records_delivered"]
        st = wait_status(instance, run.proc, run.log,
                         lambda s: shipd_of(s)["pid"] not in (0, first)
                         and kafka_of(s)["records_delivered"] > at_start
                         and kafka_of(s)["lag_batches"] > 0, "the successor delivering")
        second = shipd_of(st)["pid"]
        os.kill(second, signal.SIGKILL)
        wait_status(instance, run.proc, run.log,
                    lambda s: shipd_of(s)["pid"] not in (0, second) and shipd_of(s)["restarts"] >= 2
                    and shipd_of(s)["state"] == "running", "shipd replaced after SIGKILL")
        log = run.wait()
    finally:
        run.kill()
    assert run.proc.returncode == 0, log[-4000:]
    assert re.search(r"shipd cpu [^;]* restarts 2;", log), log[-3000:]
    assert summary_int(log, r"undelivered (\d+) batches") == 0
    # At least once: every record arrived, each as its cat line; a repeat is a record seen
    # before (what was in flight at the restart and at the kill).
    ids = check_records(consume(cluster, topic), store, may_repeat=lambda record: True)
    print(f"{len(ids)} messages for {len(set(ids))} records: {len(ids) - len(set(ids))} repeats")
