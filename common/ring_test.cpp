// The frame ring over real POSIX shared memory: frames in one process (wrap, full, empty, bad
// headers), and across processes made with fork() (a long stream checked frame by frame, wakes
// that must never be lost, a consumer killed mid-stream and replaced, a producer that closes).
#include "ring.h"

#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <new>
#include <optional>
#include <string>
#include <thread>
#include <utility>

#include <catch2/catch.hpp>
#include <fmt/format.h>

#include "shm.h"

namespace flowseal {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool kSanitized = true;
#else
constexpr bool kSanitized = false;
#endif
// Sanitizers slow the checking loops about tenfold; keep each test well under 20 s there.
constexpr std::uint64_t kStreamFrames = kSanitized ? 300'000 : 3'000'000;
constexpr std::uint64_t kWakeRounds = kSanitized ? 4'000 : 20'000;
constexpr std::uint64_t kResumeFrames = kSanitized ? 60'000 : 400'000;

// With this sleep slice a lost wake is not a 20 ms hiccup but a wait that runs out: the tests
// below treat any such timeout as a failure.
constexpr auto kNoLostWakeSlice = std::chrono::milliseconds(60'000);
constexpr auto kWakeLimit = std::chrono::milliseconds(8'000);
constexpr auto kChildLimit = std::chrono::milliseconds(60'000);

// Every payload carries its sequence number and a checksum of the rest.
constexpr std::size_t kMinPayload = 12;

std::uint64_t mix(std::uint64_t x) {  // splitmix64
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

// Mostly small frames, some of an Ethernet MTU, now and then one of the largest allowed size.
std::size_t frame_size(std::uint64_t seq, std::size_t max_frame) {
  const std::uint64_t r = mix(seq);
  if (r % 1024 == 0) return max_frame;
  if (r % 64 == 1) return std::min<std::size_t>(1500, max_frame);
  return kMinPayload + (r >> 20) % 300;
}

std::uint32_t fnv1a(std::span<const std::byte> bytes) {
  std::uint32_t h = 2166136261u;
  for (std::byte b : bytes) h = (h ^ static_cast<std::uint8_t>(b)) * 16777619u;
  return h;
}

void fill_frame(std::span<std::byte> out, std::uint64_t seq) {
  std::memcpy(out.data(), &seq, sizeof seq);
  auto body = out.subspan(kMinPayload);
  std::uint64_t state = seq;
  for (std::size_t i = 0; i < body.size(); i += 8) {
    state = mix(state);
    std::memcpy(body.data() + i, &state, std::min<std::size_t>(8, body.size() - i));
  }
  const std::uint32_t sum = fnv1a(body);
  std::memcpy(out.data() + sizeof seq, &sum, sizeof sum);
}

// Empty when the frame is the expected one, else what is wrong with it.
std::string frame_error(std::span<const std::byte> frame, std::uint64_t seq,
                        std::size_t max_frame) {
  if (frame.size() != frame_size(seq, max_frame)) {
    return fmt::format("frame {} has {} bytes, expected {}", seq, frame.size(),
                       frame_size(seq, max_frame));
  }
  std::uint64_t got = 0;
  std::memcpy(&got, frame.data(), sizeof got);
  if (got != seq) return fmt::format("expected frame {}, got frame {}", seq, got);
  std::uint32_t sum = 0;
  std::memcpy(&sum, frame.data() + sizeof got, sizeof sum);
  if (sum != fnv1a(frame.subspan(kMinPayload))) {
    return fmt::format("frame {} of {} bytes fails its checksum", seq, frame.size());
  }
  return {};
}

std::uint64_t seq_of(std::span<const std::byte> frame) {
  std::uint64_t seq = ~std::uint64_t{0};
  if (frame.size() >= sizeof seq) std::memcpy(&seq, frame.data(), sizeof seq);
  return seq;
}

std::string shm_name(std::string_view tag) {
  return fmt::format("/flowseal.test.{}.{}", ::getpid(), tag);
}

// A formatted ring in its own shared-memory object; the name goes away with the object.
struct ShmRing {
  ShmRing(std::string_view tag, std::size_t capacity) : segment(make(tag, ring_bytes(capacity))) {
    ring_format(segment.bytes(), capacity);
  }
  static ShmSegment make(std::string_view tag, std::size_t bytes) {
    ShmSegment::remove(shm_name(tag));  // left over from a crashed run with our pid
    return ShmSegment::create(shm_name(tag), bytes);
  }
  std::span<std::byte> memory() const { return segment.bytes(); }
  RingHeader& header() const { return ring_attach(memory()); }
  std::byte* data() const { return memory().data() + sizeof(RingHeader); }
  RingCounters counters() const { return ring_counters(header()); }

  ShmSegment segment;
};

// What a child process tells the test, in shared memory (the child's exit code says only
// whether it failed; this says what and where).
struct ChildReport {
  std::atomic<std::uint64_t> checked;     // frames the child verified
  std::atomic<std::uint64_t> committing;  // commit point (in frames) about to be stored
  std::atomic<std::uint64_t> committed;   // commit point (in frames) stored
  std::atomic<std::uint32_t> parked;      // the child stopped where the test asked
  char error[256];
};

struct SharedReport {
  explicit SharedReport(std::string_view tag)
      : segment(ShmRing::make(fmt::format("{}.report", tag), sizeof(ChildReport))),
        report(new (segment.bytes().data()) ChildReport{}) {}
  ChildReport* operator->() const { return report; }
  std::string error() const { return std::string(report->error, strnlen(report->error, 255)); }

  ShmSegment segment;
  ChildReport* report;
};

// Records what went wrong in the report and returns the child's failing exit code.
int child_fails(ChildReport& report, const std::string& what) {
  std::snprintf(report.error, sizeof report.error, "%s", what.c_str());
  return 1;
}

// A forked child running `body`; its exit code is body's result. The destructor kills (by
// pid, SIGKILL) and reaps a child the test did not reap, so a failing REQUIRE leaves nothing.
class Child {
 public:
  template <class Body>
  explicit Child(Body&& body) : pid_(::fork()) {
    if (pid_ == 0) {
      int code = 2;
      try {
        code = body();
      } catch (...) {
        code = 3;
      }
      ::_exit(code);  // no atexit handlers, no Catch2 reporting, no buffered output twice
    }
    if (pid_ < 0) throw std::runtime_error("fork failed");
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  ~Child() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      int status = 0;
      ::waitpid(pid_, &status, 0);
    }
  }

  // Waits up to `limit` for the child to exit; a child still running then is killed.
  // Returns the exit code, or -signal if it was killed by a signal, or -1000 on timeout.
  int reap(std::chrono::milliseconds limit) {
    const auto deadline = Clock::now() + limit;
    int status = 0;
    for (;;) {
      const pid_t r = ::waitpid(pid_, &status, WNOHANG);
      if (r == pid_) break;
      if (r < 0) return -2000;
      if (Clock::now() >= deadline) {
        ::kill(pid_, SIGKILL);
        ::waitpid(pid_, &status, 0);
        pid_ = -1;
        return -1000;
      }
      std::this_thread::sleep_for(1ms);
    }
    pid_ = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
  }
  void kill_now() {
    if (pid_ > 0) ::kill(pid_, SIGKILL);
  }

 private:
  pid_t pid_;
};

// Waits (bounded) until `done()` holds.
template <class Cond>
bool eventually(Cond done, std::chrono::milliseconds limit) {
  const auto deadline = Clock::now() + limit;
  while (!done()) {
    if (Clock::now() >= deadline) return false;
    std::this_thread::sleep_for(100us);
  }
  return true;
}

// Busy-waits a pseudo-random few microseconds, to land the other side's wake at every point of
// its way into the futex.
void jitter(std::uint64_t r) {
  const auto until = Clock::now() + std::chrono::nanoseconds(r % 20'000);
  while (Clock::now() < until) {
  }
}

bool produce(RingProducer& producer, std::uint64_t seq, std::size_t size,
             std::chrono::milliseconds timeout) {
  auto slot = producer.reserve(size, timeout);
  if (slot.data() == nullptr) return false;
  fill_frame(slot, seq);
  producer.commit(size);
  return true;
}

// The initiator's half of a ping-pong round: waits for the responder's pong `round` and
// takes it; empty if it came, else what went wrong.
std::string take_pong(RingConsumer& in, std::uint64_t round) {
  if (!in.wait(kWakeLimit)) return fmt::format("pong {} never woke the initiator", round);
  auto frame = in.next();
  const bool right = frame && seq_of(*frame) == round;
  in.advance();
  in.commit();
  return right ? std::string() : fmt::format("pong {} missing or wrong", round);
}

}  // namespace

// ------------------------------------------------------------------------- one process

TEST_CASE("frames round-trip in order through a ring that wraps many times") {
  ShmRing ring("wrap", 4096);
  RingProducer producer(ring.memory());
  RingConsumer consumer(ring.memory());
  const std::size_t max_frame = producer.max_frame();
  REQUIRE(max_frame == 4096 / 4 - 8);

  std::uint64_t written = 0;
  std::uint64_t read = 0;
  std::uint64_t bytes = 0;
  std::string error;
  for (std::uint64_t round = 0; round < 20'000 && error.empty(); ++round) {
    // A burst of up to 8 frames, as many as fit, published at once...
    for (std::uint64_t n = mix(round) % 8 + 1; n > 0; --n) {
      const std::size_t size = frame_size(written, max_frame);
      auto slot = producer.try_reserve(size);
      if (slot.data() == nullptr) break;
      fill_frame(slot, written);
      producer.commit(size);
      ++written;
      bytes += size;
    }
    producer.publish();
    // ...then up to 8 frames read back and committed.
    for (std::uint64_t n = mix(round + 1) % 8 + 1; n > 0 && error.empty(); --n) {
      auto frame = consumer.next();
      if (!frame) break;
      error = frame_error(*frame, read, max_frame);
      consumer.advance();
      ++read;
    }
    consumer.commit();
  }
  while (auto frame = consumer.next()) {
    if (!error.empty()) break;
    error = frame_error(*frame, read, max_frame);
    consumer.advance();
    ++read;
  }
  consumer.commit();
  INFO(error);
  REQUIRE(error.empty());
  CHECK(read == written);
  CHECK(bytes > 200 * 4096);  // many wraps
  const RingCounters c = ring.counters();
  CHECK(c.frames_in == written);
  CHECK(c.frames_out == written);
  CHECK(c.bytes_in == bytes);
  CHECK(c.bytes_out == bytes);
  CHECK(c.bad_frames == 0);
  CHECK(consumer.used_bytes() == 0);
}

TEST_CASE("a frame is freed for the producer only when the consumer commits it") {
  ShmRing ring("full", 4096);
  RingProducer producer(ring.memory());
  RingConsumer consumer(ring.memory());

  int frames = 0;
  while (true) {
    auto slot = producer.try_reserve(100);
    if (slot.data() == nullptr) break;
    fill_frame(slot, static_cast<std::uint64_t>(frames));
    producer.commit(100);
    ++frames;
  }
  CHECK(frames == 4096 / (8 + 104));
  // reserve() on a full ring publishes what it has, then gives up after its timeout.
  CHECK(producer.reserve(100, 20ms).data() == nullptr);
  CHECK(ring.counters().full_waits == 1);
  CHECK(ring.counters().frames_in == static_cast<std::uint64_t>(frames));

  // Reading without committing frees nothing: a crash would need those frames again.
  for (int i = 0; i < 2; ++i) {
    REQUIRE(consumer.next().has_value());
    consumer.advance();
  }
  CHECK(consumer.uncommitted_frames() == 2);
  CHECK(producer.try_reserve(100).data() == nullptr);

  consumer.commit();
  CHECK(consumer.uncommitted_frames() == 0);
  // Two 112-byte frames are free; the new frame does not fit in the 64 bytes before the end,
  // so it wraps to offset 0.
  auto slot = producer.try_reserve(100);
  REQUIRE(slot.data() != nullptr);
  CHECK(slot.data() == ring.data() + sizeof(FrameHeader));
  fill_frame(slot, 1000);
  producer.commit(100);
  producer.publish();
  for (int i = 2; i < frames; ++i) {
    auto frame = consumer.next();
    REQUIRE(frame.has_value());
    CHECK(seq_of(*frame) == static_cast<std::uint64_t>(i));
    consumer.advance();
  }
  auto wrapped = consumer.next();
  REQUIRE(wrapped.has_value());
  CHECK(wrapped->size() == 100);
  CHECK(seq_of(*wrapped) == 1000);
  consumer.advance();
  consumer.commit();
  CHECK(!consumer.next().has_value());
}

TEST_CASE("an empty ring has no frame, waits out its timeout and drains once closed") {
  ShmRing ring("empty", 4096);
  RingProducer producer(ring.memory());
  RingConsumer consumer(ring.memory());

  CHECK(!consumer.next().has_value());
  CHECK(!consumer.wait(5ms));
  CHECK(!consumer.drained());
  CHECK(!consumer.closed());

  REQUIRE(produce(producer, 0, 40, 0ms));
  producer.close();
  CHECK(consumer.closed());
  CHECK(!consumer.drained());  // closed, but a frame is still unread
  CHECK(consumer.wait(5ms));
  REQUIRE(consumer.next().has_value());
  consumer.advance();
  CHECK(consumer.drained());
  consumer.commit();
  CHECK(!consumer.wait(5ms));

  // A restarted producer reopens the ring and frames flow again.
  RingProducer successor(ring.memory());
  successor.reopen();
  CHECK(!consumer.closed());
  CHECK(!consumer.drained());
  REQUIRE(produce(successor, 1, 40, 0ms));
  successor.publish();
  auto frame = consumer.next();
  REQUIRE(frame.has_value());
  CHECK(frame->size() == 40);
  CHECK(seq_of(*frame) == 1);
}

TEST_CASE("zero-length and largest frames round-trip and a larger one is refused") {
  ShmRing ring("sizes", 4096);
  RingProducer producer(ring.memory());
  RingConsumer consumer(ring.memory());
  const std::size_t max_frame = producer.max_frame();

  // A zero-length frame is a success, not a "full" answer.
  CHECK(producer.write({}, 0ms));
  std::vector<std::byte> big(max_frame, std::byte{0x5A});
  CHECK(producer.write(big, 0ms));
  CHECK(producer.try_reserve(max_frame + 1).data() == nullptr);
  CHECK(producer.reserve(max_frame + 1, 1000ms).data() == nullptr);  // at once, no wait
  CHECK(ring.counters().full_waits == 0);
  producer.commit(7);  // no reservation: ignored

  auto empty = consumer.next();
  REQUIRE(empty.has_value());
  CHECK(empty->size() == 0);
  consumer.advance();
  auto largest = consumer.next();
  REQUIRE(largest.has_value());
  CHECK(largest->size() == max_frame);
  CHECK(std::equal(largest->begin(), largest->end(), big.begin()));
  consumer.advance();
  CHECK(!consumer.next().has_value());
  CHECK(ring.counters().frames_in == 2);
}

TEST_CASE("a frame committed shorter than reserved carries only the committed bytes") {
  ShmRing ring("short", 4096);
  RingProducer producer(ring.memory());
  RingConsumer consumer(ring.memory());
  auto slot = producer.try_reserve(500);
  REQUIRE(slot.size() == 500);
  fill_frame(slot.first(100), 0);
  producer.commit(100);
  REQUIRE(produce(producer, 1, frame_size(1, 1016), 0ms));
  producer.publish();
  auto frame = consumer.next();
  REQUIRE(frame.has_value());
  CHECK(frame->size() == 100);
  CHECK(seq_of(*frame) == 0);
  consumer.advance();
  // The next frame follows right after the 100 committed bytes, not after the 500 reserved.
  frame = consumer.next();
  REQUIRE(frame.has_value());
  CHECK(frame->data() == ring.data() + 8 + 104 + 8);
  CHECK(frame_error(*frame, 1, 1016) == "");
  consumer.advance();
  CHECK(ring.counters().bytes_in == 100 + frame_size(1, 1016));
}

// ------------------------------------------------------------------------- headers

TEST_CASE("attaching to memory that is not a ring names what does not match") {
  ShmRing ring("header", 4096);
  RingHeader& header = ring.header();

  SECTION("bad magic") {
    header.magic = 0x1234;
    REQUIRE_THROWS_WITH(ring_attach(ring.memory()), Catch::Contains("magic 0x1234"));
    REQUIRE_THROWS_WITH(RingConsumer(ring.memory()), Catch::Contains("magic"));
    REQUIRE_THROWS_WITH(RingProducer(ring.memory()), Catch::Contains("magic"));
  }
  SECTION("wrong layout version") {
    header.layout_version = RingHeader::kLayoutVersion + 1;
    REQUIRE_THROWS_WITH(ring_attach(ring.memory()), Catch::Contains("layout version 2"));
  }
  SECTION("capacity larger than the mapping") {
    header.capacity = 8192;
    header.max_frame = 8192 / 4 - 8;
    REQUIRE_THROWS_WITH(ring_attach(ring.memory()), Catch::Contains("capacity 8192 does not fit"));
  }
  SECTION("mapping shorter than the ring") {
    REQUIRE_THROWS_WITH(ring_attach(ring.memory().first(ring_bytes(4096) - 8)),
                        Catch::Contains("does not fit its"));
    REQUIRE_THROWS_WITH(ring_attach(ring.memory().first(16)), Catch::Contains("too small"));
  }
  SECTION("capacity that is not a power of two") {
    header.capacity = 3000;
    REQUIRE_THROWS_WITH(ring_attach(ring.memory()), Catch::Contains("capacity 3000"));
  }
  SECTION("max frame that does not match the capacity") {
    header.max_frame = 4096;
    REQUIRE_THROWS_WITH(ring_attach(ring.memory()), Catch::Contains("max frame 4096"));
  }
}

TEST_CASE("formatting refuses a capacity that is not a power of two or does not fit") {
  ShmRing ring("format", 8192);
  REQUIRE_THROWS_WITH(ring_format(ring.memory(), 6000), Catch::Contains("power of two"));
  REQUIRE_THROWS_WITH(ring_format(ring.memory(), 2048), Catch::Contains("power of two"));
  REQUIRE_THROWS_WITH(ring_format(ring.memory(), 16384), Catch::Contains("smaller"));
  REQUIRE_THROWS_WITH(ring_format(ring.memory().subspan(8), 4096), Catch::Contains("aligned"));
}

// ------------------------------------------------------------------------- bad frames

namespace {

// Five 40-byte frames (48 bytes each in the ring) published from offset 0.
struct FiveFrames {
  explicit FiveFrames(std::string_view tag) : ring(tag, 4096) {
    RingProducer producer(ring.memory());
    for (std::uint64_t seq = 0; seq < 5; ++seq) {
      auto slot = producer.try_reserve(40);
      fill_frame(slot, seq);
      producer.commit(40);
    }
    producer.publish();
    // Everything past the published frames is poison a careless reader would return.
    std::memset(ring.data() + 5 * 48, 0xEE, 4096 - 5 * 48);
  }
  FrameHeader& frame_header(int index) const {
    return *std::launder(reinterpret_cast<FrameHeader*>(ring.data() + index * 48));
  }
  ShmRing ring;
};

}  // namespace

TEST_CASE("a frame whose check word fails is counted and skipped with the rest published") {
  FiveFrames five("badcheck");
  five.frame_header(2).check ^= 0x100;
  RingConsumer consumer(five.ring.memory());
  for (std::uint64_t seq = 0; seq < 2; ++seq) {
    auto frame = consumer.next();
    REQUIRE(frame.has_value());
    CHECK(seq_of(*frame) == seq);
    consumer.advance();
  }
  CHECK(!consumer.next().has_value());
  CHECK(five.ring.counters().bad_frames == 1);
  CHECK(!consumer.next().has_value());  // the stretch is gone, not re-counted
  CHECK(five.ring.counters().bad_frames == 1);
  consumer.commit();
  CHECK(consumer.used_bytes() == 0);  // the skipped bytes went back to the producer

  // Frames published after the bad stretch are read normally.
  RingProducer producer(five.ring.memory());
  REQUIRE(produce(producer, 7, frame_size(7, 1016), 0ms));
  producer.publish();
  auto frame = consumer.next();
  REQUIRE(frame.has_value());
  CHECK(frame_error(*frame, 7, 1016) == "");
}

TEST_CASE("a frame length pointing past the ring's capacity is counted and never followed") {
  FiveFrames five("badlength");
  const std::uint32_t huge = 3 * 4096;
  five.frame_header(1) = FrameHeader{huge, huge ^ FrameHeader::kCheck};
  RingConsumer consumer(five.ring.memory());
  REQUIRE(consumer.next().has_value());
  consumer.advance();
  CHECK(!consumer.next().has_value());
  CHECK(five.ring.counters().bad_frames == 1);
}

TEST_CASE("a well-formed length that runs past the published frames is not followed") {
  FiveFrames five("pasthead");
  // 400 bytes passes the check word and max_frame, and fits before the end of the area, but
  // only 48 bytes of frame 4 are published: the rest is the poison.
  five.frame_header(4) = FrameHeader{400, 400 ^ FrameHeader::kCheck};
  RingConsumer consumer(five.ring.memory());
  for (std::uint64_t seq = 0; seq < 4; ++seq) {
    auto frame = consumer.next();
    REQUIRE(frame.has_value());
    CHECK(seq_of(*frame) == seq);
    consumer.advance();
  }
  CHECK(!consumer.next().has_value());
  CHECK(five.ring.counters().bad_frames == 1);
}

TEST_CASE("a wrap marker that claims more than is published is not followed") {
  FiveFrames five("badwrap");
  // A wrap marker at offset 48 would skip 4048 bytes, far past the 240 published.
  five.frame_header(1) =
      FrameHeader{FrameHeader::kWrapMarker, FrameHeader::kWrapMarker ^ FrameHeader::kCheck};
  RingConsumer consumer(five.ring.memory());
  REQUIRE(consumer.next().has_value());
  consumer.advance();
  CHECK(!consumer.next().has_value());
  CHECK(five.ring.counters().bad_frames == 1);
  consumer.commit();
  CHECK(consumer.used_bytes() == 0);
}

TEST_CASE("a tail that is not 8-byte aligned is counted and skipped and never read from") {
  // Found by tests/fuzz/fuzz_ring.cpp: a tail left unaligned by whatever wrote the mapping made
  // next() read a header at that offset; near the end of the area the header ran past the
  // mapping, and here it would hand out a frame Cap'n Proto cannot read in place.
  ShmRing ring("unaligned", 4096);
  RingHeader& header = ring.header();
  const FrameHeader frame{8, 8 ^ FrameHeader::kCheck};
  std::memcpy(ring.data() + 4, &frame, sizeof frame);
  header.tail.store(4);
  header.head.store(4 + 16);
  RingConsumer consumer(ring.memory());
  CHECK(!consumer.next().has_value());
  CHECK(ring.counters().bad_frames == 1);
  // Near the end of the area: the header would straddle it.
  header.bad_frames.store(0);
  header.tail.store(4096 - 3);
  header.head.store(4096 - 3 + 16);
  RingConsumer late(ring.memory());
  CHECK(!late.next().has_value());
  CHECK(ring.counters().bad_frames == 1);
}

TEST_CASE("a head further ahead than the ring holds is counted and skipped, not walked") {
  // Found by tests/fuzz/fuzz_ring.cpp (corpus/ring/wrap-at-zero-far-head): a wrap marker at
  // offset 0 under a head 2^63 bytes ahead made next() skip the whole area to the same marker
  // again, 2^63 / 4096 times (libFuzzer's timeout; a stage's heartbeat stopped the same way).
  ShmRing ring("farhead", 4096);
  RingHeader& header = ring.header();
  const FrameHeader wrap{FrameHeader::kWrapMarker, FrameHeader::kWrapMarker ^ FrameHeader::kCheck};
  std::memcpy(ring.data(), &wrap, sizeof wrap);
  header.tail.store(0);
  header.head.store(std::uint64_t{1} << 63);
  RingConsumer consumer(ring.memory());
  CHECK(!consumer.next().has_value());
  CHECK(ring.counters().bad_frames == 1);
  // Twice the capacity: before, the marker was skipped twice, silently, to the head.
  header.bad_frames.store(0);
  header.head.store(2 * 4096);
  RingConsumer twice(ring.memory());
  CHECK(!twice.next().has_value());
  CHECK(ring.counters().bad_frames == 1);
}

TEST_CASE("a producer refuses a shared head that frames could not have left") {
  // Unaligned, the head would put a wrap marker up to 7 bytes past the data area; before the
  // tail or more than a ring ahead of it, the ring's contents are nonsense.
  ShmRing ring("badhead", 4096);
  RingHeader& header = ring.header();
  header.tail.store(0);
  header.head.store(4096 - 3);
  CHECK_THROWS_WITH(RingProducer(ring.memory()), Catch::Contains("damaged shared memory"));
  header.tail.store(64);
  header.head.store(32);
  CHECK_THROWS(RingProducer(ring.memory()));
  header.head.store(64 + 4096 + 8);
  CHECK_THROWS(RingProducer(ring.memory()));
  header.head.store(64 + 4096);  // exactly full: fine
  CHECK_NOTHROW(RingProducer(ring.memory()));
}

TEST_CASE("every single-bit flip in a frame header is detected") {
  int undetected = 0;
  for (int bit = 0; bit < 64; ++bit) {
    FiveFrames five(fmt::format("flip{}", bit));
    auto* raw = reinterpret_cast<std::uint8_t*>(&five.frame_header(3));
    raw[bit / 8] ^= static_cast<std::uint8_t>(1u << (bit % 8));
    RingConsumer consumer(five.ring.memory());
    std::uint64_t good = 0;
    while (auto frame = consumer.next()) {
      if (seq_of(*frame) == good) ++good;
      consumer.advance();
    }
    if (good != 3 || five.ring.counters().bad_frames != 1) ++undetected;
  }
  CHECK(undetected == 0);
}

// ------------------------------------------------------------------------- two processes

TEST_CASE("millions of frames cross two processes intact with both sides sleeping on the futex") {
  ShmRing ring("stream", 64 * 1024);
  SharedReport report("stream");
  const std::size_t max_frame = 64 * 1024 / 4 - 8;

  Child consumer_child([&] {
    RingConsumer consumer(ring.memory());
    consumer.set_sleep_slice(kNoLostWakeSlice);
    std::uint64_t seq = 0;
    for (;;) {
      auto frame = consumer.next();
      if (!frame) {
        consumer.commit();  // before sleeping: a full producer waits for exactly this
        if (consumer.drained()) break;
        if (!consumer.wait(kWakeLimit) && !consumer.closed()) {
          return child_fails(*report.report,
                             fmt::format("no frame within {} ms after frame {}: a wake was lost",
                                         kWakeLimit.count(), seq));
        }
        continue;
      }
      if (auto error = frame_error(*frame, seq, max_frame); !error.empty()) {
        return child_fails(*report.report, error);
      }
      consumer.advance();
      ++seq;
      if (consumer.uncommitted_frames() == 16) consumer.commit();
      // Now and then the consumer falls behind, so the producer fills the ring and sleeps.
      if (seq % (kStreamFrames / 8) == 0) std::this_thread::sleep_for(2ms);
    }
    report->checked = seq;
    return seq == kStreamFrames
               ? 0
               : child_fails(*report.report, fmt::format("drained after {} frames", seq));
  });

  RingProducer producer(ring.memory());
  producer.set_sleep_slice(kNoLostWakeSlice);
  std::uint64_t batch_left = 1;
  bool produced_all = true;
  for (std::uint64_t seq = 0; seq < kStreamFrames; ++seq) {
    if (!produce(producer, seq, frame_size(seq, max_frame), kWakeLimit)) {
      produced_all = false;
      break;
    }
    // Publish after 1..64 frames: batches of every size, and every frame end a batch can have.
    if (--batch_left == 0) {
      producer.publish();
      batch_left = mix(seq ^ 0xBA7C4) % 64 + 1;
    }
    // Now and then the producer pauses, so the consumer empties the ring and sleeps.
    if (seq % (kStreamFrames / 8) == kStreamFrames / 16) {
      producer.publish();
      std::this_thread::sleep_for(2ms);
    }
  }
  producer.close();
  const int exit_code = consumer_child.reap(kChildLimit);
  INFO(report.error());
  CHECK(produced_all);
  REQUIRE(exit_code == 0);
  const RingCounters c = ring.counters();
  CHECK(c.frames_in == kStreamFrames);
  CHECK(c.frames_out == kStreamFrames);
  CHECK(c.bytes_in == c.bytes_out);
  CHECK(c.bad_frames == 0);
  CHECK(c.full_waits > 0);
}

TEST_CASE("a sleeping side is always woken: no wait runs out in a ping-pong across processes") {
  ShmRing ping("ping", 4096);
  ShmRing pong("pong", 4096);
  SharedReport report("pingpong");

  Child responder([&] {
    RingConsumer in(ping.memory());
    RingProducer out(pong.memory());
    in.set_sleep_slice(kNoLostWakeSlice);
    for (std::uint64_t round = 0; round < kWakeRounds; ++round) {
      if (!in.wait(kWakeLimit)) {
        return child_fails(*report.report, fmt::format("ping {} never woke the responder", round));
      }
      auto frame = in.next();
      if (!frame || seq_of(*frame) != round) {
        return child_fails(*report.report, fmt::format("ping {} missing or wrong", round));
      }
      in.advance();
      in.commit();
      jitter(mix(round));
      if (!produce(out, round, kMinPayload, kWakeLimit)) {
        return child_fails(*report.report, fmt::format("pong ring full at {}", round));
      }
      out.publish();
    }
    return 0;
  });

  RingProducer out(ping.memory());
  RingConsumer in(pong.memory());
  in.set_sleep_slice(kNoLostWakeSlice);
  std::string error;
  for (std::uint64_t round = 0; round < kWakeRounds && error.empty(); ++round) {
    if (!produce(out, round, kMinPayload, kWakeLimit)) {
      error = fmt::format("ping ring full at {}", round);
      break;
    }
    out.publish();
    jitter(mix(round + 7));
    error = take_pong(in, round);
  }
  const int exit_code = responder.reap(kChildLimit);
  INFO(error);
  INFO(report.error());
  CHECK(error.empty());
  CHECK(exit_code == 0);
}

TEST_CASE("a consumer asleep on several rings is woken by a frame on any of them") {
  // dedupd behind N flowd shards: one futex_waitv on every ring's wake word. The pings come
  // on two rings in a seeded order; the responder sleeps on both with a slice so long that a
  // lost wake shows as a timeout.
  ShmRing ping0("anyping0", 4096);
  ShmRing ping1("anyping1", 4096);
  ShmRing pong("anypong", 4096);
  SharedReport report("anypong");
  const std::uint64_t rounds = kWakeRounds / 4;

  Child responder([&] {
    std::array<RingConsumer, 2> in = {RingConsumer(ping0.memory()), RingConsumer(ping1.memory())};
    for (auto& c : in) c.set_sleep_slice(kNoLostWakeSlice);
    RingProducer out(pong.memory());
    for (std::uint64_t round = 0; round < rounds; ++round) {
      if (!RingConsumer::wait_any(in, kWakeLimit)) {
        return child_fails(*report.report, fmt::format("ping {} never woke the responder", round));
      }
      RingConsumer& from = in[mix(round) % 2];
      auto frame = from.next();
      if (!frame || seq_of(*frame) != round) {
        return child_fails(*report.report, fmt::format("ping {} missing or wrong", round));
      }
      from.advance();
      from.commit();
      if (!produce(out, round, kMinPayload, kWakeLimit)) {
        return child_fails(*report.report, fmt::format("pong ring full at {}", round));
      }
      out.publish();
    }
    return 0;
  });

  std::array<RingProducer, 2> out = {RingProducer(ping0.memory()), RingProducer(ping1.memory())};
  RingConsumer in(pong.memory());
  in.set_sleep_slice(kNoLostWakeSlice);
  std::string error;
  const auto started = Clock::now();
  for (std::uint64_t round = 0; round < rounds && error.empty(); ++round) {
    RingProducer& to = out[mix(round) % 2];
    jitter(mix(round + 3));  // sometimes the responder is asleep already, sometimes not yet
    if (!produce(to, round, kMinPayload, kWakeLimit)) {
      error = fmt::format("ping ring full at {}", round);
      break;
    }
    to.publish();
    error = take_pong(in, round);
  }
  const int exit_code = responder.reap(kChildLimit);
  INFO(error);
  INFO(report.error());
  CHECK(error.empty());
  CHECK(exit_code == 0);
  // Not a wait of a whole slice anywhere: every round was woken, none timed out.
  CHECK(Clock::now() - started < kWakeLimit);
}

TEST_CASE("a wait on several idle rings sleeps out its timeout, not a poll loop") {
  ShmRing a("idlea", 4096);
  ShmRing b("idleb", 4096);
  std::array<RingConsumer, 2> in = {RingConsumer(a.memory()), RingConsumer(b.memory())};
  auto sleeps = [] {  // voluntary context switches of this thread: one per sleep
    rusage usage{};
    getrusage(RUSAGE_THREAD, &usage);
    return usage.ru_nvcsw;
  };
  const auto t0 = Clock::now();
  const long before = sleeps();
  CHECK_FALSE(RingConsumer::wait_any(in, 200ms));
  const long slept = sleeps() - before;
  const auto waited = Clock::now() - t0;
  CHECK(waited >= 190ms);
  CHECK(waited < (kSanitized ? 5000ms : 2000ms));
  // One sleep (a few with the membarrier's IPIs); the 2 ms poll of before slept 100 times.
  CHECK(slept <= 5);
}

TEST_CASE("a producer sleeping on a full ring is always woken by the consumer's commit") {
  // Three of the largest frames fill a 4 KiB ring, so nearly every frame makes one side sleep.
  ShmRing ring("fullwake", 4096);
  SharedReport report("fullwake");
  const std::size_t max_frame = 4096 / 4 - 8;

  Child consumer_child([&] {
    RingConsumer consumer(ring.memory());
    consumer.set_sleep_slice(kNoLostWakeSlice);
    for (std::uint64_t seq = 0; seq < kWakeRounds; ++seq) {
      if (!consumer.wait(kWakeLimit)) {
        return child_fails(*report.report, fmt::format("frame {} never woke the consumer", seq));
      }
      auto frame = consumer.next();
      if (!frame || frame->size() != max_frame || seq_of(*frame) != seq) {
        return child_fails(*report.report, fmt::format("frame {} missing or wrong", seq));
      }
      consumer.advance();
      jitter(mix(seq));
      consumer.commit();
    }
    return 0;
  });

  RingProducer producer(ring.memory());
  producer.set_sleep_slice(kNoLostWakeSlice);
  std::string error;
  for (std::uint64_t seq = 0; seq < kWakeRounds; ++seq) {
    auto slot = producer.reserve(max_frame, kWakeLimit);
    if (slot.data() == nullptr) {
      error = fmt::format("frame {}: the full producer was never woken", seq);
      break;
    }
    std::memcpy(slot.data(), &seq, sizeof seq);
    producer.commit(max_frame);
    producer.publish();
    jitter(mix(seq ^ 0xF00D) / 2);
  }
  const int exit_code = consumer_child.reap(kChildLimit);
  INFO(error);
  INFO(report.error());
  CHECK(error.empty());
  CHECK(exit_code == 0);
  CHECK(ring.counters().full_waits > 0);
}

namespace {

// A producer child writing `frames` frames of up to 1500 bytes, then closing the ring.
int produce_stream(std::span<std::byte> memory, std::uint64_t frames, ChildReport& report) {
  RingProducer producer(memory);
  producer.set_sleep_slice(kNoLostWakeSlice);
  for (std::uint64_t seq = 0; seq < frames; ++seq) {
    // Waits through the consumer's death and replacement.
    if (!produce(producer, seq, frame_size(seq, 1500), std::chrono::milliseconds(30'000))) {
      return child_fails(report, fmt::format("producer: no room for frame {} in 30 s", seq));
    }
    if (seq % 8 == 7) producer.publish();
  }
  producer.close();
  return 0;
}

// A consumer that checks frames from `first` on, commits after every frame whose number is a
// multiple of `every` (and, if `commit_when_idle`, before it sleeps, as a stage does), and
// tells `report` where it is. `stop_at`: frames after which it parks, holding the next frame
// read but not advanced past, until it is killed.
int consume_stream(std::span<std::byte> memory, std::uint64_t first, std::uint64_t every,
                   bool commit_when_idle, std::optional<std::uint64_t> stop_at,
                   ChildReport& report) {
  RingConsumer consumer(memory);
  consumer.set_sleep_slice(kNoLostWakeSlice);
  std::uint64_t seq = first;
  auto commit = [&] {
    report.committing.store(seq, std::memory_order_seq_cst);
    consumer.commit();
    report.committed.store(seq, std::memory_order_seq_cst);
  };
  for (;;) {
    auto frame = consumer.next();
    if (!frame) {
      if (commit_when_idle) commit();
      if (consumer.drained()) return 0;
      if (!consumer.wait(kWakeLimit) && !consumer.closed()) {
        return child_fails(report, fmt::format("consumer: no frame after {}", seq));
      }
      continue;
    }
    if (stop_at && seq == *stop_at) {
      report.parked.store(1);
      std::this_thread::sleep_for(kChildLimit);  // killed long before
      return child_fails(report, "consumer: parked but not killed");
    }
    if (auto error = frame_error(*frame, seq, 1500); !error.empty()) {
      return child_fails(report, "consumer: " + error);
    }
    report.checked.store(seq + 1, std::memory_order_seq_cst);
    consumer.advance();
    ++seq;
    if (seq % every == 0) commit();
  }
}

// The test process takes over as consumer: the frames it reads must start at the committed
// point and run on without a gap to the end. Returns the first sequence number it read.
std::uint64_t resume_and_check(std::span<std::byte> memory, std::uint64_t frames,
                               std::string& error) {
  RingConsumer consumer(memory);
  consumer.set_sleep_slice(kNoLostWakeSlice);
  std::optional<std::uint64_t> first;
  std::uint64_t seq = 0;
  const auto deadline = Clock::now() + kChildLimit;
  while (error.empty()) {
    auto frame = consumer.next();
    if (!frame) {
      consumer.commit();
      if (consumer.drained()) break;
      if (Clock::now() > deadline) error = fmt::format("successor stuck after frame {}", seq);
      consumer.wait(kWakeLimit);
      continue;
    }
    if (!first) first = seq = seq_of(*frame);
    error = frame_error(*frame, seq, 1500);
    consumer.advance();
    consumer.commit();
    ++seq;
  }
  if (error.empty() && seq != frames) {
    error = fmt::format("successor ended at frame {} of {}", seq, frames);
  }
  return first.value_or(~std::uint64_t{0});
}

}  // namespace

TEST_CASE("a consumer killed past its last commit is replaced by one resuming exactly there") {
  ShmRing ring("resume", 64 * 1024);
  SharedReport producer_report("resume.producer");
  SharedReport report("resume.consumer");
  constexpr std::uint64_t kEvery = 10;
  const std::uint64_t stop_at = kResumeFrames / 4 + 3;  // 3 frames read after the last commit

  Child producer_child(
      [&] { return produce_stream(ring.memory(), kResumeFrames, *producer_report.report); });
  Child first_consumer([&] {
    // Without idle commits the commit points are exactly the multiples of kEvery (at most 10
    // frames of 1500 bytes stay uncommitted: the producer never starves).
    return consume_stream(ring.memory(), 0, kEvery, false, stop_at, *report.report);
  });
  REQUIRE(eventually([&] { return report->parked.load() == 1; }, kChildLimit));
  first_consumer.kill_now();
  CHECK(first_consumer.reap(kChildLimit) == -SIGKILL);
  INFO(report.error());
  REQUIRE(report->checked.load() == stop_at);
  const std::uint64_t committed = report->committed.load();
  CHECK(committed == stop_at - 3);  // these frames had to stay in the ring

  std::string error;
  const std::uint64_t first = resume_and_check(ring.memory(), kResumeFrames, error);
  INFO(error);
  CHECK(error.empty());
  // Nothing lost: the successor starts at or before the first frame its predecessor did not
  // see; only the uncommitted frames come twice.
  CHECK(first == committed);
  CHECK(stop_at - first == 3);
  CHECK(producer_child.reap(kChildLimit) == 0);
  INFO(producer_report.error());
  CHECK(ring.counters().bad_frames == 0);
}

TEST_CASE(
    "a consumer killed at a random moment loses nothing and repeats only what it had not "
    "committed") {
  ShmRing ring("randomkill", 64 * 1024);
  SharedReport producer_report("randomkill.producer");
  SharedReport report("randomkill.consumer");
  constexpr std::uint64_t kEvery = 7;
  const std::uint64_t kill_after =
      kResumeFrames / 3 + mix(static_cast<std::uint64_t>(::getpid())) % 1000;

  Child producer_child(
      [&] { return produce_stream(ring.memory(), kResumeFrames, *producer_report.report); });
  Child first_consumer(
      [&] { return consume_stream(ring.memory(), 0, kEvery, true, std::nullopt, *report.report); });
  REQUIRE(eventually([&] { return report->checked.load() >= kill_after; }, kChildLimit));
  first_consumer.kill_now();  // wherever it is: reading, checking, committing
  CHECK(first_consumer.reap(kChildLimit) == -SIGKILL);
  INFO(report.error());
  const std::uint64_t checked = report->checked.load();
  const std::uint64_t committing = report->committing.load();
  const std::uint64_t committed = report->committed.load();
  REQUIRE(checked >= kill_after);
  REQUIRE(checked < kResumeFrames);

  std::string error;
  const std::uint64_t first = resume_and_check(ring.memory(), kResumeFrames, error);
  INFO(error);
  CHECK(error.empty());
  INFO(fmt::format("checked {} committing {} committed {} successor first {}", checked, committing,
                   committed, first));
  // The successor starts exactly at the commit point the killed consumer stored (or was
  // storing when it died), never after a frame it did not check: nothing lost.
  CHECK((first == committed || first == committing));
  CHECK(first <= checked);
  // Repeats are only the frames checked after that commit: fewer than one commit interval.
  CHECK(checked - first <= kEvery);
  CHECK(producer_child.reap(kChildLimit) == 0);
  INFO(producer_report.error());
}

}  // namespace flowseal
