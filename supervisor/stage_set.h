// StageSet: the supervisor's rules for its stage processes, as one state machine per stage.
//
// Each stage is in exactly one phase; every transition happens in stage_set.cpp, driven by
// an event the run loop observed (a child exited with a status, a heartbeat was missed, the
// stage reported ready, the operator asked for a restart, its private memory went over its
// limit, a drain or abort was asked for) or by time (a backoff or a grace period ran out).
// The set owns no process and reads no shared memory: it acts through a StageHost (start a
// stage's process, signal it, publish its counters) and reads time from a SupervisorClock,
// so tests drive it with a fake clock and fake children.
//
//                 launch                ready
//   (none) ─────────────▶ Starting ───────────▶ Running
//                           │  ▲                  │  restart request / over memory limit
//                           │  │ relaunch         ▼
//                           │  └──────────── Leaving ── grace over: SIGKILL
//              exit ≠ 0     │   exit ≠ 0 (at once, no backoff)
//   Backoff ◀───────────────┤
//     │ backoff over: relaunch (Starting)
//     │ abort: Finished
//                           │ exit 0 / exit during an abort ─▶ Finished
//                           │ permanent exit code, give-up after max_restarts ─▶ Failed
//
// Rules (what the unit tests hold it to):
// - A crashed stage (exit ≠ 0, not asked to leave) is relaunched after a backoff of
//   100 ms × 2^n, at most 5 s, where n counts its failures (crashes, kills for silence or a
//   slow start, memory-limit restarts) within the last `restart_window`; once n reaches
//   `max_restarts` the next failure gives up (Failed) and aborts the run with exit 70. So a
//   crash loop gives up within seconds, while a probe that runs for months, with a crash now
//   and then, never does, and its backoff is back to 100 ms once a window passes without one
//   (systemd's StartLimitBurst= within StartLimitIntervalSec=). Operator restarts count in
//   `restarts` (what people read: the lifetime total) but never toward the give-up.
// - An exit code after which a restart cannot help (64 usage, 65 data, 66 no input, 78
//   config) fails the stage and aborts the run with that code; capture's 65 (a damaged input
//   whose good packets went through) only finishes capture, and the drain goes on.
// - A stage that has not reported ready `start_timeout` after its launch gets SIGKILL (its
//   exit then counts as a crash): a stage hung before its first heartbeat is replaced too.
// - A stage asked to leave (operator restart, memory over its limit) gets SIGTERM (capture,
//   which takes SIGTERM as the end of its input: SIGKILL) and is relaunched at once when it
//   exits non-zero; if it is still there `restart_grace` later it gets SIGKILL. Exit 0 while
//   leaving means it had drained already: Finished. A memory restart counts in `restarts` and
//   in `memory_restarts`, and (being involuntary) toward the give-up the way a crash does.
// - Drain: the stages drain in data order (capture first, then each one downstream as the
//   ones before it have finished). A stage whose spec has a drain_timeout is killed when it
//   has not finished that long after everything upstream of it did (for an optional shipd
//   waiting on acks); 0 waits for ever (the five core stages: their drain is bounded by their
//   input). Crashes during a drain are still restarted; so are operator restarts. An
//   optional stage that exits 75 by itself once everything upstream of it has finished gave
//   up its drain (shipd past ship.drain_timeout_s): Failed, not restarted, and the run's
//   result becomes 75 (also when it had to be killed past its drain timeout).
// - Abort (second stop signal, a permanent failure, a give-up): every running stage is
//   signalled, pending restarts are cancelled, and `restart_grace` later what still runs is
//   killed. Whatever exits during an abort is Finished (or Failed if non-zero): no restarts.
// - The set is done when every stage is Finished or Failed; result() is the exit code.
//
// - An optional stage (StageSpec::essential = false: shipd after writerd, when ship.url is
//   set): its give-up or permanent failure marks it Failed without aborting the run (the
//   local store is its buffer), and it has its own StageSpec::drain_timeout.
//
// Designed in for later work (states and interface, partly unused today):
// - Reload (SIGHUP): set_policy() and set_memory_limit() change max_restarts, the restart
//   window, the grace period and a stage's limit while stages run; the next decision uses the
//   new values.
// - Adopting the stages of a crashed supervisor's instance: adopt(stage, pid) puts a process
//   this supervisor did not start into Running; its host watches it through a pidfd (it
//   cannot wait4() a process that is not its child), so its exit comes with no status
//   (ExitStatus::unknown) and counts as a crash.
// - Liveness through pidfds: StageHost::launch returns only the pid; a host that opens a
//   pidfd per child reports exits the same way (exited()), the set does not care which.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "control_block.h"

