#include "fragment_router.h"

#include <cstring>

namespace flowseal::capture {
namespace {

std::uint64_t datagram_hash(const packet::FragmentInfo& f) {
  std::uint64_t h = packet::mix64(0x726F757465667261ULL ^ (std::uint64_t{f.id} << 24) ^
                                  (std::uint64_t{f.proto} << 16) ^ f.vlan);
  for (const auto* addr : {&f.src, &f.dst}) {
    std::uint64_t lo, hi;
    std::memcpy(&lo, addr->data(), 8);
    std::memcpy(&hi, addr->data() + 8, 8);
    h = packet::mix64(h ^ lo);
    h = packet::mix64(h ^ hi);
  }
  return h | 1;  // never 0, the empty slot
}

}  // namespace

std::uint32_t FragmentRouter::route(const packet::DecodedPacket& packet, std::uint32_t flow_hash) {
  if (!packet.fragment) return flow_hash;
  const std::uint64_t h = datagram_hash(packet.frag);
  Slot& slot = slots_[h % kSlots];
  if (packet.frag.offset == 0) {
    slot = Slot{h, flow_hash};
    return flow_hash;
  }
  return slot.datagram == h ? slot.flow_hash : flow_hash;
}

}  // namespace flowseal::capture
