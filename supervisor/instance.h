// Instance: the shared memory of one running flowseal, created by the supervisor and sized
// from memory.budget_mb — the control block, every ring, every flowd shard's flow table.
//
// Creation is exclusive: if the instance's control block already exists and its supervisor
// is alive, creation is refused with a message naming the PID; if that supervisor is dead,
// the leftovers of the crashed instance are removed first, once the stages it left (which
// follow it within seconds) are gone: up to kOrphanWait is waited for them. What its rings
// still held is read before (leftovers()). A leftover name that
// belongs to a user other than this process's (or supervisor.user's) is not ours to remove or
// believe: creation is refused with a message naming that user. The Instance owns every name and
// removes them when destroyed.
//
// Below the class: what `status`, `stop`, `restart` and `cleanup` use to decide whether the
// shared memory under an instance's name is really that instance's, and who uses it.
#pragma once

#include <chrono>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "config.h"
#include "control_block.h"
#include "layout.h"
#include "leftover_rings.h"
#include "shm.h"

namespace flowseal::supervisor {

// How long a new run waits for the stages a SIGKILLed supervisor left behind (they leave
// within common/stage_runtime.cpp's grace of 3 s after its death) before it refuses.
inline constexpr std::chrono::milliseconds kOrphanWait{10'000};

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

  // Every shared-memory name an instance may have (for up to kMaxShards shards).
  static std::vector<std::string> all_names(const std::string& instance);

  // What a dead instance of this name left in its rings, read before they were removed
  // (leftover_rings.h): one entry per ring object it had; empty if there was none.
  const std::vector<LeftoverRing>& leftovers() const { return leftovers_; }
  // The new sealed ring (signerd -> writerd), before any stage starts.
  std::span<std::byte> sealed_ring();

 private:
  // Refuses leftovers someone else owns, refuses a live instance, removes a dead one's.
  void clear_leftovers(std::optional<uid_t> stage_user);

  void create_ring(const std::string& edge, std::size_t capacity);

  std::string instance_;
  std::optional<FileOwner> owner_;
  MemoryPlan plan_;
  std::vector<ShmSegment> segments_;
  ControlBlock* control_ = nullptr;
  std::vector<RingView> rings_;
  std::vector<LeftoverRing> leftovers_;
};

// Processes that map any shared-memory object of `instance` (its supervisor and stages),
// from /proc/*/maps. `unreadable`: processes whose maps this user may not read.
struct InstanceUsers {
  std::vector<pid_t> pids;
  std::size_t unreadable = 0;
};
InstanceUsers processes_using(const std::string& instance);

// Empty if `pid` is the live supervisor of the control object described by `control`: its
// executable is `flowseal`, it maps that very object (same device and inode) and, when
// `start_ticks` is not 0, it started at that time. Otherwise why not, for a message.
std::string not_the_supervisor(pid_t pid, const std::string& control_name, const ShmInfo& control,
                               std::uint64_t start_ticks);

// Whether this process may believe an instance object owned as `info` says: ours, or, when
// we are root, one that a root supervisor gave to its supervisor.user (then `supervisor_pid`,
// read from the block, must pass not_the_supervisor and run as root). Empty if trusted;
// otherwise the reason, naming the owner.
std::string untrusted_control(const std::string& control_name, const ShmInfo& info,
                              pid_t supervisor_pid, std::uint64_t start_ticks);

// `flowseal cleanup --instance NAME`: removes the shared memory and run directories a dead
// instance left, after checking that no process uses them and who owns them.
struct CleanupResult {
  std::vector<std::string> removed;
  std::vector<std::string> refused;  // objects of another user (not root)
  std::vector<pid_t> live;           // processes still using the instance: nothing removed
};
CleanupResult cleanup_instance(const std::string& instance);

}  // namespace flowseal::supervisor
