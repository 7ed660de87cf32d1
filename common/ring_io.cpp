#include "ring_io.h"

#include <algorithm>
#include <utility>

namespace flowseal {

namespace {

std::vector<ShmSegment> open_rings(const StageRuntime& runtime,
                                   const std::vector<std::string>& edges) {
  std::vector<ShmSegment> segments;
  segments.reserve(edges.size());
  for (const auto& edge : edges) segments.push_back(runtime.open_ring(edge));
  return segments;
}

}  // namespace

RingInputs::RingInputs(const StageRuntime& runtime, const std::vector<std::string>& edges)
    : RingInputs(open_rings(runtime, edges), edges) {}

RingInputs::RingInputs(std::vector<ShmSegment> segments, std::vector<std::string> edges)
    : segments_(std::move(segments)), edges_(std::move(edges)) {
  consumers_.reserve(segments_.size());
  for (const auto& segment : segments_) consumers_.emplace_back(segment.bytes());
}

std::chrono::milliseconds idle_wait_ns(std::int64_t due_ns, std::int64_t now_ns) {
  if (due_ns <= now_ns) return std::chrono::milliseconds(1);
  const std::int64_t ms = (due_ns - now_ns) / 1'000'000 + 1;  // rounded up: never early
  return std::chrono::milliseconds(std::clamp<std::int64_t>(ms, 1, kIdleWait.count()));
}

std::chrono::milliseconds idle_wait(std::chrono::steady_clock::time_point due,
                                    std::chrono::steady_clock::time_point now) {
  if (due == std::chrono::steady_clock::time_point::max()) return kIdleWait;
  return idle_wait_ns(
      std::chrono::duration_cast<std::chrono::nanoseconds>(due.time_since_epoch()).count(),
      std::chrono::duration_cast<std::chrono::nanoseconds>(now.time_since_epoch()).count());
}

bool RingInputs::drained() const {
  return std::all_of(consumers_.begin(), consumers_.end(),
                     [](const RingConsumer& c) { return c.drained(); });
}

void RingInputs::wait(std::chrono::milliseconds timeout) {
  // Several producers: one sleep on all their rings (before, a 2 ms poll of each woke an
  // idle dedupd behind 2 shards 500 times a second).
  RingConsumer::wait_any(consumers_, timeout);
}

RingOutput::RingOutput(const StageRuntime& runtime, std::string_view edge)
    : segment_(runtime.open_ring(edge)), producer_(segment_.bytes()) {
  producer_.reopen();
}

}  // namespace flowseal
