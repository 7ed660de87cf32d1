#include "chain_resume.h"

#include <catch2/catch.hpp>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <filesystem>
#include <string>
#include <vector>

#include <capnp/serialize.h>

#include "batch_sealer.h"
#include "capnp_frame.h"
#include "flowseal.capnp.h"
#include "ring_message.h"
#include "seal/keys.h"

namespace {

namespace fs = std::filesystem;
using flowseal::ChainPosition;
using flowseal::RingProducer;
using flowseal::StoredChainPosition;
using flowseal::signerd::BatchSealer;
using flowseal::signerd::resume_chain;
namespace seal = flowseal::seal;
namespace schema = flowseal::schema;

constexpr std::array<std::uint8_t, 16> kStream = {9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 1, 2, 3, 4, 5, 6};
constexpr std::size_t kCapacity = 8192;

// A signing key in a temp dir, removed with it.
struct Key {
  fs::path dir;
  std::optional<seal::PrivateKey> key;
  Key() {
    std::string tmpl = (fs::temp_directory_path() / "chain_resume_XXXXXX").string();
    REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
    dir = tmpl;
    seal::generate_key_pair(seal::Algorithm::kEd25519, dir / "k.key", dir / "k.pub");
    key.emplace(seal::PrivateKey::load(dir / "k.key"));
  }
  ~Key() { fs::remove_all(dir); }
};

// A formatted ring in memory the test owns (64-byte aligned, as ring_format wants).
struct Ring {
  std::vector<std::byte> storage = std::vector<std::byte>(flowseal::ring_bytes(kCapacity) + 64);
  std::span<std::byte> memory() {
    auto* p = storage.data();
    p += (64 - reinterpret_cast<std::uintptr_t>(p) % 64) % 64;
    return {p, flowseal::ring_bytes(kCapacity)};
  }
  Ring() { flowseal::ring_format(memory(), kCapacity); }
};

// Seals the open (empty) batch of `sealer` into the ring and publishes it; returns the
// position it leads to, as signerd stores it.
ChainPosition publish_batch(BatchSealer& sealer, RingProducer& producer) {
  flowseal::RingMessageBuilder message(producer, sealer.words());
  sealer.seal(message);
  REQUIRE(message.write([] { return true; }));
  producer.publish();
  ChainPosition position;
  position.stream_id = kStream;
  position.next_seq = sealer.next_seq();
  position.prev_root = sealer.prev_root();
  return position;
}

}  // namespace

TEST_CASE("a successor goes on after a batch published past the stored position") {
  Key key;
  Ring ring;
  std::array<std::uint8_t, 32> zero{};
  BatchSealer sealer(*key.key, kStream, 0, zero, 0);
  RingProducer producer(ring.memory());
  // Batches 0..4 published, the position stored after each, as signerd does; batch 5
  // published with the position not stored (killed between the two).
  StoredChainPosition stored;
  for (int i = 0; i < 5; ++i) {
    stored.position = publish_batch(sealer, producer);
    stored.ring_head = producer.published();
  }
  const ChainPosition after_5 = publish_batch(sealer, producer);
  REQUIRE(after_5.next_seq == 6);

  RingProducer successor(ring.memory());
  SECTION("the head is where the position says: the position as it is") {
    StoredChainPosition current{after_5, successor.published()};
    CHECK(resume_chain(current, successor) == after_5);
  }
  SECTION("the head is one batch past it: after that batch, not the same seq again") {
    CHECK(stored.position.next_seq == 5);
    CHECK(resume_chain(stored, successor) == after_5);
  }
  SECTION("a store torn between the words: the head word decides, the batch is read back") {
    StoredChainPosition torn = stored;
    torn.position.next_seq = 6;  // the seq word written, the root words not
    CHECK(resume_chain(torn, successor) == after_5);
  }
  SECTION("bytes after the stored head that are not this stream's batch are refused") {
    StoredChainPosition other = stored;
    other.position.stream_id[0] ^= 1;
    CHECK_THROWS_WITH(resume_chain(other, successor), Catch::Contains("does not follow"));
    StoredChainPosition ahead = stored;
    ahead.position.next_seq = 7;  // the ring's last batch is 5: older than the position
    CHECK_THROWS_WITH(resume_chain(ahead, successor), Catch::Contains("seq 5"));
    StoredChainPosition from_start = stored;
    from_start.position.next_seq = 0;  // any seq follows it: the check is the stream's
    CHECK(resume_chain(from_start, successor).next_seq == 6);
    StoredChainPosition misaligned = stored;
    misaligned.ring_head += 4;
    CHECK_THROWS_WITH(resume_chain(misaligned, successor), Catch::Contains("not a frame"));
  }
}

TEST_CASE("the last frame published since a position is read back across a wrap") {
  Ring ring;
  RingProducer producer(ring.memory());
  std::vector<std::byte> payload(1500);
  std::uint64_t before_last = 0;
  // Enough frames to wrap the 8 KiB area twice.
  for (int i = 0; i < 12; ++i) {
    std::fill(payload.begin(), payload.end(), std::byte(i));
    before_last = producer.published();
    REQUIRE(producer.write(payload, std::chrono::milliseconds(0)));
    // A consumer takes each frame, so that the ring has room.
    auto& header = flowseal::ring_attach(ring.memory());
    header.tail.store(producer.published());
  }
  RingProducer successor(ring.memory());
  const auto last = successor.last_published_since(before_last);
  REQUIRE(last);
  REQUIRE(last->size() == payload.size());
  CHECK(std::all_of(last->begin(), last->end(), [](std::byte b) { return b == std::byte(11); }));
  CHECK_FALSE(successor.last_published_since(successor.published()));  // nothing since
  // More than a ring's capacity behind the head: overwritten, not read.
  CHECK_FALSE(successor.last_published_since(before_last - 3 * kCapacity));
}
