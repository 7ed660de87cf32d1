#include "shipd/ship_stage.h"

#include <algorithm>
#include <deque>
#include <map>
#include <optional>
#include <set>
#include <thread>

#include <capnp/serialize.h>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "seal/gap_marker.h"
#include "seal/keys.h"
#include "segment/shipped_position.h"
#include "shipd/segment_follower.h"
#include "shipd/store_output.h"
#include "capnp_frame.h"
#include "control_block.h"
#include "export_latency.h"
#include "flowseal.capnp.h"
#include "stage_runtime.h"

namespace flowseal::shipd {
namespace {

namespace fs = std::filesystem;

// The signing keys' public halves, by key id, as hex DER (the Flowseal-Key header), read
// from the store's keys/ folder when a key id is first met.
class PublicKeys {
 public:
  explicit PublicKeys(fs::path dir) : dir_(std::move(dir)) {}
  const std::string& hex_der(const segment::KeyId& id) {
    auto it = known_.find(id);
    if (it != known_.end()) return it->second;
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(dir_ / "keys", ec)) {
      if (entry.path().extension() != ".pub") continue;
      try {
        const seal::PublicKey key = seal::PublicKey::load(entry.path());
        segment::KeyId key_id;
        std::copy(key.key_id().begin(), key.key_id().end(), key_id.begin());
        known_[key_id] = seal::to_hex(key.public_der());
      } catch (const std::exception&) {
      }
    }
    it = known_.find(id);
    if (it != known_.end()) return it->second;
    spdlog::warn(
        "ship: no public key for key id {} in {}/keys: batches go without it (collect "
        "then needs --pubkey)",
        segment::to_hex(id), dir_.string());
    return known_[id];  // empty from now on
  }

 private:
  fs::path dir_;
  std::map<segment::KeyId, std::string> known_;
};

struct Inflight {
  std::uint64_t seq = 0;  // a gap marker's: the last seq it gives up
  std::uint32_t records = 0;
  bool acked = false;
  Clock::time_point sent;
  bool gap_marker = false;  // not a batch: not counted as one
  // On a live capture: when each flow end of the batch was due (ExportLatency::due_ns), to
  // measure flow end due -> acked by JetStream.
  std::vector<std::int64_t> due_ns;
};

// A signed gap marker file of the store (seal/gap_marker.h), as shipd finds it by name: it
// does not check the signature (it has no use for the key; collect checks it).
struct GapMarkerFile {
  std::uint64_t first = 0;
  std::uint64_t last = 0;
  std::vector<std::uint8_t> bytes;
};

// The marker file in `dir` for the batches from `seq` on, all of them before `before` (the
// batch shipped after the gap: a marker reaching it would tell the Core to skip batches it
// gets); the one reaching furthest if several do. nullopt if none (or none can be read).
std::optional<GapMarkerFile> gap_marker_from(const fs::path& dir, std::uint64_t seq,
                                             std::uint64_t before) {
  std::vector<seal::GapMarkerFileName> files;
  try {
    files = seal::list_gap_marker_files(dir);
  } catch (const fs::filesystem_error&) {
    return std::nullopt;
  }
  std::optional<GapMarkerFile> best;
  for (const seal::GapMarkerFileName& file : files) {
    if (seq < file.first_seq || seq > file.last_seq || file.last_seq >= before) continue;
    if (best && best->last >= file.last_seq) continue;
    std::string why;
    auto bytes = seal::read_gap_marker_file(file.path, why);
    if (!bytes) {
      spdlog::error("ship: gap marker {}: {}", file.path.string(), why);
      continue;
    }
    best = GapMarkerFile{file.first_seq, file.last_seq, std::move(*bytes)};
  }
  return best;
}

// Ships batches to the Core, at most settings.max_inflight unacked at a time; an ack moves the
// position only when every batch before it is acked too. A failed or timed-out publish
// rewinds to the first unacked batch and sends from there again, after a back-off and one
// batch at a time until an ack moves the position: a server that refuses every publish (a
// stream full with discard: new, a limit reached) answers at once, and re-sending the whole
// window at once made shipd spin (measured: 105,389 publishes for 483 batches and 21 s of
// CPU in a 25-s stall).
class ShipOutput final : public StoreOutput {
 public:
  ShipOutput(const Config& config, const PublisherSettings& settings,
             std::function<void(const ShipStats&)> publish)
      : dir_(config.writer.dir),
        settings_(settings),
        counted_through_(settings.counted_through),
        publish_(std::move(publish)),
        position_("ship", dir_, load_position(dir_), save_position_file(dir_)),
        measure_latency_(!config.capture.interface.empty()),
        follower_(dir_, position_.upto(),
                  measure_latency_ ? FrameParts::kBoth : FrameParts::kStoredBytes),
        scout_(dir_, position_.upto()),
        publisher_(settings),
        keys_(dir_),
        latency_(config.flowd) {}

