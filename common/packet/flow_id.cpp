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

// The hashed input of a Community ID: seed, the two addresses and ports in the spec's order,
// proto and a pad byte. Empty if the addresses are not both 4 or both 16 bytes.
struct IdInput {
  std::uint8_t bytes[2 + 16 + 16 + 2 + 4];
  std::size_t size = 0;
};

IdInput id_input(std::uint16_t seed, std::uint8_t proto, std::span<const std::uint8_t> orig,
                 std::span<const std::uint8_t> resp, std::uint16_t orig_port,
                 std::uint16_t resp_port) {
  IdInput in;
  const std::size_t addr_len = orig.size();
  if ((addr_len != 4 && addr_len != 16) || resp.size() != addr_len) return in;
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
  std::uint8_t* p = in.bytes;
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
  in.size = static_cast<std::size_t>(p - in.bytes);
  return in;
}

CommunityIdText id_text(const std::array<std::uint8_t, 20>& digest) {
  CommunityIdText out;
  out.chars[0] = '1';
  out.chars[1] = ':';
  const int n =
      EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.chars.data() + 2), digest.data(), 20);
  out.size = static_cast<std::uint8_t>(2 + n);  // 28: base64 of 20 bytes
  return out;
}

}  // namespace

void Sha1::Free::operator()(EVP_MD* md) const { EVP_MD_free(md); }
void Sha1::Free::operator()(EVP_MD_CTX* ctx) const { EVP_MD_CTX_free(ctx); }

Sha1::Sha1()
    : md_(EVP_MD_fetch(nullptr, "SHA1", nullptr)),
      initial_(EVP_MD_CTX_new()),
      work_(EVP_MD_CTX_new()) {
  if (!md_ || !initial_ || !work_ || EVP_DigestInit_ex2(initial_.get(), md_.get(), nullptr) != 1 ||
      EVP_MD_get_size(md_.get()) != 20) {
    initial_.reset();  // !ok()
  }
}

bool Sha1::digest(std::span<const std::uint8_t> data, std::array<std::uint8_t, 20>& out) {
  unsigned int len = 0;
  return initial_ && EVP_MD_CTX_copy_ex(work_.get(), initial_.get()) == 1 &&
         EVP_DigestUpdate(work_.get(), data.data(), data.size()) == 1 &&
         EVP_DigestFinal_ex(work_.get(), out.data(), &len) == 1 && len == 20;
}

CommunityIdText community_id(Sha1& sha1, std::uint16_t seed, std::uint8_t proto,
                             std::span<const std::uint8_t> orig, std::span<const std::uint8_t> resp,
                             std::uint16_t orig_port, std::uint16_t resp_port) {
  const IdInput in = id_input(seed, proto, orig, resp, orig_port, resp_port);
  std::array<std::uint8_t, 20> digest;
  if (in.size == 0 || !sha1.digest({in.bytes, in.size}, digest)) return {};
  return id_text(digest);
}

CommunityIdText community_id(const EVP_MD* sha1, std::uint16_t seed, std::uint8_t proto,
                             std::span<const std::uint8_t> orig, std::span<const std::uint8_t> resp,
                             std::uint16_t orig_port, std::uint16_t resp_port) {
  const IdInput in = id_input(seed, proto, orig, resp, orig_port, resp_port);
  std::array<std::uint8_t, 20> digest;
  unsigned int digest_len = 0;
  if (in.size == 0 || sha1 == nullptr ||
      EVP_MD_get_size(sha1) != 20 ||  // EVP_Digest writes the algorithm's size
      EVP_Digest(in.bytes, in.size, digest.data(), &digest_len, sha1, nullptr) != 1 ||
      digest_len != 20) {
    return {};  // no id rather than a wrong one
  }
  return id_text(digest);
}

}  // namespace flowseal::packet
