#include "packet/decode.h"

#include <algorithm>
#include <bit>
#include <cstring>

namespace flowseal::packet {
namespace {

// Network-order reads; every caller has checked the length first.
std::uint16_t be16(const std::uint8_t* p) { return static_cast<std::uint16_t>((p[0] << 8) | p[1]); }
std::uint32_t be32(const std::uint8_t* p) {
  return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) |
         std::uint32_t{p[3]};
}
std::uint32_t le32(const std::uint8_t* p) {
  return (std::uint32_t{p[3]} << 24) | (std::uint32_t{p[2]} << 16) | (std::uint32_t{p[1]} << 8) |
         std::uint32_t{p[0]};
}

constexpr std::uint16_t kEtherIpv4 = 0x0800;
constexpr std::uint16_t kEtherIpv6 = 0x86DD;
constexpr std::uint16_t kEtherVlan = 0x8100;
constexpr std::uint16_t kEtherQinQ = 0x88A8;
constexpr std::uint16_t kEtherQinQOld = 0x9100;  // pre-802.1ad QinQ, still seen on switches
constexpr std::uint16_t kEtherMplsUnicast = 0x8847;
constexpr std::uint16_t kEtherMplsMulticast = 0x8848;
constexpr std::uint16_t kEtherPppoeSession = 0x8864;
constexpr std::uint16_t kEtherTransBridge = 0x6558;  // GRE/Geneve: an Ethernet frame follows
constexpr std::uint16_t kEtherFabricPath = 0x8903;   // Cisco FabricPath: 2 bytes, then Ethernet
constexpr std::uint16_t kEtherVnTag = 0x8926;        // Cisco VN-Tag: 4 bytes, then a type
constexpr std::uint16_t kEtherPbb = 0x88E7;          // 802.1ah I-TAG: 4 bytes + inner MACs
constexpr std::uint16_t kEtherPpp = 0x880B;          // PPP in GRE (PPTP)
constexpr std::uint16_t kEtherErspan2 = 0x88BE;
constexpr std::uint16_t kEtherErspan3 = 0x22EB;
// Aruba access points tunnel 802.11 frames to their controller in GRE with these protocol
// types (0x8200, 0x8210, ... 0x8300), as Zeek's GRE analyzer lists them.
constexpr std::uint16_t kGreArubaFirst = 0x8200;
constexpr std::uint16_t kGreArubaLast = 0x8300;
constexpr std::uint16_t kPppIpv4 = 0x0021;
constexpr std::uint16_t kPppIpv6 = 0x0057;

constexpr std::uint8_t kProtoIcmp = 1;
constexpr std::uint8_t kProtoTcp = 6;
constexpr std::uint8_t kProtoUdp = 17;
constexpr std::uint8_t kProtoIcmpv6 = 58;
constexpr std::uint8_t kProtoSctp = 132;
constexpr std::uint8_t kProtoIpip = 4;
constexpr std::uint8_t kProtoIpv6InIp = 41;
constexpr std::uint8_t kProtoGre = 47;

// UDP ports whose payload is a tunnel Zeek decapsulates (its default analyzer ports).
constexpr std::uint16_t kPortVxlan = 4789;
constexpr std::uint16_t kPortGeneve = 6081;
constexpr std::uint16_t kPortGtpU = 2152;
constexpr std::uint16_t kPortTeredo = 3544;
constexpr std::uint16_t kPortAyiya = 5072;
constexpr std::uint16_t kPortGreInUdp = 4754;  // RFC 8086

// Bounds on encapsulation depth: real traffic stays far below; a crafted packet cannot loop.
constexpr int kMaxLinkLayers = 16;
constexpr int kMaxIpv6ExtensionHeaders = 16;

// What the IP layer found, handed to the transport decoder.
struct IpResult {
  std::size_t transport_offset = 0;  // into the packet span
  std::uint32_t transport_len = 0;   // bytes after the IP (+ extension) headers, by the header
  bool first_fragment_or_whole = true;
};

// Where an A-MSDU frame's subframes are, as wlan() found it. Set only with kBadAmsdu, and
// left unset otherwise: decode() runs for every packet.
struct AmsduFrame {
  std::size_t amsdu_bit_at;  // the QoS control byte
  std::size_t body;          // the first subframe
  std::size_t end;           // the frame's end, within the captured bytes
};

class Decoder {
 public:
  Decoder(std::span<const std::uint8_t> bytes, std::uint32_t wire_len, DecodedPacket& out)
      : bytes_(bytes), wire_len_(std::max<std::size_t>(wire_len, bytes.size())), out_(out) {}

  // Inlined into decode() (callgrind: a call here costs every packet ~6 instructions, which
  // the compiler would pay once split_amsdu() calls it too).
  [[gnu::always_inline]] inline DecodeStatus link(int link_type);
  // Where wlan() found an A-MSDU frame (when it answered kBadAmsdu).
  const AmsduFrame& amsdu() const { return amsdu_; }
  // The end of the furthest range a length check granted: every byte the decoder read lies
  // before it, and every check that failed asked for more than the packet had.
  std::size_t bytes_read() const { return read_end_; }

