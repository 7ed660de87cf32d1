// Instance: the shared memory of one running flowseal, created by the supervisor and sized
// from memory.budget_mb — the control block, every ring, every flowd shard's flow table.
//
// Creation is exclusive: if the instance's control block already exists and its supervisor
// is alive, creation is refused with a message naming the PID; if that supervisor is dead,
// the leftovers of the crashed instance are removed first. The Instance owns every name and
// removes them when destroyed.
#pragma once

#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "config.h"
#include "control_block.h"
#include "layout.h"
#include "shm.h"

namespace flowseal::supervisor {

// Another supervisor of the same name is alive: a temporary condition (exit 75).
struct InstanceRunning : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class Instance {
 public:
  // `owner`: the user the stages run as (supervisor.user), given every segment's name.
  explicit Instance(const Config& config, std::optional<FileOwner> owner = std::nullopt);

  ControlBlock& control() { return *control_; }
  const MemoryPlan& plan() const { return plan_; }
  // Ring headers, for the supervisor's stats (name of the edge, header).
  struct RingView {
    std::string edge;
    std::span<std::byte> memory;
  };
  const std::vector<RingView>& rings() const { return rings_; }

  // Removes every shared-memory name of `instance` (after a crash); returns how many.
  static int remove_leftovers(const std::string& instance, std::size_t max_shards);

 private:
  void create_ring(const std::string& edge, std::size_t capacity);

  std::string instance_;
  std::optional<FileOwner> owner_;
  MemoryPlan plan_;
  std::vector<ShmSegment> segments_;
  ControlBlock* control_ = nullptr;
  std::vector<RingView> rings_;
};

}  // namespace flowseal::supervisor
