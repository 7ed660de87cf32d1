// The control block: one small shared-memory struct through which the supervisor and the
// stages see each other — who runs, whether it is alive, what it counted, and whether to stop.
//
// The supervisor creates and formats it; each stage writes only its own slot (pid, state,
// heartbeat, counters); the supervisor writes `stop_requested`, `pressure_level` and the
// slots' restart counts. Every field is a lock-free atomic, so a reader from another process
// (`flowseal status`) never blocks a writer. Slots are cache-line aligned so two stages'
// heartbeats do not share a line.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace flowseal {

// In data order; kShipd, the optional sixth stage, has a slot only when shipping is on.
enum class StageKind : std::uint32_t { kCapture, kFlowd, kDedupd, kSignerd, kWriterd, kShipd };
std::string_view to_string(StageKind);

enum class StageState : std::uint32_t {
  kNotStarted,
  kRunning,
  kDraining,  // input closed and being emptied
  kDone,      // finished its drain and exited 0
  kFailed,    // exited non-zero or was killed; the supervisor may restart it
};
std::string_view to_string(StageState);

inline constexpr std::size_t kMaxShards = 8;
inline constexpr std::size_t kStageCounters = 24;

// Stage-specific meaning of StageSlot::counters.
namespace capture_counter {
enum : std::size_t {
  kReceived,              // packets libpcap handed us
  kKernelDropped,         // pcap_stats ps_drop + ps_ifdrop (live)
  kRingFullDropped,       // live: a flowd ring was full
  kSampledOut,            // left out by the pressure level's sampling rate
  kTruncated,             // caplen < wire length
  kPublished,             // packets placed in rings (offline restart resumes after these)
  kBytesRead,             // file bytes consumed (progress)
  kBytesTotal,            // file bytes in all inputs
  kBadRecords,            // capture-file records skipped (each reported with file and offset)
  kWriterStalledDropped,  // of kRingFullDropped: those while writerd could not write (disk full)
  kBadTime,  // capture-file records dropped: time outside 1970..2116 (not in kBadRecords)
  kCount
};
}
namespace flowd_counter {
enum : std::size_t {
  kPackets,    // packets applied to the flow table
  kNotIp,      // packets that carry no IP flow (ARP, LLDP, ...)
  kMalformed,  // packets rejected by the decoder (by kind in the log)
  kFlowsActive,
  kFlowsStarted,
  kFlowsEnded,
  kEvictions,  // all evictions (table full, long bucket chain, pressure)
  kEventsOut,
  kBadFrames,
  kCapacity,           // flow table capacity (the supervisor's fill = kFlowsActive / this)
  kPressureEvictions,  // flows ended early to hold the table under pressure
  kCount
};
}
namespace record_counter {  // dedupd, signerd, writerd
enum : std::size_t {
  kRecordsIn,
  kRecordsOut,
  kBatchesOut,   // signerd: sealed batches; writerd: stored batches
  kSummaries,    // dedupd: summary records emitted
  kSuppressed,   // dedupd: records folded or held back
  kDuplicates,   // writerd: batches already stored (replays after a restart)
  kBytesStored,  // writerd
  kSegments,     // writerd
  kBadFrames,
  kWriteErrors,          // writerd: failed appends (e.g. disk full), retried
  kEntries,              // dedupd: entries held now
  kEntryCap,             // dedupd: entry cap in force (smaller under pressure)
  kStalledSinceNs,       // writerd: CLOCK_MONOTONIC when its writes began to fail (disk full), 0
                         // while they work: live capture then counts its drops as writer-stalled
  kShipDroppedRecords,   // writerd: records of segments retention deleted before shipd had
                         // them acked (the disk limit forced it): ship.dropped_records
  kShipDroppedSegments,  // writerd: those segments
  kCount
};
}
// shipd. Totals are the run's: a restarted shipd adds to what its predecessors counted
// (shipd/main.cpp); the "now" ones and the seqs are the running shipd's.
namespace ship_counter {
enum : std::size_t {
  kBatchesPublished,  // publishes, re-sends included
  kBatchesAcked,      // acked in order (shipped), this run, each batch once
  kRecordsAcked,
  kInflight,    // published, not acked yet (now)
  kRetried,     // failed or timed-out publishes: re-sent from the store
  kLagBatches,  // stored but not acked (now)
  kDuplicates,  // acks saying the server had it already
  kConnectFailures,
  kTlsRefused,
  kUnreachableMs,
  kStoreErrors,
  kShippedSeq,        // last acked batch seq
  kRecordsPublished,  // records of kBatchesPublished
  // The exports (export.ipfix.*, export.kafka.*), each following the store on its own:
  kIpfixBatchesExported,   // stored batches wholly exported, this run
  kIpfixRecordsSent,       // IPFIX data records handed to the transport
  kIpfixSendFailures,      // failed sends / connects (then retried)
  kIpfixLagBatches,        // stored, not exported (now)
  kIpfixExportedSeq,       // last exported batch seq
  kKafkaBatchesDelivered,  // stored batches wholly delivered, in order, this run
  kKafkaRecordsDelivered,  // delivery reports without error
  kKafkaDeliveryFailures,  // delivery reports with an error (then a rewind)
  kKafkaLagBatches,        // stored, not yet wholly delivered (now)
  kKafkaExportedSeq,       // last wholly delivered batch seq
  kCount
};
}