 private:
  bool have(std::size_t offset, std::size_t n) {
    if (offset > bytes_.size() || n > bytes_.size() - offset) return false;
    read_end_ = std::max(read_end_, offset + n);
    return true;
  }
  const std::uint8_t* at(std::size_t offset) const { return bytes_.data() + offset; }

  DecodeStatus ethernet(std::size_t offset);
  DecodeStatus ethertype(std::uint16_t type, std::size_t offset);
  DecodeStatus null_family(std::size_t offset);
  DecodeStatus ip_by_version(std::size_t offset, DecodeStatus empty, DecodeStatus not_ip);
  DecodeStatus ipv4(std::size_t offset);
  void note_fragment(const std::uint8_t* src, const std::uint8_t* dst, std::size_t addr_len,
                     FragmentInfo info);
  DecodeStatus ipv6(std::size_t offset);
  DecodeStatus transport(const IpResult& ip);
  DecodeStatus ppp(std::size_t offset);
  DecodeStatus wlan(std::size_t offset);
  DecodeStatus gre(std::size_t offset, std::size_t end);
  DecodeStatus gre_in_udp(std::size_t offset);
  DecodeStatus udp_tunnel(std::size_t offset, std::size_t end);
  DecodeStatus decapsulate(bool outer_is_flow, std::size_t offset,
                           DecodeStatus (Decoder::*inner)(std::size_t));
  DecodeStatus ip_any(std::size_t offset) {
    return ip_by_version(offset, DecodeStatus::kTruncatedIp, DecodeStatus::kBadIpHeader);
  }
  DecodeStatus ipv6_only(std::size_t offset) {
    if (!have(offset, 1) || (*at(offset) >> 4) != 6) return DecodeStatus::kBadIpHeader;
    return ipv6(offset);
  }

  // An IP length field of 0 is what the capturing host's TSO/GSO offload leaves: the
  // wire length is then the best length there is.
  std::uint32_t length_from_wire(std::size_t offset) const {
    return offset < wire_len_ ? static_cast<std::uint32_t>(wire_len_ - offset) : 0;
  }

