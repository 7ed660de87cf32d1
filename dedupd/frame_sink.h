// FrameSink: what the dedup engine emits, collected and written out as FlowEventBatch frames
// on dedupd's output ring. Shared by the stage (dedup_stage.cpp) and the callgrind gate
// (tests/perfgate), so that the gate measures the stage's own code.
//
// Records are copied at once (the engine's readers are short-lived) into a RecordBuffer as
// their canonical bytes; a start the engine held is handed over already canonical
// (emit_canonical) and is appended as it is, not traversed a second time.
#pragma once

#include <cstddef>
#include <functional>

#include "dedup_engine.h"
#include "record_buffer.h"
#include "ring.h"

namespace flowseal::dedupd {

class FrameSink final : public DedupSink {
 public:
  // Output frames carry at most this many events (~80 KiB): below the frame limit of the
  // smallest event ring (a quarter of 1 MiB).
  static constexpr std::size_t kEventsPerFrame = 256;

  // `give_up`: asked while the ring is full (ring_message.h RingMessageBuilder::write).
  FrameSink(RingProducer& producer, std::function<bool()> give_up)
      : producer_(producer), give_up_(std::move(give_up)) {}

  void emit(schema::FlowEvent::Reader event) override { pending_.add(event); }
  void emit_canonical(kj::ArrayPtr<const capnp::word> canonical, bool direct) override {
    pending_.add_canonical(canonical, direct);
  }

  // Writes and publishes everything emitted so far; returns how many records went out.
  // Throws std::runtime_error if a frame exceeds the ring's frame limit.
  std::size_t publish();

 private:
  RingProducer& producer_;
  std::function<bool()> give_up_;
  RecordBuffer pending_;
};

}  // namespace flowseal::dedupd
