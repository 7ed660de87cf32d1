#include "shipd/ipfix_exporter.h"

#include <algorithm>
#include <optional>
#include <sstream>
#include <thread>
#include <vector>

#include <capnp/serialize.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "capnp_frame.h"
#include "segment/shipped_position.h"
#include "shipd/segment_follower.h"
#include "shipd/store_output.h"
#include "stage_runtime.h"
#include "record_list.h"

namespace flowseal::shipd {
namespace {

namespace fs = std::filesystem;

struct GErrorFree {
  void operator()(GError* e) const { g_error_free(e); }
};
using GErrorPtr = std::unique_ptr<GError, GErrorFree>;

std::string take_error(GError*& error, std::string_view what) {
  GErrorPtr owned(error);
  error = nullptr;
  return owned ? fmt::format("{}: {}", what, owned->message) : std::string(what);
}

// The state file: the position, then the mapper's per-flow lines.
constexpr std::size_t kMaxStateBytes = 256u << 20;

std::optional<segment::ShippedPosition> load_state(const fs::path& dir, IpfixMapper& mapper,
                                                   std::string& why) {
  std::optional<std::string> text =
      segment::read_small_file(dir, segment::kIpfixExportedFileName, kMaxStateBytes, why);
  if (!text) return std::nullopt;
  std::istringstream in(*text);
  std::string magic, version, stream_word, stream_hex, seq_word;
  segment::ShippedPosition state;
  bool ok = static_cast<bool>(in >> magic >> version >> stream_word >> stream_hex >> seq_word >>
                              state.seq) &&
            magic == "flowseal-ipfix-exported" && version == "1" && stream_word == "stream" &&
            seq_word == "seq" && segment::parse_stream_id(stream_hex, state.stream);
  std::string flows;
  if (ok) {
    std::getline(in, flows);  // the rest of the seq line
    flows.assign(std::istreambuf_iterator<char>(in), {});
    std::string bad;
    ok = mapper.load(flows, bad);
    if (!ok) why = fmt::format("{}/{}: {}", dir.string(), segment::kIpfixExportedFileName, bad);
  } else {
    why = fmt::format("{}/{}: not an IPFIX export position", dir.string(),
                      segment::kIpfixExportedFileName);
  }
  if (!ok) return std::nullopt;
  return state;
}

bool save_state(const fs::path& dir, const segment::ShippedPosition& state,
                const IpfixMapper& mapper, std::string& why) {
  std::string text = fmt::format("flowseal-ipfix-exported 1\nstream {}\nseq {}\n",
                                 segment::to_hex(state.stream), state.seq);
  text += mapper.save();
  return segment::write_file_atomically(dir, segment::kIpfixExportedFileName, text, why);
}

// Paces records to at most `rate` per second (0: no pacing), in bursts of at most 1/20 s.
class Pacer {
 public:
  explicit Pacer(std::int64_t rate) : rate_(static_cast<double>(rate)), tokens_(burst()) {}
  // How long to wait before the next record may go (zero: now; it is then taken).
  std::chrono::microseconds take() {
    if (rate_ <= 0) return {};
    const Clock::time_point now = Clock::now();
    tokens_ =
        std::min(burst(), tokens_ + rate_ * std::chrono::duration<double>(now - last_).count());
    last_ = now;
    if (tokens_ >= 1) {
      tokens_ -= 1;
      return {};
    }
    return std::chrono::microseconds(static_cast<std::int64_t>((1 - tokens_) / rate_ * 1e6) + 1);
  }

 private:
  double burst() const { return std::max(1.0, rate_ / 20); }
  double rate_;
  double tokens_;
  Clock::time_point last_ = Clock::now();
};

}  // namespace

IpfixSettings ipfix_settings(const Config& config) {
  const IpfixExportConfig& ipfix = config.exports.ipfix;
  if (ipfix.url.empty()) throw ConfigError("export.ipfix.url is empty: no IPFIX collector");
  std::string why;
  const std::optional<IpfixEndpoint> endpoint = parse_ipfix_url(ipfix.url, why);
  if (!endpoint) {
    throw ConfigError(fmt::format("export.ipfix.url = '{}': {}", ipfix.url, why));
  }
  IpfixSettings settings;
  settings.endpoint = *endpoint;
  if (ipfix.mode == "biflow") {
    settings.mode = IpfixMode::kBiflow;
  } else if (ipfix.mode == "uniflow") {
    settings.mode = IpfixMode::kUniflow;
  } else {
    throw ConfigError(fmt::format("export.ipfix.mode = '{}' is not biflow or uniflow", ipfix.mode));
  }
  settings.observation_domain = static_cast<std::uint32_t>(ipfix.observation_domain);
  settings.template_refresh = std::chrono::seconds(ipfix.template_refresh_s);
  settings.max_records_per_s = ipfix.max_records_per_s;
  return settings;
}

// ---------------------------------------------------------------- IpfixSender

struct IpfixSender::State {
  fbInfoModel_t* model = nullptr;
  fBuf_t* buffer = nullptr;  // owns the session and the exporter
  fbSession_t* session = nullptr;
  std::uint16_t external_tid = 0;

