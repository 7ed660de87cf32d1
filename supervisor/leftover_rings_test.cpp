// count_leftover_frames: what a dead instance's ring held between its consumer's tail and its
// producer's head, read from an untrusted image: every header field checked, a bad frame
// stops the count where it is.
#include "leftover_rings.h"

#include <cstring>
#include <memory>
#include <vector>

#include <catch2/catch.hpp>

#include "ring.h"

namespace flowseal::supervisor {
namespace {

constexpr std::size_t kCapacity = 4096;

struct RingImage {
  std::vector<std::byte> bytes = std::vector<std::byte>(ring_bytes(kCapacity) + 64);
  std::span<std::byte> memory() {
    auto* p = bytes.data();
    p += (64 - reinterpret_cast<std::uintptr_t>(p) % 64) % 64;
    return {p, ring_bytes(kCapacity)};
  }
  RingHeader& header() { return *reinterpret_cast<RingHeader*>(memory().data()); }
  RingReadAt reader() {
    return [this](std::uint64_t offset, std::span<std::byte> out) {
      const auto mem = memory();
      if (offset > mem.size() || out.size() > mem.size() - offset) return false;
      std::memcpy(out.data(), mem.data() + offset, out.size());
      return true;
    };
  }
  LeftoverRing count(bool keep = true) {
    return count_leftover_frames(memory().size(), reader(), keep);
  }
};

std::vector<std::byte> payload(std::size_t n, unsigned char fill) {
  return std::vector<std::byte>(n, std::byte{fill});
}

void produce(RingProducer& producer, const std::vector<std::byte>& frame) {
  auto slot = producer.try_reserve(frame.size());
  REQUIRE(slot.data() != nullptr);
  std::memcpy(slot.data(), frame.data(), frame.size());
  producer.commit(frame.size());
  producer.publish();
}

TEST_CASE("the frames after the consumer's last commit are counted, payloads kept, across a wrap") {
  RingImage image;
  ring_format(image.memory(), kCapacity);
  RingProducer producer(image.memory());
  RingConsumer consumer(image.memory());
  // 900-byte frames: the fifth does not fit before the end and wraps to offset 0.
  for (unsigned char i = 0; i < 4; ++i) produce(producer, payload(900, i));
  REQUIRE(consumer.next());
  consumer.advance();
  REQUIRE(consumer.next());
  consumer.advance();
  consumer.commit();  // two consumed and committed
  REQUIRE(consumer.next());
  consumer.advance();  // read, not committed: still the dead consumer's
  produce(producer, payload(900, 4));
  const LeftoverRing ring = image.count();
  CHECK(ring.problem.empty());
  CHECK(ring.frames == 3);
  CHECK(ring.payload == 3 * 900);
  REQUIRE(ring.payloads.size() == 3);
  CHECK(ring.payloads[0] == payload(900, 2));
  CHECK(ring.payloads[2] == payload(900, 4));
  CHECK(ring.span_bytes == image.header().head.load() - image.header().tail.load());
  CHECK(image.count(false).payloads.empty());
}

TEST_CASE("an empty ring counts nothing and says nothing") {
  RingImage image;
  ring_format(image.memory(), kCapacity);
  const LeftoverRing ring = image.count();
  CHECK(ring.frames == 0);
  CHECK(ring.problem.empty());
}

TEST_CASE("forged header fields are refused, naming the field, with nothing counted") {
  RingImage image;
  ring_format(image.memory(), kCapacity);
  RingProducer producer(image.memory());
  produce(producer, payload(100, 1));
  RingHeader& h = image.header();
  SECTION("magic") {
    h.magic ^= 1;
    CHECK_THAT(image.count().problem, Catch::Contains("magic"));
  }
  SECTION("capacity") {
    h.capacity = kCapacity * 2;  // the object is too small for it
    CHECK_THAT(image.count().problem, Catch::Contains("bytes, not the"));
  }
  SECTION("capacity not a power of two") {
    h.capacity = kCapacity - 8;
    CHECK_THAT(image.count().problem, Catch::Contains("power of two"));
  }
  SECTION("max frame") {
    h.max_frame += 8;
    CHECK_THAT(image.count().problem, Catch::Contains("max frame"));
  }
  SECTION("tail past head") {
    h.tail.store(h.head.load() + 8);
    CHECK_THAT(image.count().problem, Catch::Contains("do not fit"));
  }
  SECTION("head more than a capacity ahead") {
    h.head.store(h.tail.load() + kCapacity + 8);
    CHECK_THAT(image.count().problem, Catch::Contains("do not fit"));
  }
  SECTION("a misaligned tail") {
    h.tail.store(4);
    CHECK_THAT(image.count().problem, Catch::Contains("do not fit"));
  }
  SECTION("layout version") {
    h.layout_version += 1;
    CHECK_THAT(image.count().problem, Catch::Contains("layout"));
  }
  CHECK(image.count().frames == 0);
}

TEST_CASE("a frame header that fails its check stops the count there; earlier frames stand") {
  RingImage image;
  ring_format(image.memory(), kCapacity);
  RingProducer producer(image.memory());
  produce(producer, payload(100, 1));
  produce(producer, payload(100, 2));
  produce(producer, payload(100, 3));
  // Each bit of the second frame's header, flipped: never followed, never counted.
  const std::size_t second = sizeof(RingHeader) + 8 + 104;
  for (std::size_t bit = 0; bit < 64; ++bit) {
    CAPTURE(bit);
    auto* byte = image.memory().data() + second + bit / 8;
    *byte ^= std::byte(1u << (bit % 8));
    const LeftoverRing ring = image.count();
    CHECK(ring.frames == 1);
    CHECK_THAT(ring.problem, Catch::Contains("fails its check"));
    *byte ^= std::byte(1u << (bit % 8));
  }
  CHECK(image.count().frames == 3);
}

TEST_CASE("an object shorter than a header, or a read that comes up short, is a problem") {
  RingImage image;
  ring_format(image.memory(), kCapacity);
  CHECK_THAT(count_leftover_frames(16, image.reader(), true).problem, Catch::Contains("shorter"));
  const RingReadAt failing = [](std::uint64_t, std::span<std::byte>) { return false; };
  CHECK_FALSE(count_leftover_frames(image.memory().size(), failing, true).problem.empty());
}

}  // namespace
}  // namespace flowseal::supervisor
