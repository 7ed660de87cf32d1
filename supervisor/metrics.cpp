#include "metrics.h"

#include <unistd.h>

#include <array>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "export_latency.h"
#include "pressure_level.h"
#include "proc_stats.h"

namespace flowseal::supervisor {

double process_cpu_seconds(pid_t pid) {
  const auto fields = proc_stat_fields(pid, {14, 15});  // utime, stime
  if (!fields) return 0;
  return double((*fields)[0] + (*fields)[1]) / double(::sysconf(_SC_CLK_TCK));
}

namespace {

// One metric family: HELP and TYPE once, then its samples.
class Exposition {
 public:
  void family(std::string_view name, std::string_view type, std::string_view help) {
    out_ += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
  }
  template <typename T>
  void sample(std::string_view name, std::string_view labels, T value) {
    if (labels.empty()) {
      out_ += fmt::format("{} {}\n", name, value);
    } else {
      out_ += fmt::format("{}{{{}}} {}\n", name, labels, value);
    }
  }
  template <typename T>
  void single(std::string_view name, std::string_view type, std::string_view help, T value) {
    family(name, type, help);
    sample(name, "", value);
  }
  std::string take() { return std::move(out_); }

 private:
  std::string out_;
};

std::string stage_label(const ControlBlock& control, std::size_t index) {
  return fmt::format("stage=\"{}\"", slot_name(control, index));
}

namespace cc = capture_counter;
namespace fc = flowd_counter;
namespace rc = record_counter;

// The control block's counters, read by stage.
class Counters {
 public:
  explicit Counters(const ControlBlock& control)
      : control_(control), shards_(control.shard_count()) {}

  const ControlBlock& control() const { return control_; }
  std::size_t shards() const { return shards_; }
  const StageSlot& slot(StageKind kind, std::size_t shard = 0) const {
    return control_.slots[slot_index(kind, shard, shards_)];
  }
  static std::uint64_t of(const StageSlot& slot, std::size_t counter) {
    return slot.counters[counter].load(std::memory_order_relaxed);
  }
  std::uint64_t of(StageKind kind, std::size_t counter) const { return of(slot(kind), counter); }
  std::uint64_t flowd_sum(std::size_t counter) const {
    std::uint64_t sum = 0;
    for (std::size_t s = 0; s < shards_; ++s) sum += of(slot(StageKind::kFlowd, s), counter);
    return sum;
  }

