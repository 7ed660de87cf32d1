#include "packet_batcher.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <utility>

#include "flowseal.capnp.h"

namespace flowseal::capture {

PacketBatcher::PacketBatcher(std::size_t shards, std::size_t batch_packets, std::size_t batch_bytes)
    : shards_(shards), batch_packets_(batch_packets), batch_bytes_(batch_bytes) {
  for (auto& shard : shards_) {
    shard.data.reserve(batch_bytes);
    shard.refs.reserve(batch_packets);
  }
}

bool PacketBatcher::add(std::size_t shard_index, const Packet& packet, std::uint32_t hash,
                        std::size_t keep) {
  Shard& shard = shards_[shard_index];
  const std::size_t cap = std::min(packet.bytes.size(), keep);
  const auto offset = static_cast<std::uint32_t>(shard.data.size());
  shard.data.insert(shard.data.end(), packet.bytes.begin(), packet.bytes.begin() + cap);
  shard.refs.push_back({offset, static_cast<std::uint32_t>(cap), packet.wire_len, hash,
                        packet.ts_ns, static_cast<std::uint16_t>(packet.link_type)});
  ++pending_;
  // Leave room for one more maximum-size packet before the frame limit.
  return shard.refs.size() >= batch_packets_ || shard.data.size() + 65536 > batch_bytes_;
}

namespace {

// The PacketBatch is written straight into its ring slot, word for word as Cap'n Proto's
// builder lays it out (segment table; root pointer; the struct; the data blob, padded to a
// word; the index's tag word and elements), so flowd reads it as before. Before, the batch
// was built in a scratch segment (the packet bytes copied into its Data), copied into the
// slot by capnp::writeMessage, and the scratch zeroed again by the builder's destructor:
// two of capture's three copies of every packet byte, and a memset as large.
// packet_batcher_test compares these frames with the builder's, byte for byte.
static_assert(std::endian::native == std::endian::little, "Cap'n Proto words are little-endian");
using BatchLayout = schema::PacketBatch::_capnpPrivate;
using RefLayout = schema::PacketRef::_capnpPrivate;
static_assert(BatchLayout::dataWordSize == 2 && BatchLayout::pointerCount == 2);
static_assert(RefLayout::dataWordSize == 4 && RefLayout::pointerCount == 0);
constexpr std::size_t kBatchWords = 2 + 2;
constexpr std::size_t kRefWords = 4;
constexpr std::uint32_t kSamplingRateDefaultBits = 0x3f800000u;  // samplingRate's default 1.0

inline void put_word(std::byte* at, std::uint64_t value) { std::memcpy(at, &value, 8); }

// A struct pointer (kind 0) from the word at `from` to the word at `to`.
std::uint64_t struct_pointer(std::size_t from, std::size_t to, std::uint16_t data_words,
                             std::uint16_t pointers) {
  const auto offset = static_cast<std::uint32_t>(to - from - 1);
  return std::uint64_t{offset << 2} | std::uint64_t{data_words} << 32 |
         std::uint64_t{pointers} << 48;
}

// A list pointer (kind 1): element size code 2 (bytes) or 7 (composite; count in words).
std::uint64_t list_pointer(std::size_t from, std::size_t to, std::uint32_t size_code,
                           std::uint64_t count) {
  const auto offset = static_cast<std::uint32_t>(to - from - 1);
  return std::uint64_t{(offset << 2) | 1u} | (size_code | count << 3) << 32;
}

}  // namespace

std::size_t PacketBatcher::frame_bytes(std::size_t data_bytes, std::size_t packets) {
  const std::size_t data_words = (data_bytes + 7) / 8;
  return 8 + (1 + kBatchWords + data_words + 1 + packets * kRefWords) * 8;
}

void PacketBatcher::write_frame(std::span<std::byte> slot, std::size_t shard_index,
                                float sampling_rate) const {
  const Shard& shard = shards_[shard_index];
  const std::size_t n = shard.refs.size();
  const std::size_t data_words = (shard.data.size() + 7) / 8;
  // Word positions inside the segment.
  constexpr std::size_t kRoot = 0, kStruct = 1;
  constexpr std::size_t kDataAt = kStruct + kBatchWords;
  const std::size_t tag_at = kDataAt + data_words;
  const std::size_t segment_words = tag_at + 1 + n * kRefWords;
  std::byte* const out = slot.data();
  std::byte* const seg = out + 8;
  auto word = [seg](std::size_t i) { return seg + i * 8; };

  // Segment table: one segment of `segment_words` words.
  put_word(out, std::uint64_t{segment_words} << 32);
  put_word(word(kRoot), struct_pointer(kRoot, kStruct, 2, 2));
  // Data section: shard (bits 0-15), samplingRate (bits 32-63, XOR its default), firstSeq.
  std::uint32_t rate_bits;
  std::memcpy(&rate_bits, &sampling_rate, 4);
  put_word(word(kStruct), std::uint64_t{static_cast<std::uint16_t>(shard_index)} |
                              std::uint64_t{rate_bits ^ kSamplingRateDefaultBits} << 32);
  put_word(word(kStruct + 1), shard.next_seq);
  put_word(word(kStruct + 2), list_pointer(kStruct + 2, kDataAt, 2, shard.data.size()));
  put_word(word(kStruct + 3), list_pointer(kStruct + 3, tag_at, 7, n * kRefWords));
  // The packet bytes, then zeros up to the word.
  if (!shard.data.empty()) std::memcpy(word(kDataAt), shard.data.data(), shard.data.size());
  std::memset(word(kDataAt) + shard.data.size(), 0, data_words * 8 - shard.data.size());
  // The index: tag (element count, struct size), then one 4-word struct per packet.
  put_word(word(tag_at), (std::uint64_t{n} << 2) | std::uint64_t{RefLayout::dataWordSize} << 32);
  std::byte* entry = word(tag_at + 1);
  for (const Ref& ref : shard.refs) {
    put_word(entry, std::uint64_t{ref.offset} | std::uint64_t{ref.cap_len} << 32);
    put_word(entry + 8, std::uint64_t{ref.wire_len} | std::uint64_t{ref.hash} << 32);
    put_word(entry + 16, static_cast<std::uint64_t>(ref.ts_ns));
    put_word(entry + 24, std::uint64_t{ref.link_type});
    entry += kRefWords * 8;
  }
}

bool PacketBatcher::flush(std::span<RingProducer* const> rings, float sampling_rate,
                          const std::function<bool()>& give_up, std::chrono::milliseconds wait,
                          const Published& published) {
  for (std::size_t s = 0; s < shards_.size(); ++s) {
    Shard& shard = shards_[s];
    if (shard.refs.empty()) continue;
    RingProducer& ring = *rings[s];
    const std::size_t bytes = frame_bytes(shard.data.size(), shard.refs.size());
    if (bytes > ring.max_frame()) return false;
    std::span<std::byte> slot;
    while ((slot = ring.reserve(bytes, wait)).empty()) {
      if (give_up()) return false;
    }
    write_frame(slot, s, sampling_rate);
    ring.commit(bytes);
    ring.publish();
    pending_ -= shard.refs.size();
    shard.next_seq += shard.refs.size();
    shard.data.clear();
    shard.refs.clear();
    if (published) published(s, shard.next_seq);
  }
  return true;
}

std::size_t PacketBatcher::discard() {
  for (auto& shard : shards_) {
    shard.data.clear();
    shard.refs.clear();
  }
  return std::exchange(pending_, 0);
}

}  // namespace flowseal::capture
