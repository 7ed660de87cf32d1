// Helpers for a stage that consumes frames from one or more input rings and produces frames
// on one output ring, under the commit-after-use rule: an input frame is committed only after
// everything it produced is published downstream.
#pragma once

#include <chrono>
#include <span>
#include <string>
#include <vector>

#include "ring.h"
#include "shm.h"
#include "stage_runtime.h"

namespace flowseal {

// Longest sleep of a stage on idle input. A stage sleeps until a frame comes, its own next
// timer is due, or its heartbeat is (heartbeat_every(), stage_runtime.h: at most this); a
// signal (restart, stop) interrupts the sleep. An idle stage thus wakes about once a second,
// each wake a futex timeout and one membarrier.
inline constexpr std::chrono::milliseconds kIdleWait{1000};

// How long a stage that has something due at `due` sleeps on idle input: until then, at
// least 1 ms (a due time just past never spins), at most kIdleWait (FrameLoop then bounds
// it by the stage's heartbeat interval).
std::chrono::milliseconds idle_wait(std::chrono::steady_clock::time_point due,
                                    std::chrono::steady_clock::time_point now);
// The same for a due time in nanoseconds of one clock (flowd: realtime, as packet times).
std::chrono::milliseconds idle_wait_ns(std::int64_t due_ns, std::int64_t now_ns);

// The input rings of a stage, read round-robin (by FrameLoop, frame_loop.h).
class RingInputs {
 public:
  RingInputs(const StageRuntime& runtime, const std::vector<std::string>& edges);
  // Rings mapped already (tests): `segments[i]` holds the ring of `edges[i]`.
  RingInputs(std::vector<ShmSegment> segments, std::vector<std::string> edges);

  std::size_t size() const { return consumers_.size(); }
  RingConsumer& operator[](std::size_t i) { return consumers_[i]; }
  // The edge name of input `i` ("flows.1"), for logs.
  const std::string& edge(std::size_t i) const { return edges_[i]; }
  // True when every producer closed its ring and every frame was read.
  bool drained() const;
  // Sleeps until some ring has a frame (or timeout); cheap when data is already there.
  void wait(std::chrono::milliseconds timeout);

 private:
  std::vector<ShmSegment> segments_;
  std::vector<std::string> edges_;
  std::vector<RingConsumer> consumers_;
};

// A stage's single output ring (reopened on start: a restarted stage produces again).
class RingOutput {
 public:
  RingOutput(const StageRuntime& runtime, std::string_view edge);
  RingProducer& producer() { return producer_; }

 private:
  ShmSegment segment_;
  RingProducer producer_;
};

}  // namespace flowseal
