#include "shipd/kafka_exporter.h"

#include <librdkafka/rdkafka.h>
#include <openssl/evp.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <thread>

#include <capnp/serialize.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "capnp_frame.h"
#include "packet/flow_id.h"
#include "rate_limited_log.h"
#include "record/record_json.h"
#include "segment/shipped_position.h"
#include "shipd/segment_follower.h"
#include "shipd/store_output.h"
#include "stage_runtime.h"
#include "record_list.h"

namespace flowseal::shipd {
namespace {

namespace fs = std::filesystem;

struct ConfFree {
  void operator()(rd_kafka_conf_t* conf) const { rd_kafka_conf_destroy(conf); }
};
using ConfPtr = std::unique_ptr<rd_kafka_conf_t, ConfFree>;
struct MdFree {
  void operator()(EVP_MD* md) const { EVP_MD_free(md); }
};

// A librdkafka configuration holding `settings`' properties; throws ConfigError naming the
// property librdkafka refuses.
ConfPtr make_conf(const KafkaSettings& settings) {
  ConfPtr conf(rd_kafka_conf_new());
  char error[512];
  for (const auto& [name, value] : settings.properties) {
    if (rd_kafka_conf_set(conf.get(), name.c_str(), value.c_str(), error, sizeof error) !=
        RD_KAFKA_CONF_OK) {
      throw ConfigError(
          fmt::format("export.kafka: librdkafka refuses {} = '{}': {}", name, value, error));
    }
  }
  return conf;
}

// What librdkafka's callbacks (served by rd_kafka_poll on the exporter's thread) change.
struct Reports {
  DeliveryLedger* ledger = nullptr;
  KafkaStats* stats = nullptr;
  RateLimitedLog* log = nullptr;
  bool fatal = false;
  bool outage = false;  // brokers reported down since the last delivery
  Clock::time_point outage_since;
};

void on_delivery(rd_kafka_t*, const rd_kafka_message_t* message, void* opaque) {
  Reports& r = *static_cast<Reports*>(opaque);
  const auto seq = static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(message->_private));
  const bool purged = message->err == RD_KAFKA_RESP_ERR__PURGE_QUEUE ||
                      message->err == RD_KAFKA_RESP_ERR__PURGE_INFLIGHT;
  if (message->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
    ++r.stats->records_delivered;
    if (r.outage) {
      spdlog::info("kafka: delivering again after {:.1f} s",
                   std::chrono::duration<double>(Clock::now() - r.outage_since).count());
      r.outage = false;
    }
  } else if (!purged) {
    ++r.stats->delivery_failures;
    r.log->warn("delivery",
                "kafka: a record of batch seq {} was not delivered: {} (re-sending "
                "from the first batch not wholly delivered)",
                seq, rd_kafka_err2str(message->err));
  }
  r.ledger->report(seq, message->err == RD_KAFKA_RESP_ERR_NO_ERROR);
}

void on_error(rd_kafka_t* rk, int code, const char* reason, void* opaque) {
  Reports& r = *static_cast<Reports*>(opaque);
  const auto err = static_cast<rd_kafka_resp_err_t>(code);
  if (err == RD_KAFKA_RESP_ERR__FATAL) {
    char text[512] = {};
    const rd_kafka_resp_err_t cause = rd_kafka_fatal_error(rk, text, sizeof text);
    spdlog::error(
        "kafka: fatal producer error {}: {} (a new producer re-sends from the first "
        "batch not wholly delivered)",
        rd_kafka_err2name(cause), text);
    r.fatal = true;
    return;
  }
  if (err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN) {
    ++r.stats->broker_down_events;
    if (!r.outage) {
      r.outage = true;
      r.outage_since = Clock::now();
    }
    r.log->rearm("all brokers down");
    r.log->warn("all brokers down",
                "kafka: {}: {} (retrying; the store keeps every record "
                "meanwhile)",
                rd_kafka_err2name(err), reason);
    return;
  }
  r.log->warn(rd_kafka_err2name(err), "kafka: {}: {}", rd_kafka_err2name(err), reason);
}

void on_log(const rd_kafka_t*, int level, const char* facility, const char* text) {
  // Connection trouble also reaches on_error, once; librdkafka's own lines are for debugging.
  spdlog::log(level <= 2 ? spdlog::level::err : spdlog::level::debug, "kafka: {}: {}", facility,
              text);
}

// One librdkafka producer; destroying it drops what it still queues (the store keeps it).
class Producer {
 public:
  Producer(const KafkaSettings& settings, Reports& reports) {
    ConfPtr conf = make_conf(settings);
    rd_kafka_conf_set_opaque(conf.get(), &reports);
    rd_kafka_conf_set_dr_msg_cb(conf.get(), on_delivery);
    rd_kafka_conf_set_error_cb(conf.get(), on_error);
    rd_kafka_conf_set_log_cb(conf.get(), on_log);
    char error[512];
    rk_ = rd_kafka_new(RD_KAFKA_PRODUCER, conf.get(), error, sizeof error);
    if (rk_ == nullptr) throw ConfigError(fmt::format("export.kafka: {}", error));
    static_cast<void>(conf.release());  // rd_kafka_new owns it now
    // A handle, so that producing a record does not look the topic up by name (locks).
    topic_ = rd_kafka_topic_new(rk_, settings.topic.c_str(), nullptr);
    if (topic_ == nullptr) {
      const std::string why = rd_kafka_err2str(rd_kafka_last_error());
      rd_kafka_destroy(rk_);
      throw ConfigError(fmt::format("export.kafka.topic '{}': {}", settings.topic, why));
    }
  }
  Producer(const Producer&) = delete;
  Producer& operator=(const Producer&) = delete;
  ~Producer() {
    rd_kafka_purge(rk_, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
    rd_kafka_poll(rk_, 0);
    rd_kafka_topic_destroy(topic_);
    rd_kafka_destroy(rk_);
  }
  rd_kafka_t* get() const { return rk_; }

  rd_kafka_resp_err_t produce(const std::string& key, const std::string& value, std::uint64_t seq) {
    return rd_kafka_producev(
        rk_, RD_KAFKA_V_RKT(topic_), RD_KAFKA_V_KEY(const_cast<char*>(key.data()), key.size()),
        RD_KAFKA_V_VALUE(const_cast<char*>(value.data()), value.size()),
        RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
        RD_KAFKA_V_OPAQUE(reinterpret_cast<void*>(static_cast<std::uintptr_t>(seq))),
        RD_KAFKA_V_END);
  }
  // Drops what is queued or in flight; each dropped record gets its (purged) delivery report.
  // True once no record is left without its report.
  bool purge_and_wait(const std::function<bool()>& keep_waiting) {
    rd_kafka_purge(rk_, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
    while (rd_kafka_outq_len(rk_) > 0) {
      rd_kafka_poll(rk_, 50);
      if (!keep_waiting()) return false;
    }
    return true;
  }

 private:
  rd_kafka_t* rk_ = nullptr;
  rd_kafka_topic_t* topic_ = nullptr;
};

// The batch being produced: its message (the follower's, kept while its records go out) and
// the next record to hand to librdkafka.
struct PendingBatch {
  std::vector<std::uint64_t> words;  // the message, 8-byte aligned
  std::size_t bytes = 0;
  segment::StreamId stream{};
  std::uint64_t seq = 0;
  std::uint32_t next = 0;
  bool in_ledger = false;
};

}  // namespace

KafkaSettings kafka_settings(const Config& config) {
  const KafkaExportConfig& kafka = config.exports.kafka;
  if (kafka.brokers.empty()) {
    throw ConfigError("export.kafka.brokers is empty: the Kafka export has nowhere to go");
  }
  KafkaSettings settings;
  settings.topic = kafka.topic;
  settings.max_inflight = kafka.max_inflight;
  settings.community_id_seed = static_cast<std::uint16_t>(config.flowd.community_id_seed);
  settings.drain_timeout = std::chrono::duration<double>(kafka.drain_timeout_s);
  const std::int64_t queue_kb = std::min<std::int64_t>(kafka_queue_mb(config) * 1024, INT32_MAX);
  settings.queue_kbytes = queue_kb;
  // About one record per KiB of queue (a JSON line is ~1 KiB): the byte bound is what counts.
  const std::int64_t queue_messages = std::clamp<std::int64_t>(queue_kb, 1000, 10'000'000);
  settings.properties = {
      {"bootstrap.servers",
       fmt::format("{}", fmt::join(parse_broker_list(kafka.brokers, "export.kafka.brokers"), ","))},
      {"client.id", "flowseal-shipd"},
      {"enable.idempotence", "true"},
      {"acks", "all"},
      {"compression.type", kafka.compression},
      {"compression.level",
       std::to_string(kafka.compression_level == -1 && kafka.compression == "zstd"
                          ? 1
                          : kafka.compression_level)},
      {"queue.buffering.max.kbytes", std::to_string(queue_kb)},  // librdkafka's: 1 GiB
      {"queue.buffering.max.messages", std::to_string(queue_messages)},
  };
  ConfPtr conf = make_conf(settings);
  char features[512] = {};
  std::size_t size = sizeof features;
  if (kafka.compression != "none" &&
      rd_kafka_conf_get(conf.get(), "builtin.features", features, &size) == RD_KAFKA_CONF_OK &&
      std::string_view(features).find(kafka.compression) == std::string_view::npos) {
    throw ConfigError(
        fmt::format("export.kafka.compression: this librdkafka ({}) has no {} compression "
                    "(builtin.features: {})",
                    rd_kafka_version_str(), kafka.compression, features));
  }
  return settings;
}

void kafka_key(schema::FlowEvent::Reader record, const EVP_MD* sha1, std::uint16_t seed,
               std::string& key) {
  if (record.getKind() == schema::EventKind::SUMMARY) {
    const auto orig = record.getOrigAddr();
    const auto resp = record.getRespAddr();
    const packet::CommunityIdText id = packet::community_id(
        sha1, seed, record.getProto(), {orig.begin(), orig.size()}, {resp.begin(), resp.size()}, 0,
        static_cast<std::uint16_t>(record.getRespPort()));
    if (id.size > 0) {
      key.assign(id.view());
      return;
    }
  } else if (const auto id = record.getCommunityId(); id.size() > 0) {
    key.assign(id.begin(), id.size());
    return;
  }
  key = record::uid_text(record.getUid());  // no id could be made: one flow, one partition
}

void DeliveryLedger::produced_batch(std::uint64_t seq, std::uint32_t records) {
  batches_.push_back({seq, records, records});
}

void DeliveryLedger::report(std::uint64_t seq, bool delivered) {
  if (!delivered) failed_ = true;
  if (batches_.empty() || seq < batches_.front().seq) return;
  // Batches enter in seq order, but a store's seqs need not be consecutive: search.
  const auto it = std::lower_bound(batches_.begin(), batches_.end(), seq,
                                   [](const Batch& b, std::uint64_t s) { return b.seq < s; });
  if (it == batches_.end() || it->seq != seq || it->undelivered == 0) return;
  if (delivered) --it->undelivered;
}

std::optional<std::uint64_t> DeliveryLedger::advance(std::uint64_t& batches,
                                                     std::uint64_t& records) {
  std::optional<std::uint64_t> position;
  batches = records = 0;
  while (!batches_.empty() && batches_.front().undelivered == 0) {
    position = batches_.front().seq;
    ++batches;
    records += batches_.front().records;
    batches_.pop_front();
  }
  return position;
}

void DeliveryLedger::clear() {
  batches_.clear();
  failed_ = false;
}

namespace {

// Produces every stored record, one Kafka message each; the position moves past a batch only
// when its records and every earlier batch's were delivered. A failed delivery or a fatal
// producer error rewinds to the first batch not wholly delivered.
class KafkaOutput final : public StoreOutput {
 public:
  KafkaOutput(const Config& config, const KafkaSettings& settings, const OutputHooks& hooks,
              std::function<void(const KafkaStats&)> publish)
      : dir_(config.writer.dir),
        settings_(settings),
        hooks_(hooks),
        publish_(std::move(publish)),
        position_("kafka", dir_, load_position(dir_), save_position_file(dir_)),
        sha1_(EVP_MD_fetch(nullptr, "SHA1", nullptr)),
        follower_(dir_, position_.upto(), FrameParts::kMessage) {
    reports_.ledger = &ledger_;
    reports_.stats = &stats_;
    reports_.log = &log_;
    producer_ = std::make_unique<Producer>(settings_, reports_);
    spdlog::info("kafka: exporting {} to topic {} at {}", dir_.string(), settings_.topic,
                 settings_.properties.front().second);
  }

