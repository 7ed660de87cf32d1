#include "plan_check.h"

#include <sys/statvfs.h>
#include <unistd.h>

#include <limits>

#include <fmt/format.h>

#include "capnp_frame.h"
#include "ring.h"

namespace flowseal {
namespace {

constexpr std::uint64_t kMiB = 1024 * 1024;
// Each flowd shard's table holds a fixed undo journal and IP fragment slots (about 420 KiB)
// before its first flow: below 1 MiB it has room for none or a handful, and flowd exits 70 at
// every start (flow table capacity 0).
constexpr std::uint64_t kMinFlowTableBytes = 1 * kMiB;
// signerd keeps this much of a writer-ring frame for the batch header, signature and framing.
constexpr std::uint64_t kSealedOverhead = 4096;

std::string in_mib(std::uint64_t bytes) {
  return fmt::format("{} MiB", (bytes + kMiB - 1) / kMiB);  // rounded up: a limit never reads low
}

Config with_budget(const Config& config, std::int64_t budget_mb) {
  Config c = config;
  c.memory.budget_mb = budget_mb;
  return c;
}

bool fits(const Config& config) {
  const MemoryPlan plan = plan_memory(config);
  return plan.flow_table_bytes >= kMinFlowTableBytes &&
         fixed_bytes(plan) <= static_cast<std::uint64_t>(config.memory.budget_mb) * kMiB;
}

void check_budget_floor(const Config& config, const MemoryPlan& plan,
                        std::vector<std::string>& problems) {
  if (fits(config)) return;
  problems.push_back(fmt::format(
      "memory.budget_mb={} is below the {} MiB that flowd.shards={} needs (its rings take {} "
      "and each shard's flow table would get {} KiB, of at least {} KiB for its journal and "
      "first flows)",
      config.memory.budget_mb, min_budget_mb(config.flowd.shards), config.flowd.shards,
      in_mib(plan.total() - plan.flow_table_bytes * plan.shards), plan.flow_table_bytes / 1024,
      kMinFlowTableBytes / 1024));
}

// A sealed record is at least its struct and its two Direction structs (texts and lists come on
// top); signerd closes a batch early once the worst case (flow_event_batch_words) would
// overflow the frame, so batch_records is a cap below that. Above what even the smallest
// records allow it can never be reached: a setting that does not do what it says.
std::uint64_t smallest_record_bytes(std::int64_t leaf_hint_bytes) {
  using Event = schema::FlowEvent::_capnpPrivate;
  using Side = schema::Direction::_capnpPrivate;
  return (Event::dataWordSize + Event::pointerCount + 2 * Side::dataWordSize) *
             sizeof(capnp::word) +
         static_cast<std::uint64_t>(leaf_hint_bytes);
}

std::int64_t records_per_frame(const MemoryPlan& plan, std::uint64_t per_record) {
  const std::uint64_t frame = ring_max_frame(plan.sealed_ring);
  return frame > kSealedOverhead ? static_cast<std::int64_t>((frame - kSealedOverhead) / per_record)
                                 : 0;
}

void check_batch(const Config& config, const MemoryPlan& plan, std::vector<std::string>& problems) {
  const std::uint64_t smallest = smallest_record_bytes(config.seal.leaf_hint_bytes);
  const std::int64_t most = records_per_frame(plan, smallest);
  if (config.seal.batch_records <= most) return;
  // The writer ring stops growing at some budget; name one that holds the batch, if any does.
  std::string raise = "no memory.budget_mb holds that many";
  for (std::int64_t mb = config.memory.budget_mb; mb <= (std::int64_t{1} << 20); mb *= 2) {
    if (records_per_frame(plan_memory(with_budget(config, mb)), smallest) >=
        config.seal.batch_records) {
      raise = fmt::format("or raise memory.budget_mb to {}", mb);
      break;
    }
  }
  problems.push_back(fmt::format(
      "seal.batch_records={} does not fit one frame of the signerd -> writerd ring: at "
      "memory.budget_mb={} a frame carries {} KiB, at most {} records even of the smallest size "
      "({} bytes; {} of the largest); lower seal.batch_records to {} ({})",
      config.seal.batch_records, config.memory.budget_mb, ring_max_frame(plan.sealed_ring) / 1024,
      most, smallest, max_batch_records(plan, config.seal.leaf_hint_bytes), most, raise));
}

void check_machine(const Config& config, const MemoryPlan& plan, const MachineLimits& machine,
                   std::vector<std::string>& problems) {
  const std::uint64_t shared = plan.total();  // the objects in /dev/shm; dedupd's share is not
  const std::uint64_t budget = static_cast<std::uint64_t>(config.memory.budget_mb) * kMiB;
  if (shared > machine.shm_free_bytes || budget > machine.ram_bytes) {
    problems.push_back(fmt::format(
        "memory.budget_mb={} is more than this machine can back: the plan creates {} of shared "
        "memory, /dev/shm has {} free, and the machine has {} of physical memory",
        config.memory.budget_mb, in_mib(shared), in_mib(machine.shm_free_bytes),
        in_mib(machine.ram_bytes)));
  }
}

}  // namespace

MachineLimits machine_limits(const std::filesystem::path& shm_dir) {
  MachineLimits limits;
  limits.shm_free_bytes = limits.ram_bytes = std::numeric_limits<std::uint64_t>::max();
  struct statvfs fs {};
  if (::statvfs(shm_dir.c_str(), &fs) == 0) {
    limits.shm_free_bytes = static_cast<std::uint64_t>(fs.f_bavail) * fs.f_frsize;
  }
  const long pages = ::sysconf(_SC_PHYS_PAGES);
  const long page = ::sysconf(_SC_PAGESIZE);
  if (pages > 0 && page > 0) {
    limits.ram_bytes = static_cast<std::uint64_t>(pages) * static_cast<std::uint64_t>(page);
  }
  return limits;
}

std::uint64_t fixed_bytes(const MemoryPlan& plan) { return plan.total() + plan.dedup_bytes; }

std::int64_t min_budget_mb(std::int64_t shards) {
  Config config;
  config.flowd.shards = shards;
  for (std::int64_t mb = 1; mb <= (std::int64_t{1} << 20); ++mb) {
    if (fits(with_budget(config, mb))) return mb;
  }
  return std::int64_t{1} << 20;
}

std::int64_t max_batch_records(const MemoryPlan& plan, std::int64_t leaf_hint_bytes) {
  return records_per_frame(plan, flow_event_batch_words(1, 0) * sizeof(capnp::word) +
                                     static_cast<std::uint64_t>(leaf_hint_bytes));
}

std::vector<std::string> plan_problems(const Config& config, const MemoryPlan& plan,
                                       const MachineLimits& machine) {
  std::vector<std::string> problems;
  check_budget_floor(config, plan, problems);
  check_batch(config, plan, problems);
  check_machine(config, plan, machine, problems);
  return problems;
}

void require_runnable(const Config& config) {
  const auto problems = plan_problems(config, plan_memory(config), machine_limits());
  if (problems.empty()) return;
  std::string text = problems.front();
  for (std::size_t i = 1; i < problems.size(); ++i) text += "; and " + problems[i];
  throw ConfigError(text);
}

}  // namespace flowseal
