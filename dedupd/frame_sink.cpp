#include "frame_sink.h"

#include <algorithm>
#include <stdexcept>

#include "ring_message.h"

namespace flowseal::dedupd {

std::size_t FrameSink::publish() {
  const std::size_t total = pending_.size();
  for (std::size_t at = 0; at < total; at += kEventsPerFrame) {
    const std::size_t n = std::min(kEventsPerFrame, total - at);
    // Built in its ring frame at its exact size (ring_message.h: no heap segment zeroed and
    // copied into the ring).
    RingMessageBuilder message(producer_, pending_.words(at, n));
    pending_.build(at, n, message);
    if (!message.write(give_up_)) {
      throw std::runtime_error("a FlowEventBatch exceeds the output ring's frame limit");
    }
  }
  if (total > 0) producer_.publish();
  pending_.clear();
  return total;
}

}  // namespace flowseal::dedupd
