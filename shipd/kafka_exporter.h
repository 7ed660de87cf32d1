// The Kafka export: every record of the sealed store, as `flowseal cat` prints it plus its
// event id and where it is sealed (record/record_json.h: stream id, batch seq, leaf index, so
// `flowseal verify --proof EVENT_ID` proves it), one Kafka message per record, to
// export.kafka.topic through librdkafka.
//
// What it guarantees:
// - Nothing that is not stored leaves: it follows the store writerd has made durable
//   (SegmentFollower), like the NATS shipper, never a ring.
// - At least once. The producer is idempotent with acks=all (librdkafka's own retries never
//   duplicate), and a record counts as exported only on its delivery report. The position
//   (DIR/kafka-exported, segment/shipped_position.h's format: O_NOFOLLOW, temp file, fsync,
//   rename) advances only past batches whose every record, and every batch's before them,
//   was delivered; a restart (of this exporter, of the probe) resumes after it and may send
//   again what was in flight. Every record carries its event id: consumers drop repeats.
// - No silent loss. librdkafka's local queue is sized from the memory budget
//   (export.kafka.queue_mb, default memory.budget_mb / 8; librdkafka's own default is 1 GiB);
//   while brokers are away the queue fills, each refusal is counted (queue_full) and the
//   exporter waits: the store is the buffer. A record whose delivery finally fails (message
//   timeout, a permanent broker error) is counted and the export rewinds to the first batch
//   not wholly delivered. An idempotence-fatal producer error is logged, the producer is made
//   anew and the export rewinds the same way.
// - Keys keep a connection in one partition: the key is the record's Community ID; a dedup
//   summary (which folds flows from many source ports) is keyed by its group's Community ID:
//   addresses, responder port and protocol, source port 0.
//
// Not thread-safe: one exporter per store, run by one thread (shipd's).
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <openssl/types.h>

#include "config.h"
#include "flowseal.capnp.h"
#include "shipd/store_output.h"

namespace flowseal::shipd {

struct KafkaSettings {
  std::string topic;
  // librdkafka configuration properties, in the order set (all already checked by librdkafka).
  std::vector<std::pair<std::string, std::string>> properties;
  std::int64_t max_inflight = 64;  // stored batches produced and not all delivered, at most
  std::int64_t queue_kbytes = 0;   // librdkafka's local queue (queue.buffering.max.kbytes)
  std::uint16_t community_id_seed = 0;
  std::chrono::duration<double> drain_timeout{30};
};

// Start-up checks that need no network (the key table has checked the broker list and the
// topic): librdkafka accepts every property. Throws ConfigError naming the key.
KafkaSettings kafka_settings(const Config& config);

struct KafkaStats {
  std::uint64_t records_produced = 0;    // handed to librdkafka, re-sends included
  std::uint64_t records_delivered = 0;   // delivery reports without error
  std::uint64_t batches_delivered = 0;   // stored batches wholly delivered, in order (this run)
  std::uint64_t delivery_failures = 0;   // delivery reports with an error (then a rewind)
  std::uint64_t queue_full = 0;          // produce refused: the local queue was full (waited)
  std::uint64_t rewinds = 0;             // re-sends from the store after a failure
  std::uint64_t producer_restarts = 0;   // fatal producer errors: a new producer
  std::uint64_t broker_down_events = 0;  // "all brokers down" reports
  std::uint64_t inflight_batches = 0;
  std::uint64_t lag_batches = 0;   // stored, not yet wholly delivered
  std::uint64_t store_errors = 0;  // damaged segments the follower had to skip
  std::uint64_t exported_seq = 0;  // last wholly delivered batch (0 with none)
};

// The Kafka message key of `record` (see above) into `key` (replaced). `sha1` from
// EVP_MD_fetch.
void kafka_key(schema::FlowEvent::Reader record, const EVP_MD* sha1, std::uint16_t seed,
               std::string& key);

// Which produced batches are wholly delivered: batches enter in stream order with their
// record count; each delivery report names its batch. position_after_reports() pops the
// batches at the front whose every record was delivered.
class DeliveryLedger {
 public:
  void produced_batch(std::uint64_t seq, std::uint32_t records);
  // A delivery report for a record of batch `seq`; unknown batches (reports left over from
  // before a rewind) are ignored.
  void report(std::uint64_t seq, bool delivered);
  // The last batch wholly delivered, with every batch before it, if that moved; and how
  // many batches and records it moved by.
  std::optional<std::uint64_t> advance(std::uint64_t& batches, std::uint64_t& records);
  bool failed() const { return failed_; }
  std::size_t size() const { return batches_.size(); }
  bool empty() const { return batches_.empty(); }
  void clear();

 private:
  struct Batch {
    std::uint64_t seq = 0;
    std::uint32_t records = 0;
    std::uint32_t undelivered = 0;
  };
  std::deque<Batch> batches_;
  bool failed_ = false;
};

// Runs until hooks.stop() (exit 75: a successor resumes), or until hooks.writer_done() and
// everything stored is delivered (0), or export.kafka.drain_timeout_s after writer_done()
// with records undelivered (75, the count logged).
// publish_stats (may be empty) gets the counters every 100 ms.
int run_kafka_export(const Config& config, const KafkaSettings& settings, const OutputHooks& hooks,
                     std::function<void(const KafkaStats&)> publish_stats);

}  // namespace flowseal::shipd
