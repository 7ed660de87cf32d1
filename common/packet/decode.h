// Packet decoding shared by capture (flow hash, shard choice) and flowd (flow assembly).
//
// decode() walks the link layer, VLAN tags, the IP header and the transport header of one
// captured packet and fills a DecodedPacket with what a flow needs: the 5-tuple plus VLAN,
// the IP length and transport details. It never reads past `bytes`, never allocates and
// never throws: a packet it cannot use comes back as a DecodeStatus naming the layer that
// was short or wrong, which callers count by kind ("weird" counters, as Zeek keeps).
//
// Addresses are stored as 16 bytes; IPv4 sits in the first 4 bytes with the rest zero, so a
// key compares and hashes the same way for both families.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

namespace flowseal::packet {

// Link types decode() knows, as libpcap numbers them (pcap/dlt.h); decode_test checks them
// against libpcap's own header. DLT_RAW is 12 on most systems and 14 on OpenBSD; a file says
// LINKTYPE_RAW (101), which libpcap maps back to DLT_RAW except where it cannot.
inline constexpr int kDltNull = 0;
inline constexpr int kDltEn10mb = 1;
inline constexpr int kDltPpp = 9;
inline constexpr int kDltIeee80211 = 105;       // 802.11 frames without radio information
inline constexpr int kDltIeee80211Radio = 127;  // radiotap header, then an 802.11 frame
inline constexpr int kDltRaw = 12;
inline constexpr int kDltRawOpenBsd = 14;
inline constexpr int kLinktypeRaw = 101;
inline constexpr int kDltLoop = 108;
inline constexpr int kDltLinuxSll = 113;
inline constexpr int kDltIpv4 = 228;
inline constexpr int kDltIpv6 = 229;
inline constexpr int kDltLinuxSll2 = 276;

enum class DecodeStatus : std::uint8_t {
  kOk,
  kNotIp,               // ARP, LLDP, STP, ...: no IP flow to account it to
  kUnsupportedLink,     // a DLT_ this decoder does not know
  kTruncatedLink,       // link/VLAN/MPLS/PPPoE header cut short
  kTruncatedIp,         // IP header cut short
  kBadIpHeader,         // version, header length or total length inconsistent
  kTruncatedTransport,  // TCP/UDP/ICMP/SCTP header cut short (first fragment only)
  kBadTransport,        // e.g. TCP data offset < 5
  // Appended (the order is the counters' order): 802.11 frames that carry IP but cannot be
  // read. Management, control and empty (null) data frames are kNotIp.
  kEncrypted,  // 802.11 protected frame: the payload is encrypted
  // 802.11 A-MSDU: several packets (subframes) in one frame. decode() answers this for every
  // A-MSDU frame; capture splits a well-formed one first (split_amsdu() below), so one that
  // reaches flowd whole is malformed (a subframe past the frame, bad padding, an empty one).
  kBadAmsdu,
  kCount
};
std::string_view to_string(DecodeStatus);

struct FlowKey {
  std::array<std::uint8_t, 16> src{};  // sender of this packet
  std::array<std::uint8_t, 16> dst{};
  std::uint16_t src_port = 0;   // ICMP: type; ICMPv6: type
  std::uint16_t dst_port = 0;   // ICMP: code; ICMPv6: code
  std::uint16_t vlan = 0;       // innermost 802.1Q VLAN id, 0 if none
  std::uint8_t proto = 0;       // IP protocol number (after IPv6 extension headers)
  std::uint8_t ip_version = 0;  // 4 or 6
  bool operator==(const FlowKey&) const = default;
};

// A UDP tunnel's own connection (VXLAN, Geneve, GTP-U, Teredo, AYIYA): Zeek logs it beside
// the inner connection, so the packet is accounted to both.
struct OuterFlow {
  FlowKey key;
  std::uint32_t ip_bytes = 0;
  std::uint32_t payload_bytes = 0;
  bool operator==(const OuterFlow&) const = default;
};
inline constexpr std::size_t kMaxOuterFlows = 3;  // tunnel nesting decode() follows

// The IP fragment a packet is (DecodedPacket::fragment), as flowd's fragment table needs it
// to count a datagram once, when all of it has arrived, as Zeek does (it reassembles and
// counts the datagram: one packet, its reassembled IP length). This is the outermost
// fragmented IP layer: layers outside it are whole packets; it and everything inside it
// (decoded from the first fragment only) belong to the datagram.
struct FragmentInfo {
  std::array<std::uint8_t, 16> src{};
  std::array<std::uint8_t, 16> dst{};
  std::uint32_t id = 0;          // IPv4 identification / IPv6 fragment header identification
  std::uint32_t offset = 0;      // fragmentable bytes before this fragment's
  std::uint32_t length = 0;      // fragmentable bytes this fragment carries
  std::uint16_t header_len = 0;  // the unfragmentable part: IPv4 header, IPv6 40 + extensions
  std::uint16_t vlan = 0;
  std::uint8_t proto = 0;  // IPv4 protocol; IPv6 next header after the fragment header
  std::uint8_t ip_version = 0;
  bool more = false;  // more fragments follow (MF / M flag)
  // Which accounted layer this IP layer is, so the datagram's length replaces its fragment
  // length: outer[layer] when layer < outer_count and the layer was the UDP tunnel that
  // became it, `key` when layer == kKeyLayer, none (GRE, IP-in-IP decapsulated) at kNoLayer.
  std::uint8_t layer = 0;
  // outer_count when this layer was decoded: outer[0..outer_before) enclose it and are whole.
  std::uint8_t outer_before = 0;
  std::uint8_t depth = 0;  // tunnel_depth when this layer was decoded
  bool operator==(const FragmentInfo&) const = default;
};
inline constexpr std::uint8_t kKeyLayer = 0xFE;
inline constexpr std::uint8_t kNoLayer = 0xFF;

// One packet as flows see it. For a tunnelled packet `key` and the fields below it describe
// the innermost connection (the flow, as Zeek makes it), and outer[0..outer_count) the UDP
// tunnel connections around it, outermost first. GRE and IP-in-IP have no connection of
// their own. A tunnel whose inner packet cannot be decoded stays an ordinary outer flow.
struct DecodedPacket {
  FlowKey key;
  std::uint32_t ip_bytes = 0;       // IPv4 total length; IPv6 payload length + 40 (as Zeek)
  std::uint32_t payload_bytes = 0;  // transport payload by the IP lengths (not the capture)
  std::uint8_t tcp_flags = 0;       // FIN 0x01 SYN 0x02 RST 0x04 PSH 0x08 ACK 0x10 URG 0x20
  std::uint32_t tcp_seq = 0;
  std::uint32_t tcp_ack = 0;
  std::uint16_t tcp_window = 0;   // as sent, unscaled (flowd: Zeek's zero-window letter)
  bool has_ports = false;         // false for a non-first fragment and for "other" protos
  bool fragment = false;          // any IP fragment (first or later): see `frag`
  bool ports_cut = false;         // the snaplen cut the transport header after the ports
  std::uint8_t tunnel_depth = 0;  // encapsulations decoded (GRE, IP-in-IP, UDP tunnels)
  std::uint8_t outer_count = 0;
  std::array<OuterFlow, kMaxOuterFlows> outer{};
  FragmentInfo frag;  // valid when `fragment`
  // How many leading bytes of the packet decode() read. The packet cut to this length
  // decodes to the same DecodedPacket (this field aside): no length check that passed on the
  // whole packet fails on the cut one, and none that failed can pass. Capture forwards only
  // these bytes to flowd: flows are made of headers, and the payload would only be copied.
  std::uint32_t header_bytes = 0;
  bool operator==(const DecodedPacket&) const = default;
};

// Decodes one packet of link type `link_type` (DLT_*). `wire_len` is the packet's length on
// the wire; `bytes` may be shorter (snaplen, payload cut): lengths come from the IP header.
DecodeStatus decode(int link_type, std::span<const std::uint8_t> bytes, std::uint32_t wire_len,
                    DecodedPacket& out);

// An 802.11 A-MSDU frame cut into its subframes, as Zeek's IEEE802_11 analyzer reads it:
// each subframe (6-byte DA, 6-byte SA, 2-byte length, the MSDU: LLC/SNAP, then the packet)
// is a packet of its own flow. `prefix` is every byte before the first subframe (outer
// layers, 802.11 header); prefix bytes with the QoS control byte's A-MSDU bit
// (bytes[amsdu_bit_at] & 0x80) cleared, then one MSDU, make a plain 802.11 frame carrying
// that subframe's packet, which decode() reads as any other.
struct AmsduSubframe {
  std::uint32_t offset = 0;  // of the MSDU (its LLC header), into the frame's bytes
  std::uint32_t length = 0;  // the subframe header's length field: bytes of the MSDU
};
struct AmsduSplit {
  std::uint32_t prefix = 0;
  std::uint32_t amsdu_bit_at = 0;
  std::vector<AmsduSubframe> subframes;  // reused between calls: no allocation once grown
};

// For a packet decode() answers kBadAmsdu: true and `out` filled when every subframe lies
// within the frame (the 802.11 body as the outer lengths and the capture bound it), none is
// empty, and each but the last is padded to a multiple of 4 bytes (IEEE 802.11-2016
// 9.3.2.2.2) with a whole subframe after the padding. False for a malformed frame, which
// stays one packet (flowd counts it as kBadAmsdu). Reads nothing outside `bytes`.
bool split_amsdu(int link_type, std::span<const std::uint8_t> bytes, std::uint32_t wire_len,
                 AmsduSplit& out);

// The same value for both directions of a flow (src/dst and ports swapped), so both land in
// one flowd shard. Stable across processes and runs (no per-process seed).
std::uint32_t symmetric_hash(const FlowKey& key);
// 64-bit finaliser (splitmix64 / Stafford variant 13): every input bit reaches every output
// bit. Shared so the flow hash and the uids built on it mix the same way.
constexpr std::uint64_t mix64(std::uint64_t x) {
  x ^= x >> 30;
  x *= 0xBF58476D1CE4E5B9ULL;
  x ^= x >> 27;
  x *= 0x94D049BB133111EBULL;
  x ^= x >> 31;
  return x;
}

// The full 64 bits of the same hash, for flow tables that want more than a shard index.
std::uint64_t symmetric_hash64(const FlowKey& key);

// ICMP and ICMPv6 request/reply types come in pairs (echo 8/0, neighbor solicitation
// 135/136, ...). As Zeek and Community ID v1 do, a flow's "ports" for such a type are
// (type, counterpart type), so a request and its reply are one flow; other ICMP types keep
// (type, code). Returns the counterpart type, if `type` has one.
std::optional<std::uint8_t> icmp_counterpart(std::uint8_t proto, std::uint8_t type);

// `key` with ICMP ports mapped as above: the key flows are assembled and hashed by.
// decode() itself reports the raw type and code.
FlowKey flow_key(const FlowKey& key);

}  // namespace flowseal::packet
