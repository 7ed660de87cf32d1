#include "packet/decode.h"

#include <pcap/pcap.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <arpa/inet.h>
#include <catch2/catch.hpp>

namespace {

using namespace flowseal::packet;
using Bytes = std::vector<std::uint8_t>;

// ------------------------------------------------------------------ packet builders

void put16(Bytes& b, std::uint16_t v) {
  b.push_back(static_cast<std::uint8_t>(v >> 8));
  b.push_back(static_cast<std::uint8_t>(v));
}
void put32(Bytes& b, std::uint32_t v) {
  put16(b, static_cast<std::uint16_t>(v >> 16));
  put16(b, static_cast<std::uint16_t>(v));
}
Bytes cat(Bytes a, const Bytes& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

Bytes tcp(std::uint16_t sport, std::uint16_t dport, std::uint8_t flags, std::size_t data,
          std::uint8_t data_offset = 5) {
  Bytes b;
  put16(b, sport);
  put16(b, dport);
  put32(b, 1000);  // seq
  put32(b, 2000);  // ack
  b.push_back(static_cast<std::uint8_t>(data_offset << 4));
  b.push_back(flags);
  put16(b, 65535);
  put32(b, 0);
  b.resize(b.size() + (data_offset > 5 ? (data_offset - 5) * 4u : 0u), 1);  // NOP options
  b.resize(b.size() + data, 0xAB);
  return b;
}
Bytes udp(std::uint16_t sport, std::uint16_t dport, std::size_t data) {
  Bytes b;
  put16(b, sport);
  put16(b, dport);
  put16(b, static_cast<std::uint16_t>(8 + data));
  put16(b, 0);
  b.resize(b.size() + data, 0xCD);
  return b;
}
Bytes icmp(std::uint8_t type, std::uint8_t code, std::size_t data) {
  Bytes b{type, code, 0, 0, 0, 1, 0, 1};
  b.resize(b.size() + data, 0xEF);
  return b;
}
Bytes sctp(std::uint16_t sport, std::uint16_t dport, std::size_t data) {
  Bytes b;
  put16(b, sport);
  put16(b, dport);
  put32(b, 0x11223344);
  put32(b, 0);
  b.resize(b.size() + data, 0x5C);
  return b;
}

struct Ipv4Options {
  std::size_t option_bytes = 0;
  bool more_fragments = false;
  std::uint16_t fragment_offset = 0;  // in 8-byte units
};
Bytes ipv4(std::uint8_t proto, const Bytes& payload, Ipv4Options o = {}) {
  Bytes b;
  const std::size_t header = 20 + o.option_bytes;
  b.push_back(static_cast<std::uint8_t>(0x40 | (header / 4)));
  b.push_back(0);
  put16(b, static_cast<std::uint16_t>(header + payload.size()));
  put16(b, 0x1234);
  put16(b, static_cast<std::uint16_t>((o.more_fragments ? 0x2000 : 0) | o.fragment_offset));
  b.push_back(64);
  b.push_back(proto);
  put16(b, 0);
  put32(b, 0x0A000001);  // 10.0.0.1
  put32(b, 0x0A000002);  // 10.0.0.2
  b.resize(header, 1);   // NOP options
  return cat(b, payload);
}

// An IPv6 extension header of `len` bytes (multiple of 8) whose next header is `next`.
struct Ext {
  std::uint8_t type;
  std::size_t len;
};
Bytes ipv6(std::uint8_t proto, const Bytes& payload, const std::vector<Ext>& exts = {},
           std::uint16_t fragment_offset = 0) {
  Bytes body;
  for (std::size_t i = 0; i < exts.size(); ++i) {
    const std::uint8_t next = i + 1 < exts.size() ? exts[i + 1].type : proto;
    Bytes h{next, 0};
    if (exts[i].type == 44) {
      put16(h, static_cast<std::uint16_t>(fragment_offset << 3 | 1));
      put32(h, 0xABCD);
    } else if (exts[i].type == 51) {
      h[1] = static_cast<std::uint8_t>(exts[i].len / 4 - 2);
    } else {
      h[1] = static_cast<std::uint8_t>(exts[i].len / 8 - 1);
    }
    h.resize(exts[i].len, 0);
    body = cat(body, h);
  }
  body = cat(body, payload);
  Bytes b{0x60, 0, 0, 0};
  put16(b, static_cast<std::uint16_t>(body.size()));
  b.push_back(exts.empty() ? proto : exts[0].type);
  b.push_back(64);
  for (int i = 0; i < 16; ++i) b.push_back(i == 0 ? 0x20 : i == 15 ? 1 : 0);  // 2000::1
  for (int i = 0; i < 16; ++i) b.push_back(i == 0 ? 0x20 : i == 15 ? 2 : 0);  // 2000::2
  return cat(b, body);
}

Bytes ether(std::uint16_t type, const Bytes& payload) {
  Bytes b(12, 0x02);
  put16(b, type);
  return cat(b, payload);
}
Bytes vlan_tag(std::uint16_t id, std::uint16_t inner_type) {
  Bytes b;
  put16(b, static_cast<std::uint16_t>(0x2000 | id));  // priority 1
  put16(b, inner_type);
  return b;
}
Bytes mpls(std::uint32_t label, bool bottom) {
  Bytes b;
  put32(b, label << 12 | (bottom ? 0x100u : 0u) | 64u);
  return b;
}
Bytes pppoe(std::uint16_t ppp_proto, const Bytes& payload) {
  Bytes b{0x11, 0x00};
  put16(b, 0x0001);  // session
  put16(b, static_cast<std::uint16_t>(payload.size() + 2));
  put16(b, ppp_proto);
  return cat(b, payload);
}
Bytes sll(std::uint16_t proto, const Bytes& payload) {
  Bytes b{0, 0, 0, 1, 0, 6, 1, 2, 3, 4, 5, 6, 0, 0};
  put16(b, proto);
  return cat(b, payload);
}
Bytes sll2(std::uint16_t proto, const Bytes& payload) {
  Bytes b;
  put16(b, proto);
  put16(b, 0);
  put32(b, 3);  // ifindex
  put16(b, 1);  // ARPHRD_ETHER
  b.push_back(0);
  b.push_back(6);
  for (int i = 0; i < 8; ++i) b.push_back(static_cast<std::uint8_t>(i));
  return cat(b, payload);
}
Bytes null_header(std::uint32_t family, bool big_endian, const Bytes& payload) {
  Bytes b;
  if (big_endian) {
    put32(b, family);
  } else {
    for (int i = 0; i < 4; ++i) b.push_back(static_cast<std::uint8_t>(family >> (8 * i)));
  }
  return cat(b, payload);
}

// Capture forwards a decoded packet cut to its header_bytes: every decode in these tests also
// checks that the cut packet decodes to the same result.
void check_header_cut(int link, std::span<const std::uint8_t> bytes, std::uint32_t wire_len,
                      const DecodedPacket& whole) {
  REQUIRE(whole.header_bytes <= bytes.size());
  DecodedPacket cut;
  REQUIRE(decode(link, bytes.first(whole.header_bytes), wire_len, cut) == DecodeStatus::kOk);
  CHECK(cut == whole);
}

DecodeStatus run(int link, const Bytes& bytes, DecodedPacket& out) {
  const auto wire_len = static_cast<std::uint32_t>(bytes.size());
  const DecodeStatus status = decode(link, bytes, wire_len, out);
  if (status == DecodeStatus::kOk) check_header_cut(link, bytes, wire_len, out);
  return status;
}

// One packet plus where its layers end: a cut before link_end is a truncated link, before
// ip_end a truncated IP header, before transport_end a truncated transport header.
struct Case {
  std::string name;
  int link;
  Bytes bytes;
  std::size_t link_end;
  std::size_t ip_end;
  std::size_t transport_end;
};

std::vector<Case> cases() {
  const Bytes tcp4 = ipv4(6, tcp(1234, 80, 0x18, 10));
  const Bytes udp6 = ipv6(17, udp(53, 5353, 4));
  std::vector<Case> c;
  c.push_back({"ethernet ipv4 tcp", kDltEn10mb, ether(0x0800, tcp4), 14, 34, 54});
  c.push_back({"ethernet ipv4 with options udp", kDltEn10mb,
               ether(0x0800, ipv4(17, udp(1, 2, 3), {.option_bytes = 8})), 14, 42, 50});
  c.push_back({"802.1ad QinQ ipv6 udp", kDltEn10mb,
               ether(0x88A8, cat(vlan_tag(100, 0x8100), cat(vlan_tag(200, 0x86DD), udp6))), 22, 62,
               70});
  c.push_back({"mpls two labels ipv4", kDltEn10mb,
               ether(0x8847, cat(mpls(16, false), cat(mpls(17, true), tcp4))), 23, 42, 62});
  c.push_back({"pppoe ipv4", kDltEn10mb, ether(0x8864, pppoe(0x0021, tcp4)), 22, 42, 62});
  c.push_back({"pppoe ipv6", kDltEn10mb, ether(0x8864, pppoe(0x0057, udp6)), 22, 62, 70});
  c.push_back({"linux sll ipv4", kDltLinuxSll, sll(0x0800, tcp4), 16, 36, 56});
  c.push_back({"linux sll2 ipv6", kDltLinuxSll2, sll2(0x86DD, udp6), 20, 60, 68});
  c.push_back({"raw ipv4", kDltRaw, tcp4, 0, 20, 40});
  c.push_back({"linktype raw ipv6", kLinktypeRaw, udp6, 0, 40, 48});
  c.push_back({"dlt ipv4", kDltIpv4, tcp4, 0, 20, 40});
  c.push_back({"dlt ipv6", kDltIpv6, udp6, 0, 40, 48});
  c.push_back({"null little-endian ipv4", kDltNull, null_header(2, false, tcp4), 4, 24, 44});
  c.push_back({"loop big-endian ipv6", kDltLoop, null_header(24, true, udp6), 4, 44, 52});
  c.push_back({"icmp", kDltRaw, ipv4(1, icmp(8, 0, 32)), 0, 20, 28});
  c.push_back({"icmpv6", kDltRaw, ipv6(58, icmp(128, 0, 32)), 0, 40, 48});
  c.push_back({"sctp", kDltRaw, ipv4(132, sctp(7, 7, 16)), 0, 20, 32});
  c.push_back({"ipv6 extension headers then tcp", kDltRaw,
               ipv6(6, tcp(1, 2, 0x02, 0), {{0, 8}, {43, 24}, {60, 16}, {51, 16}}), 0, 104, 124});
  c.push_back({"ipv6 later fragment", kDltRaw, ipv6(6, Bytes(100, 7), {{44, 8}}, 5), 0, 48, 48});
  c.push_back(
      {"ipv4 later fragment", kDltRaw, ipv4(17, Bytes(64, 7), {.fragment_offset = 8}), 0, 20, 20});
  return c;
}

}  // namespace

TEST_CASE("an Ethernet IPv4 TCP packet gives its 5-tuple, flags and lengths") {
  DecodedPacket p;
  const Bytes b = ether(0x0800, ipv4(6, tcp(1234, 80, 0x18, 10, 8)));
  REQUIRE(run(kDltEn10mb, b, p) == DecodeStatus::kOk);
  CHECK(p.key.ip_version == 4);
  CHECK(p.key.proto == 6);
  CHECK(p.key.src[0] == 10);
  CHECK(p.key.src[3] == 1);
  CHECK(p.key.dst[3] == 2);
  CHECK(p.key.src[4] == 0);
  CHECK(p.key.src_port == 1234);
  CHECK(p.key.dst_port == 80);
  CHECK(p.key.vlan == 0);
  CHECK(p.tcp_flags == 0x18);
  CHECK(p.tcp_seq == 1000);
  CHECK(p.tcp_ack == 2000);
  CHECK(p.tcp_window == 65535);
  CHECK(p.ip_bytes == 20 + 32 + 10);
  CHECK(p.payload_bytes == 10);
  CHECK(p.has_ports);
  CHECK_FALSE(p.fragment);
}

TEST_CASE("lengths come from the IP header, not from the captured bytes") {
  DecodedPacket p;
  const Bytes full = ether(0x0800, ipv4(17, udp(1, 2, 1000)));
  const Bytes cut(full.begin(), full.begin() + 64);  // snaplen 64
  REQUIRE(decode(kDltEn10mb, cut, static_cast<std::uint32_t>(full.size()), p) == DecodeStatus::kOk);
  CHECK(p.ip_bytes == 1028);
  CHECK(p.payload_bytes == 1000);

  const Bytes v6 = ipv6(17, udp(1, 2, 500));
  REQUIRE(run(kDltRaw, v6, p) == DecodeStatus::kOk);
  CHECK(p.ip_bytes == 40 + 508);
  CHECK(p.payload_bytes == 500);
}

TEST_CASE("the innermost VLAN id of a QinQ packet is the flow's VLAN") {
  DecodedPacket p;
  const Bytes b =
      ether(0x88A8, cat(vlan_tag(100, 0x8100), cat(vlan_tag(200, 0x0800), ipv4(17, udp(1, 2, 0)))));
  REQUIRE(run(kDltEn10mb, b, p) == DecodeStatus::kOk);
  CHECK(p.key.vlan == 200);
  const Bytes single = ether(0x8100, cat(vlan_tag(7, 0x0800), ipv4(17, udp(1, 2, 0))));
  REQUIRE(run(kDltEn10mb, single, p) == DecodeStatus::kOk);
  CHECK(p.key.vlan == 7);
}

TEST_CASE("MPLS, PPPoE, SLL, SLL2, raw, NULL and LOOP links all reach the IP header") {
  for (const Case& c : cases()) {
    INFO(c.name);
    DecodedPacket p;
    CHECK(run(c.link, c.bytes, p) == DecodeStatus::kOk);
    CHECK((p.key.ip_version == 4 || p.key.ip_version == 6));
  }
}

TEST_CASE("DLT_NULL families are read in either byte order, with every AF_INET6 value") {
  DecodedPacket p;
  for (std::uint32_t family : {10u, 24u, 28u, 30u}) {
    for (bool big : {false, true}) {
      INFO("family " << family << (big ? " big-endian" : " little-endian"));
      CHECK(run(kDltNull, null_header(family, big, ipv6(17, udp(1, 2, 0))), p) ==
            DecodeStatus::kOk);
      CHECK(p.key.ip_version == 6);
    }
  }
  CHECK(run(kDltLoop, null_header(2, true, ipv4(17, udp(1, 2, 0))), p) == DecodeStatus::kOk);
  CHECK(run(kDltNull, null_header(7, false, ipv4(17, udp(1, 2, 0))), p) == DecodeStatus::kNotIp);
}

TEST_CASE("the link type constants agree with libpcap's") {
  CHECK(kDltNull == DLT_NULL);
  CHECK(kDltEn10mb == DLT_EN10MB);
  CHECK(kDltRaw == DLT_RAW);
  CHECK(kDltLoop == DLT_LOOP);
  CHECK(kDltLinuxSll == DLT_LINUX_SLL);
  CHECK(kDltIpv4 == DLT_IPV4);
  CHECK(kDltIpv6 == DLT_IPV6);
  CHECK(kDltLinuxSll2 == DLT_LINUX_SLL2);
  CHECK(kDltIeee80211 == DLT_IEEE802_11);
  CHECK(kDltIeee80211Radio == DLT_IEEE802_11_RADIO);
}

TEST_CASE("ICMP and ICMPv6 report type and code as ports, SCTP its ports") {
  DecodedPacket p;
  REQUIRE(run(kDltRaw, ipv4(1, icmp(3, 1, 28)), p) == DecodeStatus::kOk);
  CHECK(p.key.src_port == 3);
  CHECK(p.key.dst_port == 1);
  CHECK(p.payload_bytes == 28);
  CHECK(p.has_ports);
  REQUIRE(run(kDltRaw, ipv6(58, icmp(128, 0, 56)), p) == DecodeStatus::kOk);
  CHECK(p.key.proto == 58);
  CHECK(p.key.src_port == 128);
  CHECK(p.key.dst_port == 0);
  REQUIRE(run(kDltRaw, ipv4(132, sctp(2905, 2906, 40)), p) == DecodeStatus::kOk);
  CHECK(p.key.src_port == 2905);
  CHECK(p.key.dst_port == 2906);
  CHECK(p.payload_bytes == 40);
}

TEST_CASE("IPv6 extension headers are walked to the transport header") {
  DecodedPacket p;
  const Bytes b = ipv6(6, tcp(4000, 443, 0x02, 0), {{0, 8}, {43, 24}, {60, 16}, {51, 16}});
  REQUIRE(run(kDltRaw, b, p) == DecodeStatus::kOk);
  CHECK(p.key.proto == 6);
  CHECK(p.key.src_port == 4000);
  CHECK(p.key.dst_port == 443);
  CHECK(p.tcp_flags == 0x02);
  CHECK(p.ip_bytes == b.size());
  CHECK(p.payload_bytes == 0);
  CHECK_FALSE(p.fragment);
}

TEST_CASE("a first fragment has ports, a later fragment has none") {
  DecodedPacket p;
  REQUIRE(run(kDltRaw, ipv4(17, udp(5000, 53, 100), {.more_fragments = true}), p) ==
          DecodeStatus::kOk);
  CHECK(p.fragment);
  CHECK(p.has_ports);
  CHECK(p.key.dst_port == 53);
  REQUIRE(run(kDltRaw, ipv4(17, Bytes(64, 1), {.fragment_offset = 14}), p) == DecodeStatus::kOk);
  CHECK(p.fragment);
  CHECK_FALSE(p.has_ports);
  CHECK(p.key.proto == 17);
  CHECK(p.key.src_port == 0);
  CHECK(p.payload_bytes == 64);

  REQUIRE(run(kDltRaw, ipv6(17, udp(5000, 53, 10), {{44, 8}}, 0), p) == DecodeStatus::kOk);
  CHECK(p.fragment);
  CHECK(p.has_ports);
  CHECK(p.key.src_port == 5000);
  REQUIRE(run(kDltRaw, ipv6(17, Bytes(64, 1), {{44, 8}}, 9), p) == DecodeStatus::kOk);
  CHECK(p.fragment);
  CHECK_FALSE(p.has_ports);
  CHECK(p.key.proto == 17);
  CHECK(p.payload_bytes == 64);
}

TEST_CASE("packets that are not IP or not decodable get the status that names why") {
  DecodedPacket p;
  CHECK(run(kDltEn10mb, ether(0x0806, Bytes(28, 0)), p) == DecodeStatus::kNotIp);
  CHECK(run(kDltEn10mb, ether(0x8864, pppoe(0xC021, Bytes(10, 0))), p) == DecodeStatus::kNotIp);
  CHECK(run(kDltEn10mb, ether(0x8847, cat(mpls(3, true), Bytes(30, 0))), p) ==
        DecodeStatus::kNotIp);
  CHECK(run(147, Bytes(60, 0x45), p) == DecodeStatus::kUnsupportedLink);
  CHECK(run(kDltRaw, ipv4(6, tcp(1, 2, 0x10, 0, 4)), p) == DecodeStatus::kBadTransport);

  Bytes bad_ihl = ipv4(17, udp(1, 2, 0));
  bad_ihl[0] = 0x44;
  CHECK(run(kDltRaw, bad_ihl, p) == DecodeStatus::kBadIpHeader);
  Bytes short_total = ipv4(17, udp(1, 2, 0));
  short_total[3] = 12;  // total length below the header length
  CHECK(run(kDltRaw, short_total, p) == DecodeStatus::kBadIpHeader);
  Bytes wrong_version = ipv4(17, udp(1, 2, 0));
  wrong_version[0] = 0x55;
  CHECK(run(kDltRaw, wrong_version, p) == DecodeStatus::kBadIpHeader);
  CHECK(run(kDltEn10mb, ether(0x86DD, wrong_version), p) == DecodeStatus::kBadIpHeader);
  // A UDP header that claims more than the IP payload has.
  Bytes tiny = ipv4(17, udp(1, 2, 0));
  tiny[3] = 24;
  CHECK(run(kDltRaw, tiny, p) == DecodeStatus::kBadTransport);
  // An extension header longer than the payload length.
  Bytes long_ext = ipv6(6, tcp(1, 2, 0x02, 0), {{60, 8}});
  long_ext[41] = 200;
  CHECK(run(kDltRaw, long_ext, p) == DecodeStatus::kBadIpHeader);
  CHECK(p.key.proto == 0);  // a failed decode leaves no half-filled key behind
}

TEST_CASE("a packet cut at every byte offset never reads past the span and names the layer") {
  for (const Case& c : cases()) {
    for (std::size_t n = 0; n < c.bytes.size(); ++n) {
      // An exact-size heap copy, so AddressSanitizer sees any read past the end.
      const auto copy = std::make_unique<std::uint8_t[]>(n + 1);
      std::memcpy(copy.get(), c.bytes.data(), n);
      DecodedPacket p;
      const DecodeStatus s =
          decode(c.link, {copy.get(), n}, static_cast<std::uint32_t>(c.bytes.size()), p);
      // A header cut after its ports (ICMP: type and code) still names its flow.
      const std::size_t ports_end =
          std::min(c.transport_end, c.ip_end + (c.name.rfind("icmp", 0) == 0 ? 2 : 4));
      DecodeStatus expected = DecodeStatus::kOk;
      if (n < c.link_end) expected = DecodeStatus::kTruncatedLink;
      else if (n < c.ip_end) expected = DecodeStatus::kTruncatedIp;
      else if (n < ports_end) expected = DecodeStatus::kTruncatedTransport;
      INFO(c.name << " cut at " << n << " of " << c.bytes.size() << ": " << to_string(s));
      REQUIRE(s == expected);
      if (s == DecodeStatus::kOk && c.transport_end > c.ip_end) {
        CHECK(p.has_ports);
        CHECK(p.ports_cut == (n < c.transport_end));
      }
    }
  }
}

TEST_CASE("random bytes under every link type never crash the decoder") {
  std::uint64_t state = 42;
  auto next = [&] {
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    return static_cast<std::uint8_t>(state >> 56);
  };
  const std::vector<Case> all = cases();
  std::size_t ok = 0;
  for (int round = 0; round < 20000; ++round) {
    const Case& c = all[static_cast<std::size_t>(round) % all.size()];
    Bytes b = c.bytes;
    for (int flips = 0; flips < 3; ++flips) b[next() % b.size()] ^= next();
    b.resize(next() % (b.size() + 1));
    DecodedPacket p;
    if (decode(c.link, b, static_cast<std::uint32_t>(c.bytes.size()), p) == DecodeStatus::kOk) {
      ++ok;
      CHECK(p.payload_bytes <= p.ip_bytes);
    }
  }
  CHECK(ok > 0);
}

TEST_CASE("the symmetric hash is the same both ways and differs between flows") {
  DecodedPacket a;
  REQUIRE(run(kDltRaw, ipv4(6, tcp(40000, 443, 0x02, 0)), a) == DecodeStatus::kOk);
  FlowKey reverse = a.key;
  std::swap(reverse.src, reverse.dst);
  std::swap(reverse.src_port, reverse.dst_port);
  CHECK(symmetric_hash(a.key) == symmetric_hash(reverse));
  CHECK(symmetric_hash64(a.key) == symmetric_hash64(reverse));
  FlowKey other_port = a.key;
  other_port.src_port = 40001;
  CHECK(symmetric_hash(a.key) != symmetric_hash(other_port));
  FlowKey other_vlan = a.key;
  other_vlan.vlan = 3;
  CHECK(symmetric_hash(a.key) != symmetric_hash(other_vlan));

  // An echo request and its reply are one flow, so one shard.
  REQUIRE(run(kDltRaw, ipv4(1, icmp(8, 0, 8)), a) == DecodeStatus::kOk);
  FlowKey reply = a.key;
  std::swap(reply.src, reply.dst);
  reply.src_port = 0;  // echo reply, code 0
  reply.dst_port = 0;
  CHECK(symmetric_hash(a.key) == symmetric_hash(reply));
}

TEST_CASE("the symmetric hash spreads similar keys evenly over shards") {
  DecodedPacket p;
  REQUIRE(run(kDltRaw, ipv4(6, tcp(1, 443, 0x02, 0)), p) == DecodeStatus::kOk);
  constexpr int kShards = 16, kKeys = 64000;
  std::vector<int> counts(kShards, 0);
  std::set<std::uint32_t> distinct;
  for (int i = 0; i < kKeys; ++i) {
    FlowKey k = p.key;
    k.src_port = static_cast<std::uint16_t>(1024 + i % 60000);
    k.src[3] = static_cast<std::uint8_t>(i / 60000);
    const std::uint32_t h = symmetric_hash(k);
    distinct.insert(h);
    ++counts[h % kShards];
  }
  CHECK(distinct.size() > kKeys - 10);
  for (int c : counts) {
    CHECK(c > kKeys / kShards * 9 / 10);
    CHECK(c < kKeys / kShards * 11 / 10);
  }
}

namespace {

struct PcapCloser {
  void operator()(pcap_t* p) const { pcap_close(p); }
};

struct RealPacket {
  int link;
  Bytes bytes;
  std::uint32_t wire_len;
};

std::vector<RealPacket> read_pcap(const std::string& name) {
  const std::string path = std::string(FLOWSEAL_PACKET_TESTDATA) + "/" + name;
  char error[PCAP_ERRBUF_SIZE] = {};
  std::unique_ptr<pcap_t, PcapCloser> handle(pcap_open_offline(path.c_str(), error));
  INFO(path << ": " << error);
  REQUIRE(handle);
  std::vector<RealPacket> out;
  pcap_pkthdr* header = nullptr;
  const u_char* data = nullptr;
  while (pcap_next_ex(handle.get(), &header, &data) == 1) {
    out.push_back({pcap_datalink(handle.get()), Bytes(data, data + header->caplen), header->len});
  }
  return out;
}

std::string ipv4_text(const std::array<std::uint8_t, 16>& a) {
  return std::to_string(a[0]) + "." + std::to_string(a[1]) + "." + std::to_string(a[2]) + "." +
         std::to_string(a[3]);
}

// Compares every IPv4 packet with what tshark said of it (testdata/*.expected.csv).
void check_against_tshark(const std::string& stem) {
  const std::vector<RealPacket> packets = read_pcap(stem + ".pcap");
  std::ifstream csv(std::string(FLOWSEAL_PACKET_TESTDATA) + "/" + stem + ".expected.csv");
  REQUIRE(csv);
  std::string line;
  std::size_t rows = 0;
  while (std::getline(csv, line)) {
    std::vector<std::string> f;
    std::stringstream ss(line);
    std::string field;
    while (std::getline(ss, field, ',')) f.push_back(field);
    f.resize(10);
    const std::size_t frame = std::stoul(f[0]);
    REQUIRE(frame >= 1);
    REQUIRE(frame <= packets.size());
    const RealPacket& rp = packets[frame - 1];
    DecodedPacket p;
    INFO(stem << " frame " << frame);
    REQUIRE(decode(rp.link, rp.bytes, rp.wire_len, p) == DecodeStatus::kOk);
    CHECK(ipv4_text(p.key.src) == f[1]);
    CHECK(ipv4_text(p.key.dst) == f[2]);
    CHECK(std::to_string(p.key.proto) == f[3]);
    const std::string& sport = f[4].empty() ? f[6] : f[4];
    const std::string& dport = f[5].empty() ? f[7] : f[5];
    if (!sport.empty()) {
      CHECK(std::to_string(p.key.src_port) == sport);
      CHECK(std::to_string(p.key.dst_port) == dport);
    }
    CHECK(std::to_string(p.ip_bytes) == f[8]);
    CHECK(std::to_string(p.key.vlan) == (f[9].empty() ? "0" : f[9]));
    ++rows;
  }
  CHECK(rows > 0);
}

}  // namespace

TEST_CASE("real QinQ, MPLS, PPPoE and raw captures decode as tshark reads them") {
  check_against_tshark("q-in-q");
  check_against_tshark("mixed-vlan-mpls");
  check_against_tshark("pppoe-over-qinq-first12");
  check_against_tshark("LINKTYPE_RAW_ipv4");

  const auto qinq = read_pcap("q-in-q.pcap");
  REQUIRE(qinq.size() == 5);
  DecodedPacket p;
  CHECK(decode(qinq[4].link, qinq[4].bytes, qinq[4].wire_len, p) == DecodeStatus::kNotIp);
}

TEST_CASE("real IPv6 captures with a routing header decode to ICMPv6 and UDP") {
  const auto v6 = read_pcap("LINKTYPE_IPV6.pcap");
  REQUIRE(v6.size() == 1);
  DecodedPacket p;
  REQUIRE(decode(v6[0].link, v6[0].bytes, v6[0].wire_len, p) == DecodeStatus::kOk);
  CHECK(p.key.ip_version == 6);
  CHECK(p.key.proto == 17);
  CHECK(p.key.src_port == 12345);
  CHECK(p.key.dst_port == 53);
  CHECK(p.ip_bytes == 77);
  CHECK(p.payload_bytes == 29);

  const auto rh = read_pcap("ipv6-routing-header.pcap");
  REQUIRE(rh.size() == 4);
  REQUIRE(decode(rh[0].link, rh[0].bytes, rh[0].wire_len, p) == DecodeStatus::kOk);
  CHECK(p.key.proto == 58);
  CHECK(p.key.src_port == 128);
  CHECK(p.ip_bytes == 72);
  CHECK(p.payload_bytes == 0);
  REQUIRE(decode(rh[2].link, rh[2].bytes, rh[2].wire_len, p) == DecodeStatus::kOk);
  CHECK(p.key.proto == 17);
  CHECK(p.key.src_port == 5645);
  CHECK(p.key.dst_port == 5642);
}

TEST_CASE("a fragment names its datagram: addresses, id, offset, length and what follows") {
  DecodedPacket p;
  REQUIRE(run(kDltRaw, ipv4(17, udp(5000, 53, 100), {.more_fragments = true}), p) ==
          DecodeStatus::kOk);
  REQUIRE(p.fragment);
  CHECK(p.frag.ip_version == 4);
  CHECK(p.frag.id == 0x1234);
  CHECK(p.frag.offset == 0);
  CHECK(p.frag.length == 108);
  CHECK(p.frag.header_len == 20);
  CHECK(p.frag.proto == 17);
  CHECK(p.frag.more);
  CHECK(p.frag.src[3] == 1);
  CHECK(p.frag.dst[3] == 2);
  CHECK(p.frag.layer == kKeyLayer);
  CHECK(p.frag.outer_before == 0);

  REQUIRE(run(kDltRaw, ipv4(17, Bytes(64, 1), {.option_bytes = 4, .fragment_offset = 14}), p) ==
          DecodeStatus::kOk);
  CHECK(p.frag.offset == 112);
  CHECK(p.frag.length == 64);
  CHECK(p.frag.header_len == 24);
  CHECK_FALSE(p.frag.more);

  // IPv6: the unfragmentable part is the fixed header and the extensions before the
  // fragment header; the 8-byte fragment header itself is not part of the datagram.
  REQUIRE(run(kDltRaw, ipv6(17, Bytes(64, 1), {{0, 8}, {44, 8}}, 9), p) == DecodeStatus::kOk);
  REQUIRE(p.fragment);
  CHECK(p.frag.ip_version == 6);
  CHECK(p.frag.id == 0xABCD);
  CHECK(p.frag.offset == 72);
  CHECK(p.frag.length == 64);
  CHECK(p.frag.header_len == 48);
  CHECK(p.frag.proto == 17);
  CHECK(p.frag.more);
  CHECK(p.ip_bytes == 40 + 8 + 8 + 64);
}

TEST_CASE("an IPv6 atomic fragment (offset 0, no more fragments) is a whole packet") {
  Bytes b = ipv6(17, udp(5000, 53, 10), {{44, 8}}, 0);
  b[40 + 3] = 0;  // clear the M flag the builder sets
  DecodedPacket p;
  REQUIRE(run(kDltRaw, b, p) == DecodeStatus::kOk);
  CHECK_FALSE(p.fragment);
  CHECK(p.has_ports);
  CHECK(p.key.dst_port == 53);
}

TEST_CASE("a tunnel in the first fragment of an outer datagram is decapsulated") {
  // GTP-U over UDP 2152, the outer datagram fragmented after 512 bytes of its payload.
  const Bytes inner = ipv4(6, tcp(1923, 80, 0x10, 1000));
  Bytes gtp{0x30, 0xFF};
  put16(gtp, static_cast<std::uint16_t>(inner.size()));
  put32(gtp, 1);
  const Bytes datagram = cat(cat(udp(2152, 2152, 0), gtp), inner);
  const Bytes first(datagram.begin(), datagram.begin() + 512);
  DecodedPacket p;
  REQUIRE(run(kDltRaw, ipv4(17, first, {.more_fragments = true}), p) == DecodeStatus::kOk);
  CHECK(p.key.proto == 6);
  CHECK(p.key.dst_port == 80);
  CHECK(p.ip_bytes == inner.size());  // the inner header's length: whole already
  REQUIRE(p.outer_count == 1);
  CHECK(p.outer[0].key.dst_port == 2152);
  CHECK(p.outer[0].ip_bytes == 20 + 512);
  REQUIRE(p.fragment);
  CHECK(p.frag.layer == 0);  // the outer UDP connection gets the datagram's length
  CHECK(p.frag.outer_before == 0);
  CHECK(p.frag.length == 512);

  // A whole tunnel packet around a fragmented inner packet: the tunnel counts now.
  const Bytes inner_piece = ipv4(17, udp(5000, 53, 100), {.more_fragments = true});
  Bytes gtp2{0x30, 0xFF};
  put16(gtp2, static_cast<std::uint16_t>(inner_piece.size()));
  put32(gtp2, 1);
  REQUIRE(run(kDltRaw, ipv4(17, cat(cat(udp(2152, 2152, 0), gtp2), inner_piece)), p) ==
          DecodeStatus::kOk);
  REQUIRE(p.fragment);
  CHECK(p.outer_count == 1);
  CHECK(p.frag.outer_before == 1);
  CHECK(p.frag.layer == kKeyLayer);
  CHECK(p.key.dst_port == 53);
}

TEST_CASE("GRE in UDP (RFC 8086, port 4754) is a UDP tunnel around the inner connection") {
  const Bytes inner = ipv4(6, tcp(1923, 80, 0x02, 0));
  const Bytes gre{0x00, 0x00, 0x08, 0x00};  // no options, IPv4
  DecodedPacket p;
  REQUIRE(run(kDltRaw, ipv4(17, cat(cat(udp(50000, 4754, 0), gre), inner)), p) ==
          DecodeStatus::kOk);
  CHECK(p.key.proto == 6);
  CHECK(p.key.dst_port == 80);
  CHECK(p.tunnel_depth == 2);  // the UDP tunnel, then GRE
  REQUIRE(p.outer_count == 1);
  CHECK(p.outer[0].key.proto == 17);
  CHECK(p.outer[0].key.dst_port == 4754);

  // With a key and a sequence number, around an Ethernet frame.
  const Bytes keyed{0x30, 0x00, 0x65, 0x58, 0, 0, 0, 7, 0, 0, 0, 1};
  REQUIRE(run(kDltRaw, ipv4(17, cat(cat(udp(4754, 4754, 0), keyed), ether(0x0800, inner))), p) ==
          DecodeStatus::kOk);
  CHECK(p.key.dst_port == 80);
  CHECK(p.outer_count == 1);

  // Not GRE after all (a version GRE does not have, or nothing inside it decodes): the
  // datagram stays a UDP flow on port 4754.
  for (const Bytes& payload : {Bytes{0x00, 0x07, 0x08, 0x00, 1, 2, 3, 4}, Bytes{0, 0, 0x08, 0x00},
                               cat(Bytes{0, 0, 0x08, 0x00}, Bytes(20, 0xFF))}) {
    REQUIRE(run(kDltRaw, ipv4(17, cat(udp(50000, 4754, 0), payload)), p) == DecodeStatus::kOk);
    CHECK(p.key.proto == 17);
    CHECK(p.key.dst_port == 4754);
    CHECK(p.outer_count == 0);
    CHECK(p.tunnel_depth == 0);
  }
}

// ------------------------------------------------------------------ 802.11

// An 802.11 frame: frame control (type/subtype byte, flags byte), duration, three addresses,
// sequence control, then address 4 (to and from DS), QoS control (QoS subtypes), HT control
// (QoS + order), then `body`.
Bytes wlan_frame(std::uint8_t fc, std::uint8_t flags, const Bytes& body, std::uint8_t qos = 0) {
  Bytes b{fc, flags, 0, 0};
  b.resize(b.size() + 18, 0x11);  // addresses 1-3
  put16(b, 0x1230);               // sequence control
  if ((flags & 0x03) == 0x03) b.resize(b.size() + 6, 0x22);
  const bool qos_data = ((fc >> 2) & 3) == 2 && (fc & 0x80) != 0;
  if (qos_data) {
    b.push_back(qos);
    b.push_back(0);
    if ((flags & 0x80) != 0) put32(b, 0xFFFFFFFF);  // HT control: would break the LLC check
  }
  return cat(b, body);
}
Bytes snap(std::uint16_t ethertype, const Bytes& payload) {
  Bytes b{0xAA, 0xAA, 0x03, 0, 0, 0};
  put16(b, ethertype);
  return cat(b, payload);
}
// A radiotap header of `len` bytes (little-endian length; fields are skipped, not read).
Bytes radiotap(std::uint16_t len, const Bytes& frame) {
  Bytes b{0, 0, static_cast<std::uint8_t>(len), static_cast<std::uint8_t>(len >> 8)};
  b.resize(len, 0);
  return cat(b, frame);
}

TEST_CASE("802.11 data frames carry IP after LLC/SNAP, with or without radiotap") {
  const Bytes dns = snap(0x0800, ipv4(17, udp(61738, 53, 35)));
  struct Case {
    const char* what;
    int link;
    Bytes bytes;
  } cases[] = {
      {"data", kDltIeee80211, wlan_frame(0x08, 0x01, dns)},
      {"data, radiotap", kDltIeee80211Radio, radiotap(26, wlan_frame(0x08, 0x02, dns))},
      {"data, four addresses", kDltIeee80211, wlan_frame(0x08, 0x03, dns)},
      {"QoS data", kDltIeee80211Radio, radiotap(36, wlan_frame(0x88, 0x01, dns))},
      {"QoS data, HT control", kDltIeee80211, wlan_frame(0x88, 0x81, dns)},
      {"QoS data, four addresses", kDltIeee80211, wlan_frame(0x88, 0x03, dns)},
  };
  for (const Case& c : cases) {
    INFO(c.what);
    DecodedPacket p;
    REQUIRE(run(c.link, c.bytes, p) == DecodeStatus::kOk);
    CHECK(p.key.proto == 17);
    CHECK(p.key.src_port == 61738);
    CHECK(p.key.dst_port == 53);
    CHECK(p.ip_bytes == 63);
    CHECK(p.payload_bytes == 35);
  }
  DecodedPacket p;
  REQUIRE(run(kDltIeee80211, wlan_frame(0x88, 0x01, snap(0x86DD, ipv6(17, udp(5353, 5353, 280)))),
              p) == DecodeStatus::kOk);
  CHECK(p.key.ip_version == 6);
  CHECK(p.ip_bytes == 328);
}

TEST_CASE("802.11 frames without an IP packet are named by kind, never decoded as flows") {
  const Bytes dns = snap(0x0800, ipv4(17, udp(61738, 53, 35)));
  DecodedPacket p;
  CHECK(run(kDltIeee80211, wlan_frame(0x80, 0, Bytes(40, 0)), p) ==
        DecodeStatus::kNotIp);  // beacon
  CHECK(run(kDltIeee80211Radio, radiotap(8, wlan_frame(0xD4, 0, Bytes(4, 0))), p) ==
        DecodeStatus::kNotIp);  // ACK (control): 10 bytes, under a data header's length
  CHECK(run(kDltIeee80211, wlan_frame(0x48, 0x01, {}), p) == DecodeStatus::kNotIp);  // null
  CHECK(run(kDltIeee80211, wlan_frame(0xC8, 0x01, {}), p) == DecodeStatus::kNotIp);  // QoS null
  CHECK(run(kDltIeee80211, wlan_frame(0x08, 0x41, dns), p) == DecodeStatus::kEncrypted);
  CHECK(run(kDltIeee80211, wlan_frame(0x88, 0x41, dns), p) == DecodeStatus::kEncrypted);
  CHECK(run(kDltIeee80211, wlan_frame(0x88, 0x01, dns, 0x80), p) == DecodeStatus::kBadAmsdu);
  CHECK(run(kDltIeee80211, wlan_frame(0x08, 0x01, Bytes{0x42, 0x42, 0x03, 0, 0, 0, 0, 0}), p) ==
        DecodeStatus::kNotIp);  // spanning tree LLC
  CHECK(run(kDltIeee80211, wlan_frame(0x08, 0x01, snap(0x0806, Bytes(28, 0))), p) ==
        DecodeStatus::kNotIp);  // ARP
  CHECK(run(kDltIeee80211, wlan_frame(0x08, 0x01, Bytes{0xAA, 0xAA, 0x03}), p) ==
        DecodeStatus::kTruncatedLink);
  Bytes long_radiotap = radiotap(26, wlan_frame(0x08, 0x01, dns));
  long_radiotap[2] = 0xFF;  // it_len past the packet's end
  CHECK(run(kDltIeee80211Radio, long_radiotap, p) == DecodeStatus::kTruncatedLink);
  CHECK(run(kDltIeee80211Radio, Bytes{0, 0, 4, 0, 1, 2}, p) == DecodeStatus::kTruncatedLink);
  CHECK(to_string(DecodeStatus::kEncrypted) == "encrypted");
  CHECK(to_string(DecodeStatus::kBadAmsdu) == "bad_amsdu");
}

// A-MSDU subframes: destination and source address, the MSDU's length, the MSDU (LLC/SNAP,
// then a packet), padded to a multiple of 4 bytes except the last.
Bytes amsdu_body(const std::vector<Bytes>& msdus) {
  Bytes b;
  for (std::size_t i = 0; i < msdus.size(); ++i) {
    const std::size_t start = b.size();
    b.resize(b.size() + 12, static_cast<std::uint8_t>(0x30 + i));
    put16(b, static_cast<std::uint16_t>(msdus[i].size()));
    b = cat(b, msdus[i]);
    if (i + 1 < msdus.size()) b.resize(b.size() + (4 - (b.size() - start) % 4) % 4, 0);
  }
  return b;
}
// An Aruba access point's tunnel to its controller: 802.11 frames in GRE (type 0x8240), in
// IP or (RFC 8086) in UDP.
Bytes aruba(const Bytes& frame, bool in_udp = false) {
  Bytes gre{0x00, 0x00};
  put16(gre, 0x8240);
  if (in_udp) return ether(0x0800, ipv4(17, cat(cat(udp(50000, 4754, 0), gre), frame)));
  return ether(0x0800, ipv4(47, cat(gre, frame)));
}

// The packet capture makes of one subframe: the frame's bytes up to the first subframe, the
// A-MSDU bit cleared, then the subframe's MSDU.
Bytes subframe_packet(const Bytes& frame, const AmsduSplit& split, std::size_t i) {
  Bytes b(frame.begin(), frame.begin() + split.prefix);
  b[split.amsdu_bit_at] &= 0x7F;
  const AmsduSubframe& sub = split.subframes[i];
  return cat(b, Bytes(frame.begin() + sub.offset, frame.begin() + sub.offset + sub.length));
}

TEST_CASE("an A-MSDU frame splits into its subframes, each a packet of its own flow") {
  // Lengths 63, 328 and 54 (+ 8 LLC/SNAP): paddings of 3 and 2 bytes, and a last subframe.
  const std::vector<Bytes> msdus = {
      snap(0x0800, ipv4(17, udp(61738, 53, 35))),
      snap(0x86DD, ipv6(17, udp(5353, 5353, 280))),
      snap(0x0800, ipv4(6, tcp(443, 49392, 0x18, 14))),
  };
  const Bytes body = amsdu_body(msdus);
  struct Case {
    const char* what;
    int link;
    Bytes bytes;
    std::uint8_t tunnel_depth;
  } cases[] = {
      {"802.11", kDltIeee80211, wlan_frame(0x88, 0x01, body, 0x80), 0},
      {"radiotap, HT control", kDltIeee80211Radio, radiotap(26, wlan_frame(0x88, 0x81, body, 0x80)),
       0},
      {"four addresses", kDltIeee80211, wlan_frame(0x88, 0x03, body, 0x87), 0},
      {"Aruba GRE", kDltEn10mb, aruba(wlan_frame(0x88, 0x02, body, 0x80)), 1},
      {"Aruba GRE in UDP", kDltEn10mb, aruba(wlan_frame(0x88, 0x02, body, 0x80), true), 2},
  };
  for (const Case& c : cases) {
    INFO(c.what);
    DecodedPacket p;
    CHECK(run(c.link, c.bytes, p) == DecodeStatus::kBadAmsdu);
    AmsduSplit split;
    REQUIRE(split_amsdu(c.link, c.bytes, static_cast<std::uint32_t>(c.bytes.size()), split));
    REQUIRE(split.subframes.size() == msdus.size());
    CHECK((c.bytes[split.amsdu_bit_at] & 0x80) != 0);
    for (std::size_t i = 0; i < msdus.size(); ++i) {
      const AmsduSubframe& sub = split.subframes[i];
      CHECK(Bytes(c.bytes.begin() + sub.offset, c.bytes.begin() + sub.offset + sub.length) ==
            msdus[i]);
    }
    const Bytes first = subframe_packet(c.bytes, split, 0);
    REQUIRE(run(c.link, first, p) == DecodeStatus::kOk);
    CHECK(p.key.dst_port == 53);
    CHECK(p.ip_bytes == 63);
    CHECK(p.tunnel_depth == c.tunnel_depth);
    CHECK(p.outer_count == (c.tunnel_depth == 2 ? 1 : 0));  // GRE in UDP: the UDP connection
    REQUIRE(run(c.link, subframe_packet(c.bytes, split, 1), p) == DecodeStatus::kOk);
    CHECK(p.key.ip_version == 6);
    CHECK(p.ip_bytes == 328);
    REQUIRE(run(c.link, subframe_packet(c.bytes, split, 2), p) == DecodeStatus::kOk);
    CHECK(p.key.proto == 6);
    CHECK(p.key.src_port == 443);
    CHECK(p.tcp_flags == 0x18);
    CHECK(p.ip_bytes == 54);
    // The split's own answer holds for any frame: a plain one is no A-MSDU frame.
    CHECK_FALSE(split_amsdu(c.link, first, static_cast<std::uint32_t>(first.size()), split));
    CHECK(split.subframes.empty());
  }
  // A last subframe padded anyway is fine, as Zeek reads it.
  const Bytes padded = wlan_frame(0x88, 0x01, cat(amsdu_body({msdus[0]}), Bytes(3, 0)), 0x80);
  AmsduSplit split;
  CHECK(split_amsdu(kDltIeee80211, padded, static_cast<std::uint32_t>(padded.size()), split));
  CHECK(split.subframes.size() == 1);
}

TEST_CASE("a malformed A-MSDU frame is not split and never read past its end") {
  const std::vector<Bytes> msdus = {snap(0x0800, ipv4(17, udp(61738, 53, 35))),
                                    snap(0x0800, ipv4(6, tcp(443, 49392, 0x18, 14)))};
  const Bytes body = amsdu_body(msdus);
  auto frame = [](const Bytes& b) { return wlan_frame(0x88, 0x01, b, 0x80); };
  Bytes past_end = body;  // the last subframe's length one byte past the frame
  past_end[body.size() - msdus[1].size() - 1] += 1;
  Bytes first_past_end = body;  // the first subframe's length past the whole frame
  first_past_end[12] = 0x40;
  Bytes zero = body;  // an empty first subframe
  zero[12] = zero[13] = 0;
  // The first subframe without its 1 byte of padding: the next header is read 1 byte late.
  Bytes unpadded = body;
  unpadded.erase(unpadded.begin() + 14 + static_cast<std::ptrdiff_t>(msdus[0].size()));
  struct Case {
    const char* what;
    int link;
    Bytes bytes;
  } cases[] = {
      {"a subframe length past the frame", kDltIeee80211, frame(past_end)},
      {"the first subframe past the frame", kDltIeee80211, frame(first_past_end)},
      {"a zero-length subframe", kDltIeee80211, frame(zero)},
      {"padding missing", kDltIeee80211, frame(unpadded)},
      {"2 stray bytes after the last subframe", kDltIeee80211, frame(cat(body, Bytes(2, 0)))},
      {"padding of the wrong length (2 of 3)", kDltIeee80211,
       frame(cat(amsdu_body({msdus[0]}), Bytes(2, 0)))},
      {"a cut subframe header", kDltIeee80211, frame(cat(body, Bytes(20, 0)))},
      {"no subframe at all", kDltIeee80211, frame({})},
      {"HT control past the capture", kDltIeee80211,
       Bytes{0x88, 0x81, 0,  0,  1,  2,  3,  4,  5, 6, 7,    8, 9, 10,
             11,   12,   13, 14, 15, 16, 17, 18, 0, 0, 0x80, 0, 0}},
      {"Aruba GRE, the IP length ends the frame early", kDltEn10mb,
       [&] {
         Bytes b = aruba(frame(body));
         const auto total = static_cast<std::uint16_t>((b[14 + 2] << 8 | b[14 + 3]) - 10);
         b[14 + 2] = static_cast<std::uint8_t>(total >> 8);  // the IPv4 total length
         b[14 + 3] = static_cast<std::uint8_t>(total);
         return b;
       }()},
  };
  for (const Case& c : cases) {
    INFO(c.what);
    DecodedPacket p;
    CHECK(run(c.link, c.bytes, p) == DecodeStatus::kBadAmsdu);
    AmsduSplit split;
    // Exactly the frame's bytes on the heap: ASan reports any read past them.
    const auto copy = std::make_unique<std::uint8_t[]>(c.bytes.size());
    std::memcpy(copy.get(), c.bytes.data(), c.bytes.size());
    CHECK_FALSE(split_amsdu(c.link, std::span<const std::uint8_t>(copy.get(), c.bytes.size()),
                            static_cast<std::uint32_t>(c.bytes.size()), split));
  }
}

TEST_CASE("every decoded packet of the real captures decodes alike from its header bytes alone") {
  // The captures tests use (tests/data) and the decoder's own (testdata): tunnels, VLAN, MPLS,
  // PPPoE, IPv6 extension headers, fragments, pcapng.
  std::size_t decoded = 0, cut_shorter = 0;
  std::uint64_t captured_bytes = 0, header_bytes = 0;
  for (const char* dir : {FLOWSEAL_PACKET_TESTDATA, FLOWSEAL_TESTS_DATA}) {
    for (const auto& entry : std::filesystem::directory_iterator(dir)) {
      const std::string ext = entry.path().extension();
      if (ext != ".pcap" && ext != ".pcapng") continue;
      char error[PCAP_ERRBUF_SIZE] = {};
      std::unique_ptr<pcap_t, PcapCloser> handle(pcap_open_offline(entry.path().c_str(), error));
      INFO(entry.path() << ": " << error);
      REQUIRE(handle);
      pcap_pkthdr* header = nullptr;
      const u_char* data = nullptr;
      while (pcap_next_ex(handle.get(), &header, &data) == 1) {
        const std::span<const std::uint8_t> bytes(data, header->caplen);
        DecodedPacket whole;
        if (decode(pcap_datalink(handle.get()), bytes, header->len, whole) != DecodeStatus::kOk) {
          continue;
        }
        ++decoded;
        check_header_cut(pcap_datalink(handle.get()), bytes, header->len, whole);
        cut_shorter += whole.header_bytes < bytes.size();
        captured_bytes += bytes.size();
        header_bytes += whole.header_bytes;
      }
    }
  }
  INFO(decoded << " packets decoded, " << header_bytes << " of " << captured_bytes
               << " captured bytes read by decode()");
  CHECK(decoded > 5000);
  CHECK(cut_shorter > decoded / 2);  // most packets carry payload flowd need not see
}
