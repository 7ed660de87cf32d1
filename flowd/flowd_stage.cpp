#include "flowd_stage.h"

#include <algorithm>
#include <functional>
#include <string>
#include <vector>

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "capnp_frame.h"
#include "event_encode.h"
#include "export_latency.h"
#include "flow_table.h"
#include "flowseal.capnp.h"
#include "frame_loop.h"
#include "layout.h"
#include "packet_batch.h"
#include "packet/decode.h"
#include "pressure_level.h"
#include "ring_io.h"
#include "ring_message.h"

namespace flowseal::flowd {
namespace {

namespace fc = flowd_counter;
constexpr std::size_t kNextSeq = fc::kCount;  // next packet sequence number to apply
static_assert(kNextSeq < kStageCounters);
constexpr std::size_t kEventsPerFrame = 512;

// Events per output frame: kEventsPerFrame, or fewer when the ring's frames are smaller. A
// small budget's 1 MiB event ring takes frames of 256 KiB, which 512 events of segment
// format 3 outgrew: flowd exited 70 ("a FlowEventBatch exceeds the output ring's frame
// limit") whenever one step emitted that many, e.g. at a drain ending 600 flows.
std::size_t events_per_frame(std::size_t max_frame) {
  const std::size_t word = sizeof(capnp::word);
  const std::size_t per_event = flow_event_batch_words(1, 0) * word;
  const std::size_t room = max_frame - std::min(max_frame, flow_event_batch_words(0) * word);
  return std::clamp<std::size_t>(room / per_event, 1, kEventsPerFrame);
}

// Collects the events one input frame produces and writes them as FlowEventBatch frames.
class EventBatchWriter final : public SampledEventSink {
 public:
  // `latency`, if given, gets (published - due) of every flow end with a due time (live).
  EventBatchWriter(RingProducer& out, StageRuntime& runtime, ExportLatency* latency)
      : out_(out),
        runtime_(runtime),
        latency_(latency),
        events_per_frame_(events_per_frame(out.max_frame())) {}

  void on_event(const FlowEventData& event) override {
    pending_.push_back(event);
    // capture samples whole flows by hash, so the rate in force when an event is made is
    // the one its flow was kept at.
    pending_.back().sampling_rate = sampling_rate_;
    if (pending_.size() >= events_per_frame_) write_pending();
  }
  void set_sampling_rate(float rate) override { sampling_rate_ = rate; }
  // The flow table cuts a long step short: publish what it emitted before it commits.
  void sync() override { synced_ += flush(); }
  std::uint64_t take_synced() { return std::exchange(synced_, 0); }
  // Called while waiting for room in the output ring: the caller publishes its counters, so
  // that the supervisor sees the table as it is now (e.g. just freed by expiry) and not as
  // it was before a long wait behind a slow dedupd.
  void set_on_wait(std::function<void()> on_wait) { on_wait_ = std::move(on_wait); }
  // Writes what is pending and publishes; returns the number of events written.
  std::uint64_t flush() {
    write_pending();
    out_.publish();
    if (!written_due_.empty()) {
      const std::int64_t now = realtime_ns();
      for (const std::int64_t due : written_due_) latency_->add_latency_ns(now - due);
      written_due_.clear();
    }
    return std::exchange(written_, 0);
  }

 private:
  void write_pending() {
    if (pending_.empty()) return;
    // Built in its ring frame (ring_message.h): no calloc'ed segment, no copy.
    RingMessageBuilder message(out_, event_batch_words(pending_));
    auto events = message.initRoot<schema::FlowEventBatch>().initEvents(
        static_cast<unsigned>(pending_.size()));
    for (unsigned i = 0; i < pending_.size(); ++i) {
      encode(pending_[i], events[i]);
      if (latency_ == nullptr) continue;
      if (const std::int64_t due = latency_->due_ns(events[i].asReader()); due >= 0) {
        written_due_.push_back(due);
      }
    }
    auto keep_waiting = [this] {
      if (on_wait_) on_wait_();
      runtime_.heartbeat();
      return false;  // never drop a flow record: wait for dedupd
    };
    if (!message.write(keep_waiting)) {
      throw std::runtime_error("a FlowEventBatch exceeds the output ring's frame limit");
    }
    written_ += pending_.size();
    pending_.clear();
  }

