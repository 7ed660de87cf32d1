// What every stage process does around its real work: parse `--instance/--config/--shard`,
// load the effective config the supervisor wrote, attach the control block, keep a heartbeat,
// turn SIGTERM/SIGINT into a stop request, die with the supervisor (parent-death signal),
// and turn a start-up exception into one clear line and a sysexits-style exit code.
//
// A stage's main.cpp is then a few lines: `return run_stage(kind, argc, argv, body);` where
// body(StageRuntime&) maps its rings and runs its loop.
#pragma once

#include <chrono>
#include <csignal>
#include <cstddef>
#include <functional>
#include <optional>
#include <string>
#include <utility>

#include "config.h"
#include "control_block.h"
#include "shm.h"

namespace flowseal {

// sysexits.h meanings, the exit codes of every flowseal binary.
namespace exit_code {
inline constexpr int kOk = 0;
inline constexpr int kUsage = 64;
inline constexpr int kDataError = 65;
inline constexpr int kNoInput = 66;
inline constexpr int kUnavailable = 69;  // nothing running to talk to
inline constexpr int kSoftware = 70;
inline constexpr int kCantCreate = 73;  // an output file or directory cannot be made
inline constexpr int kIoError = 74;
inline constexpr int kTempFail = 75;
inline constexpr int kNoPermission = 77;
inline constexpr int kConfig = 78;
}  // namespace exit_code

// How often a stage heartbeats when nothing else wakes it, from the timeout after which the
// supervisor calls it hung: a fifth of it (a stage descheduled on a loaded machine, or
// busy for a moment, still beats several times before the timeout), at most once a second
// (the idle cost: each beat is a wake-up), at least every 100 ms. The supervisor looks at
// heartbeat ages as often (supervisor/run_command.cpp). Default timeout 5 s: 1 s.
std::chrono::milliseconds heartbeat_every(std::int64_t heartbeat_timeout_ms);

// The signal the supervisor sends a stage to make it look at the control block now (capture:
// the stop flag), and that `flowseal restart` sends the supervisor (restart_requests). Its
// default action is to ignore it, so one that arrives before the handler is installed is
// harmless; the handler only wakes the process (StageRuntime::wake_fd()).
inline constexpr int kLookAtControl = SIGURG;

class StageRuntime {
 public:
  StageRuntime(StageKind kind, std::string instance, Config config, std::size_t shard);

  const Config& config() const { return config_; }
  const std::string& instance() const { return instance_; }
  std::size_t shard() const { return shard_; }
  std::size_t shards() const { return control_->shards; }
  ControlBlock& control() { return *control_; }
  StageSlot& slot() { return *slot_; }
  std::atomic<std::uint64_t>& counter(std::size_t index) { return slot_->counters[index]; }
  // Stage name for logs: "capture", "flowd[1]", ...
  const std::string& name() const { return name_; }

  // The first heartbeat after start-up also marks the stage ready (StageSlot::ready_ns):
  // stages heartbeat only from their loops, once their rings and inputs are open.
  void heartbeat() {
    const std::int64_t now = monotonic_ns();
    slot_->heartbeat_ns.store(now, std::memory_order_relaxed);
    if (!ready_) [[unlikely]] {
      ready_ = true;
      slot_->ready_ns.store(now, std::memory_order_release);
    }
  }
  void set_state(StageState state) {
    slot_->state.store(static_cast<std::uint32_t>(state), std::memory_order_release);
  }
  // A signal to this process, or the supervisor's stop flag. capture stops reading on it;
  // the stages after it keep draining their input, which capture then closes.
  bool stop_requested() const;
  // A signal to this process only (SIGTERM, or the supervisor died): leave now; whatever was
  // not committed is replayed by a successor.
  bool signalled() const;

  // How often this stage heartbeats when idle (heartbeat_every of its config).
  std::chrono::milliseconds idle_slice() const {
    return heartbeat_every(config_.supervisor.heartbeat_timeout_ms);
  }
  // An eventfd, readable once a signal came (stop, restart, kLookAtControl): a stage that
  // sleeps in poll() polls it too, so that a signal arriving just before the poll is not
  // slept through; reading it empties it. -1 if it could not be made (then only EINTR wakes).
  static int wake_fd();

  // Maps an existing ring segment of this instance (created by the supervisor).
  ShmSegment open_ring(std::string_view edge) const;

  // signerd under supervisor.user: the private key, opened by the supervisor and inherited
  // (--key-fd); -1 when the stage opens seal.key_file itself. Taken once.
  int take_key_fd() { return std::exchange(key_fd_, -1); }
  void set_key_fd(int fd) { key_fd_ = fd; }

 private:
  std::string instance_;
  Config config_;
  std::size_t shard_;
  std::string name_;
  ShmSegment control_segment_;
  ControlBlock* control_;
  StageSlot* slot_;
  bool ready_ = false;
  int key_fd_ = -1;
};

// Parses the stage command line, builds the runtime and calls body; returns the exit code.
int run_stage(StageKind kind, int argc, char** argv, const std::function<int(StageRuntime&)>& body);

// Logging for people (never per packet): one stderr logger named after the stage.
// The pattern of every flowseal log line: "2026-12-07T01:07:43.133 error writerd: ...".
inline constexpr const char* kLogPattern = "%Y-%m-%dT%H:%M:%S.%e %^%l%$ %n: %v";
void init_logging(const std::string& stage_name);

}  // namespace flowseal
