// FrameLoop: the one loop of every stage that consumes rings (flowd, dedupd, signerd, writerd).
// A stage supplies what it does with a frame; the loop does the rest, the same way for all.
//
// Contract, per pass:
//   1. A signal to the process (SIGTERM: `flowseal restart`, an abort; or the supervisor
//      died) ends the loop at once with exit_code::kTempFail, between frames even when busy:
//      whatever is not committed is replayed by the next process.
//   2. The heartbeat is kept, `before_pass` runs, then each input is read once, round-robin:
//      at most one frame per input per pass, so no input starves the others.
//   3. A frame goes to `on_frame`, which returns what may happen to it now:
//        kCommit: everything it produced is published downstream (for writerd: durable) —
//                 the loop frees it, and every earlier frame of that input, for the producer;
//        kHold:   what it produced is not out yet (an open batch, dedup state): the loop only
//                 moves past it; it stays in the ring until the stage calls commit(input), and
//                 a process that dies before that replays it;
//        kStop:   return value of stop(code): the loop ends now with `code`, the frame
//                 neither passed nor committed (it is replayed).
//      Commit-after-use is the stage's promise in this answer; the loop never commits a
//      frame on its own, except a bad one as below.
//   4. A frame whose handler throws kj::Exception (a malformed Cap'n Proto message, a
//      KJ_REQUIRE that failed) is bad: counted in the stage's bad-frame counter, logged
//      through the RateLimitedLog (at most once per interval, with the count since), then
//      `on_bad_frame` settles what the frame did before it failed, and the frame is skipped.
//      It is committed at once if its input holds no frames, else held with them (committing
//      it would free the held frames before their output is out). Never a crash. Any other
//      exception is not bad input: it leaves the loop (the stage's main turns it into an
//      exit code).
//   5. `after_pass(progressed)` runs; if some input had a frame, the next pass starts.
//   6. Otherwise, once every producer closed its ring and every frame was read, run()
//      returns exit_code::kOk: the stage then flushes, commits what it holds and closes its
//      output. Not drained and not signalled: `on_idle` does the work due while idle and
//      says how long to sleep; the loop sleeps on the input futexes until a frame comes, that
//      time is up, the heartbeat is due (LoopProcess::idle_slice) or a signal comes.
//
// Everything here is single-threaded; a frame span stays valid until its input is committed.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "rate_limited_log.h"
#include "ring_io.h"
#include "stage_runtime.h"

namespace flowseal {

enum class FrameUse { kCommit, kHold, kStop };

// What a stage does; only on_frame is required.
struct FrameHandlers {
  std::function<FrameUse(std::span<const std::byte> frame, std::size_t input)> on_frame;
  // After a bad frame was counted and logged, before the loop skips it.
  std::function<void(std::size_t input)> on_bad_frame;
  std::function<void()> before_pass;
  // `progressed`: some input had a frame in this pass. Runs before the drain check.
  std::function<void(bool progressed)> after_pass;
  // Work due while idle; returns how long to sleep until the stage's next timer (kIdleWait
  // if not set or nothing is due; the loop wakes for the heartbeat anyway).
  std::function<std::chrono::milliseconds()> on_idle;
};

// What the loop needs of the process around it: StageRuntime in a stage, fakes in tests.
struct LoopProcess {
  std::function<bool()> signalled;
  std::function<void()> heartbeat;
  std::atomic<std::uint64_t>* bad_frames;  // the stage's bad-frame counter
  // Longest idle sleep: the heartbeat must be kept this often (heartbeat_every()).
  std::chrono::milliseconds idle_slice = kIdleWait;
};

// The process of a stage whose bad frames are counted in its counter `bad_frame_counter`.
LoopProcess stage_process(StageRuntime& runtime, std::size_t bad_frame_counter);

class FrameLoop {
 public:
  // `frame_kind` names the message a frame holds in the log ("PacketBatch").
  FrameLoop(LoopProcess process, RingInputs& inputs, RateLimitedLog& log, std::string frame_kind);

  // Runs until drained (exit_code::kOk) or until the process must leave (its exit code).
  int run(const FrameHandlers& handlers);

  // Frees every frame of `input` the loop has moved past (call once their output is out).
  void commit(std::size_t input);
  void commit_all();
  // Bytes of `input`'s ring held by frames moved past and not committed.
  std::size_t uncommitted_bytes(std::size_t input) const { return uncommitted_[input]; }
  // From on_frame: `return loop.stop(code);` ends the loop with `code`.
  FrameUse stop(int code) {
    stop_code_ = code;
    return FrameUse::kStop;
  }

 private:
  void count_bad_frame(std::size_t input, const char* why);

  LoopProcess process_;
  RingInputs& inputs_;
  RateLimitedLog& log_;
  std::string frame_kind_;
  std::vector<std::size_t> uncommitted_;
  int stop_code_ = 0;
};

}  // namespace flowseal
