// The IPFIX exporter: follows the store writerd has made durable, as shipping does
// (SegmentFollower), and sends every record of every batch to an IPFIX collector through
// libfixbuf (templates, sequence numbers, UDP or TCP), mapped as ipfix_record.h says.
//
// Position. A batch counts as exported once all its IPFIX records were handed to the transport
// (fBufEmit returned: for UDP the datagrams were sent, for TCP the kernel took the bytes). The
// last exported batch and the mapper's per-flow state are kept in DIR/ipfix-exported (written
// to a temp file opened O_NOFOLLOW, fsynced, renamed; see segment/shipped_position.h), saved at
// most every 250 ms and on leaving. A restart resumes after the saved batch: nothing is
// skipped, and what was sent after the last save is sent again (at least once across a crash;
// every record's flow and times are the same, so a collector can drop repeats).
//
// Backpressure and loss. The store is the queue: the exporter never holds more than one batch
// (its records) in memory, and a slow or absent collector only makes it lag behind the store;
// capture, flowd and writerd never wait for it. A TCP collector that refuses or drops the
// connection is retried with capped backoff from the last exported batch (the batch in flight
// is rolled back and sent whole again). Records are lost only when retention deletes segments
// the exporter has not reached: those batches are counted (skipped_batches) and logged.
// UDP is lossy by nature: the collector sees the loss in the IPFIX sequence numbers; the
// optional pacing (export.ipfix.max_records_per_s) keeps bursts within its socket buffer.
//
// Templates: sent at the start of each connection; on UDP again every
// export.ipfix.template_refresh_s seconds.
//
// Not thread-safe; one exporter per store.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <span>
#include <string>

#include "config.h"
#include "shipd/ipfix_record.h"
#include "shipd/store_output.h"

namespace flowseal::shipd {

struct IpfixSettings {
  IpfixEndpoint endpoint;
  IpfixMode mode = IpfixMode::kBiflow;
  std::uint32_t observation_domain = 0;
  std::chrono::seconds template_refresh{60};
  std::int64_t max_records_per_s = 0;
};
// export.ipfix.* checked (the URL parses): throws ConfigError naming the key.
IpfixSettings ipfix_settings(const Config& config);

// One libfixbuf export session (templates, sequence numbers, observation domain) over one
// transport. Any failure leaves it unusable: make a new one (a new transport session).
class IpfixSender {
 public:
  ~IpfixSender();
  IpfixSender(const IpfixSender&) = delete;
  IpfixSender& operator=(const IpfixSender&) = delete;

  // To a collector (connects on the first message), or to an IPFIX file (tests). nullptr with
  // `why` if the session cannot be set up.
  static std::unique_ptr<IpfixSender> to_collector(const IpfixSettings& settings, std::string& why);
  static std::unique_ptr<IpfixSender> to_file(const std::filesystem::path& file, IpfixMode mode,
                                              std::uint32_t domain, std::string& why);

  // Appends records (messages go out as they fill); emit() sends the partial last one.
  bool append(const IpfixRecord& record, std::string& why);
  bool emit(std::string& why);
  // Puts the templates in the next message (UDP refresh).
  bool send_templates(std::string& why);

 private:
  struct State;
  explicit IpfixSender(std::unique_ptr<State> state);
  static std::unique_ptr<IpfixSender> start(std::unique_ptr<State> state, fbExporter_t* exporter,
                                            std::string& why);
  std::unique_ptr<State> state_;
};

struct IpfixStats {
  std::uint64_t batches_exported = 0;  // this run
  std::uint64_t events_exported = 0;   // stored records that gave IPFIX records
  std::uint64_t records_sent = 0;      // IPFIX data records handed to the transport
  std::uint64_t repeats = 0;           // events stored twice, exported once
  std::uint64_t malformed = 0;         // records the mapping could not read (skipped)
  std::uint64_t send_failures = 0;     // failed sends / connects (then retried)
  std::uint64_t resends = 0;           // batches sent again after a failure
  std::uint64_t skipped_batches = 0;   // never exported: retention removed them first
  std::uint64_t store_errors = 0;      // damaged segments the follower skipped
  std::uint64_t lag_batches = 0;       // stored, not exported
  std::uint64_t exported_seq = 0;      // last exported batch (0 with none)
};

// Runs until hooks.stop() (75) or, after hooks.writer_done(), until every stored batch is
// exported (0) or ship.drain_timeout_s passed (75, the lag logged).
// publish_stats (may be empty) gets the counters every 100 ms.
int run_ipfix_export(const Config& config, const IpfixSettings& settings, const OutputHooks& hooks,
                     std::function<void(const IpfixStats&)> publish_stats);

}  // namespace flowseal::shipd
