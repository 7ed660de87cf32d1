#include "stage_set.h"

#include <signal.h>

#include <map>
#include <memory>
#include <sstream>
#include <utility>
#include <vector>

#include <catch2/catch.hpp>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include "stage_runtime.h"

namespace flowseal::supervisor {
namespace {

using namespace std::chrono_literals;

class FakeClock final : public SupervisorClock {
 public:
  SteadyTime now() const override { return now_; }
  void advance(std::chrono::milliseconds ms) { now_ += ms; }

 private:
  SteadyTime now_{std::chrono::hours(1)};
};

// Fake children: a launch hands out the next pid, signals are recorded.
class FakeHost final : public StageHost {
 public:
  pid_t launch(std::size_t index) override {
    launches.push_back(index);
    return next_pid++;
  }
  void signal(std::size_t index, int signo) override { signals.emplace_back(index, signo); }
  void stopping(std::string_view why) override { stopped.emplace_back(why); }
  int signals_to(std::size_t index, int signo) const {
    int n = 0;
    for (const auto& [i, s] : signals) n += (i == index && s == signo) ? 1 : 0;
    return n;
  }

  pid_t next_pid = 100;
  std::vector<std::size_t> launches;
  std::vector<std::pair<std::size_t, int>> signals;
  std::vector<std::string> stopped;
};

enum : std::size_t { kCapture, kFlowd0, kFlowd1, kDedupd, kSignerd, kWriterd, kShipd };

std::vector<StageSpec> pipeline(bool with_shipd = false) {
  std::vector<StageSpec> specs = {
      {StageKind::kCapture, 0, "capture", 0}, {StageKind::kFlowd, 0, "flowd[0]", 1},
      {StageKind::kFlowd, 1, "flowd[1]", 1},  {StageKind::kDedupd, 0, "dedupd", 2},
      {StageKind::kSignerd, 0, "signerd", 3}, {StageKind::kWriterd, 0, "writerd", 4}};
  if (with_shipd) {
    // A sixth, optional stage after writerd with its own drain timeout.
    StageSpec shipd{StageKind::kShipd, 0, "shipd", 5};
    shipd.essential = false;
    shipd.drain_timeout = 2000ms;
    specs.push_back(shipd);
  }
  return specs;
}

const ExitStatus kCrash{137, "killed by SIGKILL"};
const ExitStatus kClean{0, "exit 0"};
const ExitStatus kTerm{75, "exit 75"};

// The set's log lines while it lives (the default logger is put back after).
class CapturedLog {
 public:
  CapturedLog()
      : previous_(spdlog::default_logger()),
        logger_(std::make_shared<spdlog::logger>(
            "captured", std::make_shared<spdlog::sinks::ostream_sink_st>(text_))) {
    spdlog::set_default_logger(logger_);
  }
  ~CapturedLog() { spdlog::set_default_logger(previous_); }
  CapturedLog(const CapturedLog&) = delete;
  CapturedLog& operator=(const CapturedLog&) = delete;
  std::string text() const { return text_.str(); }

 private:
  std::ostringstream text_;
  std::shared_ptr<spdlog::logger> previous_;
  std::shared_ptr<spdlog::logger> logger_;
};

// How long stage `index` waits in its backoff.
std::chrono::milliseconds backoff_of(const StageSet& set, const FakeClock& clock) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(set.next_deadline() - clock.now());
}

struct Fixture {
  explicit Fixture(std::uint32_t max_restarts = 10, bool with_shipd = false)
      : set(pipeline(with_shipd), StagePolicy{max_restarts, 5000ms}, host, clock) {
    set.start();
    for (std::size_t i = 0; i < set.size(); ++i) set.ready(i);
  }
  void finish_all_in_order() {
    for (std::size_t i = 0; i < set.size(); ++i) {
      if (set.has_process(i)) set.exited(i, kClean);
    }
  }
  FakeClock clock;
  FakeHost host;
  StageSet set;
};

}  // namespace

TEST_CASE("stages start downstream first, so every ring has its consumer first") {
  Fixture f;
  REQUIRE(f.host.launches ==
          std::vector<std::size_t>{kWriterd, kSignerd, kDedupd, kFlowd1, kFlowd0, kCapture});
  REQUIRE(f.set.all_ready());
  REQUIRE(f.set.record(kCapture).phase == StagePhase::kRunning);
}