  ~State() {
    if (buffer != nullptr) {
      fBufFree(buffer);
    } else if (session != nullptr) {
      fbSessionFree(session);
    }
    if (model != nullptr) fbInfoModelFree(model);
  }
};

IpfixSender::IpfixSender(std::unique_ptr<State> state) : state_(std::move(state)) {}
IpfixSender::~IpfixSender() = default;

namespace {

// A session with the internal template and the two external ones of `mode`.
bool make_session(fbInfoModel_t*& model, fbSession_t*& session, IpfixMode mode,
                  std::uint32_t domain, std::string& why) {
  GError* error = nullptr;
  model = fbInfoModelAlloc();
  session = fbSessionAlloc(model);
  // Templates belong to the session's current domain: set it first.
  fbSessionSetDomain(session, domain);
  fbTemplate_t* internal = fbTemplateAlloc(model);
  if (!fbTemplateAppendSpecArray(internal, kIpfixSpec, UINT32_MAX, &error) ||
      !fbSessionAddTemplate(session, TRUE, kIpfixInternalTid, internal, &error)) {
    why = take_error(error, "IPFIX internal template");
    return false;
  }
  for (const bool v6 : {false, true}) {
    fbTemplate_t* external = fbTemplateAlloc(model);
    if (!fbTemplateAppendSpecArray(external, kIpfixSpec, external_flags(v6, mode), &error) ||
        !fbSessionAddTemplate(session, FALSE, v6 ? kIpfixV6Tid : kIpfixV4Tid, external, &error)) {
      why = take_error(error, "IPFIX export template");
      return false;
    }
  }
  return true;
}

}  // namespace

std::unique_ptr<IpfixSender> IpfixSender::to_collector(const IpfixSettings& settings,
                                                       std::string& why) {
  auto state = std::make_unique<State>();
  if (!make_session(state->model, state->session, settings.mode, settings.observation_domain,
                    why)) {
    return nullptr;
  }
  std::string host = settings.endpoint.host;
  std::string port = std::to_string(settings.endpoint.port);
  fbConnSpec_t spec = FB_CONNSPEC_INIT;
  spec.transport = settings.endpoint.tcp ? FB_TCP : FB_UDP;
  spec.host = host.data();
  spec.svc = port.data();
  fbExporter_t* exporter = fbExporterAllocNet(&spec);  // copies the spec
  if (exporter == nullptr) {
    why = fmt::format("cannot make an IPFIX exporter for {}:{}", host, port);
    return nullptr;
  }
  return start(std::move(state), exporter, why);
}

std::unique_ptr<IpfixSender> IpfixSender::to_file(const fs::path& file, IpfixMode mode,
                                                  std::uint32_t domain, std::string& why) {
  auto state = std::make_unique<State>();
  if (!make_session(state->model, state->session, mode, domain, why)) return nullptr;
  return start(std::move(state), fbExporterAllocFile(file.c_str()), why);
}

// The buffer over `exporter` (it takes the session and the exporter), the templates first.
std::unique_ptr<IpfixSender> IpfixSender::start(std::unique_ptr<State> state,
                                                fbExporter_t* exporter, std::string& why) {
  state->buffer = fBufAllocForExport(state->session, exporter);
  GError* error = nullptr;
  if (!fBufSetInternalTemplate(state->buffer, kIpfixInternalTid, &error) ||
      !fbSessionExportTemplates(state->session, &error)) {
    why = take_error(error, "IPFIX templates");
    return nullptr;
  }
  return std::unique_ptr<IpfixSender>(new IpfixSender(std::move(state)));
}

bool IpfixSender::append(const IpfixRecord& record, std::string& why) {
  GError* error = nullptr;
  const std::uint16_t tid = record.is_v6() ? kIpfixV6Tid : kIpfixV4Tid;
  if (tid != state_->external_tid) {
    if (!fBufSetExportTemplate(state_->buffer, tid, &error)) {
      why = take_error(error, "IPFIX export template");
      return false;
    }
    state_->external_tid = tid;
  }
  // fixbuf reads the record through a non-const pointer; it does not write it.
  if (!fBufAppend(state_->buffer,
                  const_cast<std::uint8_t*>(reinterpret_cast<const std::uint8_t*>(&record)),
                  sizeof record, &error)) {
    why = take_error(error, "IPFIX send");
    return false;
  }
  return true;
}

bool IpfixSender::emit(std::string& why) {
  GError* error = nullptr;
  if (!fBufEmit(state_->buffer, &error)) {
    why = take_error(error, "IPFIX send");
    return false;
  }
  return true;
}

bool IpfixSender::send_templates(std::string& why) {
  GError* error = nullptr;
  if (!fBufEmit(state_->buffer, &error) || !fbSessionExportTemplates(state_->session, &error)) {
    why = take_error(error, "IPFIX template refresh");
    return false;
  }
  state_->external_tid = 0;  // a template set ends the data set: choose again
  return true;
}

// ---------------------------------------------------------------- the loop

namespace {

// Sends every stored batch's records; a batch counts as exported once all its records went
// to the transport. A failure drops the session and sends the batch whole again from the
// store after a backoff.
class IpfixOutput final : public StoreOutput {
 public:
  IpfixOutput(const Config& config, const IpfixSettings& settings, const OutputHooks& hooks,
              std::function<void(const IpfixStats&)> publish)
      : dir_(config.writer.dir),
        url_(config.exports.ipfix.url),
        settings_(settings),
        hooks_(hooks),
        publish_(std::move(publish)),
        mapper_(settings.mode),
        position_("ipfix", dir_, load_position(dir_, mapper_),
                  [this](const segment::ShippedPosition& position, std::string& error) {
                    return save_state(dir_, position, mapper_, error);
                  }),
        follower_(dir_, position_.upto(), FrameParts::kMessageNoDerivedIds),
        pacer_(settings.max_records_per_s) {}