 private:
  const ControlBlock& control_;
  std::size_t shards_;
};

void packet_ledger(Exposition& e, const Counters& n) {
  // The packet ledger: received = published + sampled out + dropped (by cause) on a live
  // capture; an offline run waits instead of dropping.
  e.single("flowseal_packets_received_total", "counter", "Packets the capture stage received.",
           n.of(StageKind::kCapture, cc::kReceived));
  e.single("flowseal_packets_published_total", "counter",
           "Packets the capture stage placed in flowd's rings.",
           n.of(StageKind::kCapture, cc::kPublished));
  e.single("flowseal_packets_sampled_out_total", "counter",
           "Packets left out by the memory pressure level's sampling.",
           n.of(StageKind::kCapture, cc::kSampledOut));
  const std::uint64_t ring_full = n.of(StageKind::kCapture, cc::kRingFullDropped);
  const std::uint64_t stalled = n.of(StageKind::kCapture, cc::kWriterStalledDropped);
  e.family("flowseal_packets_dropped_total", "counter",
           "Packets dropped, by cause (causes are disjoint: ring_full excludes writer_stalled).");
  e.sample("flowseal_packets_dropped_total", "cause=\"kernel\"",
           n.of(StageKind::kCapture, cc::kKernelDropped));
  e.sample("flowseal_packets_dropped_total", "cause=\"ring_full\"",
           ring_full >= stalled ? ring_full - stalled : 0);
  e.sample("flowseal_packets_dropped_total", "cause=\"writer_stalled\"", stalled);
  e.single("flowseal_packets_truncated_total", "counter",
           "Packets captured shorter than on the wire (snaplen).",
           n.of(StageKind::kCapture, cc::kTruncated));
  e.single("flowseal_capture_bad_records_total", "counter",
           "Capture-file records skipped as damaged.", n.of(StageKind::kCapture, cc::kBadRecords));
  e.single("flowseal_packets_processed_total", "counter",
           "Packets flowd applied to its flow tables (all shards).", n.flowd_sum(fc::kPackets));
  e.single("flowseal_packets_not_ip_total", "counter", "Packets that carry no IP flow.",
           n.flowd_sum(fc::kNotIp));
  e.single("flowseal_packets_malformed_total", "counter", "Packets the decoder rejected.",
           n.flowd_sum(fc::kMalformed));
}

void flow_figures(Exposition& e, const Counters& n) {
  // Flows.
  e.single("flowseal_flows_active", "gauge", "Flows held in flowd's tables now.",
           n.flowd_sum(fc::kFlowsActive));
  e.single("flowseal_flow_table_capacity", "gauge", "Capacity of flowd's tables.",
           n.flowd_sum(fc::kCapacity));
  e.single("flowseal_flows_started_total", "counter", "Flows started.",
           n.flowd_sum(fc::kFlowsStarted));
  e.single("flowseal_flows_ended_total", "counter", "Flows ended.", n.flowd_sum(fc::kFlowsEnded));
  e.single("flowseal_flow_evictions_total", "counter",
           "Flows ended early (table full, long chain, pressure).", n.flowd_sum(fc::kEvictions));
  e.single("flowseal_flow_pressure_evictions_total", "counter",
           "Of the evictions: to hold the table under memory pressure.",
           n.flowd_sum(fc::kPressureEvictions));
  e.single("flowseal_flow_events_total", "counter", "Flow records flowd emitted.",
           n.flowd_sum(fc::kEventsOut));
}

// One sample of `name` per record stage, labelled by stage.
void record_stage_samples(Exposition& e, const Counters& n, const char* name, std::size_t counter) {
  constexpr std::array<std::pair<StageKind, const char*>, 3> kStages{{
      {StageKind::kDedupd, "stage=\"dedupd\""},
      {StageKind::kSignerd, "stage=\"signerd\""},
      {StageKind::kWriterd, "stage=\"writerd\""},
  }};
  for (const auto& [kind, label] : kStages) e.sample(name, label, n.of(kind, counter));
}

void record_figures(Exposition& e, const Counters& n) {
  // Records through dedupd, signerd, writerd.
  e.family("flowseal_records_in_total", "counter", "Records a record stage read.");
  record_stage_samples(e, n, "flowseal_records_in_total", rc::kRecordsIn);
  e.family("flowseal_records_out_total", "counter",
           "Records a record stage passed on (writerd: stored).");
  record_stage_samples(e, n, "flowseal_records_out_total", rc::kRecordsOut);
  e.single("flowseal_dedup_summaries_total", "counter", "Summary records dedupd emitted.",
           n.of(StageKind::kDedupd, rc::kSummaries));
  e.single("flowseal_dedup_suppressed_total", "counter", "Records dedupd folded or held back.",
           n.of(StageKind::kDedupd, rc::kSuppressed));
  e.single("flowseal_dedup_entries", "gauge", "Entries dedupd holds now.",
           n.of(StageKind::kDedupd, rc::kEntries));
  e.single("flowseal_batches_sealed_total", "counter", "Batches signerd sealed.",
           n.of(StageKind::kSignerd, rc::kBatchesOut));
  e.single("flowseal_batches_stored_total", "counter", "Batches writerd stored.",
           n.of(StageKind::kWriterd, rc::kBatchesOut));
  e.single("flowseal_batches_duplicate_total", "counter",
           "Batches writerd found already stored (replays after a restart).",
           n.of(StageKind::kWriterd, rc::kDuplicates));
  e.single("flowseal_bytes_stored_total", "counter", "Bytes writerd stored in segments.",
           n.of(StageKind::kWriterd, rc::kBytesStored));
  e.single("flowseal_segments_total", "counter", "Segments writerd wrote.",
           n.of(StageKind::kWriterd, rc::kSegments));
  e.single("flowseal_write_errors_total", "counter", "Failed appends (retried), e.g. disk full.",
           n.of(StageKind::kWriterd, rc::kWriteErrors));
  e.single("flowseal_writer_stalled", "gauge", "1 while writerd cannot write.",
           n.of(StageKind::kWriterd, rc::kStalledSinceNs) != 0 ? 1 : 0);
  e.family("flowseal_bad_frames_total", "counter", "Ring frames a stage rejected.");
  for (std::size_t s = 0; s < n.shards(); ++s) {
    e.sample("flowseal_bad_frames_total",
             stage_label(n.control(), slot_index(StageKind::kFlowd, s, n.shards())),
             n.of(n.slot(StageKind::kFlowd, s), fc::kBadFrames));
  }
  record_stage_samples(e, n, "flowseal_bad_frames_total", rc::kBadFrames);
}

void export_latency(Exposition& e, const Counters& n) {
  // writerd's export latency (live capture only: flow end due -> stored).
  e.family("flowseal_export_latency_seconds", "histogram",
           "Time from when a flow's end was due to when writerd stored it (live capture only).");
  for (std::size_t i = 0; i < ExportLatency::kCoarseBoundsS.size(); ++i) {
    e.sample("flowseal_export_latency_seconds_bucket",
             fmt::format("le=\"{}\"", ExportLatency::kCoarseBoundsS[i]),
             n.of(StageKind::kWriterd, writerd_counter::kLatencyLe0 + i));
  }
  const std::uint64_t latency_count = n.of(StageKind::kWriterd, writerd_counter::kLatencyCount);
  e.sample("flowseal_export_latency_seconds_bucket", "le=\"+Inf\"", latency_count);
  e.sample("flowseal_export_latency_seconds_sum", "",
           double(n.of(StageKind::kWriterd, writerd_counter::kLatencySumUs)) / 1e6);
  e.sample("flowseal_export_latency_seconds_count", "", latency_count);
}

void ship_and_export_figures(Exposition& e, const Counters& n) {
  // shipd (the sixth stage, when ship.url or an export is set): shipping to the Core and the
  // IPFIX and Kafka exports, each following the store on its own. An output that is off
  // keeps its counters at 0.
  if (n.control().ships()) {
    namespace sc = ship_counter;
    const StageSlot& shipd = n.slot(StageKind::kShipd);
    const auto ship = [&](std::size_t counter) { return Counters::of(shipd, counter); };
    e.single("flowseal_ship_batches_published_total", "counter",
             "Batches shipd published to the Core (re-sends included).",
             ship(sc::kBatchesPublished));
    e.single("flowseal_ship_records_published_total", "counter",
             "Records of the published batches.", ship(sc::kRecordsPublished));
    e.single("flowseal_ship_batches_acked_total", "counter",
             "Batches the Core acked, in order (shipped), this run.", ship(sc::kBatchesAcked));
    e.single("flowseal_ship_records_acked_total", "counter", "Records of the acked batches.",
             ship(sc::kRecordsAcked));
    e.single("flowseal_ship_inflight_batches", "gauge", "Batches published and not acked yet.",
             ship(sc::kInflight));
    e.single("flowseal_ship_retried_total", "counter",
             "Failed or timed-out publishes, re-sent from the store.", ship(sc::kRetried));
    e.single("flowseal_ship_lag_batches", "gauge", "Batches stored and not acked yet.",
             ship(sc::kLagBatches));
    e.single("flowseal_ship_duplicates_total", "counter",
             "Acks saying the Core had the batch already.", ship(sc::kDuplicates));
    e.single("flowseal_ship_connect_failures_total", "counter", "Failed connections to the Core.",
             ship(sc::kConnectFailures));
    e.single("flowseal_ship_tls_refused_total", "counter",
             "Connections refused in the TLS handshake.", ship(sc::kTlsRefused));
    e.single("flowseal_ship_unreachable_seconds_total", "counter", "Time the Core was unreachable.",
             double(ship(sc::kUnreachableMs)) / 1000);
    e.single("flowseal_ship_store_errors_total", "counter",
             "Errors reading the store for shipping.", ship(sc::kStoreErrors));
    e.single("flowseal_ship_shipped_seq", "gauge", "Sequence number of the last acked batch.",
             ship(sc::kShippedSeq));
    e.single("flowseal_ship_dropped_records_total", "counter",
             "Records of segments retention deleted before they were acked (ship.dropped_records).",
             n.of(StageKind::kWriterd, rc::kShipDroppedRecords));
    e.single("flowseal_ship_dropped_segments_total", "counter",
             "Segments retention deleted before they were acked.",
             n.of(StageKind::kWriterd, rc::kShipDroppedSegments));
    e.single("flowseal_export_ipfix_batches_exported_total", "counter",
             "Stored batches wholly exported over IPFIX, this run.",
             ship(sc::kIpfixBatchesExported));
    e.single("flowseal_export_ipfix_records_sent_total", "counter",
             "IPFIX data records handed to the transport.", ship(sc::kIpfixRecordsSent));
    e.single("flowseal_export_ipfix_send_failures_total", "counter",
             "Failed IPFIX sends or connects (then retried).", ship(sc::kIpfixSendFailures));
    e.single("flowseal_export_ipfix_lag_batches", "gauge",
             "Batches stored and not exported over IPFIX yet.", ship(sc::kIpfixLagBatches));
    e.single("flowseal_export_ipfix_exported_seq", "gauge",
             "Sequence number of the last batch exported over IPFIX.", ship(sc::kIpfixExportedSeq));
    e.single("flowseal_export_kafka_batches_delivered_total", "counter",
             "Stored batches wholly delivered to Kafka, in order, this run.",
             ship(sc::kKafkaBatchesDelivered));
    e.single("flowseal_export_kafka_records_delivered_total", "counter",
             "Records Kafka's delivery reports confirmed.", ship(sc::kKafkaRecordsDelivered));
    e.single("flowseal_export_kafka_delivery_failures_total", "counter",
             "Delivery reports with an error (then a rewind).", ship(sc::kKafkaDeliveryFailures));
    e.single("flowseal_export_kafka_lag_batches", "gauge",
             "Batches stored and not yet wholly delivered to Kafka.", ship(sc::kKafkaLagBatches));
    e.single("flowseal_export_kafka_exported_seq", "gauge",
             "Sequence number of the last batch wholly delivered to Kafka.",
             ship(sc::kKafkaExportedSeq));
  }
}

void stage_processes(Exposition& e, const Counters& n) {
  // Per stage process.
  const std::size_t slots = n.control().slot_count();
  std::vector<pid_t> pids(slots);
  for (std::size_t i = 0; i < slots; ++i) pids[i] = n.control().slots[i].pid.load();
  e.family("flowseal_stage_up", "gauge", "1 while the stage's process runs.");
  for (std::size_t i = 0; i < slots; ++i) {
    const auto state = static_cast<StageState>(n.control().slots[i].state.load());
    e.sample("flowseal_stage_up", stage_label(n.control(), i),
             state == StageState::kRunning && process_alive(pids[i]) ? 1 : 0);
  }
  e.family("flowseal_stage_cpu_seconds_total", "counter",
           "User + system CPU of the stage's current process (resets when it restarts).");
  for (std::size_t i = 0; i < slots; ++i) {
    e.sample("flowseal_stage_cpu_seconds_total", stage_label(n.control(), i),
             process_cpu_seconds(pids[i]));
  }
  e.family("flowseal_stage_pss_bytes", "gauge", "Proportional set size of the stage's process.");
  for (std::size_t i = 0; i < slots; ++i) {
    e.sample("flowseal_stage_pss_bytes", stage_label(n.control(), i),
             process_alive(pids[i]) ? pss_bytes(pids[i]) : 0);
  }
  e.family("flowseal_stage_restarts_total", "counter", "Restarts of the stage in this run.");
  for (std::size_t i = 0; i < slots; ++i) {
    e.sample("flowseal_stage_restarts_total", stage_label(n.control(), i),
             n.control().slots[i].restarts.load());
  }
  e.family("flowseal_stage_memory_restarts_total", "counter",
           "Of the restarts: the stage's private memory passed its hard limit.");
  for (std::size_t i = 0; i < slots; ++i) {
    e.sample("flowseal_stage_memory_restarts_total", stage_label(n.control(), i),
             n.control().slots[i].memory_restarts.load());
  }
  e.family("flowseal_stage_heartbeat_age_seconds", "gauge",
           "Seconds since the stage's last heartbeat.");
  const std::int64_t now = monotonic_ns();
  for (std::size_t i = 0; i < slots; ++i) {
    const std::int64_t beat = n.control().slots[i].heartbeat_ns.load();
    e.sample("flowseal_stage_heartbeat_age_seconds", stage_label(n.control(), i),
             beat != 0 ? (double(now) - double(beat)) / 1e9 : 0.0);
  }
}

void pressure_figures(Exposition& e, const Counters& n, const RingFill& fill,
                      std::uint64_t memory_budget_bytes) {
  // Rings and memory pressure.
  e.family("flowseal_ring_fill_ratio", "gauge", "Fill of each ring edge, 0..1.");
  for (const auto& [edge, percent] : fill) {
    if (percent >= 0)
      e.sample("flowseal_ring_fill_ratio", fmt::format("edge=\"{}\"", edge), percent / 100);
  }
  e.single("flowseal_pressure_level", "gauge",
           "Memory pressure level: 0 LOW, 1 MEDIUM, 2 HIGH, 3 CRITICAL.",
           n.control().pressure_level.load());
  e.single("flowseal_pressure_usage_ratio", "gauge",
           "Memory in use over the budget, at the last sample.",
           n.control().pressure_usage_permille.load() / 1000.0);
  e.single("flowseal_memory_budget_bytes", "gauge", "memory.budget_mb in bytes.",
           memory_budget_bytes);
  e.single("flowseal_pressure_level_changes_total", "counter", "Pressure level changes.",
           n.control().pressure_changes.load());
  e.family("flowseal_pressure_level_seconds_total", "counter", "Time the run spent at each level.");
  for (std::uint32_t level = 0; level < 4; ++level) {
    e.sample("flowseal_pressure_level_seconds_total",
             fmt::format("level=\"{}\"", to_string(pressure_level_from(level))),
             double(n.control().pressure_level_ms[level].load()) / 1000.0);
  }
  e.single("flowseal_stop_requested", "gauge", "1 once the run drains.",
           n.control().stop_requested.load() != 0 ? 1 : 0);
  e.family("flowseal_reloads_total", "counter",
           "SIGHUP reloads, applied or refused (the log names each refusal's reasons).");
  e.sample("flowseal_reloads_total", "result=\"applied\"", n.control().reloads_applied.load());
  e.sample("flowseal_reloads_total", "result=\"refused\"", n.control().reloads_refused.load());
}

}  // namespace

std::string render_metrics(const ControlBlock& control, const RingFill& fill,
                           std::uint64_t memory_budget_bytes) {
  const Counters counters(control);
  Exposition e;
  packet_ledger(e, counters);
  flow_figures(e, counters);
  record_figures(e, counters);
  export_latency(e, counters);
  ship_and_export_figures(e, counters);
  stage_processes(e, counters);
  pressure_figures(e, counters, fill, memory_budget_bytes);
  return e.take();
}

}  // namespace flowseal::supervisor
