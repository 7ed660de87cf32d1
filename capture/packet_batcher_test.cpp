#include "packet_batcher.h"

#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <catch2/catch.hpp>

#include "capnp_frame.h"
#include "flowseal.capnp.h"

namespace flowseal::capture {
namespace {

// A ring in private memory (producer and consumer in this thread).
class LocalRing {
 public:
  explicit LocalRing(std::size_t capacity)
      : bytes_(ring_bytes(capacity)),
        memory_(static_cast<std::byte*>(std::aligned_alloc(64, (bytes_ + 63) / 64 * 64))) {
    std::memset(memory_.get(), 0, bytes_);
    ring_format({memory_.get(), bytes_}, capacity);
  }
  std::span<std::byte> memory() { return {memory_.get(), bytes_}; }

 private:
  struct Free {
    void operator()(std::byte* p) const { std::free(p); }
  };
  std::size_t bytes_;
  std::unique_ptr<std::byte, Free> memory_;
};

struct Staged {
  std::vector<std::uint8_t> bytes;
  std::uint32_t wire_len, hash;
  std::int64_t ts_ns;
  int link_type;
};

// The frame as Cap'n Proto's builder makes it (what PacketBatcher::flush wrote before it
// wrote the slot by hand): the reference the batcher's frames must equal byte for byte.
std::vector<std::byte> reference_frame(std::uint16_t shard, std::uint64_t first_seq, float rate,
                                       const std::vector<Staged>& packets, std::size_t keep) {
  std::vector<std::uint8_t> data;
  for (const Staged& p : packets) {
    const std::size_t cap = std::min(p.bytes.size(), keep);
    data.insert(data.end(), p.bytes.begin(), p.bytes.begin() + cap);
  }
  // One segment, as the batcher's scratch segment made it.
  std::vector<capnp::word> first_segment(data.size() / 8 + packets.size() * 4 + 64);
  capnp::MallocMessageBuilder message(kj::arrayPtr(first_segment.data(), first_segment.size()));
  auto batch = message.initRoot<schema::PacketBatch>();
  batch.setShard(shard);
  batch.setFirstSeq(first_seq);
  batch.setSamplingRate(rate);
  auto blob = batch.initData(static_cast<unsigned>(data.size()));
  if (!data.empty()) std::memcpy(blob.begin(), data.data(), data.size());
  auto index = batch.initIndex(static_cast<unsigned>(packets.size()));
  std::uint32_t offset = 0;
  for (unsigned i = 0; i < packets.size(); ++i) {
    const auto cap = static_cast<std::uint32_t>(std::min(packets[i].bytes.size(), keep));
    index[i].setOffset(offset);
    index[i].setCapLen(cap);
    index[i].setWireLen(packets[i].wire_len);
    index[i].setHash(packets[i].hash);
    index[i].setTsNs(packets[i].ts_ns);
    index[i].setLinkType(static_cast<std::uint16_t>(packets[i].link_type));
    offset += cap;
  }
  const auto words = capnp::messageToFlatArray(message);
  const auto bytes = words.asBytes();
  std::vector<std::byte> out(bytes.size());
  std::memcpy(out.data(), bytes.begin(), bytes.size());
  return out;
}

std::vector<Staged> random_packets(std::mt19937_64& rng, std::size_t n, std::size_t max_len) {
  std::vector<Staged> packets(n);
  for (Staged& p : packets) {
    p.bytes.resize(rng() % (max_len + 1));  // zero-length packets too
    for (auto& b : p.bytes) b = static_cast<std::uint8_t>(rng());
    p.wire_len = static_cast<std::uint32_t>(p.bytes.size() + rng() % 3);
    p.hash = static_cast<std::uint32_t>(rng());
    p.ts_ns = static_cast<std::int64_t>(rng() >> 1) * ((rng() & 1) ? 1 : -1);
    p.link_type = static_cast<int>(rng() % 300);
  }
  return packets;
}

Packet as_packet(const Staged& s) {
  Packet p;
  p.bytes = s.bytes;
  p.wire_len = s.wire_len;
  p.ts_ns = s.ts_ns;
  p.link_type = s.link_type;
  return p;
}

const std::function<bool()> kNeverGiveUp = [] { return false; };

TEST_CASE("a flushed batch is byte for byte the frame Cap'n Proto's builder makes") {
  std::mt19937_64 rng(12);
  constexpr std::size_t kShards = 3;
  std::vector<std::unique_ptr<LocalRing>> memory;
  std::vector<RingProducer> producers;
  std::vector<RingConsumer> consumers;
  producers.reserve(kShards);
  consumers.reserve(kShards);
  for (std::size_t s = 0; s < kShards; ++s) {
    memory.push_back(std::make_unique<LocalRing>(std::size_t{1} << 22));
    producers.emplace_back(memory.back()->memory());
    consumers.emplace_back(memory.back()->memory());
  }
  std::vector<RingProducer*> rings;
  for (auto& p : producers) rings.push_back(&p);

  PacketBatcher batcher(kShards, 64, 1 << 20);
  batcher.set_next_seq(1, 1000);
  std::vector<std::uint64_t> seq = {0, 1000, 0};
  for (int round = 0; round < 40; ++round) {
    const std::size_t keep = (round % 4 == 0) ? 60 : 65535;
    const float rate = (round % 3 == 0) ? 1.0f : 0.25f + static_cast<float>(round) / 100.0f;
    // Packets per shard this round: shard 2 gets none every other round.
    std::vector<std::vector<Staged>> per_shard(kShards);
    const auto packets = random_packets(rng, 1 + rng() % 50, (round % 5 == 0) ? 7 : 1600);
    for (std::size_t i = 0; i < packets.size(); ++i) {
      std::size_t shard = packets[i].hash % kShards;
      if (shard == 2 && round % 2 == 1) shard = 0;
      per_shard[shard].push_back(packets[i]);
      batcher.add(shard, as_packet(packets[i]), packets[i].hash, keep);
    }
    REQUIRE(batcher.pending_packets() == packets.size());
    REQUIRE(batcher.flush(rings, rate, kNeverGiveUp));
    REQUIRE(batcher.pending_packets() == 0);
    for (std::size_t s = 0; s < kShards; ++s) {
      auto frame = consumers[s].next();
      if (per_shard[s].empty()) {
        CHECK_FALSE(frame.has_value());
        continue;
      }
      REQUIRE(frame.has_value());
      const auto want =
          reference_frame(static_cast<std::uint16_t>(s), seq[s], rate, per_shard[s], keep);
      REQUIRE(frame->size() == want.size());
      CHECK(std::memcmp(frame->data(), want.data(), want.size()) == 0);
      // And read as flowd reads it.
      capnp::FlatArrayMessageReader reader(as_words(*frame), frame_reader_options());
      auto batch = reader.getRoot<schema::PacketBatch>();
      CHECK(batch.getShard() == s);
      CHECK(batch.getFirstSeq() == seq[s]);
      CHECK(batch.getSamplingRate() == rate);
      REQUIRE(batch.getIndex().size() == per_shard[s].size());
      for (unsigned i = 0; i < per_shard[s].size(); ++i) {
        auto ref = batch.getIndex()[i];
        const Staged& p = per_shard[s][i];
        const std::size_t cap = std::min(p.bytes.size(), keep);
        REQUIRE(ref.getCapLen() == cap);
        // (memcmp's pointers must not be null even for 0 bytes: an empty packet has none.)
        if (cap > 0) {
          CHECK(std::memcmp(batch.getData().begin() + ref.getOffset(), p.bytes.data(), cap) == 0);
        }
        CHECK(ref.getWireLen() == p.wire_len);
        CHECK(ref.getHash() == p.hash);
        CHECK(ref.getTsNs() == p.ts_ns);
        CHECK(ref.getLinkType() == p.link_type);
      }
      seq[s] += per_shard[s].size();
      CHECK(batcher.next_seq(s) == seq[s]);
      consumers[s].advance();
      consumers[s].commit();
    }
  }
}

TEST_CASE("a batch that finds its ring full stays staged until it fits") {
  LocalRing memory(16384);  // frames of at most 4 KB
  RingProducer producer(memory.memory());
  RingConsumer consumer(memory.memory());
  RingProducer* rings[] = {&producer};
  PacketBatcher batcher(1, 64, 1 << 20);
  const std::vector<std::uint8_t> bytes(1000, 0xab);
  Packet packet;
  packet.bytes = bytes;
  packet.wire_len = 1000;
  int asked = 0;
  auto give_up = [&] { return ++asked > 0; };
  std::uint64_t flushed = 0;
  for (;;) {  // ~3.1 KB frames until the ring is full
    for (int i = 0; i < 3; ++i) batcher.add(0, packet, 7, 65535);
    if (!batcher.flush(rings, 1.0f, give_up, std::chrono::milliseconds(0))) break;
    flushed += 3;
    REQUIRE(flushed < 30);
  }
  CHECK(flushed >= 9);
  CHECK(asked == 1);
  CHECK(batcher.pending_packets() == 3);
  CHECK(batcher.next_seq(0) == flushed);
  REQUIRE(consumer.next().has_value());
  consumer.advance();
  consumer.commit();
  REQUIRE(batcher.flush(rings, 1.0f, kNeverGiveUp));
  CHECK(batcher.pending_packets() == 0);
  std::optional<std::span<const std::byte>> frame, last;
  while ((frame = consumer.next())) {
    last = frame;
    consumer.advance();
  }
  REQUIRE(last.has_value());
  capnp::FlatArrayMessageReader reader(as_words(*last), frame_reader_options());
  auto batch = reader.getRoot<schema::PacketBatch>();
  CHECK(batch.getFirstSeq() == flushed);
  CHECK(batch.getIndex().size() == 3);
  CHECK(batch.getData().size() == 3000);
}

TEST_CASE("each shard's progress is reported as soon as its frame is out, before the next waits") {
  // Shard 0's ring has room, shard 1's is full: a capture killed while it waits on shard 1
  // must already have recorded shard 0's frame (RELIABILITY.md, capture finding 2).
  LocalRing memory0(16384), memory1(16384);
  RingProducer producer0(memory0.memory()), producer1(memory1.memory());
  RingProducer* rings[] = {&producer0, &producer1};
  PacketBatcher batcher(2, 64, 1 << 20);
  const std::vector<std::uint8_t> bytes(1000, 0xab);
  Packet packet;
  packet.bytes = bytes;
  packet.wire_len = 1000;
  // Fill shard 1's ring (nobody consumes it).
  std::vector<std::pair<std::size_t, std::uint64_t>> reported;
  const auto report = [&](std::size_t shard, std::uint64_t next) {
    reported.emplace_back(shard, next);
  };
  const auto give_up = [] { return true; };
  for (int frames = 0;; ++frames) {
    REQUIRE(frames < 30);
    for (int i = 0; i < 3; ++i) batcher.add(1, packet, 7, 65535);
    if (!batcher.flush(rings, 1.0f, give_up, std::chrono::milliseconds(0), report)) break;
  }
  CHECK(batcher.pending_packets() == 3);
  const std::uint64_t shard1_next = batcher.next_seq(1);
  reported.clear();
  // A flush with both shards staged: shard 0 goes out and is reported, shard 1 gives up.
  for (int i = 0; i < 2; ++i) batcher.add(0, packet, 7, 65535);
  CHECK_FALSE(batcher.flush(rings, 1.0f, give_up, std::chrono::milliseconds(0), report));
  REQUIRE(reported.size() == 1);
  CHECK(reported[0] == std::pair<std::size_t, std::uint64_t>{0, 2});
  CHECK(batcher.next_seq(0) == 2);
  CHECK(batcher.next_seq(1) == shard1_next);
  CHECK(batcher.pending_packets() == 3);  // shard 1's batch stays staged
}

}  // namespace
}  // namespace flowseal::capture