  RingProducer& out_;
  StageRuntime& runtime_;
  ExportLatency* latency_;
  const std::size_t events_per_frame_;
  std::vector<std::int64_t> written_due_;  // due times of ends written, not yet published
  std::vector<FlowEventData> pending_;
  std::uint64_t written_ = 0;
  std::uint64_t synced_ = 0;
  float sampling_rate_ = 1.0f;
  std::function<void()> on_wait_;
};

FlowTimeouts timeouts_from(const FlowdConfig& c) {
  auto ns = [](double seconds) { return static_cast<std::int64_t>(seconds * 1e9); };
  FlowTimeouts t;
  t.tcp_established_idle_ns = ns(c.tcp_idle_timeout);
  t.tcp_attempt_idle_ns = ns(c.tcp_attempt_timeout);
  t.tcp_closed_linger_ns = ns(c.tcp_closed_timeout);
  t.udp_idle_ns = ns(c.udp_idle_timeout);
  t.icmp_idle_ns = ns(c.icmp_idle_timeout);
  t.other_idle_ns = ns(c.other_idle_timeout);
  t.active_timeout_ns = ns(c.active_timeout);
  return t;
}

// The pressure level applied to one flow table (common/pressure_level.h): idle timeouts
// scaled down, and at HIGH and CRITICAL the table held to a share of its capacity by ending
// its least recently seen flows. Checked once per input frame: one relaxed load.
class TablePressure {
 public:
  TablePressure(const Config& config, FlowTable& table)
      : table_(table),
        base_(table.timeouts()),
        hold_(static_cast<std::size_t>(flow_table_hold_fraction(config.memory) *
                                       double(table.capacity()))) {}

  // Applies `raw_level` (ControlBlock::pressure_level); returns the flows it evicted.
  std::size_t apply(std::uint32_t raw_level, EventSink& sink) {
    const PressureLevel level = pressure_level_from(raw_level);
    const PressureEffects& effects = pressure_effects(level);
    if (level != level_) {
      level_ = level;
      table_.set_timeouts(scaled(effects.idle_timeout_scale));
      spdlog::info(
          "pressure {}: idle timeouts x{}{}", to_string(level), effects.idle_timeout_scale,
          effects.hold_flow_table
              ? fmt::format(", holding the flow table at {} of {} flows", hold_, table_.capacity())
              : std::string());
    }
    if (!effects.hold_flow_table || table_.active() <= hold_) return 0;
    return table_.evict_to(hold_, sink);
  }

 private:
  FlowTimeouts scaled(double factor) const {
    // At least 1 ms (a zero timeout would end every flow between two of its packets), and
    // never longer than configured (tcp_closed_timeout may be 0).
    auto scale = [factor](std::int64_t ns) {
      return std::min(
          ns, std::max<std::int64_t>(static_cast<std::int64_t>(double(ns) * factor), 1'000'000));
    };
    FlowTimeouts t = base_;
    t.tcp_established_idle_ns = scale(base_.tcp_established_idle_ns);
    t.tcp_attempt_idle_ns = scale(base_.tcp_attempt_idle_ns);
    t.tcp_closed_linger_ns = scale(base_.tcp_closed_linger_ns);
    t.udp_idle_ns = scale(base_.udp_idle_ns);
    t.icmp_idle_ns = scale(base_.icmp_idle_ns);
    t.other_idle_ns = scale(base_.other_idle_ns);
    return t;  // the active timeout is a reporting interval, not memory: unchanged
  }