  bool pass(Clock::time_point now) override {
    if (!publisher_.reachable()) {
      stats_.unreachable_ms +=
          std::chrono::duration_cast<std::chrono::milliseconds>(now - last_pass_).count();
    }
    last_pass_ = now;
    if (!publisher_.connected() && now >= next_connect_) connect(now);
    if (!publisher_.connected()) {
      read_ahead();
      return false;
    }
    bool busy = take_acks(now);
    position_.save(inflight_.empty());
    if (now >= resend_after_) busy = publish_more() || busy;
    if (stalled(now)) read_ahead();
    return busy;
  }

  bool drained() override {
    if (!inflight_.empty() || held_ || !publisher_.connected() ||
        !follower_.at_end_of_closed_store()) {
      return false;
    }
    // The markers of gaps gone past: one last look, and their acks.
    if (!looked_before_drained_) {
      looked_before_drained_ = send_passed_markers(/*now_please=*/true);
      return false;
    }
    return passed_pending_.empty();
  }
  void save_position(bool force) override { position_.save(force); }
  std::uint64_t lag() const override { return stats_.lag_batches; }
  // Waiting for acks: woken by the first one, so that a batch's ack is taken (and the next
  // batch sent) at once, not after the loop's 20-ms nap. With ship.max_inflight=1 the nap
  // made shipping 30 batches/s (2,226 batches took 72 s after a stalled server continued).
  void wait(bool busy) override {
    if (busy) return;
    if (publisher_.connected() && !inflight_.empty()) {
      publisher_.wait_for_outcomes(std::chrono::milliseconds(20));
    } else {
      StoreOutput::wait(busy);
    }
  }

  void publish_stats() override {
    stats_.inflight = inflight_.size();
    stats_.store_errors = follower_.error_count();
    stats_.lag_batches = position_.lag(std::max(follower_.newest_seen(), scout_.newest_seen()));
    stats_.shipped_seq = position_.upto().value_or(0);
    if (publish_) publish_(stats_);
  }

  void log_stats(std::string_view what) override {
    spdlog::info(
        "ship {}: {} batches ({} records) acked, {} in flight, {} published, {} "
        "re-sent from the store, {} already held by the server, lag {} batches, "
        "unreachable {:.1f} s, {} connect failures ({} TLS refused), {} gap markers sent",
        what, stats_.batches_acked, stats_.records_acked, stats_.inflight, stats_.batches_published,
        stats_.rewinds, stats_.duplicates, stats_.lag_batches, double(stats_.unreachable_ms) / 1e3,
        stats_.connect_failures, stats_.tls_refused, gap_markers_);
    if (what != "progress" && latency_.count() > 0) {
      spdlog::info("ship latency (flow end due -> acked by JetStream): {}", latency_.describe());
      spdlog::info("ship latency histogram (bucket upper edge in us: flow ends): {}",
                   latency_.histogram());
    }
  }

 private:
  static std::optional<segment::ShippedPosition> load_position(const fs::path& dir) {
    std::string why;
    std::optional<segment::ShippedPosition> position = segment::load_shipped_position(dir, why);
    if (!why.empty()) spdlog::warn("ship: {}: shipping from the first stored batch", why);
    if (position) {
      spdlog::info("ship: {} shipped up to batch seq {}: resuming after it", dir.string(),
                   position->seq);
    }
    return position;
  }
  static OutputPosition::Writer save_position_file(const fs::path& dir) {
    return [dir](const segment::ShippedPosition& position, std::string& error) {
      return segment::save_shipped_position(dir, position, error);
    };
  }

