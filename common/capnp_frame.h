// Cap'n Proto messages as ring frames.
//
// A frame holds one message in Cap'n Proto's flat-array form (segment table + segments), so
// the consumer reads it in place with a FlatArrayMessageReader: no copy, no allocation. The
// ring keeps frames 8-byte aligned, which is the word alignment the reader needs.
//
// A frame from shared memory is untrusted: a malformed one makes the reader throw
// kj::Exception when it is opened or traversed. FrameLoop (frame_loop.h) catches it around
// each frame, counts the frame as bad, logs it (rate-limited) and goes on — one bad frame
// never stops a stage.
#pragma once

#include <chrono>
#include <functional>
#include <span>

#include <capnp/message.h>
#include <capnp/serialize.h>

#include "flowseal.capnp.h"
#include "ring.h"

namespace flowseal {

// Reader limits for frames: generous for our largest batches, small enough that a forged
// frame cannot make a reader walk gigabytes.
capnp::ReaderOptions frame_reader_options();

// Views a frame's payload as Cap'n Proto words (requires the ring's 8-byte alignment).
kj::ArrayPtr<const capnp::word> as_words(std::span<const std::byte> frame);

// Writes `message` as one frame. Waits while the ring is full, up to `wait` at a time,
// checking `give_up` between waits; returns false only if give_up() said so (or the message
// exceeds max_frame). A live capture passes a zero wait: it must never sleep on a full ring
// while packets pile up in the kernel. Does not publish: call producer.publish() once per
// batch of frames.
bool write_message(RingProducer& producer, capnp::MessageBuilder& message,
                   const std::function<bool()>& give_up,
                   std::chrono::milliseconds wait = std::chrono::milliseconds(50));

// Words for a message builder's first segment so that a batch of `events` FlowEvents (a
// FlowEventBatch, or a SealedBatch's records plus `extra` words) is built as ONE segment. A
// message that spills into more segments reaches its records through far pointers, and
// Cap'n Proto looks each one up in a locked map: 2-3 k instructions per record in every
// stage that reads it (tests/perfgate). Per event: the struct, its two Direction structs and
// its byte lists (two addresses of up to 16 bytes, conn_state, history and Community ID of up
// to 32, two parents, a service of up to 32).
constexpr std::size_t flow_event_batch_words(std::size_t events, std::size_t extra = 64) {
  using Private = schema::FlowEvent::_capnpPrivate;
  using Side = schema::Direction::_capnpPrivate;
  return events * (Private::dataWordSize + Private::pointerCount + 2 * Side::dataWordSize + 20) +
         extra;
}

}  // namespace flowseal
