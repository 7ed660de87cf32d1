#include "packet/flow_id.h"

#include <cstring>
#include <utility>

#include <openssl/evp.h>

namespace flowseal::packet {
namespace {

void put16(std::uint8_t*& p, std::uint16_t v) {
  *p++ = static_cast<std::uint8_t>(v >> 8);
  *p++ = static_cast<std::uint8_t>(v);
}

}  // namespace

CommunityIdText community_id(const EVP_MD* sha1, std::uint16_t seed, std::uint8_t proto,
                             std::span<const std::uint8_t> orig,
                             std::span<const std::uint8_t> resp, std::uint16_t orig_port,
                             std::uint16_t resp_port) {
  CommunityIdText out;
  const std::size_t addr_len = orig.size();
  if ((addr_len != 4 && addr_len != 16) || resp.size() != addr_len || sha1 == nullptr) return out;
  const std::uint8_t* a = orig.data();
  const std::uint8_t* b = resp.data();
  std::uint16_t pa = orig_port, pb = resp_port;
  const bool ports = has_ports(proto);
  bool one_way = false;
  if (proto == kProtoIcmp || proto == kProtoIcmpv6) {
    one_way = !icmp_counterpart(proto, static_cast<std::uint8_t>(pa)).has_value();
  }
  const int order = std::memcmp(a, b, addr_len);
  if (!one_way && (order > 0 || (order == 0 && ports && pa > pb))) {
    std::swap(a, b);
    std::swap(pa, pb);
  }
  std::uint8_t input[2 + 16 + 16 + 2 + 4];
  std::uint8_t* p = input;
  put16(p, seed);
  std::memcpy(p, a, addr_len);
  p += addr_len;
  std::memcpy(p, b, addr_len);
  p += addr_len;
  *p++ = proto;
  *p++ = 0;
  if (ports) {
    put16(p, pa);
    put16(p, pb);
  }
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int digest_len = 0;
  if (EVP_Digest(input, static_cast<std::size_t>(p - input), digest, &digest_len, sha1,
                 nullptr) != 1 ||
      digest_len != 20) {
    return out;  // no id rather than a wrong one
  }
  out.chars[0] = '1';
  out.chars[1] = ':';
  const int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.chars.data() + 2), digest, 20);
  out.size = static_cast<std::uint8_t>(2 + n);  // 28: base64 of 20 bytes
  return out;
}

}  // namespace flowseal::packet