namespace flowseal::supervisor {

using SteadyTime = std::chrono::steady_clock::time_point;

class SupervisorClock {
 public:
  virtual ~SupervisorClock() = default;
  virtual SteadyTime now() const = 0;
};

class SteadyClock final : public SupervisorClock {
 public:
  SteadyTime now() const override { return std::chrono::steady_clock::now(); }
};

enum class StagePhase : std::uint8_t {
  kStarting,  // launched (or relaunched); has not reported ready yet
  kRunning,   // reported ready: its loop runs
  kLeaving,   // asked to leave for a replacement (operator restart, memory limit)
  kBackoff,   // crashed; relaunched when its backoff is over
  kFinished,  // exited 0 (its drain is complete), or ended during an abort
  kFailed,    // gave up, or failed in a way a restart cannot help
};
std::string_view to_string(StagePhase phase);

// How a stage's process ended. `code`: exit status or 128 + signal; -1 when unknown (an
// adopted process watched through a pidfd).
struct ExitStatus {
  int code = 0;
  std::string describe;  // "exit 0", "killed by SIGKILL"
  static ExitStatus unknown() { return {-1, "gone (exit status unknown)"}; }
};

struct StageSpec {
  StageKind kind = StageKind::kCapture;
  std::size_t shard = 0;
  std::string name;  // "capture", "flowd[1]", ...
  // Position in data order: capture 0, flowd 1, dedupd 2, signerd 3, writerd 4, shipd 5.
  // Stages of one step run side by side (flowd's shards); a drain waits for lower steps.
  std::uint32_t step = 0;
  std::uint64_t private_limit = 0;             // bytes of private memory; 0: none
  std::chrono::milliseconds drain_timeout{0};  // 0: the drain waits for it
  bool essential = true;                       // false: its failure does not end the run
};

// What may change while the stages run (reload).
struct StagePolicy {
  std::uint32_t max_restarts = 10;
  std::chrono::milliseconds restart_grace{5000};  // leaving / aborting, before SIGKILL
  // Launch to ready: a stage that has not reported ready this long after its launch is
  // killed (and, as for a crash, restarted). Once a stage has published its pid in its slot
  // the heartbeat timeout watches it; this catches one that hangs before it can (stopped,
  // blocked in its start-up), which no heartbeat check sees.
  std::chrono::milliseconds start_timeout{60000};
  // The failures of one stage that count toward max_restarts and its backoff: those of the
  // last restart_window (supervisor.restart_window_s).
  std::chrono::milliseconds restart_window{300000};
};

// What the set publishes of one stage (control block slot, the run summary).
struct StageRecord {
  StagePhase phase = StagePhase::kStarting;
  pid_t pid = -1;                     // the current process, -1 while none
  bool adopted = false;               // not this supervisor's child (adopt())
  std::uint32_t restarts = 0;         // lifetime total, operator restarts too
  std::uint32_t memory_restarts = 0;  // of `restarts`: over its memory limit
  // When it failed (crashed, was killed as hung, went over its memory limit) within the
  // policy's restart_window, oldest first, at most max_restarts of them: what the give-up
  // and the backoff count.
  std::deque<SteadyTime> failures;
  bool memory_leave = false;                      // Leaving because of its memory limit
  SteadyTime deadline = SteadyTime::max();        // Starting, Leaving: SIGKILL; Backoff: relaunch
  SteadyTime drain_deadline = SteadyTime::max();  // draining: killed past it (drain_timeout)
  bool kill_sent = false;     // SIGKILL sent to the current process (hung, grace over)
  bool drain_killed = false;  // killed past its drain timeout: its exit is final
  int last_exit = 0;
};

// The world the set acts on. The real host forks the stage binaries and writes the control
// block; the tests' host records calls.
class StageHost {
 public:
  virtual ~StageHost() = default;
  // Starts stage `index`'s process (again); returns its pid. May throw std::runtime_error
  // (fork failed): the run cannot go on.
  virtual pid_t launch(std::size_t index) = 0;
  virtual void signal(std::size_t index, int signo) = 0;
  // Stage `index`'s record changed (restart counts, phase): publish what people read.
  virtual void published(std::size_t /*index*/, const StageRecord& /*record*/) {}
  // The run began to stop (once): why, for the service manager.
  virtual void stopping(std::string_view /*why*/) {}
};

class StageSet {
 public:
  // `specs` in data order: capture, flowd[0..n), dedupd, signerd, writerd (the control
  // block's slot order), then optional stages. Nothing runs until start().
  StageSet(std::vector<StageSpec> specs, StagePolicy policy, StageHost& host,
           const SupervisorClock& clock);

