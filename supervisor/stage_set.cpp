#include "stage_set.h"

#include <signal.h>

#include <algorithm>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "stage_runtime.h"

namespace flowseal::supervisor {

namespace {

std::chrono::milliseconds backoff_after(std::uint32_t restarts) {
  return std::chrono::milliseconds(
      std::min<std::int64_t>(100LL << std::min<std::uint32_t>(restarts, 6), 5000));
}

double seconds(std::chrono::milliseconds ms) { return double(ms.count()) / 1000.0; }

}  // namespace

std::string_view to_string(StagePhase phase) {
  switch (phase) {
    case StagePhase::kStarting: return "starting";
    case StagePhase::kRunning: return "running";
    case StagePhase::kLeaving: return "leaving";
    case StagePhase::kBackoff: return "backoff";
    case StagePhase::kFinished: return "finished";
    case StagePhase::kFailed: return "failed";
  }
  return "?";
}

bool is_permanent_exit(int code) {
  return code == exit_code::kUsage || code == exit_code::kDataError ||
         code == exit_code::kNoInput || code == exit_code::kConfig;
}

StageSet::StageSet(std::vector<StageSpec> specs, StagePolicy policy, StageHost& host,
                   const SupervisorClock& clock)
    : specs_(std::move(specs)),
      records_(specs_.size()),
      policy_(policy),
      host_(host),
      clock_(clock) {}

void StageSet::start() {
  for (std::size_t i = specs_.size(); i-- > 0;) launch(i);
}

void StageSet::launch(std::size_t index) {
  StageRecord& r = records_[index];
  r.pid = host_.launch(index);
  r.adopted = false;
  r.kill_sent = false;
  r.memory_leave = false;
  r.deadline = clock_.now() + policy_.start_timeout;
  set_phase(index, StagePhase::kStarting);
}

void StageSet::set_phase(std::size_t index, StagePhase phase) {
  records_[index].phase = phase;
  host_.published(index, records_[index]);
}

void StageSet::report_stopping(std::string_view why) {
  if (stopping_reported_) return;
  stopping_reported_ = true;
  host_.stopping(why);
}

void StageSet::ready(std::size_t index) {
  if (records_[index].phase != StagePhase::kStarting) return;
  records_[index].deadline = SteadyTime::max();
  set_phase(index, StagePhase::kRunning);
}

bool StageSet::all_ready() const {
  return std::all_of(records_.begin(), records_.end(), [&](const StageRecord& r) {
    return is_over(r.phase) || r.phase == StagePhase::kRunning;
  });
}

bool StageSet::done() const {
  return std::all_of(records_.begin(), records_.end(),
                     [&](const StageRecord& r) { return is_over(r.phase); });
}

void StageSet::exited(std::size_t index, const ExitStatus& exit) {
  StageRecord& r = records_[index];
  const StageSpec& spec = specs_[index];
  const bool was_leaving = r.phase == StagePhase::kLeaving;
  r.pid = -1;
  r.last_exit = exit.code;
  if (r.drain_killed) {
    spdlog::error("{} did not drain within {} s ({}): left undrained", spec.name,
                  seconds(spec.drain_timeout), exit.describe);
    if (result_ == exit_code::kOk) {
      result_ = spec.essential ? exit_code::kSoftware : exit_code::kTempFail;
    }
    set_phase(index, StagePhase::kFailed);
  } else if (!spec.essential && !was_leaving && !aborting_ && draining_ &&
             exit.code == exit_code::kTempFail && upstream_finished(index)) {
    // An optional stage that gave up its own drain (shipd: ship.drain_timeout_s with batches
    // unacked): final, and the run says "temporary failure" (75); its successor in the next
    // run resumes.
    spdlog::error("{} ended its drain unfinished ({}): the run exits 75", spec.name, exit.describe);
    if (result_ == exit_code::kOk) result_ = exit_code::kTempFail;
    set_phase(index, StagePhase::kFailed);
  } else if (was_leaving && exit.code != 0 && !aborting_) {
    ++r.restarts;
    if (r.memory_leave) {
      ++r.memory_restarts;
      r.failures.push_back(clock_.now());  // involuntary: it counts toward the give-up
    }
    const bool memory = r.memory_leave;
    launch(index);
    spdlog::info("{} restarted {} (pid {}, {})", spec.name,
                 memory ? "after going over its memory limit" : "on request", r.pid, exit.describe);
  } else if (exit.code == 0 || aborting_) {
    if (spec.kind == StageKind::kCapture && exit.code == 0) {
      draining_ = true;
      report_stopping("end of input");
    }
    set_phase(index, exit.code == 0 ? StagePhase::kFinished : StagePhase::kFailed);
  } else if (is_permanent_exit(exit.code)) {
    if (spec.kind == StageKind::kCapture && exit.code == exit_code::kDataError) {
      // The damaged input was reported and the good packets went through: finish the
      // drain, then exit with "data error".
      result_ = exit.code;
      draining_ = true;
      spdlog::error("capture finished with input errors (see above); draining the rest");
      set_phase(index, StagePhase::kFinished);
    } else {
      spdlog::error("{} failed ({}): stopping", spec.name, exit.describe);
      fail(index, exit.code, fmt::format("{} failed", spec.name));
    }
  } else {
    crashed(index, exit);
  }
  if (draining_) arm_drain_timeouts();
}

void StageSet::crashed(std::size_t index, const ExitStatus& exit) {
  StageRecord& r = records_[index];
  const StageSpec& spec = specs_[index];
  const std::uint32_t recent = failures_in_window(index);
  if (recent >= policy_.max_restarts) {
    spdlog::error("{} failed ({}) after {} restarts within {} s: giving up", spec.name,
                  exit.describe, recent, seconds(policy_.restart_window));
    fail(index, exit_code::kSoftware, fmt::format("{} keeps failing", spec.name));
    return;
  }
  const auto backoff = backoff_after(recent);
  ++r.restarts;
  r.failures.push_back(clock_.now());
  r.deadline = clock_.now() + backoff;
  spdlog::warn("{} ended ({}); restarting in {} ms", spec.name, exit.describe, backoff.count());
  set_phase(index, StagePhase::kBackoff);
}

std::uint32_t StageSet::failures_in_window(std::size_t index) {
  std::deque<SteadyTime>& failures = records_[index].failures;
  const SteadyTime since = clock_.now() - policy_.restart_window;
  while (!failures.empty() && failures.front() <= since) failures.pop_front();
  // Only whether there are max_restarts matters: a long window stays small.
  while (failures.size() > policy_.max_restarts) failures.pop_front();
  return static_cast<std::uint32_t>(failures.size());
}

// The stage cannot go on. An essential one ends the run with `code`; an optional one is left
// failed and the rest runs on.
void StageSet::fail(std::size_t index, int code, std::string_view why) {
  set_phase(index, StagePhase::kFailed);
  if (!specs_[index].essential) {
    spdlog::warn("{} is optional: the run goes on without it", specs_[index].name);
    return;
  }
  abort(code, SIGTERM, why);
}

void StageSet::abort(int code, int signo, std::string_view why) {
  report_stopping(why);
  result_ = code;
  if (!aborting_) abort_deadline_ = clock_.now() + policy_.restart_grace;
  aborting_ = true;
  for (std::size_t i = 0; i < records_.size(); ++i) {
    if (records_[i].phase == StagePhase::kBackoff) {
      set_phase(i, StagePhase::kFinished);  // an abort cancels the pending restart
    } else if (records_[i].pid > 0) {
      host_.signal(i, signo);
    }
  }
}

void StageSet::drain(std::string_view why) {
  draining_ = true;
  report_stopping(why);
  arm_drain_timeouts();
}

bool StageSet::upstream_finished(std::size_t index) const {
  for (std::size_t j = 0; j < specs_.size(); ++j) {
    if (specs_[j].step < specs_[index].step && !is_over(records_[j].phase)) return false;
  }
  return true;
}

void StageSet::arm_drain_timeouts() {
  for (std::size_t i = 0; i < specs_.size(); ++i) {
    StageRecord& r = records_[i];
    if (specs_[i].drain_timeout.count() > 0 && r.drain_deadline == SteadyTime::max() &&
        !is_over(r.phase) && upstream_finished(i)) {
      r.drain_deadline = clock_.now() + specs_[i].drain_timeout;
    }
  }
}

bool StageSet::restart_requested(std::size_t index) {
  const StagePhase phase = records_[index].phase;
  if (aborting_ || is_over(phase) || phase == StagePhase::kBackoff || records_[index].pid <= 0) {
    return false;
  }
  spdlog::info("{} (pid {}): restart requested", specs_[index].name, records_[index].pid);
  ask_to_leave(index, false);
  return true;
}

bool StageSet::memory_over_limit(std::size_t index, std::string_view detail) {
  StageRecord& r = records_[index];
  if (aborting_ || r.pid <= 0 || r.phase == StagePhase::kLeaving || is_over(r.phase)) return false;
  spdlog::warn("{}: restarting it", detail);
  if (const std::uint32_t recent = failures_in_window(index); recent >= policy_.max_restarts) {
    spdlog::error("{} over its memory limit after {} restarts within {} s: giving up",
                  specs_[index].name, recent, seconds(policy_.restart_window));
    abort(exit_code::kSoftware, SIGTERM,
          fmt::format("{} keeps going over its memory limit", specs_[index].name));
    return false;
  }
  ask_to_leave(index, true);
  return true;
}

void StageSet::ask_to_leave(std::size_t index, bool memory) {
  StageRecord& r = records_[index];
  r.memory_leave = memory;
  r.deadline = clock_.now() + policy_.restart_grace;
  set_phase(index, StagePhase::kLeaving);
  // capture takes SIGTERM as the end of its input and would close its rings; it is replaced
  // the way a crash is, which resumes after the packets it published.
  host_.signal(index, specs_[index].kind == StageKind::kCapture ? SIGKILL : SIGTERM);
}

void StageSet::heartbeat_missed(std::size_t index, std::chrono::milliseconds silent) {
  StageRecord& r = records_[index];
  if (r.pid <= 0 || r.kill_sent) return;
  spdlog::warn("{} (pid {}) sent no heartbeat for {} ms: killing it", specs_[index].name, r.pid,
               silent.count());
  r.kill_sent = true;
  host_.signal(index, SIGKILL);  // its exit then restarts it
}

void StageSet::adopt(std::size_t index, pid_t pid) {
  StageRecord& r = records_[index];
  r.pid = pid;
  r.adopted = true;
  r.kill_sent = false;
  r.deadline = SteadyTime::max();
  set_phase(index, StagePhase::kRunning);
}

void StageSet::tick() {
  const SteadyTime now = clock_.now();
  for (std::size_t i = 0; i < records_.size(); ++i) {
    StageRecord& r = records_[i];
    const StageSpec& spec = specs_[i];
    if (r.phase == StagePhase::kBackoff && now >= r.deadline && !aborting_) {
      launch(i);
      spdlog::info("{} restarted (restart {})", spec.name, r.restarts);
    } else if (r.phase == StagePhase::kStarting && now >= r.deadline && r.pid > 0 && !r.kill_sent) {
      spdlog::warn("{} (pid {}) did not start within {} s: killing it", spec.name, r.pid,
                   seconds(policy_.start_timeout));
      r.kill_sent = true;
      r.deadline = SteadyTime::max();
      host_.signal(i, SIGKILL);  // its exit then restarts it
    } else if (r.phase == StagePhase::kLeaving && now >= r.deadline && r.pid > 0 && !r.kill_sent) {
      spdlog::warn("{} (pid {}) did not leave within {} s of the restart request: killing it",
                   spec.name, r.pid, seconds(policy_.restart_grace));
      r.kill_sent = true;
      r.deadline = SteadyTime::max();
      host_.signal(i, SIGKILL);
    } else if (draining_ && now >= r.drain_deadline && r.pid > 0 && !r.drain_killed) {
      spdlog::warn("{} (pid {}) has not drained {} s after the stages before it: killing it",
                   spec.name, r.pid, seconds(spec.drain_timeout));
      r.drain_killed = true;
      host_.signal(i, SIGKILL);
    }
  }
  if (aborting_ && now >= abort_deadline_) {
    for (std::size_t i = 0; i < records_.size(); ++i) {
      if (records_[i].pid > 0) {
        spdlog::warn("{} (pid {}) still running {} s into the abort: killing it", specs_[i].name,
                     records_[i].pid, seconds(policy_.restart_grace));
        host_.signal(i, SIGKILL);
      }
    }
    abort_deadline_ = SteadyTime::max();
  }
}

SteadyTime StageSet::next_deadline() const {
  SteadyTime next = aborting_ ? abort_deadline_ : SteadyTime::max();
  for (const StageRecord& r : records_) {
    if (r.phase == StagePhase::kBackoff ||
        ((r.phase == StagePhase::kLeaving || r.phase == StagePhase::kStarting) && !r.kill_sent)) {
      next = std::min(next, r.deadline);
    }
    if (draining_ && r.pid > 0 && !r.drain_killed) next = std::min(next, r.drain_deadline);
  }
  return next;
}

}  // namespace flowseal::supervisor
