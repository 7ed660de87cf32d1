// Memory pressure: what "usage" is, which level it gives, and the supervisor's sampling of
// it. The stages' reaction to a level is in common/pressure_level.h.
//
// Usage is the largest of three fractions (docs/ARCHITECTURE.md, "Memory pressure"):
//   - flow table fill: active flows / capacity of the fullest flowd shard. The table is
//     allocated at full size up front, so its PSS only says how much of it was ever touched;
//     its fill says how close it is to cutting flows short, which is what pressure is for.
//   - budget share: (the flow tables' bytes in proportion to their fill + the stages'
//     private memory, i.e. the sum of their anonymous PSS, which holds dedupd's state) /
//     memory.budget_mb. The rings are left out: reserved whole at start, a full ring is
//     backpressure, not growth.
//   - system share: 1 - MemAvailable / MemTotal (only with memory.system_pressure).
//
// PressureGauge turns usage samples into a level with hysteresis: a level is entered on the
// first sample at or above its threshold (possibly skipping levels), and left only after
// memory.down_samples samples in a row below its threshold minus memory.hysteresis_pct,
// then straight to the level those samples support. Not thread-safe; the supervisor owns
// one gauge.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "config.h"
#include "control_block.h"
#include "layout.h"
#include "pressure_level.h"
#include "proc_stats.h"

namespace flowseal::supervisor {

struct PressureThresholds {
  double medium = 0.70;  // fractions of usage
  double high = 0.85;
  double critical = 0.95;
  double hysteresis = 0.05;
  std::uint32_t down_samples = 4;

  static PressureThresholds from(const MemoryConfig& memory);
};

class PressureGauge {
 public:
  explicit PressureGauge(PressureThresholds thresholds) : thresholds_(thresholds) {}

  // Takes one usage sample (a fraction; above 1 when over budget) and returns the level.
  PressureLevel update(double usage);
  PressureLevel level() const { return level_; }

 private:
  // The highest level whose threshold, lowered by `margin`, `usage` reaches.
  PressureLevel level_for(double usage, double margin) const;

  PressureThresholds thresholds_;
  PressureLevel level_ = PressureLevel::kLow;
  std::uint32_t samples_below_ = 0;
};

// What one sample measured, and the usage it gives.
struct UsageSample {
  std::uint64_t budget_bytes = 0;
  std::uint64_t flow_table_bytes = 0;   // all shards' segments
  std::vector<double> flow_table_fill;  // per shard: active / capacity (0 before start)
  std::uint64_t private_bytes = 0;      // sum of the stages' anonymous PSS
  SystemMemory system;                  // zeros: not counted
};

struct Usage {
  double value = 0;  // the largest of the three
  double flow_table_fill = 0;
  double budget_share = 0;
  double system_share = 0;
};

Usage usage_of(const UsageSample& sample);
// "usage 87% (flow table 87%, budget 64%, system 19%)": the figure the log lines carry.
std::string describe(const Usage& usage);

// The hard limit of one stage's private memory (anonymous PSS, what the pressure usage
// counts for it) in bytes: memory.<stage>_limit_mb, or, when that is 0, a default from the
// budget well above what the stage holds in normal work (a limit is for a stage that leaks
// or runs away, not for the pressure levels' job). A sanitizer build has no default limits:
// there the private memory is mostly the sanitizer's. 0 means no limit.
std::uint64_t private_limit(const Config& config, const MemoryPlan& plan, StageKind kind);

// The supervisor's pressure loop body: one call per memory sample reads the flow tables'
// fill from the control block, measures system memory, updates the gauge, publishes the
// level and its counters to the control block, and logs a change in one line.
class PressureMonitor {
 public:
  using Clock = std::chrono::steady_clock;
  PressureMonitor(const Config& config, const MemoryPlan& plan, ControlBlock& control);

  // `private_bytes`: the sum of the stages' anonymous PSS measured for this sample.
  void sample(std::uint64_t private_bytes, Clock::time_point now);
  // Books the time since the last sample to the current level (at the end of the run).
  void finish(Clock::time_point now);

 private:
  void book_time(Clock::time_point now);

  ControlBlock& control_;
  PressureGauge gauge_;
  bool count_system_;
  std::uint64_t budget_bytes_;
  std::uint64_t flow_table_bytes_;  // per shard
  // From the config, never from the block: with supervisor.user the block belongs to that
  // user, who could write any shard count into it while root's supervisor loops over it.
  std::size_t shards_;
  std::optional<Clock::time_point> last_sample_;
  std::array<std::int64_t, kPressureLevels> level_ns_{};
};

}  // namespace flowseal::supervisor
