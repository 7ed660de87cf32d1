"""A probe's stored batches shipped to a NATS JetStream Core and collected there: everything
arrives, verifies, and reads as the probe's own store does."""
import json
import os
import struct
import uuid

from shiplib import (DATA, collect, collected_stores, events, flowseal, key_id, run_probe, ship,
                     tls_settings)

PCAPS = ["sample.pcap", "synscan.pcap", "tumblr.pcap"]
# Small batches: many messages, several segments.
SMALL = ["--set", "seal.batch_records=64", "--set", "writer.segment_max_mb=1"]


def probe(tmp_path, name, pcaps=PCAPS):
    out = str(tmp_path / name)
    run_probe([os.path.join(DATA, p) for p in pcaps], out, f"ship-{name}-{uuid.uuid4().hex[:8]}",
              SMALL)
    return out


def batches_in(store):
    r = flowseal("verify", store)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout + r.stderr


def test_every_batch_of_a_run_arrives_verifies_and_equals_the_probes_store(
        tmp_path, pki, server, client):
    store = probe(tmp_path, "probe")
    cert, key = client
    r = ship(store, tls_settings(pki, cert, key, server.url))
    assert r.returncode == 0, r.stderr
    assert "created JetStream stream FLOWSEAL" in r.stderr
    out = str(tmp_path / "core")
    c = collect(server, pki, cert, key, out)
    assert c.returncode == 0, c.stderr
    counts = json.loads(c.stdout)
    stores = collected_stores(out)
    assert stores == [os.path.join(out, key_id(store), os.path.basename(stores[0]))]
    v = flowseal("verify", "--no-gaps", stores[0])  # every batch is there
    assert v.returncode == 0, v.stdout + v.stderr
    assert events(stores[0]) == events(store)
    assert counts["stored"] > 10 and counts["refused_bad"] == 0 and counts["refused_gap"] == 0
    # Shipping again is a no-op: the position says everything is acked.
    again = ship(store, tls_settings(pki, cert, key, server.url))
    assert again.returncode == 0, again.stderr
    assert "0 published" in again.stderr
    # And the shipped position is durable beside the store.
    with open(os.path.join(store, "shipped")) as f:
        assert f.readline() == "flowseal-shipped 1\n"


def test_two_probes_to_one_server_make_two_stores_each_verifying(tmp_path, pki, server, client):
    a = probe(tmp_path, "a", ["sample.pcap"])
    b = probe(tmp_path, "b", ["synscan.pcap"])
    cert, key = client
    for store in (a, b):
        r = ship(store, tls_settings(pki, cert, key, server.url))
        assert r.returncode == 0, r.stderr
    out = str(tmp_path / "core")
    c = collect(server, pki, cert, key, out)
    assert c.returncode == 0, c.stderr
    stores = collected_stores(out)
    assert len(stores) == 2
    by_key = {os.path.basename(os.path.dirname(s)): s for s in stores}
    for probe_store in (a, b):
        collected = by_key[key_id(probe_store)]
        v = flowseal("verify", collected)
        assert v.returncode == 0, v.stdout + v.stderr
        assert events(collected) == events(probe_store)


def test_pinned_keys_refuse_an_unknown_probe(tmp_path, pki, server, client):
    a = probe(tmp_path, "a", ["sample.pcap"])
    b = probe(tmp_path, "b", ["q-in-q.pcap"])
    cert, key = client
    for store in (a, b):
        assert ship(store, tls_settings(pki, cert, key, server.url)).returncode == 0
    pinned = tmp_path / "pinned"
    pinned.mkdir()
    pub = [f for f in os.listdir(os.path.join(a, "keys")) if f.endswith(".pub")][0]
    (pinned / pub).write_bytes(open(os.path.join(a, "keys", pub), "rb").read())
    out = str(tmp_path / "core")
    c = collect(server, pki, cert, key, out, ["--pubkey", str(pinned)])
    assert c.returncode == 0, c.stderr
    counts = json.loads(c.stdout)
    assert counts["refused_key"] >= 1
    assert "not pinned" in c.stderr
    assert [os.path.basename(os.path.dirname(s)) for s in collected_stores(out)] == [key_id(a)]


def test_a_store_with_no_batch_ships_nothing_and_ends_at_once(tmp_path, pki, server, client):
    """A capture with no packets leaves a store with no batch: shipd --until-shipped ends 0 at
    once, not after ship.drain_timeout_s with exit 75 (its look for the markers of gaps it went
    past waited for a position it never gets)."""
    empty = tmp_path / "empty.pcap"
    empty.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))  # header only
    store = str(tmp_path / "probe")
    run_probe([str(empty)], store, f"ship-empty-{uuid.uuid4().hex[:8]}")
    cert, key = client
    r = ship(store, tls_settings(pki, cert, key, server.url) + ["ship.drain_timeout_s=120"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "0 published" in r.stderr, r.stderr[-3000:]