  bool pass(Clock::time_point now) override {
    if (!sender_ && now >= next_connect_) connect(now);
    bool busy = false;
    while (sender_) {
      std::optional<StoredFrame> frame = follower_.next();
      if (!frame) break;
      busy = true;
      const std::uint64_t seq = frame->frame.batch.seq;
      position_.met(seq);
      if (!position_.same_stream(frame->file.stream_id)) {
        follower_.rewind(std::nullopt);
        continue;
      }
      if (const auto upto = position_.upto(); upto && seq > *upto + 1) {
        stats_.skipped_batches += seq - *upto - 1;
        spdlog::error(
            "ipfix: batches {}..{} were removed from {} before they were exported "
            "(retention): their records never reach the collector",
            *upto + 1, seq - 1, dir_.string());
      }
      const bool sent = send_batch(*frame);
      follower_.recycle(std::move(frame->message));
      if (!sent) break;
      position_.advance(seq);
      backoff_ = std::chrono::milliseconds(200);
      last_failure_.clear();
      position_.save(false);
      // A pass over a long store: stay alive and leave promptly.
      if (hooks_.heartbeat) hooks_.heartbeat();
      if (hooks_.stop && hooks_.stop()) break;
    }
    return busy;
  }

  bool drained() override { return sender_ && follower_.at_end_of_closed_store(); }
  void save_position(bool force) override { position_.save(force); }
  std::uint64_t lag() const override { return stats_.lag_batches; }

  void publish_stats() override {
    stats_.repeats = mapper_.repeats();
    stats_.malformed = mapper_.malformed();
    stats_.store_errors = follower_.error_count();
    stats_.lag_batches = position_.lag(follower_.newest_seen());
    stats_.exported_seq = position_.upto().value_or(0);
    if (publish_) publish_(stats_);
  }

  void log_stats(std::string_view what) override {
    spdlog::info(
        "ipfix {}: {} batches ({} events, {} IPFIX records) exported to {}, lag {} "
        "batches, {} send failures, {} batches re-sent, {} skipped by retention, {} "
        "repeats dropped, {} malformed",
        what, stats_.batches_exported, stats_.events_exported, stats_.records_sent, url_,
        stats_.lag_batches, stats_.send_failures, stats_.resends, stats_.skipped_batches,
        stats_.repeats, stats_.malformed);
  }

 private:
  static std::optional<segment::ShippedPosition> load_position(const fs::path& dir,
                                                               IpfixMapper& mapper) {
    std::string why;
    std::optional<segment::ShippedPosition> saved = load_state(dir, mapper, why);
    if (!why.empty()) spdlog::warn("ipfix: {}: exporting from the first stored batch", why);
    if (saved) {
      spdlog::info(
          "ipfix: {} exported up to batch seq {}: resuming after it ({} long flows tracked)",
          dir.string(), saved->seq, mapper.tracked());
    }
    return saved;
  }

