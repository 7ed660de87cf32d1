"""A three-node JetStream cluster on loopback (issue 15): the stream has three replicas, the
node that leads it (and that the probe connects to) is SIGKILLed mid-run, and nothing is lost:
the run drains through shipd, every batch is in the stream once, and collect's store (read from
a surviving node) verifies and reads as the probe's.

The stream is made by the test before the run, as an operator would with
`nats stream add FLOWSEAL --subjects 'flowseal.>' --storage file --replicas 3` (Debian has no
`nats` CLI: the same $JS.API.STREAM.CREATE request goes over a plain NATS connection, shiplib's
JsApi); shipd finds it and binds to it. Each node has its own client port (mutual TLS), route
port (cluster routes in plaintext on loopback) and store dir; the test kills only the nodes it
started, by PID."""
import os
import re
import socket
import subprocess
import time

from shiplib import DATA, TIMEOUT, JsApi, JsApiError, NatsCluster, tls_settings
from test_ship_stage import (SCALE, instance_name, no_capture_drops, run_args, same_as_probe,
                             status, stored_batches, summary_int)

# As in test_ship_backpressure: ~2,200 batches that writerd takes seconds to store.
PCAP = os.path.join(DATA, "tumblr.pcap")
LOOPS = 1000
R3_STREAM = {"name": "FLOWSEAL", "subjects": ["flowseal.>"], "storage": "file",
             "num_replicas": 3}


def js_call(node, pki, cert, key, what, timeout=60):
    """what(JsApi) on `node`, retried while the cluster is still forming (JetStream answers
    503 or 'no suitable peers', or nothing, until the nodes know each other and have a
    leader)."""
    deadline = time.monotonic() + timeout * SCALE
    while True:
        try:
            with JsApi(node.port, pki, cert, key) as js:
                return what(js)
        except (JsApiError, socket.timeout, ConnectionError) as e:
            # 503: no leader yet; 10005 'no suitable peers for placement': the other nodes
            # are not known yet.
            if isinstance(e, JsApiError) and e.error.get("code") != 503 \
                    and e.error.get("err_code") != 10005:
                raise
            assert time.monotonic() < deadline, f"JetStream not available: {e}"
            time.sleep(0.2)


def replicated(info):
    """The stream's leader and both followers current."""
    cluster = info.get("cluster", {})
    replicas = cluster.get("replicas", [])
    return cluster.get("leader") and len(replicas) == 2 and all(r.get("current")
                                                               for r in replicas)


def wait_stream(node, pki, cert, key, predicate, what):
    deadline = time.monotonic() + 60 * SCALE
    while True:
        info = js_call(node, pki, cert, key, lambda js: js.stream_info("FLOWSEAL"))
        if predicate(info):
            return info
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {info}"
        time.sleep(0.2)


def test_a_three_node_cluster_loses_its_stream_leader_mid_run_and_nothing_is_lost(
        tmp_path, pki, client):
    cert, key = client
    cluster = NatsCluster(str(tmp_path / "cluster"), pki)
    proc = None
    try:
        cluster.start()
        js_call(cluster.nodes[0], pki, cert, key, lambda js: js.stream_create(R3_STREAM))
        info = wait_stream(cluster.nodes[0], pki, cert, key, replicated, "three replicas")
        leader = cluster.node(info["cluster"]["leader"])
        survivors = [n for n in cluster.nodes if n is not leader]
        # The probe names the leader: killing it takes the probe's connection (libnats goes on
        # to the nodes the cluster told it about) and the stream's leader (the other two elect
        # one) at once.
        store = str(tmp_path / "probe")
        instance = instance_name("cluster")
        settings = tls_settings(pki, cert, key, leader.url) + ["ship.drain_timeout_s=600"]
        proc = subprocess.Popen(run_args(store, instance, settings, pcaps=[PCAP],
                                         extra=["--set", f"capture.loop={LOOPS}"]),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120 * SCALE
        while True:
            assert proc.poll() is None, f"the run ended early: {proc.communicate()[1][-3000:]}"
            st = status(instance)
            if st is not None and "ship" in st and st["ship"]["shipped_seq"] >= 20:
                break
            assert time.monotonic() < deadline, f"timed out waiting for acks: {st}"
            time.sleep(0.05)
        writerd = next(s for s in st["stages"] if s["stage"] == "writerd")
        assert writerd["state"] == "running", f"the store was complete before the kill: {st}"
        killed_at = st["ship"]["shipped_seq"]
        leader.kill()  # SIGKILL, by PID
        _, stderr = proc.communicate(timeout=TIMEOUT * 2 * SCALE)
        assert proc.returncode == 0, stderr[-4000:]
        batches = stored_batches(stderr)
        assert killed_at < batches
        assert summary_int(stderr, r"shipped\s+(\d+) batches") == batches, stderr[-3000:]
        assert summary_int(stderr, r"unshipped (\d+) batches") == 0
        no_capture_drops(stderr)
        # No stage crashed on the way (shipd, restarted, would still ship everything).
        assert not re.search(r"restarts [1-9]", stderr), stderr[-3000:]
        # A new leader among the two left, and every batch once in the stream.
        after = wait_stream(survivors[0], pki, cert, key,
                            lambda i: i.get("cluster", {}).get("leader")
                            not in (None, leader_name(leader)), "a new stream leader")
        assert after["state"]["messages"] == batches, after["state"]
        print(f"killed the stream leader {leader_name(leader)} at shipped seq {killed_at} of "
              f"{batches}; new leader {after['cluster']['leader']}; "
              f"{after['state']['messages']} messages in the stream; shipd: "
              + " | ".join(line.split(" shipd: ", 1)[1] for line in stderr.splitlines()
                           if " shipd: ship" in line and "progress" not in line))
        counts = same_as_probe(survivors[0], pki, cert, key, tmp_path, store, batches,
                               in_order=False)
        print(f"collect received {counts['received']} messages for {batches} batches "
              f"({counts['refused_gap']} gaps handed back)")
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        cluster.kill()


def leader_name(node):
    return os.path.basename(node.dir)
