#include "ring_message.h"

#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <catch2/catch.hpp>

#include "capnp_frame.h"
#include "flowseal.capnp.h"

namespace flowseal {
namespace {

// A ring in private memory (producer and consumer in this thread).
class LocalRing {
 public:
  explicit LocalRing(std::size_t capacity)
      : bytes_(ring_bytes(capacity)),
        memory_(static_cast<std::byte*>(std::aligned_alloc(64, (bytes_ + 63) / 64 * 64))),
        producer_((std::memset(memory_.get(), 0, bytes_), ring_format(span(), capacity), span())),
        consumer_(span()) {}
  RingProducer& producer() { return producer_; }
  RingConsumer& consumer() { return consumer_; }

 private:
  std::span<std::byte> span() { return {memory_.get(), bytes_}; }
  struct Free {
    void operator()(std::byte* p) const { std::free(p); }
  };
  std::size_t bytes_;
  std::unique_ptr<std::byte, Free> memory_;
  RingProducer producer_;
  RingConsumer consumer_;
};

// A FlowEventBatch of `n` events with a few fields and texts set (depending on `salt`).
void fill(capnp::MessageBuilder& message, unsigned n, unsigned salt) {
  auto events = message.initRoot<schema::FlowEventBatch>().initEvents(n);
  for (unsigned i = 0; i < n; ++i) {
    auto e = events[i];
    e.setUid(salt * 1000 + i);
    e.setKind(i % 3 == 0 ? schema::EventKind::END : schema::EventKind::START);
    e.setCommunityId("1:" + std::string(28, static_cast<char>('A' + (i + salt) % 26)));
    e.setHistory(std::string((i + salt) % 12, 'D'));
    const std::uint8_t addr[4] = {10, 0, static_cast<std::uint8_t>(i), 1};
    e.setOrigAddr(kj::arrayPtr(addr, 4));
  }
}

// What write_message makes of the same content built in one segment.
std::vector<std::byte> reference(unsigned n, unsigned salt) {
  std::vector<capnp::word> first(flow_event_batch_words(n));
  capnp::MallocMessageBuilder message(kj::arrayPtr(first.data(), first.size()));
  fill(message, n, salt);
  const auto flat = capnp::messageToFlatArray(message);
  std::vector<std::byte> out(flat.asBytes().size());
  std::memcpy(out.data(), flat.asBytes().begin(), out.size());
  return out;
}

bool same(std::span<const std::byte> frame, const std::vector<std::byte>& want) {
  return frame.size() == want.size() && std::memcmp(frame.data(), want.data(), want.size()) == 0;
}

const std::function<bool()> kNever = [] { return false; };

TEST_CASE("a message built in its ring frame is the frame write_message makes") {
  LocalRing ring(1 << 20);
  for (unsigned round = 0; round < 30; ++round) {
    const unsigned n = 1 + round * 7;
    {
      RingMessageBuilder message(ring.producer(), flow_event_batch_words(n));
      fill(message, n, round);
      CHECK(message.in_ring());
      REQUIRE(message.write(kNever));
    }
    ring.producer().publish();
    auto frame = ring.consumer().next();
    REQUIRE(frame.has_value());
    CHECK(same(*frame, reference(n, round)));
    // The ring's bytes were dirty from earlier rounds: zeroed before use, or this fails.
    capnp::FlatArrayMessageReader reader(as_words(*frame), frame_reader_options());
    CHECK(reader.getRoot<schema::FlowEventBatch>().getEvents().size() == n);
    ring.consumer().advance();
    ring.consumer().commit();
  }
}

TEST_CASE("a message that outgrows its estimate still goes out whole") {
  LocalRing ring(1 << 20);
  for (unsigned n : {5u, 60u}) {
    {
      RingMessageBuilder message(ring.producer(), 40);  // far too few words
      fill(message, n, n);
      CHECK_FALSE(message.in_ring());
      REQUIRE(message.write(kNever));
    }
    ring.producer().publish();
    auto frame = ring.consumer().next();
    REQUIRE(frame.has_value());
    capnp::FlatArrayMessageReader reader(as_words(*frame), frame_reader_options());
    CHECK(reader.getSegment(1) != nullptr);  // it did spill: a second segment
    std::vector<capnp::word> first(flow_event_batch_words(n));
    capnp::MallocMessageBuilder want(kj::arrayPtr(first.data(), first.size()));
    fill(want, n, n);
    CHECK(capnp::canonicalize(reader.getRoot<schema::FlowEventBatch>()).asBytes() ==
          capnp::canonicalize(want.getRoot<schema::FlowEventBatch>().asReader()).asBytes());
    ring.consumer().advance();
    ring.consumer().commit();
  }
}

TEST_CASE("without room at once it is built aside and waits as write_message does") {
  LocalRing ring(16384);  // frames of at most 4 KB
  // Fill the ring with frames nobody reads.
  int frames = 0;
  for (;;) {
    RingMessageBuilder message(ring.producer(), flow_event_batch_words(8));
    fill(message, 8, 1);
    int asked = 0;
    if (!message.write([&] { return ++asked > 0; }, std::chrono::milliseconds(0))) {
      CHECK_FALSE(message.in_ring());
      CHECK(asked == 1);
      break;
    }
    REQUIRE(++frames < 100);
  }
  ring.producer().publish();
  REQUIRE(frames >= 2);
  // Room made: the same message built aside now goes out, the same bytes.
  while (ring.consumer().next()) ring.consumer().advance();
  ring.consumer().commit();
  {
    RingMessageBuilder message(ring.producer(), flow_event_batch_words(8));
    fill(message, 8, 2);
    REQUIRE(message.write(kNever));
  }
  ring.producer().publish();
  auto frame = ring.consumer().next();
  REQUIRE(frame.has_value());
  CHECK(same(*frame, reference(8, 2)));
}

TEST_CASE("a message larger than the frame limit is refused") {
  LocalRing ring(16384);
  RingMessageBuilder message(ring.producer(), flow_event_batch_words(200));
  fill(message, 200, 3);
  CHECK_FALSE(message.write(kNever));
}

}  // namespace
}  // namespace flowseal
