// One shard for every piece of a fragmented IP datagram.
//
// capture picks a packet's flowd shard by its flow hash, but only a datagram's first piece
// names its flow (ports, a tunnel's inner flow); the later pieces carry addresses and an IP
// id. flowd counts a datagram once, when all its pieces have come (flowd/fragment_table.h),
// so they must all reach the shard of the flow. The router remembers, per datagram (source,
// destination, protocol, IP id), the hash its first piece was sent with, and sends the later
// pieces with the same hash: the shard, and a sampling decision, match the first piece's.
//
// Bounded and lossy by design: a direct-mapped table of kSlots datagrams, the newest
// overwriting. A later piece that comes before its first, or whose slot was taken by another
// datagram, keeps its own (address) hash: with one flowd shard nothing changes; with more it
// may land in another shard, where flowd counts it as a fragment without its first piece.
// Not thread-safe: one per capture process.
#pragma once

#include <array>
#include <cstdint>

#include "packet/decode.h"

namespace flowseal::capture {

class FragmentRouter {
 public:
  // The hash to route `packet` (decoded, status kOk) by; `flow_hash` is its own flow hash.
  std::uint32_t route(const packet::DecodedPacket& packet, std::uint32_t flow_hash);

 private:
  static constexpr std::size_t kSlots = 4096;
  struct Slot {
    std::uint64_t datagram = 0;  // a hash of the datagram's key; 0: empty
    std::uint32_t flow_hash = 0;
  };
  std::array<Slot, kSlots> slots_{};
};

}  // namespace flowseal::capture
