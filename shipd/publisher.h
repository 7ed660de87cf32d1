// Publisher: shipd's side of JetStream. Connects (mutual TLS by default), binds to the
// stream `ship.stream` or creates it (file-backed, subjects `<prefix>.>`), and publishes
// stored frames asynchronously with their message id (ship_message.h), so a republish after
// a crash or a reconnect is a no-op at the server.
//
// Outcomes (ack or failure, by batch seq) are collected from libnats' thread under a mutex
// and taken by the shipping loop with take_outcomes(); the loop alone decides what counts as
// shipped. An ack that does not come within ack_wait is reported as a failure by libnats
// (jsPubOptions.MaxWait), so a message lost with a dying server is re-sent, never forgotten.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <optional>
#include <string>
#include <vector>

#include "segment_follower.h"
#include "ship/nats_client.h"

namespace flowseal::shipd {

struct PublisherSettings {
  ship::ConnectSettings connect;
  std::string stream = "FLOWSEAL";
  std::string subject_prefix = "flowseal";
  std::int64_t max_inflight = 256;
  std::chrono::milliseconds ack_wait{5000};
  // A restarted shipd: the last batch seq an earlier shipd of this run counted as acked. The
  // successor resumes from the durable position, which may lie before it, and the acks it
  // gets again for those batches (the server's repeats) are not counted twice.
  std::optional<std::uint64_t> counted_through;
};

struct PublishOutcome {
  std::uint64_t seq = 0;
  bool acked = false;
  bool duplicate = false;  // the server already had it (a republish)
  std::string error;       // when not acked
};

class Publisher {
 public:
  explicit Publisher(PublisherSettings settings);
  ~Publisher();

  // Connects and binds (or creates) the stream. On failure: false, `failure` and `cause` say
  // why; call again later (backoff is the caller's).
  bool connect(ship::ConnectFailure& failure, std::string& cause);
  bool connected() const { return client_ != nullptr; }
  // Connection lost and not yet back (libnats reconnects by itself meanwhile).
  bool reachable() const { return client_ != nullptr && client_->connected(); }

  // Queues one frame; false with `why` if libnats would not take it (the caller rewinds).
  bool publish(const StoredFrame& frame, const std::string& public_key_hex, std::string& why);
  // Queues a signed gap marker (ship_message.h) for batches first..last of `stream`, on the
  // subject of `key` (the key of the batches after the gap); false as above.
  bool publish_gap(const segment::KeyId& key, const segment::StreamId& stream,
                   std::uint64_t first_seq, std::uint64_t last_seq,
                   const std::vector<std::uint8_t>& marker, const std::string& public_key_hex,
                   std::string& why);
  // Moves the outcomes that arrived since the last call into `out` (appended).
  void take_outcomes(std::vector<PublishOutcome>& out);
  // Waits until an outcome is there to take, at most `timeout`.
  void wait_for_outcomes(std::chrono::milliseconds timeout);
  // Forgets every publish still waiting for its ack (they will be re-sent from the store).
  void abandon_pending();
  // Closes the connection (a reconnect starts over with connect()).
  void disconnect();

 private:
  // Publishes `bytes` asynchronously with the headers every message carries.
  bool send(const std::string& subject, const std::string& id, std::span<const std::uint8_t> bytes,
            const segment::StreamId& stream, std::uint64_t seq, const std::string& public_key_hex,
            const std::string& gap_first, std::string& why);
  struct Shared {
    std::mutex mutex;
    std::condition_variable arrived;
    std::vector<PublishOutcome> outcomes;
  };
  static void on_ack(jsCtx* js, natsMsg* msg, jsPubAck* ack, jsPubAckErr* error, void* closure);

  PublisherSettings settings_;
  std::unique_ptr<ship::NatsClient> client_;
  jsCtx* js_ = nullptr;
  bool published_ = false;  // since the last connect
  std::unique_ptr<Shared> shared_;
};

}  // namespace flowseal::shipd
