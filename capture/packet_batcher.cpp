#include "packet_batcher.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "capnp_frame.h"
#include "flowseal.capnp.h"

namespace flowseal::capture {

PacketBatcher::PacketBatcher(std::size_t shards, std::size_t batch_packets,
                             std::size_t batch_bytes)
    : shards_(shards),
      batch_packets_(batch_packets),
      batch_bytes_(batch_bytes),
      scratch_(batch_bytes / sizeof(capnp::word) + batch_packets * 4 + 64) {
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

bool PacketBatcher::flush(std::span<RingProducer* const> rings, float sampling_rate,
                          const std::function<bool()>& give_up,
                          std::chrono::milliseconds wait) {
  for (std::size_t s = 0; s < shards_.size(); ++s) {
    Shard& shard = shards_[s];
    if (shard.refs.empty()) continue;
    capnp::MallocMessageBuilder message(kj::arrayPtr(scratch_.data(), scratch_.size()));
    auto batch = message.initRoot<schema::PacketBatch>();
    batch.setShard(static_cast<std::uint16_t>(s));
    batch.setFirstSeq(shard.next_seq);
    batch.setSamplingRate(sampling_rate);
    auto data = batch.initData(static_cast<unsigned>(shard.data.size()));
    std::memcpy(data.begin(), shard.data.data(), shard.data.size());
    auto index = batch.initIndex(static_cast<unsigned>(shard.refs.size()));
    for (unsigned i = 0; i < shard.refs.size(); ++i) {
      const Ref& ref = shard.refs[i];
      auto entry = index[i];
      entry.setOffset(ref.offset);
      entry.setCapLen(ref.cap_len);
      entry.setWireLen(ref.wire_len);
      entry.setHash(ref.hash);
      entry.setTsNs(ref.ts_ns);
      entry.setLinkType(ref.link_type);
    }
    if (!write_message(*rings[s], message, give_up, wait)) return false;
    rings[s]->publish();
    pending_ -= shard.refs.size();
    shard.next_seq += shard.refs.size();
    shard.data.clear();
    shard.refs.clear();
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
