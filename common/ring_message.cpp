#include "ring_message.h"

#include <algorithm>
#include <cstdint>
#include <cstring>

#include <capnp/serialize.h>

#include "capnp_frame.h"

namespace flowseal {

namespace {
constexpr std::size_t kTableBytes = 8;  // segment table of a one-segment message
}  // namespace

RingMessageBuilder::RingMessageBuilder(RingProducer& producer, std::size_t words)
    : producer_(producer), words_(std::max<std::size_t>(words, 1)) {
  slot_ = producer_.try_reserve(kTableBytes + words_ * sizeof(capnp::word));
  if (slot_.data() == nullptr) {
    slot_ = {};
    return;
  }
  // Cap'n Proto writes only what is set: the segment must start zeroed.
  std::memset(slot_.data() + kTableBytes, 0, words_ * sizeof(capnp::word));
}

kj::ArrayPtr<capnp::word> RingMessageBuilder::allocateSegment(unsigned minimum_words) {
  if (!first_given_) {
    first_given_ = true;
    if (!slot_.empty() && minimum_words <= words_) {
      return {reinterpret_cast<capnp::word*>(slot_.data() + kTableBytes), words_};
    }
    slot_ = {};
  }
  const std::size_t size = std::max<std::size_t>(minimum_words, heap_.empty() ? words_ : 1024);
  heap_.push_back(kj::heapArray<capnp::word>(size));
  std::memset(heap_.back().begin(), 0, size * sizeof(capnp::word));
  return heap_.back();
}

bool RingMessageBuilder::in_ring() const { return first_given_ && !slot_.empty() && heap_.empty(); }

bool RingMessageBuilder::write(const std::function<bool()>& give_up,
                               std::chrono::milliseconds wait) {
  if (in_ring()) {
    const auto segments = getSegmentsForOutput();
    const std::size_t used = segments.size() == 1 ? segments[0].size() : 0;
    const std::uint64_t table = std::uint64_t{used} << 32;  // one segment of `used` words
    std::memcpy(slot_.data(), &table, kTableBytes);
    producer_.commit(kTableBytes + used * sizeof(capnp::word));
    return true;
  }
  if (slot_.empty()) return write_message(producer_, *this, give_up, wait);
  // Spilled out of the reserved frame: its first segment is in that frame, which the new
  // reservation may overlap, so the flat copy is made first.
  slot_ = {};
  const kj::Array<capnp::word> flat = capnp::messageToFlatArray(*this);
  const auto bytes = flat.asBytes();
  if (bytes.size() > producer_.max_frame()) return false;
  std::span<std::byte> slot;
  while ((slot = producer_.reserve(bytes.size(), wait)).empty()) {
    if (give_up()) return false;
  }
  std::memcpy(slot.data(), bytes.begin(), bytes.size());
  producer_.commit(bytes.size());
  return true;
}

}  // namespace flowseal