  bool pass(Clock::time_point) override {
    rd_kafka_poll(producer_->get(), 0);  // delivery reports and errors, here
    std::uint64_t batches = 0, records = 0;
    if (const auto upto = ledger_.advance(batches, records)) {
      position_.advance(*upto);
      stats_.batches_delivered += batches;
    }
    if (reports_.fatal || ledger_.failed()) rewind();
    position_.save(ledger_.empty() && !pending_);

    bool busy = batches > 0;
    queue_full_ = false;
    while (!queue_full_) {
      if (!pending_) {
        if (static_cast<std::int64_t>(ledger_.size()) >= settings_.max_inflight) break;
        if (!take_batch()) break;
        busy = true;
        if (!pending_) continue;  // the store holds a new stream: rewound
      }
      produce_pending();
    }
    return busy;
  }

  bool drained() override {
    return !pending_ && ledger_.empty() && rd_kafka_outq_len(producer_->get()) == 0 &&
           follower_.at_end_of_closed_store();
  }
  void save_position(bool force) override { position_.save(force); }
  std::uint64_t lag() const override { return stats_.lag_batches; }
  // Waits for librdkafka's reports rather than a fixed time when there is nothing to do.
  void wait(bool busy) override {
    if (!busy || queue_full_) rd_kafka_poll(producer_->get(), queue_full_ ? 100 : 20);
  }

