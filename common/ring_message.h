// RingMessageBuilder: a Cap'n Proto message built in place in its ring frame.
//
// write_message() (capnp_frame.h) copies a finished message into the ring, and the builder
// it copies from first needed its segment zeroed (calloc, or a reused scratch segment that
// MallocMessageBuilder zeroes again after use). A RingMessageBuilder instead reserves the
// frame up front, zeroes just that, and hands it to Cap'n Proto as the message's one segment;
// write() then only puts the segment table in front and commits: one pass over the bytes
// instead of three.
//
// The frame is reserved only if the ring has room at once (try_reserve), for `words` words,
// the caller's upper bound of the message (e.g. flow_event_batch_words()). Otherwise, and
// when the message outgrows `words` (it then spills into heap segments), the message is
// built in heap memory and write() copies it as write_message() does, waiting for room the
// same way: the frames a consumer sees are the same either way, and so is every wait.
// Nothing else may reserve on the producer between construction and write().
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <span>
#include <vector>

#include <capnp/message.h>
#include <kj/array.h>

#include "ring.h"

namespace flowseal {

class RingMessageBuilder final : public capnp::MessageBuilder {
 public:
  RingMessageBuilder(RingProducer& producer, std::size_t words);
  RingMessageBuilder(const RingMessageBuilder&) = delete;
  RingMessageBuilder& operator=(const RingMessageBuilder&) = delete;

  kj::ArrayPtr<capnp::word> allocateSegment(unsigned minimum_words) override;

  // As write_message(): commits the message as one frame (does not publish); false only if
  // give_up() said so or the message exceeds the ring's frame limit.
  bool write(const std::function<bool()>& give_up,
             std::chrono::milliseconds wait = std::chrono::milliseconds(50));

  // True while the message is built in the reserved frame (no copy at write()).
  bool in_ring() const;

 private:
  RingProducer& producer_;
  std::size_t words_;
  std::span<std::byte> slot_;  // the reserved frame, or empty
  bool first_given_ = false;
  std::vector<kj::Array<capnp::word>> heap_;  // segments outside the ring
};

}  // namespace flowseal