TEST_CASE("a crashed stage is relaunched after a backoff that doubles up to 5 s") {
  Fixture f;
  std::vector<std::int64_t> waits;
  for (int crash = 0; crash < 8; ++crash) {
    f.set.exited(kDedupd, kCrash);
    REQUIRE(f.set.record(kDedupd).phase == StagePhase::kBackoff);
    const auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(f.set.next_deadline() -
                                                                            f.clock.now());
    waits.push_back(wait.count());
    f.clock.advance(wait - 1ms);
    f.set.tick();
    REQUIRE(f.set.record(kDedupd).phase == StagePhase::kBackoff);  // not a moment early
    f.clock.advance(1ms);
    f.set.tick();
    REQUIRE(f.set.record(kDedupd).phase == StagePhase::kStarting);
    REQUIRE(f.set.has_process(kDedupd));
  }
  REQUIRE(waits == std::vector<std::int64_t>{100, 200, 400, 800, 1600, 3200, 5000, 5000});
  REQUIRE(f.set.record(kDedupd).restarts == 8);
  REQUIRE(!f.set.aborting());
}

TEST_CASE("after max_restarts restarts the next crash gives up and ends the run with 70") {
  Fixture f(/*max_restarts=*/2);
  for (int crash = 0; crash < 2; ++crash) {
    f.set.exited(kSignerd, kCrash);
    f.clock.advance(5000ms);
    f.set.tick();
  }
  REQUIRE(f.set.record(kSignerd).restarts == 2);
  f.set.exited(kSignerd, kCrash);
  REQUIRE(f.set.record(kSignerd).phase == StagePhase::kFailed);
  REQUIRE(f.set.aborting());
  REQUIRE(f.set.result() == exit_code::kSoftware);
  REQUIRE(f.host.signals_to(kCapture, SIGTERM) == 1);
  REQUIRE(f.host.signals_to(kWriterd, SIGTERM) == 1);
  REQUIRE(f.host.stopped == std::vector<std::string>{"signerd keeps failing"});
  // What still runs 5 s into the abort is killed; exits during an abort are not restarted.
  f.set.exited(kCapture, kTerm);
  REQUIRE(f.set.record(kCapture).phase == StagePhase::kFailed);
  f.clock.advance(5000ms);
  f.set.tick();
  REQUIRE(f.host.signals_to(kWriterd, SIGKILL) == 1);
  REQUIRE(f.host.signals_to(kCapture, SIGKILL) == 0);
  for (std::size_t i : {kFlowd0, kFlowd1, kDedupd, kWriterd}) f.set.exited(i, kCrash);
  REQUIRE(f.set.done());
  REQUIRE(f.set.result() == exit_code::kSoftware);
}

TEST_CASE("failures spread over the restart window still give up, with the same message") {
  CapturedLog log;
  Fixture f(/*max_restarts=*/2);  // restart_window: 300 s
  for (int crash = 0; crash < 2; ++crash) {
    f.set.exited(kSignerd, kCrash);
    f.clock.advance(140000ms);
    f.set.tick();
    f.set.ready(kSignerd);
  }
  // The first failure was 280 s ago: inside the window.
  f.set.exited(kSignerd, kCrash);
  REQUIRE(f.set.record(kSignerd).phase == StagePhase::kFailed);
  REQUIRE(f.set.result() == exit_code::kSoftware);
  REQUIRE(f.host.stopped == std::vector<std::string>{"signerd keeps failing"});
  REQUIRE_THAT(log.text(), Catch::Contains("signerd failed (killed by SIGKILL) after 2 restarts "
                                           "within 300 s: giving up"));
}