static_assert(capture_counter::kCount <= kStageCounters &&
                  flowd_counter::kCount <= kStageCounters &&
                  record_counter::kCount <= kStageCounters &&
                  ship_counter::kCount <= kStageCounters,
              "every stage's counters fit in a slot");
// writerd's slot after the record counters (signerd keeps its chain position there): export
// latency on a live capture (common/export_latency.h) as a cumulative histogram over
// ExportLatency::kCoarseBoundsS, for the supervisor's /metrics.
namespace writerd_counter {
enum : std::size_t {
  kLatencyCount = record_counter::kCount,
  kLatencySumUs,
  kLatencyLe0,  // .. kLatencyLe0 + 6: ends stored within each of the 7 bounds
  kEnd = kLatencyLe0 + 7
};
}
static_assert(writerd_counter::kEnd <= kStageCounters, "writerd's histogram fits in its slot");

struct alignas(64) StageSlot {
  std::atomic<std::int32_t> pid;
  std::atomic<std::uint32_t> state;  // StageState
  std::atomic<std::uint32_t> kind;   // StageKind
  std::atomic<std::uint32_t> shard;
  std::atomic<std::int64_t> heartbeat_ns;  // CLOCK_MONOTONIC of the last heartbeat
  std::atomic<std::int64_t> started_ns;
  std::atomic<std::uint32_t> restarts;
  std::atomic<std::uint32_t> exit_status;
  std::atomic<std::uint64_t> counters[kStageCounters];
  // CLOCK_MONOTONIC of the stage's first heartbeat from its own loop (0 until then): it has
  // opened its rings and inputs. The supervisor reports readiness once every slot has one.
  std::atomic<std::int64_t> ready_ns;
  // Restarts the supervisor made because the stage's private memory passed its hard limit
  // (also counted in `restarts`).
  std::atomic<std::uint32_t> memory_restarts;
};
static_assert(sizeof(StageSlot) == 256, "harnesses read slots as 256 bytes");

struct alignas(64) ControlBlock {
  static constexpr std::uint64_t kMagic = 0x314C5443'53574C46ULL;  // "FLWSCTL1"
  // 4: writer-stalled counters; 5: ready_ns, memory_restarts; 6: shipd's slot; 7: reloads
  static constexpr std::uint32_t kLayoutVersion = 7;

  std::uint64_t magic;
  std::uint32_t layout_version;
  std::uint32_t shards;
  std::atomic<std::int32_t> supervisor_pid;
  std::atomic<std::uint32_t> stop_requested;  // 1: capture stops reading; the rest drains
  std::atomic<std::uint32_t> pressure_level;  // 0 LOW .. 3 CRITICAL
  std::atomic<std::uint32_t> ready;           // every stage has a ready_ns
  std::atomic<std::int64_t> created_ns;       // CLOCK_REALTIME at creation
  // `flowseal restart STAGE` sets bit i to ask the supervisor to restart slot i; the
  // supervisor clears the bits it has acted on.
  std::atomic<std::uint64_t> restart_requests;

