#include "layout.h"

#include <algorithm>
#include <bit>

#include <fmt/format.h>

#include "control_block.h"
#include "ring.h"

namespace flowseal {
namespace {

constexpr std::size_t kMiB = 1024 * 1024;
// What each stage process holds privately at rest (heap, stacks, libraries' data: measured
// 1.3 MiB, docs/OPERATIONS.md), kept out of the shared segments so that the whole process set
// stays inside the budget.
constexpr std::size_t kStagePrivateBytes = 3 * kMiB / 2;

// Largest power of two <= n, clamped to [lo, hi].
std::size_t pow2_within(std::size_t n, std::size_t lo, std::size_t hi) {
  return std::clamp(std::bit_floor(std::max<std::size_t>(n, 1)), lo, hi);
}

}  // namespace

std::size_t MemoryPlan::total() const {
  return sizeof(ControlBlock) + (ring_bytes(packet_ring) + flow_table_bytes) * shards +
         ring_bytes(event_ring) * (shards + 1) + ring_bytes(sealed_ring);
}

MemoryPlan plan_memory(const Config& config) {
  const std::size_t budget = static_cast<std::size_t>(config.memory.budget_mb) * kMiB;
  const std::size_t shards = static_cast<std::size_t>(config.flowd.shards);
  MemoryPlan plan;
  plan.shards = shards;
  // Rings take about a quarter of the budget: packets dominate, so they get most of it.
  plan.packet_ring = pow2_within(budget / 8 / shards, 1 * kMiB, 64 * kMiB);
  plan.event_ring = pow2_within(budget / 64, 1 * kMiB, 16 * kMiB);
  plan.sealed_ring = pow2_within(budget / 32, 2 * kMiB, 32 * kMiB);
  const std::size_t rings =
      plan.packet_ring * shards + plan.event_ring * (shards + 1) + plan.sealed_ring;
  const std::size_t reserved = rings + kStagePrivateBytes * (4 + shards);
  const std::size_t rest = budget > reserved + budget / 4 ? budget - reserved : budget / 4;
  // Flow state is what grows with traffic; dedup keeps far fewer entries.
  plan.flow_table_bytes = rest * 3 / 4 / shards;
  plan.dedup_bytes = rest / 8;
  return plan;
}

std::string packet_edge(std::size_t shard) { return fmt::format("capture-flowd{}", shard); }
std::string flow_edge(std::size_t shard) { return fmt::format("flowd{}-dedupd", shard); }
std::string flow_table_name(std::string_view instance, std::size_t shard) {
  return fmt::format("/flowseal.{}.flowtable{}", instance, shard);
}

}  // namespace flowseal
