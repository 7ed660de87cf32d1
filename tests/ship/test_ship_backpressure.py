"""Backpressure (issue 15): a Core that cannot take batches makes shipd wait, never capture.
Two ways the Core stalls: its stream is full (max_bytes with discard: new, so JetStream refuses
every publish at once), or the server is stopped (SIGSTOP) under ship.max_inflight=1. While it
is stalled the whole input is captured and stored, the ship lag in `status --json` grows and
the shipped position stands still; once it clears, the run drains through shipd and every
batch is in the stream once and in collect's store, which verifies and reads as the probe's."""
import os
import re
import signal
import subprocess
import time

import pytest

from shiplib import DATA, TIMEOUT, JsApi, tls_settings
from test_ship_stage import (SCALE, instance_name, no_capture_drops, run_args, same_as_probe,
                             status, stored_batches, summary_int)

# One capture looped: 755,000 packets, ~94,000 records in ~2,200 batches (16 records or the
# seal timeout), which writerd takes several seconds to store: long enough to watch the lag
# grow while it does. (Looping the three captures of the other tests stops at 24 passes:
# their times span ten years.)
PCAP = os.path.join(DATA, "tumblr.pcap")
LOOPS = 4000  # long enough that a fast machine is still capturing when the stall is seen
# Room for a few batches (~2 KB each): the stream is full after the first handful.
FULL_STREAM = {"name": "FLOWSEAL", "subjects": ["flowseal.>"], "storage": "file",
               "max_bytes": 16384, "discard": "new", "num_replicas": 1}


def sample(instance, proc):
    """One status --json (None if the run is between samples), failing if the run ended."""
    assert proc.poll() is None, f"the run ended while stalled: {proc.communicate()[1][-3000:]}"
    st = status(instance)
    return st if st is not None and "ship" in st else None


def stage(st, name):
    return next(s for s in st["stages"] if s["stage"] == name)


def wait_for_status(instance, proc, predicate, what, timeout=120):
    deadline = time.monotonic() + timeout * SCALE
    while True:
        st = sample(instance, proc)
        if st is not None and predicate(st):
            return st
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {st}"
        time.sleep(0.05)