  // Memory pressure, written by the supervisor at every sample (supervisor/pressure.h):
  // the last usage figure in per mille, how many times the level changed, and how long the
  // run spent at each level.
  std::atomic<std::uint32_t> pressure_usage_permille;
  std::atomic<std::uint32_t> pressure_peak_level;
  std::atomic<std::uint64_t> pressure_changes;
  std::atomic<std::uint64_t> pressure_level_ms[4];  // LOW .. CRITICAL
  // The supervisor's start time (field 22 of /proc/PID/stat, clock ticks since boot), so that
  // `flowseal stop` signals the process that made this block and not a later holder of its
  // PID. Written once before `magic`.
  std::uint64_t supervisor_start_ticks;
  // 1 when the run ships (ship.url): the slot after writerd's is shipd's.
  std::uint32_t ship_slot;
  // SIGHUP reloads the supervisor applied, and those it refused (the file did not load, did
  // not validate, or its memory plan could not run: the log names each reason). Written by
  // the supervisor only; `flowseal status` shows them.
  std::atomic<std::uint32_t> reloads_applied;
  std::atomic<std::uint32_t> reloads_refused;

  // slots: capture, flowd[0..shards), dedupd, signerd, writerd, then shipd if ship_slot
  StageSlot slots[3 + kMaxShards + 2];

  // Bounded whatever the memory says: a reader in another process indexes slots with these,
  // and whoever owns the object can rewrite `shards` after attach checked it.
  std::size_t shard_count() const { return shards < kMaxShards ? shards : kMaxShards; }
  bool ships() const { return ship_slot != 0; }
  std::size_t slot_count() const { return 4 + shard_count() + (ships() ? 1 : 0); }
};
static_assert(std::is_standard_layout_v<ControlBlock>);
// benchmarks/run-pipeline and the python tests read the block at these offsets.
static_assert(offsetof(ControlBlock, ready) == 28 && offsetof(ControlBlock, slots) == 128);
static_assert(offsetof(ControlBlock, supervisor_start_ticks) == 96);
static_assert(offsetof(ControlBlock, reloads_refused) + 4 <= offsetof(ControlBlock, slots),
              "the reload counts live in what was padding before the slots");
static_assert(offsetof(StageSlot, counters) == 40 && offsetof(StageSlot, ready_ns) == 232);

// Slot index of a stage (shard only for flowd).
std::size_t slot_index(StageKind kind, std::size_t shard, std::size_t shards);
// "capture", "flowd[1]", ... for slot i.
std::string slot_name(const ControlBlock& control, std::size_t index);

// Formats a fresh control block in zeroed memory; attach checks the size, magic, version,
// shard count, the ship flag and every slot's kind and shard against the layout they give, and
// throws std::runtime_error naming the first field that does not fit. Whoever can write the
// object can still change a field later: readers bound what they index by (slot_count()).
// `ship`: the run has a shipd stage (its slot follows writerd's).
ControlBlock& control_block_format(std::span<std::byte> memory, std::size_t shards,
                                   bool ship = false, std::uint64_t supervisor_start_ticks = 0);
ControlBlock& control_block_attach(std::span<std::byte> memory);

// Numeric fields of /proc/PID/stat by their proc(5) number (14 utime, 15 stime, 22 start
// time), from one read; nullopt if the process is gone or a field is not a number.
std::optional<std::vector<std::uint64_t>> proc_stat_fields(int pid,
                                                           std::initializer_list<int> wanted);
// Field 22 of /proc/PID/stat (start time in clock ticks after boot); 0 if unreadable.
std::uint64_t process_start_ticks(int pid);

std::int64_t monotonic_ns();
std::int64_t realtime_ns();

// Names of the shared-memory objects of one instance.
std::string control_block_name(std::string_view instance);
std::string ring_name(std::string_view instance, std::string_view edge);

}  // namespace flowseal