  std::span<const std::uint8_t> bytes_;
  std::size_t wire_len_;
  DecodedPacket& out_;
  std::size_t read_end_ = 0;
  std::size_t gre_in_udp_end_ = 0;  // where the UDP datagram gre_in_udp() opens ends
  // Where the 802.11 frame wlan() reads ends: the capture's end for an 802.11 link type, the
  // GRE payload's for one an Aruba tunnel carries. Set by each caller of wlan(), and only
  // there: decode() runs for every packet.
  std::size_t wlan_end_;
  AmsduFrame amsdu_;
};

DecodeStatus Decoder::link(int link_type) {
  switch (link_type) {
    case kDltEn10mb: return ethernet(0);
    case kDltLinuxSll:
      if (!have(0, 16)) return DecodeStatus::kTruncatedLink;
      return ethertype(be16(at(14)), 16);
    case kDltLinuxSll2:
      if (!have(0, 20)) return DecodeStatus::kTruncatedLink;
      return ethertype(be16(at(0)), 20);
    case kDltRaw:
    case kDltRawOpenBsd:
    case kLinktypeRaw:
      return ip_by_version(0, DecodeStatus::kTruncatedIp, DecodeStatus::kBadIpHeader);
    case kDltIpv4:
      if (!have(0, 1)) return DecodeStatus::kTruncatedIp;
      if ((*at(0) >> 4) != 4) return DecodeStatus::kBadIpHeader;
      return ipv4(0);
    case kDltIpv6:
      if (!have(0, 1)) return DecodeStatus::kTruncatedIp;
      if ((*at(0) >> 4) != 6) return DecodeStatus::kBadIpHeader;
      return ipv6(0);
    case kDltNull:
    case kDltLoop: return null_family(0);
    case kDltPpp: return ppp(0);
    case kDltIeee80211: wlan_end_ = bytes_.size(); return wlan(0);
    case kDltIeee80211Radio: {
      // Radiotap: version, pad, then its whole length, little-endian; the fields inside
      // (rates, channel, signal) say nothing about flows.
      if (!have(0, 4)) return DecodeStatus::kTruncatedLink;
      const std::size_t radiotap_len = std::size_t{*at(2)} | std::size_t{*at(3)} << 8;
      if (radiotap_len < 8) return DecodeStatus::kTruncatedLink;
      wlan_end_ = bytes_.size();
      return wlan(radiotap_len);
    }
    default: return DecodeStatus::kUnsupportedLink;
  }
}

DecodeStatus Decoder::ethernet(std::size_t offset) {
  if (!have(offset, 14)) return DecodeStatus::kTruncatedLink;
  return ethertype(be16(at(offset + 12)), offset + 14);
}

DecodeStatus Decoder::ethertype(std::uint16_t type, std::size_t offset) {
  for (int depth = 0; depth < kMaxLinkLayers; ++depth) {
    switch (type) {
      case kEtherIpv4:
        if (!have(offset, 1)) return DecodeStatus::kTruncatedIp;
        if ((*at(offset) >> 4) != 4) return DecodeStatus::kBadIpHeader;
        return ipv4(offset);
      case kEtherIpv6:
        if (!have(offset, 1)) return DecodeStatus::kTruncatedIp;
        if ((*at(offset) >> 4) != 6) return DecodeStatus::kBadIpHeader;
        return ipv6(offset);
      case kEtherVlan:
      case kEtherQinQ:
      case kEtherQinQOld:
        if (!have(offset, 4)) return DecodeStatus::kTruncatedLink;
        // Each tag overwrites the last, so the innermost (customer) VLAN is what stays.
        out_.key.vlan = be16(at(offset)) & 0x0FFF;
        type = be16(at(offset + 2));
        offset += 4;
        continue;
      case kEtherMplsUnicast:
      case kEtherMplsMulticast: {
        // Labels until the bottom-of-stack bit; MPLS names no payload type, so the IP
        // version nibble decides (anything else, e.g. a pseudowire, is not IP to us).
        for (int labels = 0;; ++labels) {
          if (labels >= kMaxLinkLayers) return DecodeStatus::kTruncatedLink;
          if (!have(offset, 4)) return DecodeStatus::kTruncatedLink;
          const bool bottom = (*at(offset + 2) & 0x01) != 0;
          offset += 4;
          if (bottom) break;
        }
        return ip_by_version(offset, DecodeStatus::kTruncatedLink, DecodeStatus::kNotIp);
      }
      case kEtherTransBridge: return ethernet(offset);
      case kEtherFabricPath: return ethernet(offset + 2);
      case kEtherVnTag:
        if (!have(offset, 6)) return DecodeStatus::kTruncatedLink;
        type = be16(at(offset + 4));
        offset += 6;
        continue;
      case kEtherPbb:
        if (!have(offset, 18)) return DecodeStatus::kTruncatedLink;
        type = be16(at(offset + 16));
        offset += 18;
        continue;
      case kEtherPppoeSession: {
        if (!have(offset, 8)) return DecodeStatus::kTruncatedLink;
        const std::uint16_t ppp = be16(at(offset + 6));
        offset += 8;
        if (ppp == kPppIpv4) type = kEtherIpv4;
        else if (ppp == kPppIpv6) type = kEtherIpv6;
        else return DecodeStatus::kNotIp;  // LCP, IPCP, ...
        continue;
      }
      default: return DecodeStatus::kNotIp;  // ARP, LLDP, 802.3 length field, PPPoE discovery, ...
    }
  }
  return DecodeStatus::kTruncatedLink;
}

DecodeStatus Decoder::null_family(std::size_t offset) {
  if (!have(offset, 4)) return DecodeStatus::kTruncatedLink;
  // DLT_NULL stores the family in the capturing host's byte order, DLT_LOOP in network
  // order, and files move between hosts: families are small, so the order that gives a
  // small number is the right one.
  std::uint32_t family = le32(at(offset));
  if (family > 0xFFFF) family = be32(at(offset));
  offset += 4;
  switch (family) {
    case 2:  // AF_INET everywhere
      if (!have(offset, 1)) return DecodeStatus::kTruncatedIp;
      if ((*at(offset) >> 4) != 4) return DecodeStatus::kBadIpHeader;
      return ipv4(offset);
    case 10:  // AF_INET6: Linux
    case 24:  // NetBSD, OpenBSD, BSD/OS
    case 28:  // FreeBSD, DragonFly
    case 30:  // macOS
      if (!have(offset, 1)) return DecodeStatus::kTruncatedIp;
      if ((*at(offset) >> 4) != 6) return DecodeStatus::kBadIpHeader;
      return ipv6(offset);
    default: return DecodeStatus::kNotIp;
  }
}

DecodeStatus Decoder::ip_by_version(std::size_t offset, DecodeStatus empty, DecodeStatus not_ip) {
  if (!have(offset, 1)) return empty;
  switch (*at(offset) >> 4) {
    case 4: return ipv4(offset);
    case 6: return ipv6(offset);
    default: return not_ip;
  }
}

DecodeStatus Decoder::ipv4(std::size_t offset) {
  if (!have(offset, 20)) return DecodeStatus::kTruncatedIp;
  const std::uint8_t* ip = at(offset);
  const std::size_t header_len = std::size_t{ip[0] & 0x0Fu} * 4;
  if (header_len < 20) return DecodeStatus::kBadIpHeader;
  std::uint32_t total = be16(ip + 2);
  if (total == 0) total = length_from_wire(offset);
  if (total < header_len) return DecodeStatus::kBadIpHeader;
  if (!have(offset, header_len)) return DecodeStatus::kTruncatedIp;

  out_.key.ip_version = 4;
  out_.key.proto = ip[9];
  std::memcpy(out_.key.src.data(), ip + 12, 4);
  std::memcpy(out_.key.dst.data(), ip + 16, 4);
  out_.ip_bytes = total;

  const std::uint16_t frag = be16(ip + 6);
  const bool more_fragments = (frag & 0x2000) != 0;
  const std::uint16_t frag_offset = frag & 0x1FFF;
  if (more_fragments || frag_offset != 0) {
    FragmentInfo info;
    info.id = be16(ip + 4);
    info.offset = std::uint32_t{frag_offset} * 8;
    info.length = total - static_cast<std::uint32_t>(header_len);
    info.header_len = static_cast<std::uint16_t>(header_len);
    info.proto = ip[9];
    info.ip_version = 4;
    info.more = more_fragments;
    note_fragment(ip + 12, ip + 16, 4, info);
  }

  IpResult result;
  result.transport_offset = offset + header_len;
  result.transport_len = total - static_cast<std::uint32_t>(header_len);
  result.first_fragment_or_whole = frag_offset == 0;
  return transport(result);
}

// Only the outermost fragmented layer is kept: it decides when the datagram is whole.
void Decoder::note_fragment(const std::uint8_t* src, const std::uint8_t* dst, std::size_t addr_len,
                            FragmentInfo info) {
  if (out_.fragment) return;
  std::memcpy(info.src.data(), src, addr_len);
  std::memcpy(info.dst.data(), dst, addr_len);
  info.vlan = out_.key.vlan;
  info.layer = kKeyLayer;
  info.outer_before = out_.outer_count;
  info.depth = out_.tunnel_depth;
  out_.fragment = true;
  out_.frag = info;
}

DecodeStatus Decoder::ipv6(std::size_t offset) {
  if (!have(offset, 40)) return DecodeStatus::kTruncatedIp;
  const std::uint8_t* ip = at(offset);
  std::uint32_t payload = be16(ip + 4);
  // 0 is a jumbogram or a TSO-offloaded packet; either way the wire length is what we have.
  if (payload == 0) payload = length_from_wire(offset + 40);
  out_.key.ip_version = 6;
  std::memcpy(out_.key.src.data(), ip + 8, 16);
  std::memcpy(out_.key.dst.data(), ip + 24, 16);
  out_.ip_bytes = payload + 40;

  std::uint8_t next = ip[6];
  std::size_t pos = offset + 40;
  std::uint32_t remaining = payload;
  IpResult result;
  for (int n = 0;; ++n) {
    if (n > kMaxIpv6ExtensionHeaders) return DecodeStatus::kBadIpHeader;
    std::size_t ext_len = 0;
    std::uint8_t following = 0;
    switch (next) {
      case 0:   // hop-by-hop options
      case 43:  // routing
      case 60:  // destination options
        if (!have(pos, 2)) return DecodeStatus::kTruncatedIp;
        following = *at(pos);
        ext_len = (std::size_t{*at(pos + 1)} + 1) * 8;
        break;
      case 51:  // AH: length in 4-byte units minus 2
        if (!have(pos, 2)) return DecodeStatus::kTruncatedIp;
        following = *at(pos);
        ext_len = (std::size_t{*at(pos + 1)} + 2) * 4;
        break;
      case 44: {  // fragment
        if (!have(pos, 8)) return DecodeStatus::kTruncatedIp;
        following = *at(pos);
        ext_len = 8;
        const std::uint16_t frag = be16(at(pos + 2));
        const bool more = (frag & 0x0001) != 0;
        // Offset 0 without M is an "atomic fragment" (RFC 6946): a whole packet.
        if ((frag & 0xFFF8) == 0 && !more) break;
        if ((frag & 0xFFF8) != 0) result.first_fragment_or_whole = false;
        FragmentInfo info;
        info.id = be32(at(pos + 4));
        info.offset = frag & 0xFFF8u;
        info.length = remaining >= 8 ? remaining - 8 : 0;
        info.header_len = static_cast<std::uint16_t>(pos - offset);
        info.proto = following;
        info.ip_version = 6;
        info.more = more;
        note_fragment(ip + 8, ip + 24, 16, info);
        break;
      }
      default:
        out_.key.proto = next;
        result.transport_offset = pos;
        result.transport_len = remaining;
        return transport(result);
    }
    if (ext_len > remaining) return DecodeStatus::kBadIpHeader;
    if (!have(pos, ext_len)) return DecodeStatus::kTruncatedIp;
    remaining -= static_cast<std::uint32_t>(ext_len);
    pos += ext_len;
    next = following;
    // Past a later fragment's header only payload bytes follow, never the transport header.
    if (!result.first_fragment_or_whole) {
      out_.key.proto = next;
      result.transport_offset = pos;
      result.transport_len = remaining;
      return transport(result);
    }
  }
}

DecodeStatus Decoder::transport(const IpResult& ip) {
  out_.payload_bytes = ip.transport_len;
  if (!ip.first_fragment_or_whole) return DecodeStatus::kOk;  // no ports here: has_ports false
  const std::size_t pos = ip.transport_offset;
  std::size_t header_len = 0;
  // Bytes that must be captured to read the ports: a header the snaplen cut after them still
  // names its flow, and the IP lengths still give its size.
  std::size_t ports_len = 4;
  switch (out_.key.proto) {
    case kProtoTcp:
      header_len = 20;
      if (have(pos, 20)) {
        const std::uint8_t* tcp = at(pos);
        header_len = std::size_t{static_cast<std::uint8_t>(tcp[12] >> 4)} * 4;
        if (header_len < 20) return DecodeStatus::kBadTransport;
        out_.tcp_seq = be32(tcp + 4);
        out_.tcp_ack = be32(tcp + 8);
        out_.tcp_flags = tcp[13];
        out_.tcp_window = be16(tcp + 14);
      }
      break;
    case kProtoUdp:
    case kProtoSctp:
      // SCTP's common header is 12 bytes; its chunks are payload to a flow.
      header_len = out_.key.proto == kProtoUdp ? 8 : 12;
      break;
    case kProtoIcmp:
    case kProtoIcmpv6:
      header_len = 8;
      ports_len = 2;
      break;
    // A first fragment is decapsulated like a whole packet (its inner headers are there);
    // flowd holds the result until the rest of the datagram has arrived.
    case kProtoIpip:
    case kProtoIpv6InIp: return decapsulate(false, pos, &Decoder::ip_any);
    case kProtoGre: return gre(pos, pos + ip.transport_len);
    default: return DecodeStatus::kOk;  // no ports: the whole IP payload is payload
  }
  if (!have(pos, ports_len)) return DecodeStatus::kTruncatedTransport;
  if (ports_len == 2) {
    out_.key.src_port = *at(pos);
    out_.key.dst_port = *at(pos + 1);
  } else {
    out_.key.src_port = be16(at(pos));
    out_.key.dst_port = be16(at(pos + 2));
  }
  if (header_len > ip.transport_len) return DecodeStatus::kBadTransport;
  out_.payload_bytes = ip.transport_len - static_cast<std::uint32_t>(header_len);
  out_.has_ports = true;
  out_.ports_cut = !have(pos, header_len);
  if (out_.key.proto == kProtoUdp && !out_.ports_cut) {
    return udp_tunnel(pos + 8, pos + ip.transport_len);
  }
  return DecodeStatus::kOk;
}

// An 802.11 frame (as Zeek's IEEE802_11 analyzer reads it): only data frames carry IP.
DecodeStatus Decoder::wlan(std::size_t offset) {
  if (!have(offset, 24)) return DecodeStatus::kTruncatedLink;
  const std::uint8_t fc = *at(offset), flags = *at(offset + 1);
  const unsigned type = (fc >> 2) & 0x3, subtype = fc >> 4;
  if (type != 2) return DecodeStatus::kNotIp;             // management, control, extension
  if ((subtype & 0x4) != 0) return DecodeStatus::kNotIp;  // null data, QoS null: no body
  std::size_t len = 24;
  if ((flags & 0x03) == 0x03) len += 6;  // to and from the distribution system: address 4
  bool amsdu = false;
  std::size_t qos_at = 0;
  if ((subtype & 0x8) != 0) {  // QoS data: a QoS control field
    if (!have(offset + len, 2)) return DecodeStatus::kTruncatedLink;
    qos_at = offset + len;
    amsdu = (*at(qos_at) & 0x80) != 0;
    len += 2;
    if ((flags & 0x80) != 0) len += 4;  // +HTC: "order" on a QoS frame means HT control
  }
  if ((flags & 0x40) != 0) return DecodeStatus::kEncrypted;  // WEP/TKIP/CCMP: no keys here
  offset += len;
  if (amsdu) {
    // Capture splits the frame (split_amsdu) before anything counts it.
    amsdu_ = {qos_at, offset, std::min(wlan_end_, bytes_.size())};
    return DecodeStatus::kBadAmsdu;
  }
  // LLC/SNAP with the encapsulated-Ethernet OUI 00-00-00, then an ethertype. Other LLC
  // (spanning tree, bridge-tunnel OUIs) carries nothing we count.
  if (!have(offset, 8)) return DecodeStatus::kTruncatedLink;
  const std::uint8_t* llc = at(offset);
  if (llc[0] != 0xAA || llc[1] != 0xAA || llc[2] != 0x03 || llc[3] != 0 || llc[4] != 0 ||
      llc[5] != 0) {
    return DecodeStatus::kNotIp;
  }
  return ethertype(be16(llc + 6), offset + 8);
}

DecodeStatus Decoder::ppp(std::size_t offset) {
  if (!have(offset, 2)) return DecodeStatus::kTruncatedLink;
  if (*at(offset) == 0xFF && *at(offset + 1) == 0x03) offset += 2;  // address and control
  if (!have(offset, 1)) return DecodeStatus::kTruncatedLink;
  std::uint16_t protocol = *at(offset);
  if ((protocol & 1) != 0) {  // a compressed (one-byte) protocol field is odd
    offset += 1;
  } else {
    if (!have(offset, 2)) return DecodeStatus::kTruncatedLink;
    protocol = be16(at(offset));
    offset += 2;
  }
  if (protocol == kPppIpv4) return ethertype(kEtherIpv4, offset);
  if (protocol == kPppIpv6) return ethertype(kEtherIpv6, offset);
  return DecodeStatus::kNotIp;  // LCP, IPCP, CCP, ...
}

// The tunnel's inner packet becomes the flow. If it cannot be decoded (not IP, cut short,
// nesting too deep) the packet stays what it was: an ordinary packet of the outer flow.
DecodeStatus Decoder::decapsulate(bool outer_is_flow, std::size_t offset,
                                  DecodeStatus (Decoder::*inner)(std::size_t)) {
  if (out_.tunnel_depth >= kMaxOuterFlows) return DecodeStatus::kOk;
  if (outer_is_flow && out_.outer_count >= kMaxOuterFlows) return DecodeStatus::kOk;
  const DecodedPacket saved = out_;
  DecodedPacket fresh;
  fresh.tunnel_depth = static_cast<std::uint8_t>(saved.tunnel_depth + 1);
  fresh.outer = saved.outer;
  fresh.outer_count = saved.outer_count;
  fresh.fragment = saved.fragment;
  fresh.frag = saved.frag;
  if (saved.fragment && saved.frag.depth == saved.tunnel_depth) {
    // The fragmented layer is the one decapsulated here: a UDP tunnel's own connection, or
    // (GRE, IP-in-IP) no connection at all.
    fresh.frag.layer = outer_is_flow ? saved.outer_count : kNoLayer;
  }
  if (outer_is_flow) {
    fresh.outer[fresh.outer_count++] = OuterFlow{saved.key, saved.ip_bytes, saved.payload_bytes};
  }
  out_ = fresh;
  const DecodeStatus status = (this->*inner)(offset);
  // An A-MSDU frame is no packet of the outer flow: it is split into packets of their own.
  if (status == DecodeStatus::kBadAmsdu) return status;
  if (status != DecodeStatus::kOk) out_ = saved;
  return DecodeStatus::kOk;
}

DecodeStatus Decoder::gre(std::size_t offset, std::size_t end) {
  if (!have(offset, 4) || end < offset + 4) return DecodeStatus::kOk;  // a GRE flow of its own
  const std::uint16_t flags = be16(at(offset));
  const std::uint16_t protocol = be16(at(offset + 2));
  std::size_t len = 4;
  switch (flags & 0x0007) {
    case 0:
      if ((flags & 0x8000) != 0) len += 4;  // checksum + reserved
      if ((flags & 0x2000) != 0) len += 4;  // key
      if ((flags & 0x1000) != 0) len += 4;  // sequence number
      break;
    case 1:  // enhanced GRE (PPTP): key always, acknowledgement optional
      if (protocol != kEtherPpp) return DecodeStatus::kOk;
      len += 4;
      if ((flags & 0x1000) != 0) len += 4;
      if ((flags & 0x0080) != 0) len += 4;
      break;
    default: return DecodeStatus::kOk;
  }
  offset += len;
  switch (protocol) {
    case kEtherErspan2:
      // ERSPAN type II carries an 8-byte header and sets the GRE sequence bit; type I has neither.
      return decapsulate(false, offset + ((flags & 0x1000) != 0 ? 8 : 0), &Decoder::ethernet);
    case kEtherErspan3: {
      if (!have(offset, 12)) return DecodeStatus::kOk;
      const bool platform_specific = (*at(offset + 11) & 0x01) != 0;
      return decapsulate(false, offset + 12 + (platform_specific ? 8 : 0), &Decoder::ethernet);
    }
    case kEtherPpp: return decapsulate(false, offset, &Decoder::ppp);
    case kEtherTransBridge: return decapsulate(false, offset, &Decoder::ethernet);
    case kEtherIpv4:
    case kEtherIpv6: return decapsulate(false, offset, &Decoder::ip_any);
    default:
      if (protocol >= kGreArubaFirst && protocol <= kGreArubaLast && (protocol & 0xF) == 0) {
        wlan_end_ = end;
        return decapsulate(false, offset, &Decoder::wlan);
      }
      return DecodeStatus::kOk;
  }
}

// GRE in a UDP datagram (RFC 8086): the UDP connection is a tunnel of its own, as VXLAN's.
// gre() leaves a packet it cannot open as it was and says kOk (from IP, that is a GRE flow
// of its own); here it is a UDP datagram that is not GRE after all, so it stays one.
DecodeStatus Decoder::gre_in_udp(std::size_t offset) {
  const std::uint8_t depth = out_.tunnel_depth;
  const DecodeStatus status = gre(offset, gre_in_udp_end_);
  if (status == DecodeStatus::kBadAmsdu) return status;  // an Aruba tunnel's A-MSDU frame
  if (status != DecodeStatus::kOk || out_.tunnel_depth == depth) {
    return DecodeStatus::kBadTransport;
  }
  return DecodeStatus::kOk;
}

DecodeStatus Decoder::udp_tunnel(std::size_t offset, std::size_t end) {
  const std::uint16_t sp = out_.key.src_port, dp = out_.key.dst_port;
  auto port = [&](std::uint16_t p) { return sp == p || dp == p; };
  if (end <= offset || !have(offset, 8)) return DecodeStatus::kOk;
  const std::uint8_t* h = at(offset);
  if (port(kPortVxlan)) {
    if ((h[0] & 0x08) == 0) return DecodeStatus::kOk;  // the VNI-valid flag
    return decapsulate(true, offset + 8, &Decoder::ethernet);
  }
  if (port(kPortGeneve)) {
    if ((h[0] >> 6) != 0) return DecodeStatus::kOk;  // version 0 only
    const std::size_t inner = offset + 8 + std::size_t{h[0] & 0x3Fu} * 4;
    const std::uint16_t protocol = be16(h + 2);
    if (protocol == kEtherTransBridge) return decapsulate(true, inner, &Decoder::ethernet);
    if (protocol == kEtherIpv4 || protocol == kEtherIpv6) {
      return decapsulate(true, inner, &Decoder::ip_any);
    }
    return DecodeStatus::kOk;
  }
  if (port(kPortGtpU)) {
    // GTPv1-U: only a G-PDU (message type 0xFF) carries a user packet.
    if ((h[0] >> 5) != 1 || (h[0] & 0x10) == 0 || h[1] != 0xFF) return DecodeStatus::kOk;
    std::size_t len = 8;
    if ((h[0] & 0x07) != 0) {
      if (!have(offset, 12)) return DecodeStatus::kOk;
      len = 12;
      std::uint8_t next = (h[0] & 0x04) != 0 ? *at(offset + 11) : 0;
      for (int n = 0; next != 0; ++n) {
        if (n >= kMaxLinkLayers || !have(offset + len, 1) || *at(offset + len) == 0) {
          return DecodeStatus::kOk;
        }
        len += std::size_t{*at(offset + len)} * 4;
        if (!have(offset + len - 1, 1)) return DecodeStatus::kOk;
        next = *at(offset + len - 1);
      }
    }
    return decapsulate(true, offset + len, &Decoder::ip_any);
  }
  if (port(kPortAyiya)) {
    const std::size_t len = 8 + (std::size_t{1} << (h[0] >> 4)) + std::size_t{h[1]} / 16 * 4;
    if ((h[2] & 0x0F) != 1) return DecodeStatus::kOk;  // opcode 1: forward a packet
    if (h[3] == kProtoIpv6InIp) return decapsulate(true, offset + len, &Decoder::ipv6_only);
    if (h[3] == kProtoIpip) return decapsulate(true, offset + len, &Decoder::ip_any);
    return DecodeStatus::kOk;
  }
  if (port(kPortGreInUdp)) {
    gre_in_udp_end_ = end;
    return decapsulate(true, offset, &Decoder::gre_in_udp);
  }
  if (port(kPortTeredo)) {
    std::size_t pos = offset;
    if (be16(at(pos)) == 0x0001) {  // authentication indicator
      pos += 4 + std::size_t{*at(pos + 2)} + *at(pos + 3) + 8 + 1;
    }
    if (have(pos, 2) && be16(at(pos)) == 0x0000) pos += 8;  // origin indication
    return decapsulate(true, pos, &Decoder::ipv6_only);
  }
  return DecodeStatus::kOk;
}

std::uint64_t load64(const std::uint8_t* p) {
  std::uint64_t v;
  std::memcpy(&v, p, sizeof v);
  return v;  // host order is fine: the hash only has to agree between processes on one host
}

struct Endpoint {
  const std::array<std::uint8_t, 16>* addr;
  std::uint16_t port;
};

// An address's bytes as a number, for ordering: the first 8 bytes most significant.
std::uint64_t load_be64(const std::uint8_t* p) {
  std::uint64_t v;
  std::memcpy(&v, p, sizeof v);
  return std::endian::native == std::endian::little ? __builtin_bswap64(v) : v;
}

// Address order as memcmp's, without its call: this runs for every packet in capture and
// flowd (two loads and a compare instead of a library call per endpoint pair).
bool endpoint_less(const Endpoint& a, const Endpoint& b) {
  const std::uint64_t a_hi = load_be64(a.addr->data()), b_hi = load_be64(b.addr->data());
  if (a_hi != b_hi) return a_hi < b_hi;
  const std::uint64_t a_lo = load_be64(a.addr->data() + 8), b_lo = load_be64(b.addr->data() + 8);
  if (a_lo != b_lo) return a_lo < b_lo;
  return a.port < b.port;
}

}  // namespace

