#include "summary.h"

#include <cstdio>

#include <fmt/format.h>

#include "pressure_level.h"
#include "ring.h"

namespace flowseal::supervisor {
namespace {

std::uint64_t counter(const ControlBlock& control, StageKind kind, std::size_t index,
                      std::size_t shard = 0) {
  return control.slots[slot_index(kind, shard, control.shard_count())].counters[index].load();
}

std::uint64_t flowd_total(const ControlBlock& control, std::size_t index) {
  std::uint64_t sum = 0;
  for (std::size_t s = 0; s < control.shard_count(); ++s)
    sum += counter(control, StageKind::kFlowd, index, s);
  return sum;
}

std::string human_bytes(std::uint64_t bytes) {
  if (bytes >= (1u << 30)) return fmt::format("{:.1f} GiB", bytes / double(1u << 30));
  if (bytes >= (1u << 20)) return fmt::format("{:.1f} MiB", bytes / double(1u << 20));
  if (bytes >= 1024) return fmt::format("{:.1f} KiB", bytes / 1024.0);
  return fmt::format("{} B", bytes);
}

// shipd's figures for the stats line and the summary (empty when the run does not ship).
std::string ship_figures(const ControlBlock& control, bool summary) {
  if (!control.ships()) return {};
  namespace sc = ship_counter;
  const auto c = [&](std::size_t index) { return counter(control, StageKind::kShipd, index); };
  const std::uint64_t dropped =
      counter(control, StageKind::kWriterd, record_counter::kShipDroppedRecords);
  if (!summary) {
    return fmt::format(" | shipped batches={} records={} inflight={} retried={} lag={}",
                       c(sc::kBatchesAcked), c(sc::kRecordsAcked), c(sc::kInflight),
                       c(sc::kRetried), c(sc::kLagBatches));
  }
  return fmt::format(
      "  shipped   {} batches ({} records) acked of {} published ({} records), {} in flight, "
      "{} retried, {} already at the server; unshipped {} batches (lag); unreachable {:.1f} s, "
      "{} connect failures ({} TLS refused); ship.dropped_records {}{}\n",
      c(sc::kBatchesAcked), c(sc::kRecordsAcked), c(sc::kBatchesPublished),
      c(sc::kRecordsPublished), c(sc::kInflight), c(sc::kRetried), c(sc::kDuplicates),
      c(sc::kLagBatches), double(c(sc::kUnreachableMs)) / 1000, c(sc::kConnectFailures),
      c(sc::kTlsRefused), dropped,
      dropped > 0
          ? fmt::format(" (retention deleted {} unshipped segment(s): the disk limit "
                        "forced it)",
                        counter(control, StageKind::kWriterd, record_counter::kShipDroppedSegments))
          : std::string());
}

// The Kafka export's figures for the summary. The delivered counts are the run's, every shipd
// process's together (a record delivered again after a restart counts again: at least once);
// the lag is the store's, whoever delivered.
std::string kafka_figures(const Config& config, const ControlBlock& control) {
  if (!control.ships() || config.exports.kafka.brokers.empty()) return {};
  namespace sc = ship_counter;
  const auto c = [&](std::size_t index) { return counter(control, StageKind::kShipd, index); };
  return fmt::format(
      "  kafka     {} records ({} batches) delivered to topic {}, up to batch seq {}; "
      "undelivered {} batches (lag); {} delivery failures\n",
      c(sc::kKafkaRecordsDelivered), c(sc::kKafkaBatchesDelivered), config.exports.kafka.topic,
      c(sc::kKafkaExportedSeq), c(sc::kKafkaLagBatches), c(sc::kKafkaDeliveryFailures));
}

}  // namespace

void print_stats_line(const ControlBlock& control, const std::vector<Instance::RingView>& rings) {
  namespace cc = capture_counter;
  namespace fc = flowd_counter;
  namespace rc = record_counter;
  std::string fill;
  for (const auto& ring : rings) {
    const auto& header = ring_attach(ring.memory);
    const auto used = header.head.load() - header.tail.load();
    fill += fmt::format(" {}={:.0f}%", ring.edge, 100.0 * double(used) / double(header.capacity));
  }
  std::fprintf(stderr, "%s\n",
               fmt::format("stats: packets rx={} processed={} dropped(ring)={} dropped(kernel)={} "
                           "sampled-out={} | flows active={} | records sealed={} stored batches={}"
                           "{} | ring fill:{}",
                           counter(control, StageKind::kCapture, cc::kReceived),
                           flowd_total(control, fc::kPackets) + flowd_total(control, fc::kNotIp) +
                               flowd_total(control, fc::kMalformed),
                           counter(control, StageKind::kCapture, cc::kRingFullDropped),
                           counter(control, StageKind::kCapture, cc::kKernelDropped),
                           counter(control, StageKind::kCapture, cc::kSampledOut),
                           flowd_total(control, fc::kFlowsActive),
                           counter(control, StageKind::kSignerd, rc::kRecordsIn),
                           counter(control, StageKind::kWriterd, rc::kBatchesOut),
                           ship_figures(control, false), fill)
                   .c_str());
}

void print_run_summary(const Config& config, const ControlBlock& control, double seconds,
                       const std::vector<StageUsage>& usage, const MemoryPeaks& peaks,
                       const std::vector<std::string>& leftovers) {
  namespace cc = capture_counter;
  namespace fc = flowd_counter;
  namespace rc = record_counter;
  const auto received = counter(control, StageKind::kCapture, cc::kReceived);
  const auto flow_packets = flowd_total(control, fc::kPackets);
  const auto not_ip = flowd_total(control, fc::kNotIp);
  const auto malformed = flowd_total(control, fc::kMalformed);
  const auto processed = flow_packets + not_ip + malformed;
  const auto ring_dropped = counter(control, StageKind::kCapture, cc::kRingFullDropped);
  const auto kernel_dropped = counter(control, StageKind::kCapture, cc::kKernelDropped);
  const auto sampled = counter(control, StageKind::kCapture, cc::kSampledOut);
  const auto stalled_dropped = counter(control, StageKind::kCapture, cc::kWriterStalledDropped);
  const auto bad_time = counter(control, StageKind::kCapture, cc::kBadTime);
  std::string out;
  out += fmt::format("flowseal run summary ({:.2f} s)\n", seconds);
  out += fmt::format(
      "  packets   received {}  processed {} ({} in flows, {} not IP, {} malformed)  "
      "sampled out {}  dropped: ring full {}, kernel {}{}{}\n",
      received, processed, flow_packets, not_ip, malformed, sampled, ring_dropped, kernel_dropped,
      bad_time > 0 ? fmt::format(", time out of range {} (not received)", bad_time) : std::string(),
      stalled_dropped > 0 ? fmt::format(" (of the ring-full drops, {} while writerd could not "
                                        "write: writer stalled)",
                                        stalled_dropped)
                          : std::string());
  out += fmt::format("  flows     started {}  ended {}  evicted {}\n",
                     flowd_total(control, fc::kFlowsStarted), flowd_total(control, fc::kFlowsEnded),
                     flowd_total(control, fc::kEvictions));
  out += fmt::format("  records   from flowd {}  after dedup {}  sealed {} in {} batches\n",
                     counter(control, StageKind::kDedupd, rc::kRecordsIn),
                     counter(control, StageKind::kDedupd, rc::kRecordsOut),
                     counter(control, StageKind::kSignerd, rc::kRecordsIn),
                     counter(control, StageKind::kSignerd, rc::kBatchesOut));
  out += fmt::format("  stored    {} batches, {} in {} segment(s) under {}{}\n",
                     counter(control, StageKind::kWriterd, rc::kBatchesOut),
                     human_bytes(counter(control, StageKind::kWriterd, rc::kBytesStored)),
                     counter(control, StageKind::kWriterd, rc::kSegments), config.writer.dir,
                     counter(control, StageKind::kWriterd, rc::kWriteErrors) > 0
                         ? fmt::format("; {} failed writes retried (see the log)",
                                       counter(control, StageKind::kWriterd, rc::kWriteErrors))
                         : std::string());
  for (const auto& line : leftovers) out += fmt::format("  leftover  {}\n", line);
  out += ship_figures(control, true);
  out += kafka_figures(config, control);
  if (seconds > 0) {
    out += fmt::format("  rate      {:.0f} packets/s\n", double(received) / seconds);
  }
  out += "  stages   ";
  for (const auto& stage : usage) {
    // "restarts N" stays last: scripts read it there.
    out += fmt::format(" {} cpu {:.2f} s pss {} private {}{}{};", stage.name, stage.cpu_seconds,
                       human_bytes(stage.peak_pss), human_bytes(stage.peak_private),
                       stage.memory_restarts
                           ? fmt::format(" memory-limit restarts {}", stage.memory_restarts)
                           : "",
                       stage.restarts ? fmt::format(" restarts {}", stage.restarts) : "");
  }
  out += fmt::format(
      "\n  memory    peak total PSS {} (budget {} MiB); peak held {} (shared memory and "
      "private, without mapped files: programs, libraries, input captures)\n",
      human_bytes(peaks.total_pss), config.memory.budget_mb, human_bytes(peaks.held));
  out += fmt::format("  pressure  peak {}, {} level changes, time at",
                     to_string(pressure_level_from(control.pressure_peak_level.load())),
                     control.pressure_changes.load());
  for (std::size_t level = 0; level < kPressureLevels; ++level) {
    out += fmt::format("{} {} {:.1f} s", level ? "," : "",
                       to_string(static_cast<PressureLevel>(level)),
                       double(control.pressure_level_ms[level].load()) / 1000);
  }
  out += fmt::format("; flows evicted under pressure {}\n",
                     flowd_total(control, fc::kPressureEvictions));
  const bool accounted = received == processed + sampled + ring_dropped;
  out += fmt::format("  accounting received = processed + sampled out + dropped: {}\n",
                     accounted ? "yes"
                               : fmt::format("NO (difference {})",
                                             std::int64_t(received) -
                                                 std::int64_t(processed + sampled + ring_dropped)));
  std::fputs(out.c_str(), stderr);
}

}  // namespace flowseal::supervisor