  void publish_stats() override {
    stats_.inflight_batches = ledger_.size();
    stats_.store_errors = follower_.error_count();
    stats_.lag_batches = position_.lag(follower_.newest_seen());
    stats_.exported_seq = position_.upto().value_or(0);
    if (publish_) publish_(stats_);
  }

  void log_stats(std::string_view what) override {
    spdlog::info(
        "kafka {}: {} records delivered ({} batches, up to seq {}), {} produced, {} "
        "batches in flight, lag {} batches, {} delivery failures, {} re-sends from the "
        "store, queue full {} times, brokers down {} times",
        what, stats_.records_delivered, stats_.batches_delivered, stats_.exported_seq,
        stats_.records_produced, stats_.inflight_batches, stats_.lag_batches,
        stats_.delivery_failures, stats_.rewinds, stats_.queue_full, stats_.broker_down_events);
  }

 private:
  static std::optional<segment::ShippedPosition> load_position(const fs::path& dir) {
    std::string why;
    std::optional<segment::ShippedPosition> position =
        segment::load_shipped_position(dir, why, segment::kKafkaExportedFileName);
    if (!why.empty()) spdlog::warn("kafka: {}: exporting from the first stored batch", why);
    if (position) {
      spdlog::info("kafka: {} exported up to batch seq {}: resuming after it", dir.string(),
                   position->seq);
    }
    return position;
  }
  static OutputPosition::Writer save_position_file(const fs::path& dir) {
    return [dir](const segment::ShippedPosition& position, std::string& error) {
      return segment::save_shipped_position(dir, position, error, segment::kKafkaExportedFileName);
    };
  }