std::string_view to_string(DecodeStatus status) {
  switch (status) {
    case DecodeStatus::kOk: return "ok";
    case DecodeStatus::kNotIp: return "not_ip";
    case DecodeStatus::kUnsupportedLink: return "unsupported_link";
    case DecodeStatus::kTruncatedLink: return "truncated_link";
    case DecodeStatus::kTruncatedIp: return "truncated_ip";
    case DecodeStatus::kBadIpHeader: return "bad_ip_header";
    case DecodeStatus::kTruncatedTransport: return "truncated_transport";
    case DecodeStatus::kBadTransport: return "bad_transport";
    case DecodeStatus::kEncrypted: return "encrypted";
    case DecodeStatus::kBadAmsdu: return "bad_amsdu";
    case DecodeStatus::kCount: break;
  }
  return "unknown";
}

DecodeStatus decode(int link_type, std::span<const std::uint8_t> bytes, std::uint32_t wire_len,
                    DecodedPacket& out) {
  out = DecodedPacket{};
  Decoder decoder(bytes, wire_len, out);
  const DecodeStatus status = decoder.link(link_type);
  if (status != DecodeStatus::kOk) {
    out = DecodedPacket{};
  } else {
    out.header_bytes = static_cast<std::uint32_t>(decoder.bytes_read());
  }
  return status;
}

