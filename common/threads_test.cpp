// The ring, the futex handshake and the control block with both sides as threads over one
// shared mapping. ring_test.cpp runs producer and consumer in two processes (fork), as the
// stages do, which ThreadSanitizer cannot see; these are the same protocols between threads,
// so that the TSan build (./setup --tsan, suite 'tsan') checks every access the two sides
// make to the shared memory. They also run in the normal and ASan builds.
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>
#include <fmt/format.h>
#include <new>
#include <unistd.h>

#include "control_block.h"
#include "futex.h"
#include "ring.h"
#include "shm.h"

namespace flowseal {
namespace {

using namespace std::chrono_literals;

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool kSanitized = true;
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer) || __has_feature(address_sanitizer)
constexpr bool kSanitized = true;
#else
constexpr bool kSanitized = false;
#endif
#else
constexpr bool kSanitized = false;
#endif
constexpr std::uint64_t kFrames = kSanitized ? 200'000 : 2'000'000;
constexpr std::uint64_t kRounds = kSanitized ? 3'000 : 20'000;
// A lost wake shows as a wait that runs out, not as a short delay (see ring.h).
constexpr auto kNoLostWakeSlice = 60'000ms;
constexpr auto kWakeLimit = 8'000ms;

std::uint64_t mix(std::uint64_t x) {  // splitmix64
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

std::size_t frame_size(std::uint64_t seq, std::size_t max_frame) {
  const std::uint64_t r = mix(seq);
  if (r % 512 == 0) return max_frame;
  return 8 + (r >> 20) % 200;
}

// The payload: the seq, then bytes derived from it, so a frame read early, late, torn or
// twice does not match.
void fill(std::span<std::byte> out, std::uint64_t seq) {
  std::memcpy(out.data(), &seq, sizeof seq);
  for (std::size_t i = sizeof seq; i < out.size(); ++i) {
    out[i] = static_cast<std::byte>(mix(seq + i));
  }
}

std::string frame_error(std::span<const std::byte> frame, std::uint64_t seq,
                        std::size_t max_frame) {
  if (frame.size() != frame_size(seq, max_frame)) {
    return fmt::format("frame {}: {} bytes, expected {}", seq, frame.size(),
                       frame_size(seq, max_frame));
  }
  std::uint64_t got = 0;
  std::memcpy(&got, frame.data(), sizeof got);
  if (got != seq) return fmt::format("expected frame {}, got {}", seq, got);
  for (std::size_t i = sizeof seq; i < frame.size(); ++i) {
    if (frame[i] != static_cast<std::byte>(mix(seq + i))) {
      return fmt::format("frame {}: byte {} differs", seq, i);
    }
  }
  return {};
}

// One shared-memory object, mapped once and used by both threads.
struct SharedRing {
  explicit SharedRing(std::string_view tag, std::size_t capacity)
      : name(fmt::format("/flowseal.test.{}.threads.{}", ::getpid(), tag)),
        segment((ShmSegment::remove(name), ShmSegment::create(name, ring_bytes(capacity)))) {
    ring_format(segment.bytes(), capacity);
  }
  ~SharedRing() { ShmSegment::remove(name); }
  std::span<std::byte> memory() const { return segment.bytes(); }
  std::string name;
  ShmSegment segment;
};

TEST_CASE("threads: a long stream crosses the ring intact with both sides sleeping") {
  SharedRing ring("stream", 16 * 1024);
  const std::size_t max_frame = 16 * 1024 / 4 - 8;
  std::string consumer_error;
  std::uint64_t consumed = 0;

  std::thread consumer_thread([&] {
    RingConsumer consumer(ring.memory());
    consumer.set_sleep_slice(kNoLostWakeSlice);
    for (;;) {
      auto frame = consumer.next();
      if (!frame) {
        consumer.commit();
        if (consumer.drained()) break;
        if (!consumer.wait(kWakeLimit) && !consumer.closed()) {
          consumer_error = fmt::format("no frame within {} after frame {}: a lost wake",
                                       kWakeLimit.count(), consumed);
          return;
        }
        continue;
      }
      if (auto error = frame_error(*frame, consumed, max_frame); !error.empty()) {
        consumer_error = error;
        return;
      }
      consumer.advance();
      ++consumed;
      if (consumer.uncommitted_frames() == 8) consumer.commit();
      if (consumed % (kFrames / 8) == 0) std::this_thread::sleep_for(2ms);  // the ring fills
    }
  });

  RingProducer producer(ring.memory());
  producer.set_sleep_slice(kNoLostWakeSlice);
  bool produced_all = true;
  std::uint64_t batch_left = 1;
  for (std::uint64_t seq = 0; seq < kFrames; ++seq) {
    auto slot = producer.reserve(frame_size(seq, max_frame), kWakeLimit);
    if (slot.data() == nullptr) {
      produced_all = false;  // the consumer died, or a wake was lost
      break;
    }
    fill(slot, seq);
    producer.commit(slot.size());
    if (--batch_left == 0) {
      producer.publish();
      batch_left = mix(seq ^ 0xB) % 32 + 1;
    }
    if (seq % (kFrames / 8) == kFrames / 16) {  // the consumer empties the ring and sleeps
      producer.publish();
      std::this_thread::sleep_for(2ms);
    }
  }
  producer.publish();
  producer.close();
  consumer_thread.join();
  INFO(consumer_error);
  CHECK(produced_all);
  CHECK(consumer_error.empty());
  CHECK(consumed == kFrames);
  const RingCounters c = ring_counters(ring_attach(ring.memory()));
  CHECK(c.frames_in == kFrames);
  CHECK(c.frames_out == kFrames);
  CHECK(c.bytes_in == c.bytes_out);
  CHECK(c.bad_frames == 0);
}

TEST_CASE("threads: a ping-pong over two rings never loses a wake") {
  SharedRing ping("ping", 4096);
  SharedRing pong("pong", 4096);
  std::string responder_error;

  std::thread responder([&] {
    RingConsumer in(ping.memory());
    RingProducer out(pong.memory());
    in.set_sleep_slice(kNoLostWakeSlice);
    out.set_sleep_slice(kNoLostWakeSlice);
    for (std::uint64_t round = 0; round < kRounds; ++round) {
      if (!in.wait(kWakeLimit)) {
        responder_error = fmt::format("ping {} never woke the responder", round);
        return;
      }
      auto frame = in.next();
      std::uint64_t got = ~std::uint64_t{0};
      if (frame && frame->size() == sizeof got) std::memcpy(&got, frame->data(), sizeof got);
      if (got != round) {
        responder_error = fmt::format("ping {} missing or wrong", round);
        return;
      }
      in.advance();
      in.commit();  // the frame is the producer's again: reply from the copy
      const std::span<const std::byte> reply(reinterpret_cast<const std::byte*>(&got), sizeof got);
      if (!out.write(reply, kWakeLimit)) {
        responder_error = fmt::format("pong ring full at {}", round);
        return;
      }
    }
  });

  RingProducer out(ping.memory());
  RingConsumer in(pong.memory());
  in.set_sleep_slice(kNoLostWakeSlice);
  out.set_sleep_slice(kNoLostWakeSlice);
  std::string error;
  for (std::uint64_t round = 0; round < kRounds && error.empty(); ++round) {
    const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(&round),
                                           sizeof round);
    if (!out.write(bytes, kWakeLimit)) {
      error = fmt::format("ping ring full at {}", round);
      break;
    }
    if (!in.wait(kWakeLimit)) {
      error = fmt::format("pong {} never woke the initiator", round);
      break;
    }
    auto frame = in.next();
    std::uint64_t got = ~std::uint64_t{0};
    if (frame && frame->size() == sizeof got) std::memcpy(&got, frame->data(), sizeof got);
    if (got != round) error = fmt::format("pong {} missing or wrong", round);
    in.advance();
    in.commit();
  }
  if (!error.empty()) out.close();
  responder.join();
  INFO(error);
  INFO(responder_error);
  CHECK(error.empty());
  CHECK(responder_error.empty());
}

TEST_CASE("threads: futex_wait returns once the word changes and futex_wake_all is called") {
  // The word lives in shared memory, as the rings' futex words do.
  const std::string name = fmt::format("/flowseal.test.{}.threads.futex", ::getpid());
  ShmSegment::remove(name);
  ShmSegment segment = ShmSegment::create(name, 4096);
  auto* word = new (segment.bytes().data()) std::atomic<std::uint32_t>(0);
  constexpr std::uint32_t kGaveUp = ~std::uint32_t{0};
  std::atomic<std::uint32_t> done{0};  // the last value the main thread saw
  std::thread waker([&] {
    for (std::uint32_t i = 1; i <= kRounds; ++i) {
      // Wait until the main thread has seen the previous value.
      for (std::uint32_t seen = done.load(std::memory_order_acquire); seen != i - 1;
           seen = done.load(std::memory_order_acquire)) {
        if (seen == kGaveUp) return;
        futex_wait(done, seen, 100ms);
      }
      word->store(i, std::memory_order_release);
      futex_wake_all(*word);
    }
  });
  bool all_seen = true;
  for (std::uint32_t i = 1; i <= kRounds; ++i) {
    const auto deadline = std::chrono::steady_clock::now() + kWakeLimit;
    while (word->load(std::memory_order_acquire) != i) {
      if (std::chrono::steady_clock::now() > deadline) break;
      futex_wait(*word, i - 1, kWakeLimit);
    }
    if (word->load(std::memory_order_acquire) != i) {
      all_seen = false;
      done.store(kGaveUp, std::memory_order_release);
      futex_wake_all(done);
      break;
    }
    done.store(i, std::memory_order_release);
    futex_wake_all(done);
  }
  waker.join();
  ShmSegment::remove(name);
  CHECK(all_seen);
}

TEST_CASE("threads: stages write their slots while the supervisor reads the control block") {
  const std::string name = fmt::format("/flowseal.test.{}.threads.control", ::getpid());
  ShmSegment::remove(name);
  constexpr std::size_t kShards = 2;
  ShmSegment segment = ShmSegment::create(name, sizeof(ControlBlock));
  ControlBlock& created = control_block_format(segment.bytes(), kShards);
  const std::size_t slots = created.slot_count();
  constexpr std::uint64_t kBeats = kSanitized ? 20'000 : 200'000;

  // Each stage thread attaches on its own, as a stage process does, and is its slot's only
  // writer; the supervisor thread reads every slot and asks them all to stop.
  std::vector<std::thread> stages;
  for (std::size_t s = 0; s < slots; ++s) {
    stages.emplace_back([&, s] {
      ControlBlock& control = control_block_attach(segment.bytes());
      StageSlot& slot = control.slots[s];
      slot.pid.store(static_cast<std::int32_t>(1000 + s), std::memory_order_relaxed);
      slot.state.store(static_cast<std::uint32_t>(StageState::kRunning), std::memory_order_release);
      for (std::uint64_t beat = 1; beat <= kBeats; ++beat) {
        slot.heartbeat_ns.store(monotonic_ns(), std::memory_order_relaxed);
        slot.counters[0].store(beat, std::memory_order_relaxed);
        slot.counters[1].fetch_add(2, std::memory_order_relaxed);
        if (control.stop_requested.load(std::memory_order_acquire) != 0) break;
      }
      slot.ready_ns.store(monotonic_ns(), std::memory_order_release);
    });
  }
  ControlBlock& control = control_block_attach(segment.bytes());
  std::uint64_t reads = 0;
  bool monotone = true;
  std::vector<std::uint64_t> last(slots, 0);
  for (int pass = 0; pass < 2000; ++pass) {
    for (std::size_t s = 0; s < control.slot_count(); ++s) {
      const std::uint64_t beats = control.slots[s].counters[0].load(std::memory_order_relaxed);
      if (beats < last[s]) monotone = false;
      last[s] = beats;
      (void)slot_name(control, s);
      ++reads;
    }
  }
  control.stop_requested.store(1, std::memory_order_release);
  for (auto& t : stages) t.join();
  for (std::size_t s = 0; s < slots; ++s) {
    const std::uint64_t beats = control.slots[s].counters[0].load(std::memory_order_acquire);
    CHECK(control.slots[s].counters[1].load() == 2 * beats);
    CHECK(control.slots[s].ready_ns.load() != 0);
  }
  ShmSegment::remove(name);
  CHECK(monotone);
  CHECK(reads > 0);
}

}  // namespace
}  // namespace flowseal