  // Launches every stage, downstream first, so each ring has its consumer before its producer.
  void start();

  // ---- events
  void exited(std::size_t index, const ExitStatus& exit);
  void ready(std::size_t index);
  // Alive but silent for `silent` (the caller checked that this process is the slot's).
  void heartbeat_missed(std::size_t index, std::chrono::milliseconds silent);
  // `flowseal restart`. False if the stage cannot be restarted now (finished, waiting for
  // its relaunch, the run is aborting).
  bool restart_requested(std::size_t index);
  // Private memory over the stage's limit; returns whether it is asked to leave (false if it
  // is leaving already, not started, or the run is aborting). `detail` goes into the log.
  bool memory_over_limit(std::size_t index, std::string_view detail);
  // Stop requested (first SIGINT/SIGTERM, `flowseal stop`): capture stops, the rest drains.
  void drain(std::string_view why);
  // Ends the run without a drain: every stage gets `signo`, the run exits `code`.
  void abort(int code, int signo, std::string_view why);
  // A process this supervisor did not start, found running for stage `index` (a crashed
  // supervisor's instance): watched as Running; its exit is reported with ExitStatus::unknown.
  void adopt(std::size_t index, pid_t pid);
  // Time passed: relaunches stages whose backoff is over, kills what overstayed a grace
  // period or drain timeout.
  void tick();

  // Tells the host the run began to stop, the first time only.
  void report_stopping(std::string_view why);

  // ---- reload
  void set_policy(const StagePolicy& policy) { policy_ = policy; }
  void set_memory_limit(std::size_t index, std::uint64_t bytes) {
    specs_[index].private_limit = bytes;
  }

  // ---- queries
  std::size_t size() const { return specs_.size(); }
  const StageSpec& spec(std::size_t index) const { return specs_[index]; }
  const StageRecord& record(std::size_t index) const { return records_[index]; }
  const StagePolicy& policy() const { return policy_; }
  bool has_process(std::size_t index) const { return records_[index].pid > 0; }
  bool done() const;
  // Every stage that has not ended reported ready (systemd READY=1).
  bool all_ready() const;
  bool draining() const { return draining_; }
  bool aborting() const { return aborting_; }
  int result() const { return result_; }
  // The earliest time tick() has something to do (max() if none).
  SteadyTime next_deadline() const;

 private:
  void launch(std::size_t index);
  void relaunch_now(std::size_t index, std::string_view why);
  void ask_to_leave(std::size_t index, bool memory);
  void crashed(std::size_t index, const ExitStatus& exit);
  // Forgets the stage's failures older than the restart window; how many are left.
  std::uint32_t failures_in_window(std::size_t index);
  void fail(std::size_t index, int code, std::string_view why);
  void set_phase(std::size_t index, StagePhase phase);
  void arm_drain_timeouts();
  bool upstream_finished(std::size_t index) const;
  bool is_over(StagePhase phase) const {
    return phase == StagePhase::kFinished || phase == StagePhase::kFailed;
  }

  std::vector<StageSpec> specs_;
  std::vector<StageRecord> records_;
  StagePolicy policy_;
  StageHost& host_;
  const SupervisorClock& clock_;
  bool draining_ = false;
  bool aborting_ = false;
  bool stopping_reported_ = false;
  SteadyTime abort_deadline_ = SteadyTime::max();
  int result_ = 0;
};

// Exit codes after which a restart cannot help: the stage said the input or config is bad.
bool is_permanent_exit(int code);

}  // namespace flowseal::supervisor