  void connect(Clock::time_point now) {
    ship::ConnectFailure failure = ship::ConnectFailure::kNone;
    std::string cause;
    if (publisher_.connect(failure, cause)) {
      spdlog::info("ship: connected to {} (stream {})", settings_.connect.url, settings_.stream);
      backoff_ = std::chrono::milliseconds(200);
      last_cause_.clear();
      inflight_.clear();
      held_.reset();
      handed_ = position_.upto();
      follower_.rewind(position_.upto());
      resend_after_ = now;
      return;
    }
    ++stats_.connect_failures;
    if (failure == ship::ConnectFailure::kTlsRefused) ++stats_.tls_refused;
    if (cause != last_cause_) {
      spdlog::error(
          "ship: cannot connect to {}: {}: {} (retrying with backoff; the store "
          "keeps every batch meanwhile)",
          settings_.connect.url, ship::to_string(failure), cause);
      last_cause_ = cause;
    }
    next_connect_ = now + backoff_;
    backoff_ = std::min(backoff_ * 2, std::chrono::milliseconds(30000));
  }

  // The Core is away or takes nothing (acks stopped, a back-off after refusals): the follower
  // waits at the window's end, so a second one, the scout, reads ahead (a bounded number of
  // frames per pass) only so that the lag (stored, not acked) keeps counting what writerd
  // stores meanwhile. Without it the lag stood at the window (1 with ship.max_inflight=1)
  // while the store grew by thousands of batches.
  void read_ahead() {
    for (int n = 0; n < 256; ++n) {
      const std::optional<StoredFrame> frame = scout_.next();
      if (!frame) break;
      position_.met(frame->frame.batch.seq);
    }
  }
  bool stalled(Clock::time_point now) const {
    return probing_ || now < resend_after_ ||
           (!inflight_.empty() && now - inflight_.front().sent > kStalledAfter);
  }

  // Marks the acked batches, moves the position over the acked front, rewinds on a failure.
  bool take_acks(Clock::time_point now) {
    outcomes_.clear();
    publisher_.take_outcomes(outcomes_);
    bool failed = false;
    for (const PublishOutcome& outcome : outcomes_) {
      if (take_passed_marker_outcome(outcome)) continue;
      if (inflight_.empty() || outcome.seq < inflight_.front().seq) continue;  // stale
      // Seqs in flight ascend, but not by one across a gap marker (it stands for many).
      const auto it = std::lower_bound(
          inflight_.begin(), inflight_.end(), outcome.seq,
          [](const Inflight& entry, std::uint64_t seq) { return entry.seq < seq; });
      if (it == inflight_.end() || it->seq != outcome.seq) continue;
      if (outcome.acked) {
        it->acked = true;
        if (outcome.duplicate) ++stats_.duplicates;
      } else {
        failed = true;
        if (!failure_logged_) {
          spdlog::warn("ship: batch seq {} not acked: {} (re-sending from the store)", outcome.seq,
                       outcome.error);
          failure_logged_ = true;
        }
      }
    }
    bool busy = false;
    const std::int64_t acked_ns = realtime_ns();
    while (!inflight_.empty() && inflight_.front().acked) {
      for (const std::int64_t due : inflight_.front().due_ns) {
        latency_.add_latency_ns(acked_ns - due);
      }
      position_.advance(inflight_.front().seq);
      const bool counted_before = counted_through_ && inflight_.front().seq <= *counted_through_;
      if (!inflight_.front().gap_marker && !counted_before) {
        ++stats_.batches_acked;
        stats_.records_acked += inflight_.front().records;
      }
      inflight_.pop_front();
      failure_logged_ = false;
      resend_backoff_ = kFirstResendBackoff;
      probing_ = false;
      busy = true;
    }
    // No ack for far longer than libnats' own timeout (a connection that died with the acks):
    // re-send.
    if (!inflight_.empty() && now - inflight_.front().sent > 3 * settings_.ack_wait) failed = true;
    if (failed) {
      rewind();
      busy = true;
    }
    return busy;
  }

