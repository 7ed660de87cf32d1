// PacketBatcher: groups captured packets per flowd shard into PacketBatch frames.
//
// A packet costs one memcpy into its shard's staging buffer and one index entry; a batch
// becomes one Cap'n Proto message (bytes in one Data blob beside a compact index), written
// straight into its ring slot (one more copy of the bytes, no builder), so the packet edge
// carries a frame per few hundred packets, not per packet.
//
// flush() writes every shard's pending batch and publishes them together. Packets carry a
// per-shard sequence number (PacketBatch.firstSeq + position), deterministic for a given
// input, so a flowd that sees a batch twice (capture restarted after a partial flush) can
// drop what it already applied.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "pcap_source.h"
#include "ring.h"

namespace flowseal::capture {

class PacketBatcher {
 public:
  PacketBatcher(std::size_t shards, std::size_t batch_packets, std::size_t batch_bytes);

  // Stages a packet (at most `keep` bytes of it) for `shard`. True when some shard's batch
  // is full and the caller should flush().
  bool add(std::size_t shard, const Packet& packet, std::uint32_t hash, std::size_t keep);

  std::size_t pending_packets() const { return pending_; }

  // Writes each shard's pending batch to rings[shard] and publishes. Waits while a ring is
  // full (up to `wait` at a time: zero for a live capture), asking give_up() between waits;
  // false if it gave up (nothing is lost from the batcher: unwritten batches stay staged).
  // `published(shard, next_seq)` is called right after each shard's frame is published, so
  // a caller can record that shard's progress before waiting on the next shard's ring.
  using Published = std::function<void(std::size_t shard, std::uint64_t next_seq)>;
  bool flush(std::span<RingProducer* const> rings, float sampling_rate,
             const std::function<bool()>& give_up,
             std::chrono::milliseconds wait = std::chrono::milliseconds(50),
             const Published& published = {});

  // Live capture with a full ring: forgets what is staged and returns how many packets.
  std::size_t discard();

  // Sequence number the next packet of `shard` will get; set on restart to resume.
  std::uint64_t next_seq(std::size_t shard) const { return shards_[shard].next_seq; }
  void set_next_seq(std::size_t shard, std::uint64_t seq) { shards_[shard].next_seq = seq; }

 private:
  // Bytes of the frame (segment table + one segment) a batch of `packets` packets holding
  // `data_bytes` bytes takes.
  static std::size_t frame_bytes(std::size_t data_bytes, std::size_t packets);
  // Writes shard `shard`'s pending batch as a PacketBatch message into `slot`
  // (frame_bytes() long).
  void write_frame(std::span<std::byte> slot, std::size_t shard, float sampling_rate) const;

  struct Ref {
    std::uint32_t offset, cap_len, wire_len, hash;
    std::int64_t ts_ns;
    std::uint16_t link_type;
  };
  struct Shard {
    std::vector<std::uint8_t> data;
    std::vector<Ref> refs;
    std::uint64_t next_seq = 0;  // of the first staged packet once flushed
  };

  std::vector<Shard> shards_;
  std::size_t batch_packets_;
  std::size_t batch_bytes_;
  std::size_t pending_ = 0;
};

}  // namespace flowseal::capture
