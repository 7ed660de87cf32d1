#include "status_snapshot.h"

#include <signal.h>

#include <cerrno>
#include <cmath>

#include "layout.h"
#include "pressure_level.h"
#include "proc_stats.h"
#include "ring.h"
#include "shm.h"

namespace flowseal::supervisor {

bool process_alive(pid_t pid) { return pid > 0 && (kill(pid, 0) == 0 || errno == EPERM); }

SlotSample sample_slot(const ControlBlock& control, std::size_t index) {
  namespace cc = capture_counter;
  namespace fc = flowd_counter;
  namespace rc = record_counter;
  const StageSlot& slot = control.slots[index];
  SlotSample s;
  s.name = slot_name(control, index);
  s.pid = slot.pid.load();
  s.state = static_cast<StageState>(slot.state.load());
  s.restarts = slot.restarts.load();
  s.memory_restarts = slot.memory_restarts.load();
  const std::int64_t now = monotonic_ns();
  // In double: a forged time must not overflow the subtraction.
  if (const auto t = slot.started_ns.load(); t != 0) s.uptime_s = (double(now) - double(t)) / 1e9;
  if (const auto t = slot.heartbeat_ns.load(); t != 0)
    s.heartbeat_age_ms = (double(now) - double(t)) / 1e6;
  if (process_alive(s.pid)) s.pss = pss_bytes(s.pid);
  switch (static_cast<StageKind>(slot.kind.load())) {
    case StageKind::kCapture:
      s.in = slot.counters[cc::kReceived].load();
      s.out = slot.counters[cc::kPublished].load();
      break;
    case StageKind::kFlowd:
      s.in = slot.counters[fc::kPackets].load() + slot.counters[fc::kNotIp].load() +
             slot.counters[fc::kMalformed].load();
      s.out = slot.counters[fc::kEventsOut].load();
      break;
    case StageKind::kShipd:  // records published (re-sends too), records acked
      s.in = slot.counters[ship_counter::kRecordsPublished].load();
      s.out = slot.counters[ship_counter::kRecordsAcked].load();
      break;
    default:
      s.in = slot.counters[rc::kRecordsIn].load();
      s.out = slot.counters[rc::kRecordsOut].load();
  }
  return s;
}

std::vector<SlotSample> sample_slots(const ControlBlock& control, std::size_t count) {
  std::vector<SlotSample> samples;
  for (std::size_t i = 0; i < count; ++i) samples.push_back(sample_slot(control, i));
  return samples;
}

RingFill ring_fill(const std::string& instance, std::size_t shards) {
  std::vector<std::string> edges;
  for (std::size_t s = 0; s < shards; ++s) {
    edges.push_back(packet_edge(s));
    edges.push_back(flow_edge(s));
  }
  edges.emplace_back(kDedupEdge);
  edges.emplace_back(kSealedEdge);
  RingFill fill;
  for (const auto& edge : edges) {
    try {
      ShmSegment segment = ShmSegment::open(ring_name(instance, edge));
      const RingHeader& header = ring_attach(segment.bytes());
      const double used = double(header.head.load() - header.tail.load());
      fill.emplace_back(edge, 100.0 * used / double(header.capacity));
    } catch (const std::exception&) {
      fill.emplace_back(edge, -1);
    }
  }
  return fill;
}

namespace {

double rounded(double value, double step) { return std::round(value / step) * step; }

}  // namespace

nlohmann::ordered_json ship_json(const ControlBlock& control) {
  namespace sc = ship_counter;
  const StageSlot& ship = control.slots[slot_index(StageKind::kShipd, 0, control.shard_count())];
  const StageSlot& writer =
      control.slots[slot_index(StageKind::kWriterd, 0, control.shard_count())];
  const auto c = [&](std::size_t index) { return ship.counters[index].load(); };
  return {{"batches_published", c(sc::kBatchesPublished)},
          {"records_published", c(sc::kRecordsPublished)},
          {"batches_acked", c(sc::kBatchesAcked)},
          {"records_acked", c(sc::kRecordsAcked)},
          {"inflight", c(sc::kInflight)},
          {"retried", c(sc::kRetried)},
          {"lag_batches", c(sc::kLagBatches)},
          {"duplicates", c(sc::kDuplicates)},
          {"connect_failures", c(sc::kConnectFailures)},
          {"tls_refused", c(sc::kTlsRefused)},
          {"unreachable_s", rounded(double(c(sc::kUnreachableMs)) / 1000, 0.1)},
          {"store_errors", c(sc::kStoreErrors)},
          {"shipped_seq", c(sc::kShippedSeq)},
          {"dropped_records", writer.counters[record_counter::kShipDroppedRecords].load()},
          {"dropped_segments", writer.counters[record_counter::kShipDroppedSegments].load()}};
}

nlohmann::ordered_json export_json(const ControlBlock& control) {
  namespace sc = ship_counter;
  const StageSlot& ship = control.slots[slot_index(StageKind::kShipd, 0, control.shard_count())];
  const auto c = [&](std::size_t index) { return ship.counters[index].load(); };
  return {{"ipfix",
           {{"batches_exported", c(sc::kIpfixBatchesExported)},
            {"records_sent", c(sc::kIpfixRecordsSent)},
            {"send_failures", c(sc::kIpfixSendFailures)},
            {"lag_batches", c(sc::kIpfixLagBatches)},
            {"exported_seq", c(sc::kIpfixExportedSeq)}}},
          {"kafka",
           {{"batches_delivered", c(sc::kKafkaBatchesDelivered)},
            {"records_delivered", c(sc::kKafkaRecordsDelivered)},
            {"delivery_failures", c(sc::kKafkaDeliveryFailures)},
            {"lag_batches", c(sc::kKafkaLagBatches)},
            {"exported_seq", c(sc::kKafkaExportedSeq)}}}};
}

nlohmann::ordered_json status_json(const std::string& instance, const ControlBlock& control,
                                   const std::vector<SlotSample>& before,
                                   const std::vector<SlotSample>& after, double dt_s,
                                   const RingFill& fill) {
  namespace cc = capture_counter;
  namespace rc = record_counter;
  const StageSlot& capture = control.slots[0];
  const StageSlot& writer =
      control.slots[slot_index(StageKind::kWriterd, 0, control.shard_count())];
  const auto stalled_since = static_cast<std::int64_t>(writer.counters[rc::kStalledSinceNs].load());
  const pid_t supervisor = control.supervisor_pid.load();
  nlohmann::ordered_json out;
  out["instance"] = instance;
  out["supervisor_pid"] = supervisor;
  out["supervisor_alive"] = process_alive(supervisor);
  out["pressure"] = to_string(pressure_level_from(control.pressure_level.load()));
  out["pressure_usage_pct"] = rounded(control.pressure_usage_permille.load() / 10.0, 0.1);
  out["pressure_changes"] = control.pressure_changes.load();
  out["pressure_peak"] = to_string(pressure_level_from(control.pressure_peak_level.load()));
  out["stop_requested"] = control.stop_requested.load() != 0;
  out["reloads"] = {{"applied", control.reloads_applied.load()},
                    {"refused", control.reloads_refused.load()}};
  out["drops"] = {{"ring_full", capture.counters[cc::kRingFullDropped].load()},
                  {"kernel", capture.counters[cc::kKernelDropped].load()},
                  {"sampled_out", capture.counters[cc::kSampledOut].load()},
                  {"writer_stalled", capture.counters[cc::kWriterStalledDropped].load()},
                  {"bad_time", capture.counters[cc::kBadTime].load()}};
  out["writer"] = {
      {"stalled", stalled_since > 0},
      {"stalled_s", stalled_since > 0
                        ? rounded((double(monotonic_ns()) - double(stalled_since)) / 1e9, 0.1)
                        : 0.0},
      {"write_errors", writer.counters[rc::kWriteErrors].load()}};
  auto& stages = out["stages"] = nlohmann::ordered_json::array();
  for (std::size_t i = 0; i < after.size() && i < before.size(); ++i) {
    const auto& a = after[i];
    const auto rate = [&](std::uint64_t now, std::uint64_t then) {
      return dt_s > 0 && now >= then ? std::round(double(now - then) / dt_s) : 0.0;
    };
    stages.push_back({{"stage", a.name},
                      {"pid", a.pid},
                      {"state", to_string(a.state)},
                      {"uptime_s", rounded(a.uptime_s, 0.1)},
                      {"restarts", a.restarts},
                      {"memory_limit_restarts", a.memory_restarts},
                      {"heartbeat_age_ms", std::round(a.heartbeat_age_ms)},
                      {"pss_bytes", a.pss},
                      {"in_per_s", rate(a.in, before[i].in)},
                      {"out_per_s", rate(a.out, before[i].out)},
                      {"in_total", a.in},
                      {"out_total", a.out}});
  }
  if (control.ships()) {
    out["ship"] = ship_json(control);
    out["export"] = export_json(control);
  }
  auto& rings = out["rings"] = nlohmann::ordered_json::object();
  for (const auto& [edge, percent] : fill) rings[edge] = rounded(percent, 0.1);
  return out;
}

}  // namespace flowseal::supervisor
