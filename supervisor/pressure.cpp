#include "pressure.h"

#include <algorithm>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

namespace flowseal::supervisor {
namespace {

double share(std::uint64_t part, std::uint64_t whole) {
  return whole == 0 ? 0.0 : double(part) / double(whole);
}

}  // namespace

std::uint64_t private_limit(const Config& config, const MemoryPlan& plan, StageKind kind) {
  const MemoryConfig& m = config.memory;
  const double explicit_mb = kind == StageKind::kCapture   ? m.capture_limit_mb
                             : kind == StageKind::kFlowd   ? m.flowd_limit_mb
                             : kind == StageKind::kDedupd  ? m.dedupd_limit_mb
                             : kind == StageKind::kSignerd ? m.signerd_limit_mb
                             : kind == StageKind::kWriterd ? m.writerd_limit_mb
                                                           : 0;  // shipd: the default
  if (explicit_mb > 0) return static_cast<std::uint64_t>(explicit_mb * double(1 << 20));
#if defined(__SANITIZE_ADDRESS__)
  static_cast<void>(plan);
  return 0;
#else
  // Every stage: a quarter of the budget, at least 64 MiB (a stage holds 1.3-6 MiB at work,
  // docs/OPERATIONS.md); dedupd on top its state's share, which it fills under load.
  const std::uint64_t budget = static_cast<std::uint64_t>(m.budget_mb) << 20;
  const std::uint64_t base = std::max<std::uint64_t>(budget / 4, std::uint64_t{64} << 20);
  return kind == StageKind::kDedupd ? base + 2 * plan.dedup_bytes : base;
#endif
}

PressureThresholds PressureThresholds::from(const MemoryConfig& memory) {
  PressureThresholds t;
  t.medium = memory.medium_pct / 100;
  t.high = memory.high_pct / 100;
  t.critical = memory.critical_pct / 100;
  t.hysteresis = memory.hysteresis_pct / 100;
  t.down_samples = static_cast<std::uint32_t>(std::max<std::int64_t>(memory.down_samples, 1));
  return t;
}

PressureLevel PressureGauge::level_for(double usage, double margin) const {
  if (usage >= thresholds_.critical - margin) return PressureLevel::kCritical;
  if (usage >= thresholds_.high - margin) return PressureLevel::kHigh;
  if (usage >= thresholds_.medium - margin) return PressureLevel::kMedium;
  return PressureLevel::kLow;
}

PressureLevel PressureGauge::update(double usage) {
  const PressureLevel reached = level_for(usage, 0);
  if (reached > level_) {
    level_ = reached;
    samples_below_ = 0;
    return level_;
  }
  // The level this sample still supports once the hysteresis is allowed for.
  const PressureLevel held = std::min(level_for(usage, thresholds_.hysteresis), level_);
  if (held == level_) {
    samples_below_ = 0;
  } else if (++samples_below_ >= thresholds_.down_samples) {
    level_ = held;
    samples_below_ = 0;
  }
  return level_;
}

Usage usage_of(const UsageSample& sample) {
  Usage u;
  double table_in_use = 0;
  const double per_shard =
      sample.flow_table_fill.empty()
          ? 0.0
          : double(sample.flow_table_bytes) / double(sample.flow_table_fill.size());
  for (double fill : sample.flow_table_fill) {
    u.flow_table_fill = std::max(u.flow_table_fill, fill);
    table_in_use += fill * per_shard;
  }
  // Not the bytes waiting in the rings: the rings are reserved whole at start, and a full
  // one is backpressure (an offline source waits), not memory growing. Counting them made a
  // slow writerd sample an offline replay.
  u.budget_share = (table_in_use + double(sample.private_bytes)) /
                   std::max<double>(double(sample.budget_bytes), 1.0);
  if (sample.system.total > 0) {
    u.system_share =
        1.0 - share(std::min(sample.system.available, sample.system.total), sample.system.total);
  }
  u.value = std::max({u.flow_table_fill, u.budget_share, u.system_share});
  return u;
}

std::string describe(const Usage& u) {
  return fmt::format("usage {:.0f}% (flow table {:.0f}%, budget {:.0f}%, system {:.0f}%)",
                     100 * u.value, 100 * u.flow_table_fill, 100 * u.budget_share,
                     100 * u.system_share);
}

PressureMonitor::PressureMonitor(const Config& config, const MemoryPlan& plan,
                                 ControlBlock& control)
    : control_(control),
      gauge_(PressureThresholds::from(config.memory)),
      count_system_(config.memory.system_pressure),
      budget_bytes_(static_cast<std::uint64_t>(config.memory.budget_mb) << 20),
      flow_table_bytes_(plan.flow_table_bytes),
      shards_(std::min<std::size_t>(static_cast<std::size_t>(config.flowd.shards), kMaxShards)) {}

void PressureMonitor::book_time(Clock::time_point now) {
  if (last_sample_) {
    const auto level = static_cast<std::size_t>(gauge_.level());
    level_ns_[level] +=
        std::chrono::duration_cast<std::chrono::nanoseconds>(now - *last_sample_).count();
    control_.pressure_level_ms[level].store(
        static_cast<std::uint64_t>(level_ns_[level] / 1'000'000));
  }
  last_sample_ = now;
}

void PressureMonitor::sample(std::uint64_t private_bytes, Clock::time_point now) {
  namespace fc = flowd_counter;
  UsageSample sample;
  sample.budget_bytes = budget_bytes_;
  sample.flow_table_bytes = flow_table_bytes_ * shards_;
  for (std::size_t s = 0; s < shards_; ++s) {
    const StageSlot& slot = control_.slots[slot_index(StageKind::kFlowd, s, shards_)];
    const std::uint64_t capacity = slot.counters[fc::kCapacity].load();
    sample.flow_table_fill.push_back(share(slot.counters[fc::kFlowsActive].load(), capacity));
  }
  // Under AddressSanitizer (the stages are built the same way as the supervisor) a stage's
  // private memory is mostly the sanitizer's shadow and quarantine, hundreds of MiB that say
  // nothing about its state: counting it would hold every sanitizer run at CRITICAL and
  // sample it. The flow tables' fill and the system share still count.
#if defined(__SANITIZE_ADDRESS__)
  static_cast<void>(private_bytes);
#else
  sample.private_bytes = private_bytes;
#endif
  if (count_system_) sample.system = system_memory();

  book_time(now);
  const Usage usage = usage_of(sample);
  const PressureLevel before = gauge_.level();
  const PressureLevel after = gauge_.update(usage.value);
  control_.pressure_usage_permille.store(
      static_cast<std::uint32_t>(std::min(usage.value, 4.0) * 1000));
  if (after == before) return;
  control_.pressure_level.store(static_cast<std::uint32_t>(after));
  control_.pressure_changes.fetch_add(1);
  control_.pressure_peak_level.store(
      std::max(control_.pressure_peak_level.load(), static_cast<std::uint32_t>(after)));
  // One line per change: operators grep for "memory pressure".
  if (after > before) {
    spdlog::warn("memory pressure {} -> {}: {}", to_string(before), to_string(after),
                 describe(usage));
  } else {
    spdlog::info("memory pressure {} -> {}: {}", to_string(before), to_string(after),
                 describe(usage));
  }
}

void PressureMonitor::finish(Clock::time_point now) { book_time(now); }

}  // namespace flowseal::supervisor