  void connect(Clock::time_point now) {
    std::string error;
    sender_ = IpfixSender::to_collector(settings_, error);
    if (!sender_) {
      fail(error, false);
    } else {
      templates_sent_ = now;
    }
  }

  void fail(const std::string& cause, bool partly_sent) {
    mapper_.rollback();
    sender_.reset();
    ++stats_.send_failures;
    if (partly_sent) ++stats_.resends;
    if (cause != last_failure_) {
      const auto upto = position_.upto();
      spdlog::error(
          "ipfix: {} ({}; retrying from batch seq {}, the store keeps every batch "
          "meanwhile)",
          cause, url_, upto ? *upto + 1 : 0);
      last_failure_ = cause;
    }
    follower_.rewind(position_.upto());
    next_connect_ = Clock::now() + backoff_;
    backoff_ = std::min(backoff_ * 2, std::chrono::milliseconds(30000));
  }

  // The batch's IPFIX records into records_; returns how many stored records gave some.
  std::uint64_t map_batch(const StoredFrame& frame) {
    records_.clear();
    std::uint64_t events = 0;
    try {
      capnp::FlatArrayMessageReader message(
          kj::arrayPtr(reinterpret_cast<const capnp::word*>(frame.message.data()),
                       frame.message_bytes / sizeof(capnp::word)),
          frame_reader_options());
      const auto batch =
          sized_records(message.getRoot<schema::SealedBatch>().getRecords(), "SealedBatch.records");
      constexpr unsigned kAhead = 8;  // the mapper's id table misses the cache: load early
      for (unsigned i = 0; i < batch.size() && i < kAhead; ++i) mapper_.prefetch(batch[i]);
      for (unsigned i = 0; i < batch.size(); ++i) {
        if (i + kAhead < batch.size()) mapper_.prefetch(batch[i + kAhead]);
        const std::size_t before = records_.size();
        mapper_.map(batch[i], records_);
        if (records_.size() > before) ++events;
      }
    } catch (const kj::Exception& e) {
      // The reader checked the columns; a message capnp still refuses is damage verify names.
      spdlog::error("ipfix: batch seq {}: cannot read its records: {} (skipped)",
                    frame.frame.batch.seq, e.getDescription().cStr());
      mapper_.rollback();
      records_.clear();
      events = 0;
    }
    return events;
  }

  // Sends one batch's records; false (after fail()) if the transport refused.
  bool send_batch(const StoredFrame& frame) {
    const std::uint64_t events = map_batch(frame);
    std::string error;
    bool sent_any = false;
    for (const IpfixRecord& record : records_) {
      for (auto wait = pacer_.take(); wait.count() > 0; wait = pacer_.take()) {
        if (hooks_.heartbeat) hooks_.heartbeat();
        std::this_thread::sleep_for(std::min(wait, std::chrono::microseconds(100000)));
      }
      if (!settings_.endpoint.tcp && Clock::now() - templates_sent_ >= settings_.template_refresh) {
        if (!sender_->send_templates(error)) {
          fail(error, sent_any);
          return false;
        }
        templates_sent_ = Clock::now();
      }
      if (!sender_->append(record, error)) {
        fail(error, sent_any);
        return false;
      }
      sent_any = true;
    }
    if (!sender_->emit(error)) {
      fail(error, sent_any);
      return false;
    }
    mapper_.commit();
    stats_.records_sent += records_.size();
    stats_.events_exported += events;
    ++stats_.batches_exported;
    return true;
  }

  fs::path dir_;
  std::string url_;
  const IpfixSettings& settings_;
  const OutputHooks& hooks_;
  std::function<void(const IpfixStats&)> publish_;
  IpfixMapper mapper_;
  OutputPosition position_;
  SegmentFollower follower_;
  std::unique_ptr<IpfixSender> sender_;
  IpfixStats stats_;
  Pacer pacer_;
  std::vector<IpfixRecord> records_;
  std::chrono::milliseconds backoff_{200};
  Clock::time_point next_connect_ = Clock::now();
  Clock::time_point templates_sent_ = Clock::now();
  std::string last_failure_;
};

}  // namespace

int run_ipfix_export(const Config& config, const IpfixSettings& settings, const OutputHooks& hooks,
                     std::function<void(const IpfixStats&)> publish_stats) {
  IpfixOutput output(config, settings, hooks, std::move(publish_stats));
  const DrainRule drain{"ipfix", "ship.drain_timeout_s",
                        std::chrono::duration<double>(config.ship.drain_timeout_s), "exported"};
  return follow_store(output, drain, config.writer.dir, hooks);
}

}  // namespace flowseal::shipd
