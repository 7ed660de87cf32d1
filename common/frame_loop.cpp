#include "frame_loop.h"

#include <algorithm>

#include <kj/exception.h>

#include "ring.h"

namespace flowseal {
namespace {

// Ring bytes a frame of `length` payload bytes takes: its header and the payload padded to 8.
std::size_t frame_footprint(std::size_t length) {
  return sizeof(FrameHeader) + ((length + 7) & ~std::size_t{7});
}

}  // namespace

LoopProcess stage_process(StageRuntime& runtime, std::size_t bad_frame_counter) {
  return LoopProcess{
      .signalled = [&runtime] { return runtime.signalled(); },
      .heartbeat = [&runtime] { runtime.heartbeat(); },
      .bad_frames = &runtime.counter(bad_frame_counter),
      .idle_slice = runtime.idle_slice(),
  };
}

FrameLoop::FrameLoop(LoopProcess process, RingInputs& inputs, RateLimitedLog& log,
                     std::string frame_kind)
    : process_(std::move(process)),
      inputs_(inputs),
      log_(log),
      frame_kind_(std::move(frame_kind)),
      uncommitted_(inputs.size(), 0) {}

int FrameLoop::run(const FrameHandlers& handlers) {
  for (;;) {
    if (process_.signalled()) return exit_code::kTempFail;
    process_.heartbeat();  // every pass: a busy stage never reaches the idle branch
    if (handlers.before_pass) handlers.before_pass();
    bool progressed = false;
    for (std::size_t i = 0; i < inputs_.size(); ++i) {
      RingConsumer& in = inputs_[i];
      const auto frame = in.next();
      if (!frame) continue;
      progressed = true;
      FrameUse use;
      try {
        use = handlers.on_frame(*frame, i);
      } catch (const kj::Exception& e) {
        count_bad_frame(i, e.getDescription().cStr());
        if (handlers.on_bad_frame) handlers.on_bad_frame(i);
        use = uncommitted_[i] > 0 ? FrameUse::kHold : FrameUse::kCommit;
      }
      if (use == FrameUse::kStop) return stop_code_;
      in.advance();
      uncommitted_[i] += frame_footprint(frame->size());
      if (use == FrameUse::kCommit) commit(i);
    }
    if (handlers.after_pass) handlers.after_pass(progressed);
    if (progressed) continue;
    if (inputs_.drained()) return exit_code::kOk;
    if (process_.signalled()) return exit_code::kTempFail;
    const std::chrono::milliseconds due = handlers.on_idle ? handlers.on_idle() : kIdleWait;
    process_.heartbeat();
    inputs_.wait(std::min(due, process_.idle_slice));
  }
}

void FrameLoop::commit(std::size_t input) {
  inputs_[input].commit();
  uncommitted_[input] = 0;
}

void FrameLoop::commit_all() {
  for (std::size_t i = 0; i < inputs_.size(); ++i) commit(i);
}

void FrameLoop::count_bad_frame(std::size_t input, const char* why) {
  process_.bad_frames->fetch_add(1, std::memory_order_relaxed);
  log_.warn("malformed frame", "skipped a malformed {} frame from {}: {}", frame_kind_,
            inputs_.edge(input), why);
}

}  // namespace flowseal