TEST_CASE("after a window without failures the budget and the backoff start afresh") {
  Fixture f(/*max_restarts=*/2);
  auto crash_and_relaunch = [&] {
    f.set.exited(kDedupd, kCrash);
    REQUIRE(f.set.record(kDedupd).phase == StagePhase::kBackoff);
    const auto wait = backoff_of(f.set, f.clock);
    f.clock.advance(wait);
    f.set.tick();
    f.set.ready(kDedupd);
    return wait.count();
  };
  REQUIRE(crash_and_relaunch() == 100);
  REQUIRE(crash_and_relaunch() == 200);
  // Stable for the window (300 s after the last failure): both are forgotten.
  f.clock.advance(300000ms);
  f.set.tick();
  REQUIRE(crash_and_relaunch() == 100);
  REQUIRE(crash_and_relaunch() == 200);
  f.clock.advance(300000ms);
  REQUIRE(crash_and_relaunch() == 100);
  REQUIRE(!f.set.aborting());
  // What status shows stays the lifetime total.
  REQUIRE(f.set.record(kDedupd).restarts == 5);
  SECTION("a failure just inside the window still counts") {
    f.clock.advance(299899ms);  // + its 100 ms backoff: 299.999 s after the last failure
    f.set.exited(kDedupd, kCrash);
    REQUIRE(backoff_of(f.set, f.clock) == 200ms);
  }
  SECTION("a reload that narrows the window forgets sooner") {
    StagePolicy policy = f.set.policy();
    policy.restart_window = 1000ms;
    f.set.set_policy(policy);
    f.clock.advance(900ms);
    REQUIRE(crash_and_relaunch() == 100);
  }
}

TEST_CASE("operator restarts are counted but never make the run give up") {
  Fixture f(/*max_restarts=*/2);
  for (int restart = 0; restart < 5; ++restart) {
    REQUIRE(f.set.restart_requested(kDedupd));
    f.set.exited(kDedupd, kTerm);
    REQUIRE(f.set.record(kDedupd).phase == StagePhase::kStarting);
    f.set.ready(kDedupd);
  }
  // One that does not leave in time is killed: still the operator's restart.
  REQUIRE(f.set.restart_requested(kDedupd));
  f.clock.advance(5000ms);
  f.set.tick();
  f.set.exited(kDedupd, kCrash);
  f.set.ready(kDedupd);
  REQUIRE(f.set.record(kDedupd).restarts == 6);
  // The soak's finding 3: with max_restarts=2 and operator restarts behind it, a crash is
  // the stage's first failure: restarted after 100 ms, and so are the next two.
  f.set.exited(kDedupd, kCrash);
  REQUIRE(f.set.record(kDedupd).phase == StagePhase::kBackoff);
  REQUIRE(backoff_of(f.set, f.clock) == 100ms);
  REQUIRE(!f.set.aborting());
  REQUIRE(f.set.record(kDedupd).restarts == 7);
  SECTION("memory-limit restarts are involuntary: they count like crashes") {
    f.clock.advance(100ms);
    f.set.tick();
    f.set.ready(kDedupd);
    REQUIRE(f.set.memory_over_limit(kDedupd, "over"));
    f.set.exited(kDedupd, kTerm);
    f.set.ready(kDedupd);
    REQUIRE(f.set.record(kDedupd).memory_restarts == 1);
    f.set.exited(kDedupd, kCrash);  // the third failure within the window
    REQUIRE(f.set.record(kDedupd).phase == StagePhase::kFailed);
    REQUIRE(f.set.aborting());
  }
}

TEST_CASE("a permanent exit code fails the run with that code; capture's data error drains") {
  SECTION("flowd exits 78: the run stops with 78") {
    Fixture f;
    f.set.exited(kFlowd1, {exit_code::kConfig, "exit 78"});
    REQUIRE(f.set.record(kFlowd1).phase == StagePhase::kFailed);
    REQUIRE(f.set.aborting());
    REQUIRE(f.set.result() == exit_code::kConfig);
  }
  SECTION("capture exits 65: the rest drains, the run exits 65") {
    Fixture f;
    f.set.exited(kCapture, {exit_code::kDataError, "exit 65"});
    REQUIRE(f.set.record(kCapture).phase == StagePhase::kFinished);
    REQUIRE(!f.set.aborting());
    REQUIRE(f.set.draining());
    f.finish_all_in_order();
    REQUIRE(f.set.done());
    REQUIRE(f.set.result() == exit_code::kDataError);
  }
}

