#include "shipd/ship_stage.h"

#include <deque>
#include <map>
#include <optional>
#include <thread>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "seal/keys.h"
#include "segment/shipped_position.h"
#include "shipd/segment_follower.h"
#include "stage_runtime.h"

namespace flowseal::shipd {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

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
    spdlog::warn("ship: no public key for key id {} in {}/keys: batches go without it (collect "
                 "then needs --pubkey)",
                 segment::to_hex(id), dir_.string());
    return known_[id];  // empty from now on
  }

 private:
  fs::path dir_;
  std::map<segment::KeyId, std::string> known_;
};

struct Inflight {
  std::uint64_t seq = 0;
  std::uint32_t records = 0;
  bool acked = false;
  Clock::time_point sent;
};

}  // namespace

PublisherSettings publisher_settings(const Config& config) {
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
      settings.connect.tls.key_pem = ship::read_private_pem(ship.tls_key, "ship.tls_key");
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
    throw ConfigError(fmt::format("ship.stream = '{}' is not a JetStream stream name",
                                  ship.stream));
  }
  settings.stream = ship.stream;
  settings.subject_prefix = ship.subject_prefix;
  settings.max_inflight = ship.max_inflight;
  return settings;
}

int run_ship(const Config& config, const PublisherSettings& settings, const ShipHooks& hooks) {
  const fs::path dir = config.writer.dir;
  if (settings.connect.insecure && settings.connect.url.rfind("nats://", 0) == 0) {
    spdlog::warn("ship: {} is PLAINTEXT (ship.insecure=true): batches and their signatures "
                 "travel unencrypted and the server is not authenticated",
                 settings.connect.url);
  }
  std::string why;
  std::optional<segment::ShippedPosition> position = segment::load_shipped_position(dir, why);
  if (!why.empty()) spdlog::warn("ship: {}: shipping from the first stored batch", why);
  if (position) {
    spdlog::info("ship: {} shipped up to batch seq {}: resuming after it", dir.string(),
                 position->seq);
  }
  std::optional<std::uint64_t> acked_upto;
  if (position) acked_upto = position->seq;

  SegmentFollower follower(dir, acked_upto);
  Publisher publisher(settings);
  PublicKeys keys(dir);
  ShipStats stats;
  std::deque<Inflight> inflight;
  std::vector<PublishOutcome> outcomes;
  std::optional<segment::StreamId> stream = position ? std::optional(position->stream) : std::nullopt;

  auto backoff = std::chrono::milliseconds(200);
  Clock::time_point next_connect = Clock::now();
  std::string last_cause;
  Clock::time_point last_save = Clock::now();
  std::optional<std::uint64_t> saved = acked_upto;
  std::optional<Clock::time_point> drain_since;
  Clock::time_point last_tick = Clock::now();
  Clock::time_point last_stats = Clock::now();
  bool failure_logged = false;

  auto save = [&](bool force) {
    if (!acked_upto || !stream || acked_upto == saved) return;
    if (!force && Clock::now() - last_save < std::chrono::milliseconds(250)) return;
    std::string error;
    if (segment::save_shipped_position(dir, {*stream, *acked_upto}, error)) {
      saved = acked_upto;
    } else {
      spdlog::error("ship: cannot save the shipped position: {}", error);
    }
    last_save = Clock::now();
  };
  auto update_stats = [&] {
    stats.inflight = inflight.size();
    stats.store_errors = follower.error_count();
    const std::uint64_t newest = follower.newest_seen().value_or(0);
    stats.lag_batches = newest > acked_upto.value_or(0) ? newest - acked_upto.value_or(0)
                        : (acked_upto ? 0 : (follower.newest_seen() ? newest + 1 : 0));
    stats.shipped_seq = acked_upto.value_or(0);
    if (hooks.publish_stats) hooks.publish_stats(stats);
  };
  auto log_stats = [&](std::string_view what) {
    spdlog::info("ship {}: {} batches ({} records) acked, {} in flight, {} published, {} "
                 "re-sent from the store, {} already held by the server, lag {} batches, "
                 "unreachable {:.1f} s, {} connect failures ({} TLS refused)",
                 what, stats.batches_acked, stats.records_acked, stats.inflight,
                 stats.batches_published, stats.rewinds, stats.duplicates, stats.lag_batches,
                 double(stats.unreachable_ms) / 1e3, stats.connect_failures, stats.tls_refused);
  };
  auto rewind = [&] {
    publisher.abandon_pending();
    inflight.clear();
    follower.rewind(acked_upto);
    ++stats.rewinds;
  };

  for (;;) {
    if (hooks.heartbeat) hooks.heartbeat();
    const Clock::time_point now = Clock::now();
    if (!publisher.reachable()) {
      stats.unreachable_ms +=
          std::chrono::duration_cast<std::chrono::milliseconds>(now - last_tick).count();
    }
    last_tick = now;
    if (hooks.stop && hooks.stop()) {
      save(true);
      update_stats();
      log_stats("stopped");
      return exit_code::kTempFail;
    }
    if (now - last_stats >= std::chrono::seconds(5)) {
      update_stats();
      log_stats("progress");
      last_stats = now;
    }
    bool busy = false;

    if (!publisher.connected() && now >= next_connect) {
      ship::ConnectFailure failure = ship::ConnectFailure::kNone;
      std::string cause;
      if (publisher.connect(failure, cause)) {
        spdlog::info("ship: connected to {} (stream {})", settings.connect.url, settings.stream);
        backoff = std::chrono::milliseconds(200);
        last_cause.clear();
        inflight.clear();
        follower.rewind(acked_upto);
      } else {
        ++stats.connect_failures;
        if (failure == ship::ConnectFailure::kTlsRefused) ++stats.tls_refused;
        if (cause != last_cause) {
          spdlog::error("ship: cannot connect to {}: {}: {} (retrying with backoff; the store "
                        "keeps every batch meanwhile)",
                        settings.connect.url, ship::to_string(failure), cause);
          last_cause = cause;
        }
        next_connect = now + backoff;
        backoff = std::min(backoff * 2, std::chrono::milliseconds(30000));
      }
    }

    if (publisher.connected()) {
      outcomes.clear();
      publisher.take_outcomes(outcomes);
      bool failed = false;
      for (const PublishOutcome& outcome : outcomes) {
        if (inflight.empty() || outcome.seq < inflight.front().seq) continue;  // stale
        const std::uint64_t index = outcome.seq - inflight.front().seq;
        if (index >= inflight.size() || inflight[index].seq != outcome.seq) continue;
        if (outcome.acked) {
          inflight[index].acked = true;
          if (outcome.duplicate) ++stats.duplicates;
        } else {
          failed = true;
          if (!failure_logged) {
            spdlog::warn("ship: batch seq {} not acked: {} (re-sending from the store)",
                         outcome.seq, outcome.error);
            failure_logged = true;
          }
        }
      }
      while (!inflight.empty() && inflight.front().acked) {
        acked_upto = inflight.front().seq;
        ++stats.batches_acked;
        stats.records_acked += inflight.front().records;
        inflight.pop_front();
        failure_logged = false;
        busy = true;
      }
      // No ack for far longer than libnats' own timeout (a connection that died with the
      // acks): re-send.
      if (!inflight.empty() && now - inflight.front().sent > 3 * settings.ack_wait) failed = true;
      if (failed) {
        rewind();
        busy = true;
      }
      save(inflight.empty());

      while (static_cast<std::int64_t>(inflight.size()) < settings.max_inflight) {
        std::optional<StoredFrame> frame = follower.next();
        if (!frame) break;
        if (!stream) stream = frame->file.stream_id;
        if (frame->file.stream_id != *stream) {
          spdlog::warn("ship: {} now holds stream {} (the shipped position was for {}): "
                       "shipping the new stream from its first batch",
                       dir.string(), segment::to_hex(frame->file.stream_id),
                       segment::to_hex(*stream));
          stream = frame->file.stream_id;
          acked_upto.reset();
          saved.reset();
          inflight.clear();
          follower.rewind(std::nullopt);
          continue;
        }
        std::string error;
        if (!publisher.publish(*frame, keys.hex_der(frame->file.key_id), error)) {
          if (!failure_logged) {
            spdlog::warn("ship: publishing batch seq {} failed: {} (re-sending from the store)",
                         frame->frame.batch.seq, error);
            failure_logged = true;
          }
          rewind();
          break;
        }
        inflight.push_back({frame->frame.batch.seq, frame->frame.batch.record_count, false,
                            Clock::now()});
        ++stats.batches_published;
        busy = true;
      }
    }

    if (hooks.writer_done && hooks.writer_done()) {
      if (!drain_since) drain_since = now;
      if (inflight.empty() && publisher.connected() && follower.at_end_of_closed_store()) {
        save(true);
        update_stats();
        log_stats("done");
        return exit_code::kOk;
      }
      const auto timeout = std::chrono::duration<double>(config.ship.drain_timeout_s);
      if (now - *drain_since > timeout) {
        save(true);
        update_stats();
        log_stats("gave up");
        spdlog::error("ship: drain timeout ({} s, ship.drain_timeout_s): {} batches stored but "
                      "not acked; they stay in {} and ship at the next start",
                      config.ship.drain_timeout_s, stats.lag_batches, dir.string());
        return exit_code::kTempFail;
      }
    }
    if (!busy) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

}  // namespace flowseal::shipd