  bool publish_more() {
    bool busy = false;
    send_passed_markers();
    const std::int64_t window = probing_ ? 1 : settings_.max_inflight;
    while (static_cast<std::int64_t>(inflight_.size()) < window) {
      std::optional<StoredFrame> frame = std::exchange(held_, std::nullopt);
      if (!frame) frame = follower_.next();
      if (!frame) break;
      position_.met(frame->frame.batch.seq);
      if (!position_.same_stream(frame->file.stream_id)) {
        inflight_.clear();
        follower_.rewind(std::nullopt);
        scout_.rewind(std::nullopt);
        handed_.reset();
        // The markers looked at were the old stream's: the new one's are looked at afresh (a
        // pending one's outcome would otherwise be waited for for ever: drained()).
        markers_sent_.clear();
        passed_pending_.clear();
        counted_through_.reset();  // the earlier shipd's seqs were of the old stream
        looked_before_drained_ = false;
        continue;
      }
      if (const Gap gap = cover_gap(*frame, window); gap != Gap::kCovered) {
        if (gap == Gap::kWait) {
          held_ = std::move(frame);  // its gap's marker is not signed yet, or no room
        } else {
          rewind();  // as a failed batch publish: from the first unacked one, later
        }
        break;
      }
      std::string error;
      if (!publisher_.publish(*frame, keys_.hex_der(frame->file.key_id), error)) {
        if (!failure_logged_) {
          spdlog::warn("ship: publishing batch seq {} failed: {} (re-sending from the store)",
                       frame->frame.batch.seq, error);
          failure_logged_ = true;
        }
        rewind();
        break;
      }
      inflight_.push_back({frame->frame.batch.seq, frame->frame.batch.record_count, false,
                           Clock::now(), false, due_times(*frame)});
      handed_ = frame->frame.batch.seq;
      ++stats_.batches_published;
      stats_.records_published += frame->frame.batch.record_count;
      busy = true;
    }
    return busy;
  }

  // Before `frame`, when it does not follow the batch handed over last (retention deleted the
  // ones between before they were shipped): the signed gap markers that cover them, so that
  // the Core records the loss and takes `frame`. false while the marker is not there yet (the
  // supervisor signs what writerd's retention noted, within a poll); after kGapMarkerWait
  // without one (segments deleted by hand, a note that could not be written) it goes on
  // without, loudly: the Core then holds the stream at the gap until the marker comes
  // (send_passed_markers sends it then, or after a restart).
  enum class Gap { kCovered, kWait, kFailed };
  Gap cover_gap(const StoredFrame& frame, std::int64_t window) {
    const std::uint64_t seq = frame.frame.batch.seq;
    const Clock::time_point now = Clock::now();
    // Nothing handed over yet: a store whose first batches are gone is only a gap if a marker
    // says so (else they went the ordinary way, by age, before shipping was on).
    std::optional<std::uint64_t> missing;
    if (handed_) {
      if (seq > *handed_ + 1) missing = *handed_ + 1;
    } else if (seq > 0 && gap_marker_from(dir_, 0, seq)) {
      missing = 0;
    }
    while (missing && *missing < seq) {
      if (static_cast<std::int64_t>(inflight_.size()) >= window) return Gap::kWait;
      std::optional<GapMarkerFile> marker = gap_marker_from(dir_, *missing, seq);
      if (!marker) {
        if (!gap_since_) gap_since_ = now;
        if (now - *gap_since_ < kGapMarkerWait) return Gap::kWait;
        spdlog::error(
            "ship: batches seq {}..{} are not in {} and no gap marker covers them yet: shipping "
            "on after them; the Core's collect holds this stream at seq {} until the marker "
            "comes (it is sent whenever it does)",
            *missing, seq - 1, dir_.string(), *missing);
        break;
      }
      std::string error;
      if (!publisher_.publish_gap(frame.file.key_id, frame.file.stream_id, marker->first,
                                  marker->last, marker->bytes, keys_.hex_der(frame.file.key_id),
                                  error)) {
        if (!failure_logged_) {
          spdlog::warn("ship: publishing the gap marker for batches seq {}..{} failed: {}",
                       marker->first, marker->last, error);
          failure_logged_ = true;
        }
        return Gap::kFailed;
      }
      spdlog::warn(
          "ship: batches seq {}..{} were given up before shipping: sent their signed gap "
          "marker to the Core",
          marker->first, marker->last);
      inflight_.push_back({marker->last, 0, false, now, true, {}});
      markers_sent_.insert({marker->first, marker->last});
      handed_ = marker->last;
      missing = marker->last + 1;
      ++gap_markers_;
    }
    gap_since_.reset();
    return Gap::kCovered;
  }