bool split_amsdu(int link_type, std::span<const std::uint8_t> bytes, std::uint32_t wire_len,
                 AmsduSplit& out) {
  out.subframes.clear();
  DecodedPacket scratch;
  Decoder decoder(bytes, wire_len, scratch);
  if (decoder.link(link_type) != DecodeStatus::kBadAmsdu) return false;
  const AmsduFrame& frame = decoder.amsdu();
  constexpr std::size_t kSubframeHeader = 14;  // DA, SA, length
  std::size_t pos = frame.body;
  for (;;) {
    if (pos >= frame.end || frame.end - pos < kSubframeHeader) return false;
    const std::size_t length = be16(bytes.data() + pos + 12);
    if (length == 0 || length > frame.end - pos - kSubframeHeader) return false;
    out.subframes.push_back(
        {static_cast<std::uint32_t>(pos + kSubframeHeader), static_cast<std::uint32_t>(length)});
    pos += kSubframeHeader + length;
    // Padding to a multiple of 4 follows every subframe but the last; a last one padded
    // anyway is fine. Anything else after a subframe is malformed: a cut subframe header,
    // or padding of the wrong length.
    const std::size_t padding = (4 - (kSubframeHeader + length) % 4) % 4;
    const std::size_t rest = frame.end - pos;
    if (rest == 0 || rest == padding) break;
    if (rest < padding + kSubframeHeader) return false;
    pos += padding;
  }
  out.prefix = static_cast<std::uint32_t>(frame.body);
  out.amsdu_bit_at = static_cast<std::uint32_t>(frame.amsdu_bit_at);
  return true;
}

