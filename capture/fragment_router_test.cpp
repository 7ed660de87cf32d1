#include "fragment_router.h"

#include <vector>

#include <catch2/catch.hpp>

namespace flowseal::capture {
namespace {

using Bytes = std::vector<std::uint8_t>;

// An IPv4 UDP fragment 10.0.0.1 -> 10.0.0.2 with IP id `id`: the first piece (ports
// 5000 -> 53) or a later one at `offset` (8-byte units).
packet::DecodedPacket piece(std::uint16_t id, std::uint16_t offset, bool more) {
  Bytes b{0x45,
          0,
          0,
          48,
          static_cast<std::uint8_t>(id >> 8),
          static_cast<std::uint8_t>(id),
          static_cast<std::uint8_t>((more ? 0x20 : 0) | offset >> 8),
          static_cast<std::uint8_t>(offset),
          64,
          17,
          0,
          0,
          10,
          0,
          0,
          1,
          10,
          0,
          0,
          2,
          0x13,
          0x88,
          0,
          53,
          0,
          100,
          0,
          0};
  b.resize(48, 0);
  packet::DecodedPacket p;
  REQUIRE(packet::decode(packet::kDltRaw, b, 48, p) == packet::DecodeStatus::kOk);
  REQUIRE(p.fragment);
  return p;
}

TEST_CASE("the later pieces of a datagram follow its first piece's hash") {
  FragmentRouter router;
  const auto first = piece(7, 0, true);
  const auto later = piece(7, 3, true), last = piece(7, 6, false);
  const std::uint32_t flow = packet::symmetric_hash(first.key);
  const std::uint32_t own = packet::symmetric_hash(later.key);  // no ports: another hash
  REQUIRE(flow != own);
  CHECK(router.route(first, flow) == flow);
  CHECK(router.route(later, own) == flow);
  CHECK(router.route(last, packet::symmetric_hash(last.key)) == flow);
}

TEST_CASE("a piece of an unknown datagram and a whole packet keep their own hash") {
  FragmentRouter router;
  const auto first = piece(7, 0, true);
  router.route(first, 111);
  CHECK(router.route(piece(8, 3, true), 222) == 222);  // another IP id: first not seen
  packet::DecodedPacket whole = first;
  whole.fragment = false;
  CHECK(router.route(whole, 333) == 333);
}

}  // namespace
}  // namespace flowseal::capture