  // The next stored batch as pending_; false when the store has none now. A batch of another
  // stream rewinds (pending_ stays empty).
  bool take_batch() {
    std::optional<StoredFrame> frame = follower_.next();
    if (!frame) return false;
    position_.met(frame->frame.batch.seq);
    if (!position_.same_stream(frame->file.stream_id)) {
      rewind();
      return true;
    }
    PendingBatch batch;
    batch.words = std::move(frame->message);
    batch.bytes = frame->message_bytes;
    batch.stream = frame->file.stream_id;
    batch.seq = frame->frame.batch.seq;
    pending_ = std::move(batch);
    return true;
  }

  // Hands pending_'s records to librdkafka until they are all queued (pending_ cleared) or
  // the local queue is full or refuses (queue_full_).
  void produce_pending() {
    try {
      capnp::FlatArrayMessageReader reader(
          as_words({reinterpret_cast<const std::byte*>(pending_->words.data()), pending_->bytes}),
          frame_reader_options());
      const auto list =
          sized_records(reader.getRoot<schema::SealedBatch>().getRecords(), "SealedBatch.records");
      if (!pending_->in_ledger) ledger_.produced_batch(pending_->seq, list.size());
      pending_->in_ledger = true;
      for (; pending_->next < list.size(); ++pending_->next) {
        if (!produce(list[pending_->next])) {
          queue_full_ = true;
          return;
        }
      }
      follower_.recycle(std::move(pending_->words));
      pending_.reset();
    } catch (const kj::Exception& e) {
      // The follower's reader decoded this batch already; a copy that does not is a bug.
      throw std::runtime_error(fmt::format("batch seq {}: cannot be read: {}", pending_->seq,
                                           e.getDescription().cStr()));
    }
  }