std::optional<std::uint8_t> icmp_counterpart(std::uint8_t proto, std::uint8_t type) {
  if (proto == kProtoIcmp) {
    switch (type) {
      case 8: return 0;  // echo request / reply
      case 0: return 8;
      case 13: return 14;  // timestamp
      case 14: return 13;
      case 15: return 16;  // information
      case 16: return 15;
      case 10: return 9;  // router solicitation / advertisement
      case 9: return 10;
      case 17: return 18;  // address mask
      case 18: return 17;
      default: return std::nullopt;
    }
  }
  if (proto == kProtoIcmpv6) {
    switch (type) {
      case 128: return 129;  // echo
      case 129: return 128;
      case 133: return 134;  // router solicitation / advertisement
      case 134: return 133;
      case 135: return 136;  // neighbor solicitation / advertisement
      case 136: return 135;
      case 130: return 131;  // multicast listener query / report
      case 131: return 130;
      case 144: return 145;  // home agent address discovery
      case 145: return 144;
      default: return std::nullopt;
    }
  }
  return std::nullopt;
}

FlowKey flow_key(const FlowKey& key) {
  FlowKey k = key;
  if (k.proto == kProtoIcmp || k.proto == kProtoIcmpv6) {
    if (const auto other = icmp_counterpart(k.proto, static_cast<std::uint8_t>(k.src_port))) {
      k.dst_port = *other;
    }
  }
  return k;
}

std::uint64_t symmetric_hash64(const FlowKey& raw) {
  const FlowKey key = flow_key(raw);
  Endpoint a{&key.src, key.src_port};
  Endpoint b{&key.dst, key.dst_port};
  if (endpoint_less(b, a)) std::swap(a, b);
  std::uint64_t h = mix64(0x666C6F777365616CULL ^ (std::uint64_t{key.ip_version} << 24) ^
                          (std::uint64_t{key.proto} << 16) ^ key.vlan);
  const Endpoint ends[2] = {a, b};
  for (const Endpoint& e : ends) {
    h = mix64(h ^ load64(e.addr->data()));
    h = mix64(h ^ load64(e.addr->data() + 8));
    h = mix64(h ^ e.port);
  }
  return h;
}

std::uint32_t symmetric_hash(const FlowKey& key) {
  const std::uint64_t h = symmetric_hash64(key);
  return static_cast<std::uint32_t>(h ^ (h >> 32));
}

}  // namespace flowseal::packet