TEST_CASE("a drain ends stage by stage in data order and the run exits 0") {
  Fixture f(10, /*with_shipd=*/true);
  f.set.drain("stop requested");
  REQUIRE(f.host.stopped == std::vector<std::string>{"stop requested"});
  // Only the stage whose upstream has finished has its drain timeout running: none of the
  // core stages has one, and shipd's starts when writerd is done.
  REQUIRE(f.set.record(kShipd).drain_deadline == SteadyTime::max());
  f.set.exited(kCapture, kClean);
  f.set.exited(kFlowd0, kClean);
  f.set.exited(kFlowd1, kClean);
  f.set.exited(kDedupd, kClean);
  f.set.exited(kSignerd, kClean);
  REQUIRE(f.set.record(kShipd).drain_deadline == SteadyTime::max());
  f.clock.advance(10000ms);
  f.set.exited(kWriterd, kClean);
  REQUIRE(f.set.record(kShipd).drain_deadline == f.clock.now() + 2000ms);
  f.clock.advance(1999ms);
  f.set.tick();
  REQUIRE(f.host.signals_to(kShipd, SIGKILL) == 0);
  f.clock.advance(1ms);
  f.set.tick();
  REQUIRE(f.host.signals_to(kShipd, SIGKILL) == 1);
  f.set.exited(kShipd, kCrash);  // killed past its drain timeout: not restarted
  REQUIRE(f.set.record(kShipd).phase == StagePhase::kFailed);
  REQUIRE(f.set.done());
  // An optional stage does not abort the run, but one left undrained makes it "temporary
  // failure": what it had not shipped ships at the next start.
  REQUIRE(f.set.result() == exit_code::kTempFail);
  REQUIRE(f.host.stopped.size() == 1);
}

TEST_CASE("an optional stage that gives up its own drain (exit 75) is final and the run exits 75") {
  Fixture f(10, /*with_shipd=*/true);
  // Before its upstream has finished, 75 is a crash like any other: restarted.
  f.set.exited(kShipd, kTerm);
  REQUIRE(f.set.record(kShipd).phase == StagePhase::kBackoff);
  f.clock.advance(100ms);
  f.set.tick();
  REQUIRE(f.set.record(kShipd).phase == StagePhase::kStarting);
  f.set.ready(kShipd);
  f.set.drain("stop requested");
  for (std::size_t i : {kCapture, kFlowd0, kFlowd1, kDedupd, kSignerd, kWriterd}) {
    f.set.exited(i, kClean);
  }
  // Its drain timeout (ship.drain_timeout_s) ran out with batches unacked: it leaves by itself.
  f.set.exited(kShipd, kTerm);
  REQUIRE(f.set.record(kShipd).phase == StagePhase::kFailed);
  REQUIRE(f.set.done());
  REQUIRE(f.set.result() == exit_code::kTempFail);
  REQUIRE(f.host.signals_to(kShipd, SIGKILL) == 0);
}

TEST_CASE("an optional stage that drains completely leaves the run's result at 0") {
  Fixture f(10, /*with_shipd=*/true);
  f.set.drain("stop requested");
  for (std::size_t i : {kCapture, kFlowd0, kFlowd1, kDedupd, kSignerd, kWriterd}) {
    f.set.exited(i, kClean);
  }
  f.set.exited(kShipd, kClean);
  REQUIRE(f.set.record(kShipd).phase == StagePhase::kFinished);
  REQUIRE(f.set.done());
  REQUIRE(f.set.result() == exit_code::kOk);
}

TEST_CASE("capture's clean exit (end of input) starts the drain") {
  Fixture f;
  f.set.exited(kCapture, kClean);
  REQUIRE(f.set.draining());
  REQUIRE(f.host.stopped == std::vector<std::string>{"end of input"});
  f.finish_all_in_order();
  REQUIRE(f.set.done());
  REQUIRE(f.set.result() == exit_code::kOk);
}

TEST_CASE("an optional stage that keeps failing is given up without ending the run") {
  Fixture f(/*max_restarts=*/0, /*with_shipd=*/true);
  f.set.exited(kShipd, kCrash);
  REQUIRE(f.set.record(kShipd).phase == StagePhase::kFailed);
  REQUIRE(!f.set.aborting());
  f.finish_all_in_order();
  REQUIRE(f.set.done());
  REQUIRE(f.set.result() == exit_code::kOk);
}

