// Whether a configuration can run at all, before anything is created or started.
//
// The key table (config.h) checks each value alone and validate() the rules between keys; what
// neither can see is the memory plan (layout.h) that the values make, and the machine it has to
// fit. Configurations that pass both and still cannot run (a flow table with no room for one
// flow, a batch size no frame of the writer ring can carry, a budget the machine cannot back)
// used to start, restart stages for half a minute and exit 70. plan_problems() names every such
// reason up front; require_runnable() turns them into one ConfigError (exit 78).
//
// plan_problems() is pure (the machine comes in as MachineLimits); machine_limits() reads this
// machine's. Nothing here creates or maps anything.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "config.h"
#include "layout.h"

namespace flowseal {

// What the machine can back: free space of the shared-memory file system (where every ring
// and table is created) and physical memory.
struct MachineLimits {
  std::uint64_t shm_free_bytes = 0;
  std::uint64_t ram_bytes = 0;
};
// statvfs(shm_dir) and sysconf(_SC_PHYS_PAGES); a figure that cannot be read is UINT64_MAX
// (not checked rather than refused).
MachineLimits machine_limits(const std::filesystem::path& shm_dir = "/dev/shm");

// Bytes of the budget that `plan` fixes before anything runs: its shared memory (plan.total())
// and dedupd's share (process memory, but sized from the budget all the same).
std::uint64_t fixed_bytes(const MemoryPlan& plan);

// The smallest memory.budget_mb whose plan gives each of `shards` flow tables their minimum
// and keeps the shared memory inside the budget.
std::int64_t min_budget_mb(std::int64_t shards);

// Records a sealed batch can hold in one frame of the signerd -> writerd ring of `plan`, at
// signerd's worst-case record size (the estimate it closes batches by) with `leaf_hint_bytes`.
// seal.batch_records above it is a cap signerd may not reach; it is refused only above what
// records of the smallest size would allow (then no batch could ever hold that many).
std::int64_t max_batch_records(const MemoryPlan& plan, std::int64_t leaf_hint_bytes);

// Every reason `config` cannot run with `plan` on a machine with `machine`, each naming the
// key(s), the value and the limit; empty when it can.
std::vector<std::string> plan_problems(const Config& config, const MemoryPlan& plan,
                                       const MachineLimits& machine);

// Throws ConfigError listing plan_problems() for this machine, if any.
void require_runnable(const Config& config);

}  // namespace flowseal