  // The markers of gaps shipd went past without one (none came within kGapMarkerWait, or
  // shipd was restarted after it had): read from the store's marker files, not remembered, so
  // a restart cannot lose one. Every kGapMarkerWait (and once more before shipd says it has
  // drained), each marker file for batches at or before the acked position is sent, until the
  // server acks it, once per run: collect acks one it holds already as a repeat. Their seqs
  // are at or before the position, so their acks cannot be taken for a batch in flight.
  // True if every such marker is sent or acked (or none can be: nothing handed over yet).
  bool send_passed_markers(bool now_please = false) {
    const Clock::time_point now = Clock::now();
    if (now < next_marker_look_ && !now_please) return false;
    const std::optional<std::uint64_t> upto = position_.upto();
    if (!upto || !position_.stream()) return true;  // nothing handed over: no gap gone past
    next_marker_look_ = now + kGapMarkerWait;
    std::vector<seal::GapMarkerFileName> files;
    try {
      files = seal::list_gap_marker_files(dir_);
    } catch (const fs::filesystem_error&) {
      return false;
    }
    for (const seal::GapMarkerFileName& file : files) {
      const std::pair range{file.first_seq, file.last_seq};
      if (file.last_seq > *upto || markers_sent_.contains(range) ||
          passed_pending_.contains(file.last_seq)) {
        continue;
      }
      std::string why;
      const auto bytes = seal::read_gap_marker_file(file.path, why);
      const auto key_id = bytes ? seal::gap_marker_key_id(*bytes) : std::nullopt;
      if (!key_id) continue;  // collect would refuse it too; verify names it
      segment::KeyId key;
      std::copy(key_id->begin(), key_id->end(), key.begin());
      if (!publisher_.publish_gap(key, *position_.stream(), file.first_seq, file.last_seq, *bytes,
                                  keys_.hex_der(key), why)) {
        return false;  // the Core is away: the next look tries again
      }
      passed_pending_.emplace(file.last_seq, range);
    }
    return true;
  }

  // The outcome of a marker send_passed_markers sent; false if `outcome` is not one.
  bool take_passed_marker_outcome(const PublishOutcome& outcome) {
    const auto it = passed_pending_.find(outcome.seq);
    if (it == passed_pending_.end() || !position_.upto() || outcome.seq > *position_.upto()) {
      return false;
    }
    if (outcome.acked) {
      spdlog::warn("ship: sent the gap marker for batches seq {}..{}, after their gap",
                   it->second.first, it->second.second);
      markers_sent_.insert(it->second);
      ++gap_markers_;
    } else {
      spdlog::warn(
          "ship: the gap marker for batches seq {}..{} was not acked: {} (sent again "
          "at the next look)",
          it->second.first, it->second.second, outcome.error);
      looked_before_drained_ = false;
    }
    passed_pending_.erase(it);
    return true;
  }

  // When the batch's flow ends were due (live captures only: packet time is wall time there).
  std::vector<std::int64_t> due_times(const StoredFrame& frame) const {
    std::vector<std::int64_t> due;
    if (!measure_latency_ || frame.message_bytes == 0) return due;
    try {
      const std::span<const std::byte> bytes(
          reinterpret_cast<const std::byte*>(frame.message.data()), frame.message_bytes);
      capnp::FlatArrayMessageReader message(as_words(bytes), frame_reader_options());
      for (auto record : message.getRoot<schema::SealedBatch>().getRecords()) {
        if (const std::int64_t at = latency_.due_ns(record); at >= 0) due.push_back(at);
      }
    } catch (const kj::Exception&) {
      // The follower checked the frame; a batch that still cannot be read just goes unmeasured.
    }
    return due;
  }

  // Sends again from the first unacked batch, after the back-off and one batch at a time.
  void rewind() {
    publisher_.abandon_pending();
    passed_pending_.clear();  // their outcomes are dropped too: sent again at the next look
    looked_before_drained_ = false;
    inflight_.clear();
    held_.reset();
    handed_ = position_.upto();
    follower_.rewind(position_.upto());
    ++stats_.rewinds;
    resend_after_ = Clock::now() + resend_backoff_;
    resend_backoff_ = std::min(resend_backoff_ * 2, settings_.ack_wait);
    probing_ = true;
  }