TEST_CASE("a stage over its memory limit is asked to leave and replaced at once") {
  Fixture f;
  REQUIRE(f.set.memory_over_limit(kDedupd, "dedupd (pid 103) holds 9 MiB"));
  REQUIRE(f.set.record(kDedupd).phase == StagePhase::kLeaving);
  REQUIRE(f.host.signals_to(kDedupd, SIGTERM) == 1);
  // Asked again while leaving: nothing more.
  REQUIRE(!f.set.memory_over_limit(kDedupd, "again"));
  REQUIRE(f.host.signals_to(kDedupd, SIGTERM) == 1);
  const std::size_t launches = f.host.launches.size();
  f.set.exited(kDedupd, kTerm);
  REQUIRE(f.host.launches.size() == launches + 1);  // no backoff
  REQUIRE(f.set.record(kDedupd).phase == StagePhase::kStarting);
  REQUIRE(f.set.record(kDedupd).restarts == 1);
  REQUIRE(f.set.record(kDedupd).memory_restarts == 1);
}

TEST_CASE("memory-limit restarts give up after max_restarts") {
  Fixture f(/*max_restarts=*/1);
  REQUIRE(f.set.memory_over_limit(kDedupd, "over"));
  f.set.exited(kDedupd, kTerm);
  f.set.ready(kDedupd);
  REQUIRE(!f.set.memory_over_limit(kDedupd, "over again"));
  REQUIRE(f.set.aborting());
  REQUIRE(f.set.result() == exit_code::kSoftware);
  REQUIRE(f.host.stopped == std::vector<std::string>{"dedupd keeps going over its memory limit"});
}

TEST_CASE("a stage that does not leave within the grace period is killed") {
  Fixture f;
  REQUIRE(f.set.restart_requested(kSignerd));
  f.clock.advance(4999ms);
  f.set.tick();
  REQUIRE(f.host.signals_to(kSignerd, SIGKILL) == 0);
  f.clock.advance(1ms);
  f.set.tick();
  REQUIRE(f.host.signals_to(kSignerd, SIGKILL) == 1);
  f.set.exited(kSignerd, kCrash);
  REQUIRE(f.set.record(kSignerd).phase == StagePhase::kStarting);
  REQUIRE(f.set.record(kSignerd).restarts == 1);
  REQUIRE(f.set.record(kSignerd).memory_restarts == 0);
}

TEST_CASE("capture is restarted with SIGKILL: SIGTERM would be the end of its input") {
  Fixture f;
  REQUIRE(f.set.restart_requested(kCapture));
  REQUIRE(f.host.signals_to(kCapture, SIGKILL) == 1);
  REQUIRE(f.host.signals_to(kCapture, SIGTERM) == 0);
}

TEST_CASE("an operator restart during the drain replaces the stage and the drain goes on") {
  Fixture f;
  f.set.drain("stop requested");
  f.set.exited(kCapture, kClean);
  REQUIRE(!f.set.restart_requested(kCapture));  // already finished
  REQUIRE(f.set.restart_requested(kFlowd0));
  f.set.exited(kFlowd0, kTerm);
  REQUIRE(f.set.record(kFlowd0).phase == StagePhase::kStarting);
  REQUIRE(f.set.record(kFlowd0).restarts == 1);
  // Its successor drains and exits 0; so does the rest.
  f.finish_all_in_order();
  REQUIRE(f.set.done());
  REQUIRE(f.set.result() == exit_code::kOk);
  SECTION("a stage that had drained when asked to leave exits 0: finished, not restarted") {
    Fixture g;
    g.set.drain("stop requested");
    REQUIRE(g.set.restart_requested(kWriterd));
    g.set.exited(kWriterd, kClean);
    REQUIRE(g.set.record(kWriterd).phase == StagePhase::kFinished);
    REQUIRE(g.set.record(kWriterd).restarts == 0);
  }
}

