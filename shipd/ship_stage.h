// shipd's loop: follows the store writerd has made durable (SegmentFollower), publishes each
// batch to JetStream (Publisher) with at most ship.max_inflight unacked, and counts a batch as
// shipped only once it and every batch before it are acked. That position is kept durable in
// the store directory (segment/shipped_position.h), so a restart of shipd, of the probe or of
// the server resumes at the first unacked batch; a republish is a no-op at the server (message
// id) and a repeat at collect (same stream, seq and root).
//
// While the Core is away, slow or refusing us, nothing upstream waits: the store is the
// buffer, the lag grows, and every refused connect is logged with its cause, counted and
// retried with capped exponential backoff. A failed or timed-out publish rewinds to the first
// unacked batch and re-sends from there after a back-off (50 ms doubling up to the ack wait),
// one batch at a time until an ack moves the position: a full stream that refuses every
// publish at once costs a publish per back-off, not a spin.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>

#include "config.h"
#include "shipd/publisher.h"
#include "shipd/store_output.h"

namespace flowseal::shipd {

struct ShipStats {
  std::uint64_t batches_published = 0;  // publishes, re-sends included
  std::uint64_t records_published = 0;  // their records
  std::uint64_t batches_acked = 0;      // acked in order (shipped), this run
  std::uint64_t records_acked = 0;
  std::uint64_t duplicates = 0;  // acks saying the server had it already
  std::uint64_t rewinds = 0;     // failed or timed-out publishes: re-sent from the store
  std::uint64_t connect_failures = 0;
  std::uint64_t tls_refused = 0;  // of those: the TLS handshake failed
  std::uint64_t inflight = 0;
  std::uint64_t lag_batches = 0;     // stored but not acked
  std::uint64_t unreachable_ms = 0;  // time without a usable connection
  std::uint64_t store_errors = 0;    // damaged segments the follower had to skip
  std::uint64_t shipped_seq = 0;     // last acked batch (0 with none)
};

// Start-up checks that need no network (ship.url form, plaintext without ship.insecure, the
// TLS files, the key's mode): throws ConfigError naming the key. Returns the settings.
// `key_pem`: the TLS client's private key already read (the supervisor hands it to a shipd
// that runs as supervisor.user); empty: ship.tls_key is read here.
PublisherSettings publisher_settings(const Config& config, std::string key_pem = {});

// Runs until hooks.stop() (exit 75, "temporary": a successor resumes), or until
// hooks.writer_done() and everything is acked (0), or ship.drain_timeout_s after
// writer_done() with batches still unacked (75, the count logged). publish_stats (may be
// empty) gets the counters every 100 ms.
int run_ship(const Config& config, const PublisherSettings& settings, const OutputHooks& hooks,
             std::function<void(const ShipStats&)> publish_stats);

}  // namespace flowseal::shipd