  fs::path dir_;
  const PublisherSettings& settings_;
  std::optional<std::uint64_t> counted_through_;  // see PublisherSettings::counted_through
  std::function<void(const ShipStats&)> publish_;
  OutputPosition position_;
  const bool measure_latency_;
  SegmentFollower follower_;
  SegmentFollower scout_;  // reads ahead of follower_ only to count the lag when stalled
  Publisher publisher_;
  PublicKeys keys_;
  ExportLatency latency_;
  ShipStats stats_;
  std::deque<Inflight> inflight_;
  std::vector<PublishOutcome> outcomes_;
  std::chrono::milliseconds backoff_{200};
  Clock::time_point next_connect_ = Clock::now();
  Clock::time_point last_pass_ = Clock::now();
  std::string last_cause_;
  bool failure_logged_ = false;
  // After a failed publish: nothing is re-sent before resend_after_, and only one batch is in
  // flight (probing_) until an ack moves the position again.
  static constexpr std::chrono::milliseconds kFirstResendBackoff{50};
  // No ack for this long: the Core is stalled (the scout counts the lag).
  static constexpr std::chrono::seconds kStalledAfter{1};
  std::chrono::milliseconds resend_backoff_ = kFirstResendBackoff;
  // The last seq put in flight (or acked): a frame after a jump past it needs a gap marker.
  std::optional<std::uint64_t> handed_ = position_.upto();
  std::optional<StoredFrame> held_;  // a frame waiting for its gap's marker
  // This run's markers, by range: sent before the batch after their gap, or acked after it.
  std::set<std::pair<std::uint64_t, std::uint64_t>> markers_sent_;
  // Sent by send_passed_markers, not acked yet: by last seq (what the outcome names).
  std::map<std::uint64_t, std::pair<std::uint64_t, std::uint64_t>> passed_pending_;
  bool looked_before_drained_ = false;
  Clock::time_point next_marker_look_ = Clock::now();
  std::optional<Clock::time_point> gap_since_;
  // The supervisor polls the given-up note at least once a second.
  static constexpr std::chrono::seconds kGapMarkerWait{10};
  std::uint64_t gap_markers_ = 0;
  Clock::time_point resend_after_ = Clock::now();
  bool probing_ = false;
};

}  // namespace

PublisherSettings publisher_settings(const Config& config, std::string key_pem) {
  const ShipConfig& ship = config.ship;
  if (ship.url.empty()) throw ConfigError("ship.url is empty: shipd has nowhere to ship");
  PublisherSettings settings;
  settings.connect.url = ship.url;
  settings.connect.insecure = ship.insecure;
  settings.connect.name = "flowseal-shipd";
  try {
    ship::check_connect_settings(settings.connect, "ship.url");
  } catch (const std::invalid_argument& e) {
    throw ConfigError(e.what());
  }
  std::string why;
  const bool tls = ship::parse_nats_url(ship.url, why)->scheme == "tls";
  if (tls) {
    if (ship.tls_ca.empty() || ship.tls_cert.empty() || ship.tls_key.empty()) {
      throw ConfigError(fmt::format(
          "ship.url = '{}' needs ship.tls_ca, ship.tls_cert and ship.tls_key (mutual TLS)",
          ship.url));
    }
    try {
      ship::read_text_file(ship.tls_ca, "ship.tls_ca");
      ship::read_text_file(ship.tls_cert, "ship.tls_cert");
      settings.connect.tls.key_pem = key_pem.empty()
                                         ? ship::read_private_pem(ship.tls_key, "ship.tls_key")
                                         : std::move(key_pem);
    } catch (const std::runtime_error& e) {
      throw ConfigError(e.what());
    }
    settings.connect.tls.ca_file = ship.tls_ca;
    settings.connect.tls.cert_file = ship.tls_cert;
  }
  if (ship.subject_prefix.empty() ||
      ship.subject_prefix.find_first_of(" \t*>") != std::string::npos ||
      ship.subject_prefix.front() == '.' || ship.subject_prefix.back() == '.') {
    throw ConfigError(fmt::format("ship.subject_prefix = '{}' is not a NATS subject prefix",
                                  ship.subject_prefix));
  }
  if (ship.stream.empty() || ship.stream.find_first_of(" \t.*>/\\") != std::string::npos) {
    throw ConfigError(
        fmt::format("ship.stream = '{}' is not a JetStream stream name", ship.stream));
  }
  settings.stream = ship.stream;
  settings.subject_prefix = ship.subject_prefix;
  settings.max_inflight = ship.max_inflight;
  return settings;
}

int run_ship(const Config& config, const PublisherSettings& settings, const OutputHooks& hooks,
             std::function<void(const ShipStats&)> publish_stats) {
  if (settings.connect.insecure && settings.connect.url.rfind("nats://", 0) == 0) {
    spdlog::warn(
        "ship: {} is PLAINTEXT (ship.insecure=true): batches and their signatures "
        "travel unencrypted and the server is not authenticated",
        settings.connect.url);
  }
  ShipOutput output(config, settings, std::move(publish_stats));
  const DrainRule drain{"ship", "ship.drain_timeout_s",
                        std::chrono::duration<double>(config.ship.drain_timeout_s), "acked"};
  return follow_store(output, drain, config.writer.dir, hooks);
}

}  // namespace flowseal::shipd