  FlowTable& table_;
  const FlowTimeouts base_;
  const std::size_t hold_;
  PressureLevel level_ = PressureLevel::kLow;
};

std::size_t capacity_for(std::size_t bytes) {
  std::size_t lo = 0, hi = bytes;  // bytes_needed grows with capacity: largest that fits
  while (lo < hi) {
    const std::size_t mid = lo + (hi - lo + 1) / 2;
    if (FlowTable::bytes_needed(mid) <= bytes) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

// The table's options from the config: timeouts, Community ID seed, shard, local networks.
FlowTableOptions table_options(const StageRuntime& runtime) {
  FlowTableOptions options;
  options.timeouts = timeouts_from(runtime.config().flowd);
  options.community_id_seed = static_cast<std::uint16_t>(runtime.config().flowd.community_id_seed);
  options.shard = static_cast<std::uint32_t>(runtime.shard());
  options.local_nets = LocalNets(runtime.config().net.local_nets);  // validated with the config
  return options;
}

// What a restarted flowd found in shared memory.
void log_resumed(const FlowTable& table) {
  if (table.rolled_back()) {
    spdlog::info("undid the step a killed flowd left half done (resuming at packet {})",
                 table.next_seq());
  }
  if (table.active() > 0 || table.fragments_in_flight() > 0) {
    spdlog::info("resumed with {} active flows and {} IP datagrams in flight from shared memory",
                 table.active(), table.fragments_in_flight());
  }
  if (const std::uint64_t corrupt = table.fragment_stats().corrupt; corrupt > 0) {
    spdlog::warn(
        "IP fragment table: {} slots in shared memory were invalid and dropped "
        "(since the table was formatted)",
        corrupt);
  }
}

// The table's figures into the control block's counters (copies: the table holds the
// originals, committed with its steps), and a heartbeat.
void publish_counters(StageRuntime& runtime, const FlowTable& table, std::uint64_t events_out,
                      std::uint64_t pressure_evictions) {
  auto counter = [&](std::size_t i) -> std::atomic<std::uint64_t>& { return runtime.counter(i); };
  const FlowTableStats stats = table.stats();
  std::uint64_t malformed = 0;
  for (std::size_t k = 0; k < stats.weird.size(); ++k) {
    if (k != static_cast<std::size_t>(packet::DecodeStatus::kNotIp)) malformed += stats.weird[k];
  }
  counter(kNextSeq).store(table.next_seq());
  counter(fc::kPackets).store(stats.packets);
  counter(fc::kNotIp).store(stats.weird[static_cast<std::size_t>(packet::DecodeStatus::kNotIp)]);
  counter(fc::kMalformed).store(malformed);
  counter(fc::kFlowsActive).store(table.active());
  counter(fc::kFlowsStarted).store(stats.flows_started);
  counter(fc::kFlowsEnded).store(stats.flows_ended);
  counter(fc::kEvictions).store(stats.evictions);
  counter(fc::kEventsOut).store(events_out);
  counter(fc::kCapacity).store(table.capacity());
  counter(fc::kPressureEvictions).store(pressure_evictions);
  runtime.heartbeat();
}

// The drained run's figures: events out, export latency (live), IP fragments.
void log_drained(std::uint64_t events_out, const ExportLatency& latency, const FlowTable& table) {
  spdlog::info("drained: {} events out", events_out);
  if (latency.count() > 0) {
    spdlog::info("export latency (flow end due -> flowd output ring): {}", latency.describe());
    spdlog::info(
        "export latency to the output ring, histogram (bucket upper edge in us: flow "
        "ends): {}",
        latency.histogram());
  }
  if (const FragmentStats& f = table.fragment_stats(); f.fragments > 0) {
    spdlog::info(
        "IP fragments: {} pieces, {} datagrams counted; weird: {} incomplete, {} "
        "without first piece, {} evicted (table full, {} datagrams), {} overlapping, "
        "{} invalid in shared memory",
        f.fragments, f.datagrams, f.incomplete, f.without_first, f.evicted,
        table.fragment_capacity(), f.overlapping, f.corrupt);
  }
}

}  // namespace

int run_flowd(StageRuntime& runtime) {
  const FlowdConfig& config = runtime.config().flowd;
  const bool live = !runtime.config().capture.interface.empty();
  RingInputs inputs(runtime, {packet_edge(runtime.shard())});
  RingOutput output(runtime, flow_edge(runtime.shard()));
  ShmSegment table_memory = ShmSegment::open(flow_table_name(runtime.instance(), runtime.shard()));

  std::size_t capacity = capacity_for(table_memory.bytes().size());
  if (config.max_flows > 0) capacity = std::min<std::size_t>(capacity, config.max_flows);
  FlowTable table(table_memory.bytes(), capacity, table_options(runtime));
  log_resumed(table);

  TablePressure pressure(runtime.config(), table);
  auto pressure_level = [&] {
    return runtime.control().pressure_level.load(std::memory_order_relaxed);
  };
  // Export latency: a flow end published within 10 ms (p99) of its due time.
  // Packet time is wall time only live, so only there is it measured.
  ExportLatency latency(config);
  EventBatchWriter writer(output.producer(), runtime, live ? &latency : nullptr);
  // Packets applied and counts by kind live in the table, committed with its steps, so a
  // restart neither repeats nor loses them (the control-block counters are copies).
  std::uint64_t events_out = runtime.counter(fc::kEventsOut).load();
  std::uint64_t pressure_evictions = runtime.counter(fc::kPressureEvictions).load();
  packet::DecodedPacket decoded;
  auto publish = [&] { publish_counters(runtime, table, events_out, pressure_evictions); };

  writer.set_on_wait(publish);
  // Ends the table step a frame (or the idle work) began: its events are published before
  // the commit, so a kill in between replays the step, repeating (never losing) them.
  auto end_step = [&] {
    events_out += writer.flush() + writer.take_synced();
    table.commit_step();
  };

  RateLimitedLog log;
  FrameLoop loop(stage_process(runtime, fc::kBadFrames), inputs, log, "PacketBatch");
  FrameHandlers handlers;
  handlers.on_frame = [&](std::span<const std::byte> frame, std::size_t) {
    table.begin_step();
    apply_packet_batch(frame, table, writer, decoded);
    pressure_evictions += pressure.apply(pressure_level(), writer);
    end_step();
    return FrameUse::kCommit;
  };
  // What the frame applied before it turned out malformed stays, with its events.
  handlers.on_bad_frame = [&](std::size_t) { end_step(); };
  handlers.after_pass = [&](bool progressed) {
    if (progressed) publish();
  };
  handlers.on_idle = [&] {
    table.begin_step();
    if (live) table.expire(realtime_ns(), writer);
    pressure_evictions += pressure.apply(pressure_level(), writer);
    end_step();
    publish();
    // Live, the next flow end is due at a wall-clock moment: sleep until then, so the end
    // reaches the output ring within milliseconds of it, not a slice later.
    return live ? idle_wait_ns(table.next_due_ns(), realtime_ns()) : kIdleWait;
  };
  if (const int code = loop.run(handlers); code != exit_code::kOk) return code;

  table.begin_step();
  table.flush(writer);
  end_step();
  publish();
  output.producer().close();
  log_drained(events_out, latency, table);
  return exit_code::kOk;
}

}  // namespace flowseal::flowd