@pytest.mark.parametrize("stall", ["stream_full", "server_stopped"])
def test_a_stalled_core_makes_shipd_wait_while_capture_goes_on_and_all_arrives_after(
        tmp_path, pki, server, client, stall):
    cert, key = client
    store = str(tmp_path / "probe")
    instance = instance_name(f"bp-{stall[:6]}")
    settings = tls_settings(pki, cert, key, server.url) + ["ship.drain_timeout_s=600"]
    if stall == "stream_full":
        # Made before the run: shipd binds to a stream it finds (the operator's limits).
        with JsApi(server.port, pki, cert, key) as js:
            js.stream_create(FULL_STREAM)
    else:
        settings.append("ship.max_inflight=1")
    proc = subprocess.Popen(run_args(store, instance, settings, pcaps=[PCAP],
                                     extra=["--set", f"capture.loop={LOOPS}"]),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stopped = False
    try:
        if stall == "stream_full":
            # The first refusals (the stream is full) rewind: 'retried' counts them.
            first = wait_for_status(instance, proc, lambda s: s["ship"]["retried"] > 0
                                    and s["ship"]["lag_batches"] > 0, "the full stream's refusal")
        else:
            wait_for_status(instance, proc, lambda s: s["ship"]["shipped_seq"] >= 3,
                            "the first acks")
            os.kill(server.proc.pid, signal.SIGSTOP)
            stopped = True
            first = wait_for_status(instance, proc, lambda s: s["ship"]["inflight"] == 1
                                    and s["ship"]["lag_batches"] > 0, "a batch waiting for its ack")
        # Capture runs ahead of the rings (the whole input in ~2 s); writerd, storing at its
        # own pace, is what must still be going when the stall begins.
        assert stage(first, "writerd")["state"] == "running", \
            f"the store was complete before the stall was seen: {first}"
        started = time.monotonic()
        # Stalled: watch until capture and writerd are done with the whole input.
        lags, seen = [first["ship"]["lag_batches"]], first
        while not (stage(seen, "capture")["state"] in ("done", "failed")
                   and stage(seen, "writerd")["state"] == "done"):
            assert time.monotonic() - started < TIMEOUT * SCALE, f"capture never finished: {seen}"
            time.sleep(0.1)
            st = sample(instance, proc)
            if st is None:
                continue
            seen = st
            # The position stands still (a batch acked before the stall may still land).
            assert st["ship"]["shipped_seq"] <= first["ship"]["shipped_seq"] + 1, st["ship"]
            if stall == "server_stopped":
                assert st["ship"]["inflight"] <= 1, st["ship"]
            if st["ship"]["lag_batches"] != lags[-1]:
                lags.append(st["ship"]["lag_batches"])
        stalled_s = time.monotonic() - started
        last = seen
        assert stage(last, "capture")["state"] == "done", last
        # The lag grew while the pipeline went on storing, and capture dropped nothing for it.
        assert lags == sorted(lags) and len(lags) >= 3, lags
        assert stage(last, "writerd")["out_total"] > stage(first, "writerd")["out_total"]
        assert last["drops"]["ring_full"] == 0 and last["drops"]["writer_stalled"] == 0, last
        assert last["ship"]["shipped_seq"] <= first["ship"]["shipped_seq"] + 1
        # No spinning: a refused publish is re-sent after a back-off, one batch at a time
        # (before that, shipd re-sent its whole window at once: ~4,000 publishes a second).
        resent = last["ship"]["batches_published"] - first["ship"]["batches_published"]
        assert resent <= 20 + 4 * stalled_s, (resent, stalled_s, last["ship"])
        print(f"{stall}: stalled {stalled_s:.1f} s; writerd stored records "
              f"{stage(first, 'writerd')['out_total']} -> {stage(last, 'writerd')['out_total']}, "
              f"capture took all {stage(last, 'capture')['in_total']} packets; lag "
              f"{lags[0]} -> {lags[-1]} batches in {len(lags)} steps; shipped seq "
              f"{last['ship']['shipped_seq']}; {resent} publishes while stalled")
        cleared = time.monotonic()
        # Cleared: the operator raises the limit, or the server continues.
        if stall == "stream_full":
            with JsApi(server.port, pki, cert, key) as js:
                js.stream_update(dict(FULL_STREAM, max_bytes=-1))
        else:
            os.kill(server.proc.pid, signal.SIGCONT)
            stopped = False
        _, stderr = proc.communicate(timeout=TIMEOUT * SCALE)
    finally:
        if stopped:
            os.kill(server.proc.pid, signal.SIGCONT)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr[-4000:]
    print(f"{stall}: the run ended {time.monotonic() - cleared:.1f} s after the Core cleared")
    batches = stored_batches(stderr)
    assert summary_int(stderr, r"shipped\s+(\d+) batches") == batches, stderr[-3000:]
    assert summary_int(stderr, r"unshipped (\d+) batches") == 0
    no_capture_drops(stderr)
    # No stage crashed on the way (shipd, restarted, would still ship everything).
    assert not re.search(r"restarts [1-9]", stderr), stderr[-3000:]
    # Every batch once in the stream (a re-send is dropped by its message id).
    with JsApi(server.port, pki, cert, key) as js:
        assert js.stream_info("FLOWSEAL")["state"]["messages"] == batches
    # A batch the full stream refused while a later, smaller one of the same window fitted
    # lands after it: collect hands the gap back until it comes (counted, not stored twice).
    counts = same_as_probe(server, pki, cert, key, tmp_path, store, batches, in_order=False)
    print(f"{stall}: collect received {counts['received']} messages for {batches} batches "
          f"({counts['refused_gap']} gaps handed back)")