  // One record; false when librdkafka did not take it (waits, or rewinds next pass).
  bool produce(schema::FlowEvent::Reader record) {
    value_.clear();
    record::append_json_line(value_, record, {pending_->stream, pending_->seq, pending_->next});
    kafka_key(record, sha1_.get(), settings_.community_id_seed, key_);
    const rd_kafka_resp_err_t err = producer_->produce(key_, value_, pending_->seq);
    if (err == RD_KAFKA_RESP_ERR__QUEUE_FULL) {
      ++stats_.queue_full;  // waits for deliveries: the store holds the rest
      log_.warn("queue full",
                "kafka: the local queue is full ({} KiB, export.kafka.queue_mb): waiting for "
                "deliveries, the store keeps the rest ({} times so far)",
                settings_.queue_kbytes, stats_.queue_full);
      return false;
    }
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
      ++stats_.delivery_failures;
      log_.error("produce",
                 "kafka: cannot produce a record of batch seq {}: {} (re-sending from the "
                 "first batch not wholly delivered)",
                 pending_->seq, rd_kafka_err2str(err));
      ledger_.report(pending_->seq, false);  // back off: the rewind comes with the next pass
      return false;
    }
    ++stats_.records_produced;
    return true;
  }

  // Everything not wholly delivered is sent again from the store.
  void rewind() {
    pending_.reset();
    const auto keep_waiting = [this] {
      if (hooks_.heartbeat) hooks_.heartbeat();
      return !(hooks_.stop && hooks_.stop());
    };
    if (reports_.fatal || !producer_->purge_and_wait(keep_waiting)) {
      producer_.reset();
      producer_ = std::make_unique<Producer>(settings_, reports_);
      if (reports_.fatal) ++stats_.producer_restarts;
      reports_.fatal = false;
    }
    ledger_.clear();
    follower_.rewind(position_.upto());
    ++stats_.rewinds;
  }

  fs::path dir_;
  const KafkaSettings& settings_;
  const OutputHooks& hooks_;
  std::function<void(const KafkaStats&)> publish_;
  OutputPosition position_;
  std::unique_ptr<EVP_MD, MdFree> sha1_;
  SegmentFollower follower_;
  DeliveryLedger ledger_;
  KafkaStats stats_;
  RateLimitedLog log_;
  Reports reports_;
  std::unique_ptr<Producer> producer_;
  std::optional<PendingBatch> pending_;
  bool queue_full_ = false;
  // One record's key and JSON line, reused (librdkafka copies them).
  std::string key_;
  std::string value_;
};

}  // namespace

int run_kafka_export(const Config& config, const KafkaSettings& settings, const OutputHooks& hooks,
                     std::function<void(const KafkaStats&)> publish_stats) {
  KafkaOutput output(config, settings, hooks, std::move(publish_stats));
  const DrainRule drain{"kafka", "export.kafka.drain_timeout_s", settings.drain_timeout,
                        "wholly delivered"};
  return follow_store(output, drain, config.writer.dir, hooks);
}

}  // namespace flowseal::shipd