TEST_CASE("a hung stage is killed once and its exit restarts it") {
  Fixture f;
  f.set.heartbeat_missed(kFlowd1, 6000ms);
  f.set.heartbeat_missed(kFlowd1, 6250ms);
  REQUIRE(f.host.signals_to(kFlowd1, SIGKILL) == 1);
  f.set.exited(kFlowd1, kCrash);
  REQUIRE(f.set.record(kFlowd1).phase == StagePhase::kBackoff);
}

TEST_CASE("a stage that hangs before its first heartbeat is killed at the start timeout") {
  FakeClock clock;
  FakeHost host;
  StageSet set(pipeline(), StagePolicy{10, 5000ms, 60000ms}, host, clock);
  set.start();
  for (std::size_t i = 0; i < set.size(); ++i) {
    if (i != kFlowd0) set.ready(i);
  }
  REQUIRE(set.next_deadline() == clock.now() + 60000ms);
  clock.advance(59999ms);
  set.tick();
  REQUIRE(host.signals_to(kFlowd0, SIGKILL) == 0);  // not a moment early
  clock.advance(1ms);
  set.tick();
  set.tick();
  REQUIRE(host.signals_to(kFlowd0, SIGKILL) == 1);  // once
  REQUIRE(host.signals.size() == 1);                // the ready stages are left alone
  REQUIRE(set.next_deadline() == SteadyTime::max());
  set.exited(kFlowd0, kCrash);
  REQUIRE(set.record(kFlowd0).phase == StagePhase::kBackoff);
  REQUIRE(set.record(kFlowd0).restarts == 1);
  clock.advance(100ms);
  set.tick();
  REQUIRE(set.record(kFlowd0).phase == StagePhase::kStarting);
  // The new process gets its own start timeout; reporting ready ends it.
  REQUIRE(set.next_deadline() == clock.now() + 60000ms);
  set.ready(kFlowd0);
  REQUIRE(set.next_deadline() == SteadyTime::max());
  clock.advance(120000ms);
  set.tick();
  REQUIRE(host.signals_to(kFlowd0, SIGKILL) == 1);
}

TEST_CASE("a second stop signal aborts: SIGKILL to all, pending restarts cancelled, exit 75") {
  Fixture f;
  f.set.exited(kDedupd, kCrash);
  REQUIRE(f.set.record(kDedupd).phase == StagePhase::kBackoff);
  f.set.drain("stop requested");
  f.set.abort(exit_code::kTempFail, SIGKILL, "aborting");
  REQUIRE(f.set.record(kDedupd).phase == StagePhase::kFinished);
  REQUIRE(f.host.signals_to(kCapture, SIGKILL) == 1);
  REQUIRE(!f.set.restart_requested(kSignerd));
  f.clock.advance(10000ms);
  f.set.tick();
  REQUIRE(!f.set.has_process(kDedupd));
  for (std::size_t i : {kCapture, kFlowd0, kFlowd1, kSignerd, kWriterd}) f.set.exited(i, kCrash);
  REQUIRE(f.set.done());
  REQUIRE(f.set.result() == exit_code::kTempFail);
}

TEST_CASE("a reload changes max_restarts for the next decision") {
  Fixture f(/*max_restarts=*/0);
  StagePolicy policy = f.set.policy();
  policy.max_restarts = 1;
  f.set.set_policy(policy);
  f.set.exited(kWriterd, kCrash);
  REQUIRE(f.set.record(kWriterd).phase == StagePhase::kBackoff);
  f.set.set_memory_limit(kWriterd, 1 << 20);
  REQUIRE(f.set.spec(kWriterd).private_limit == 1u << 20);
}

TEST_CASE("an adopted stage runs; its exit without a status counts as a crash") {
  FakeClock clock;
  FakeHost host;
  StageSet set(pipeline(), StagePolicy{}, host, clock);
  for (std::size_t i = 0; i < set.size(); ++i) set.adopt(i, pid_t(500 + i));
  REQUIRE(host.launches.empty());
  REQUIRE(set.all_ready());
  REQUIRE(set.record(kSignerd).adopted);
  set.exited(kSignerd, ExitStatus::unknown());
  REQUIRE(set.record(kSignerd).phase == StagePhase::kBackoff);
  clock.advance(100ms);
  set.tick();
  REQUIRE(host.launches == std::vector<std::size_t>{kSignerd});
}

}  // namespace flowseal::supervisor
