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
#include <span>
#include <string>
#include <string_view>

namespace flowseal {

enum class StageKind : std::uint32_t { kCapture, kFlowd, kDedupd, kSignerd, kWriterd };
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
  kReceived,         // packets libpcap handed us
  kKernelDropped,    // pcap_stats ps_drop + ps_ifdrop (live)
  kRingFullDropped,  // live: a flowd ring was full
  kSampledOut,       // left out by the pressure level's sampling rate
  kTruncated,        // caplen < wire length
  kPublished,        // packets placed in rings (offline restart resumes after these)
  kBytesRead,        // file bytes consumed (progress)
  kBytesTotal,       // file bytes in all inputs
  kBadRecords,       // capture-file records skipped (each reported with file and offset)
  kWriterStalledDropped,  // of kRingFullDropped: those while writerd could not write (disk full)
  kCount
};
}
namespace flowd_counter {
enum : std::size_t {
  kPackets,        // packets applied to the flow table
  kNotIp,          // packets that carry no IP flow (ARP, LLDP, ...)
  kMalformed,      // packets rejected by the decoder (by kind in the log)
  kFlowsActive,
  kFlowsStarted,
  kFlowsEnded,
  kEvictions,           // all evictions (table full, long bucket chain, pressure)
  kEventsOut,
  kBadFrames,
  kCapacity,            // flow table capacity (the supervisor's fill = kFlowsActive / this)
  kPressureEvictions,   // flows ended early to hold the table under pressure
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
  kWriteErrors,  // writerd: failed appends (e.g. disk full), retried
  kEntries,      // dedupd: entries held now
  kEntryCap,     // dedupd: entry cap in force (smaller under pressure)
  kStalledSinceNs,  // writerd: CLOCK_MONOTONIC when its writes began to fail (disk full), 0
                    // while they work: live capture then counts its drops as writer-stalled
  kCount
};
}

struct alignas(64) StageSlot {
  std::atomic<std::int32_t> pid;
  std::atomic<std::uint32_t> state;       // StageState
  std::atomic<std::uint32_t> kind;        // StageKind
  std::atomic<std::uint32_t> shard;
  std::atomic<std::int64_t> heartbeat_ns; // CLOCK_MONOTONIC of the last heartbeat
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
  static constexpr std::uint32_t kLayoutVersion = 5;  // 4: writer-stalled counters; 5: ready_ns, memory_restarts

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

  // slots: capture, flowd[0..shards), dedupd, signerd, writerd
  StageSlot slots[3 + kMaxShards + 1];

  std::size_t slot_count() const { return 4 + shards; }
};
static_assert(std::is_standard_layout_v<ControlBlock>);
// benchmarks/run-pipeline and the python tests read the block at these offsets.
static_assert(offsetof(ControlBlock, ready) == 28 && offsetof(ControlBlock, slots) == 128);
static_assert(offsetof(StageSlot, counters) == 40 && offsetof(StageSlot, ready_ns) == 232);

// Slot index of a stage (shard only for flowd).
std::size_t slot_index(StageKind kind, std::size_t shard, std::size_t shards);
// "capture", "flowd[1]", ... for slot i.
std::string slot_name(const ControlBlock& control, std::size_t index);

// Formats a fresh control block in zeroed memory; attach checks magic and version and throws
// std::runtime_error naming the mismatch.
ControlBlock& control_block_format(std::span<std::byte> memory, std::size_t shards);
ControlBlock& control_block_attach(std::span<std::byte> memory);

std::int64_t monotonic_ns();
std::int64_t realtime_ns();

// Names of the shared-memory objects of one instance.
std::string control_block_name(std::string_view instance);
std::string ring_name(std::string_view instance, std::string_view edge);

}  // namespace flowseal
