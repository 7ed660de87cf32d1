#include "pass_rewrite.h"

#include <catch2/catch.hpp>

#include <cstdint>
#include <vector>

namespace flowseal::capture {
namespace {

// Ethernet + IPv4 (20 bytes) + TCP (20 bytes) from a to b.
std::vector<std::uint8_t> tcp4(std::array<std::uint8_t, 4> a, std::array<std::uint8_t, 4> b,
                               std::uint16_t sport, std::uint16_t dport) {
  std::vector<std::uint8_t> p(14 + 20 + 20, 0);
  p[12] = 0x08;
  p[13] = 0x00;
  std::uint8_t* ip = p.data() + 14;
  ip[0] = 0x45;
  ip[3] = 40;
  ip[8] = 64;
  ip[9] = 6;
  std::copy(a.begin(), a.end(), ip + 12);
  std::copy(b.begin(), b.end(), ip + 16);
  std::uint8_t* tcp = ip + 20;
  tcp[0] = static_cast<std::uint8_t>(sport >> 8);
  tcp[1] = static_cast<std::uint8_t>(sport);
  tcp[2] = static_cast<std::uint8_t>(dport >> 8);
  tcp[3] = static_cast<std::uint8_t>(dport);
  tcp[12] = 0x50;
  tcp[13] = 0x02;
  return p;
}

std::vector<std::uint8_t> udp6(std::uint8_t a_low, std::uint8_t b_low) {
  std::vector<std::uint8_t> p(14 + 40 + 8, 0);
  p[12] = 0x86;
  p[13] = 0xdd;
  std::uint8_t* ip = p.data() + 14;
  ip[0] = 0x60;
  ip[5] = 8;
  ip[6] = 17;
  ip[7] = 64;
  ip[8] = 0x20;
  ip[9] = 0x01;
  ip[23] = a_low;
  ip[24] = 0x20;
  ip[25] = 0x01;
  ip[39] = b_low;
  ip[40 + 1] = 53;
  ip[40 + 3] = 99;
  ip[40 + 5] = 8;
  return p;
}

packet::DecodedPacket decoded_of(const std::vector<std::uint8_t>& p) {
  packet::DecodedPacket d;
  REQUIRE(packet::decode(1, p, static_cast<std::uint32_t>(p.size()), d) ==
          packet::DecodeStatus::kOk);
  return d;
}

}  // namespace

TEST_CASE("a later pass gives a flow new addresses that both directions share") {
  auto forward = tcp4({10, 0, 0, 1}, {192, 168, 1, 2}, 40000, 80);
  auto reverse = tcp4({192, 168, 1, 2}, {10, 0, 0, 1}, 80, 40000);
  auto f = decoded_of(forward);
  auto r = decoded_of(reverse);
  REQUIRE(rewrite_for_pass(forward, f, 0x010203));
  REQUIRE(rewrite_for_pass(reverse, r, 0x010203));
  // The bytes and the key agree: decoding the rewritten packet gives the rewritten key.
  CHECK(decoded_of(forward).key == f.key);
  CHECK(f.key.src[0] == 10);
  CHECK(f.key.src[1] == (0 ^ 0x01));
  CHECK(f.key.src[2] == (0 ^ 0x02));
  CHECK(f.key.src[3] == (1 ^ 0x03));
  CHECK(f.key.dst[3] == (2 ^ 0x03));
  CHECK(packet::symmetric_hash(f.key) == packet::symmetric_hash(r.key));
  CHECK(f.key.src == r.key.dst);
  CHECK(f.key != decoded_of(tcp4({10, 0, 0, 1}, {192, 168, 1, 2}, 40000, 80)).key);
}

TEST_CASE("each pass maps a flow to a different flow and the same pass twice restores it") {
  const auto original = tcp4({10, 0, 0, 1}, {10, 0, 0, 2}, 1234, 443);
  auto p1 = original;
  auto p2 = original;
  auto d1 = decoded_of(p1);
  auto d2 = decoded_of(p2);
  REQUIRE(rewrite_for_pass(p1, d1, 1));
  REQUIRE(rewrite_for_pass(p2, d2, 2));
  CHECK(d1.key != d2.key);
  CHECK(p1 != p2);
  REQUIRE(rewrite_for_pass(p1, d1, 1));
  CHECK(p1 == original);
  CHECK(d1.key == decoded_of(original).key);
}

TEST_CASE("IPv6 addresses are rewritten in their low bytes") {
  auto p = udp6(0x11, 0x22);
  auto d = decoded_of(p);
  REQUIRE(rewrite_for_pass(p, d, 5));
  CHECK(d.key.src[15] == (0x11 ^ 5));
  CHECK(d.key.dst[15] == (0x22 ^ 5));
  CHECK(d.key.src[0] == 0x20);
  CHECK(decoded_of(p).key == d.key);
}

TEST_CASE("a packet whose addresses cannot be found is left as it was") {
  auto p = tcp4({10, 0, 0, 1}, {10, 0, 0, 2}, 1, 2);
  auto d = decoded_of(p);
  d.key.src[0] = 99;  // a key that does not match the bytes
  const auto before = p;
  CHECK_FALSE(rewrite_for_pass(p, d, 3));
  CHECK(p == before);
}

}  // namespace flowseal::capture
