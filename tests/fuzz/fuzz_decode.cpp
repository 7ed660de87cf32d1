// libFuzzer target: the packet decoder (common/packet/decode.h), as capture and flowd call it.
// Input: a 2-byte link-type selector, then one packet's captured bytes. decode() must never
// read outside the span (ASan), and what it returns must be self-consistent; the packet cut to
// the header_bytes it reports must decode to the same result. An 802.11 A-MSDU frame is also
// split as capture splits it (split_amsdu), and each subframe's packet decoded.
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>
#include <utility>

#include "packet/decode.h"

namespace {

using namespace flowseal::packet;

constexpr std::array<int, 14> kLinks = {
    kDltNull, kDltEn10mb,     kDltPpp,       kDltIeee80211, kDltIeee80211Radio,
    kDltRaw,  kDltRawOpenBsd, kLinktypeRaw,  kDltLoop,      kDltLinuxSll,
    kDltIpv4, kDltIpv6,       kDltLinuxSll2, 0xBEEF /* unknown */};

// An A-MSDU frame's split (what capture does with it): every subframe inside the captured
// bytes, after the prefix; each subframe's packet decodes without reading outside its copy.
void check_amsdu_split(int link, const std::uint8_t* bytes, std::size_t len, std::uint32_t extra) {
  static AmsduSplit split;  // reused, as capture reuses its own
  if (!split_amsdu(link, std::span<const std::uint8_t>(bytes, len),
                   static_cast<std::uint32_t>(len) + extra, split)) {
    return;  // malformed: capture sends it on whole
  }
  if (split.subframes.empty() || split.amsdu_bit_at >= split.prefix || split.prefix > len) {
    std::abort();
  }
  std::size_t previous_end = split.prefix;
  for (const AmsduSubframe& sub : split.subframes) {
    if (sub.length == 0 || sub.offset < previous_end + 14 || sub.offset > len ||
        sub.length > len - sub.offset) {
      std::abort();
    }
    previous_end = sub.offset + sub.length;
    const std::size_t size = split.prefix + sub.length;
    auto* packet = static_cast<std::uint8_t*>(std::malloc(size));
    __builtin_memcpy(packet, bytes, split.prefix);
    packet[split.amsdu_bit_at] &= 0x7F;
    __builtin_memcpy(packet + split.prefix, bytes + sub.offset, sub.length);
    DecodedPacket out;
    (void)decode(link, std::span<const std::uint8_t>(packet, size),
                 static_cast<std::uint32_t>(size), out);
    std::free(packet);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 2) return 0;
  const int link = kLinks[data[0] % kLinks.size()];
  const std::uint32_t extra = data[1];  // the wire was this much longer than the capture
  // A copy of exactly the packet's bytes: ASan then catches a read one byte past the end.
  const std::size_t len = size - 2;
  auto* bytes = static_cast<std::uint8_t*>(std::malloc(len == 0 ? 1 : len));
  if (len > 0) __builtin_memcpy(bytes, data + 2, len);
  DecodedPacket out;
  const DecodeStatus status = decode(link, std::span<const std::uint8_t>(bytes, len),
                                     static_cast<std::uint32_t>(len) + extra, out);
  if (static_cast<unsigned>(status) >= static_cast<unsigned>(DecodeStatus::kCount)) std::abort();
  (void)to_string(status);
  if (status == DecodeStatus::kOk) {
    if (out.key.ip_version != 4 && out.key.ip_version != 6) std::abort();
    if (out.outer_count > kMaxOuterFlows) std::abort();
    // Both directions of a flow hash alike (both land in one flowd shard). ICMP's reverse is
    // not the swapped key (a reply has its own type), so only the other protocols here.
    if (out.key.proto != 1 && out.key.proto != 58) {
      FlowKey reverse = out.key;
      std::swap(reverse.src, reverse.dst);
      std::swap(reverse.src_port, reverse.dst_port);
      if (symmetric_hash(out.key) != symmetric_hash(reverse)) std::abort();
      if (symmetric_hash64(out.key) != symmetric_hash64(reverse)) std::abort();
    }
    (void)flow_key(out.key);
    (void)icmp_counterpart(out.key.proto, static_cast<std::uint8_t>(out.key.src_port));
    // Capture forwards only the header_bytes decode() read: they must decode alike.
    if (out.header_bytes > len) std::abort();
    DecodedPacket cut;
    if (decode(link, std::span<const std::uint8_t>(bytes, out.header_bytes),
               static_cast<std::uint32_t>(len) + extra, cut) != DecodeStatus::kOk ||
        !(cut == out)) {
      std::abort();
    }
  }
  if (status == DecodeStatus::kBadAmsdu) check_amsdu_split(link, bytes, len, extra);
  std::free(bytes);
  return 0;
}
