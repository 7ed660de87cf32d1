// libFuzzer target: ring frame validation (common/ring.h). A ring lives in shared memory that
// a crashed or hostile process may have left in any state, so the consumer must never follow
// a header outside the data area, and ring_attach() must refuse an identity that does not fit
// the mapping. Two modes, chosen by the first byte:
//   even: "hostile memory" - the input supplies the header's identity fields (optionally),
//         the shared tail and head, and the bytes of the data area; a consumer attaches and
//         reads everything published. Every frame it returns must lie inside the data area.
//   odd:  "model check" - the input is a script of producer and consumer operations on a
//         fresh ring; every frame the consumer reads must be exactly what was written, in
//         order, whatever the wraps.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <span>
#include <stdexcept>
#include <vector>

#include "ring.h"

namespace {

using flowseal::FrameHeader;
using flowseal::RingConsumer;
using flowseal::RingHeader;
using flowseal::RingProducer;

constexpr std::size_t kCapacity = 4096;

struct Input {
  const std::uint8_t* data;
  std::size_t size;
  std::size_t at = 0;
  std::uint64_t take(std::size_t n) {
    std::uint64_t v = 0;
    for (std::size_t i = 0; i < n && at < size; ++i) v |= std::uint64_t{data[at++]} << (8 * i);
    return v;
  }
  bool empty() const { return at >= size; }
};

struct Mapping {
  // Exactly ring_bytes(kCapacity): ASan catches a read one byte past the data area.
  std::size_t size = flowseal::ring_bytes(kCapacity);
  std::byte* memory = static_cast<std::byte*>(std::aligned_alloc(64, size));
  Mapping() {
    std::memset(memory, 0, size);
    flowseal::ring_format({memory, size}, kCapacity);
  }
  ~Mapping() { std::free(memory); }
  RingHeader& header() { return *reinterpret_cast<RingHeader*>(memory); }
  std::byte* data() { return memory + sizeof(RingHeader); }
  std::span<std::byte> span() { return {memory, size}; }
};

void hostile(Input& in) {
  Mapping ring;
  RingHeader& h = ring.header();
  const std::uint64_t flags = in.take(1);
  if (flags & 1) {
    h.layout_version = static_cast<std::uint32_t>(in.take(1)) == 0 ? RingHeader::kLayoutVersion : 7;
    h.capacity = std::uint64_t{1} << (in.take(1) % 64);
    h.max_frame = in.take(4);
  }
  const std::uint64_t tail = in.take(8);
  const std::uint64_t published = in.take(2) % (3 * kCapacity);
  h.tail.store(tail);
  h.head.store(flags & 2 ? in.take(8) : tail + published);
  for (std::size_t i = 0; i < kCapacity && !in.empty(); ++i) {
    ring.data()[i] = static_cast<std::byte>(in.take(1));
  }
  std::unique_ptr<RingConsumer> consumer;
  try {
    consumer = std::make_unique<RingConsumer>(ring.span());
  } catch (const std::runtime_error&) {
    return;  // refused: what every stage does with a ring it cannot trust
  }
  const std::byte* lo = ring.data();
  const std::byte* hi = ring.data() + kCapacity;
  for (int i = 0; i < 4096; ++i) {
    auto frame = consumer->next();
    if (!frame) break;
    if (frame->data() < lo || frame->data() + frame->size() > hi) std::abort();
    // Touch every byte so ASan checks the whole span.
    volatile std::uint8_t sum = 0;
    for (std::byte b : *frame) sum = sum + static_cast<std::uint8_t>(b);
    consumer->advance();
    if (i % 3 == 0) consumer->commit();
  }
  consumer->commit();
  (void)flowseal::ring_counters(ring.header());
}

void model(Input& in) {
  Mapping ring;
  RingProducer producer(ring.span());
  RingConsumer consumer(ring.span());
  std::deque<std::vector<std::uint8_t>> committed;  // written, not yet published
  std::deque<std::vector<std::uint8_t>> visible;    // published, not yet read
  std::uint8_t stamp = 0;
  bool freed = true;  // the consumer committed after its last read
  while (!in.empty()) {
    const std::uint64_t op = in.take(1);
    switch (op % 4) {
      case 0: {  // reserve + commit a frame of some length (maybe shorter than reserved)
        const std::size_t length = in.take(2) % (producer.max_frame() + 64);
        const std::size_t final_length = length == 0 ? 0 : length - in.take(1) % (length + 1);
        auto slot = producer.try_reserve(length);
        if (slot.data() == nullptr) {
          if (length <= producer.max_frame() && visible.empty() && committed.empty() &&
              consumer.uncommitted_frames() == 0 && freed) {
            std::abort();  // an empty, freed ring must take any frame up to max_frame()
          }
          break;
        }
        if (slot.size() != length) std::abort();
        std::vector<std::uint8_t> payload(final_length);
        for (auto& b : payload) b = stamp++;
        if (final_length > 0) std::memcpy(slot.data(), payload.data(), final_length);
        producer.commit(final_length);
        committed.push_back(std::move(payload));
        break;
      }
      case 1:
        producer.publish();
        while (!committed.empty()) {
          visible.push_back(std::move(committed.front()));
          committed.pop_front();
        }
        break;
      case 2: {  // read some frames
        const std::uint64_t n = in.take(1) % 8;
        for (std::uint64_t i = 0; i < n; ++i) {
          auto frame = consumer.next();
          if (!frame) {
            if (!visible.empty()) std::abort();  // a published frame went missing
            break;
          }
          if (visible.empty()) std::abort();  // a frame nobody published
          const auto& want = visible.front();
          if (frame->size() != want.size() ||
              (!want.empty() && std::memcmp(frame->data(), want.data(), want.size()) != 0)) {
            std::abort();
          }
          visible.pop_front();
          consumer.advance();
          freed = false;
        }
        break;
      }
      case 3:
        consumer.commit();
        freed = true;
        break;
    }
  }
  if (ring.header().bad_frames.load() != 0) std::abort();  // nothing here is corrupt
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  Input in{data, size};
  if (in.take(1) % 2 == 0) {
    hostile(in);
  } else {
    model(in);
  }
  return 0;
}
