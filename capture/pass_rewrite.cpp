#include "pass_rewrite.h"

#include <algorithm>
#include <array>

namespace flowseal::capture {
namespace {

// How far into a packet the IP header can start: link, VLAN/MPLS/PPPoE headers.
constexpr std::size_t kSearchLimit = 256;

void xor_low_bytes(std::uint8_t* address, std::size_t length, std::uint32_t pass) {
  address[length - 3] ^= static_cast<std::uint8_t>(pass >> 16);
  address[length - 2] ^= static_cast<std::uint8_t>(pass >> 8);
  address[length - 1] ^= static_cast<std::uint8_t>(pass);
}

}  // namespace

bool rewrite_for_pass(std::span<std::uint8_t> bytes, packet::DecodedPacket& decoded,
                      std::uint32_t pass) {
  const std::size_t length = decoded.key.ip_version == 6 ? 16 : 4;
  if (decoded.key.ip_version != 4 && decoded.key.ip_version != 6) return false;
  // Source and destination sit side by side in both IP headers: find the pair.
  std::array<std::uint8_t, 32> pair{};
  std::copy_n(decoded.key.src.begin(), length, pair.begin());
  std::copy_n(decoded.key.dst.begin(), length, pair.begin() + length);
  const auto window = bytes.first(std::min(bytes.size(), kSearchLimit));
  const auto found = std::search(window.begin(), window.end(), pair.begin(),
                                 pair.begin() + static_cast<std::ptrdiff_t>(2 * length));
  if (found == window.end()) return false;
  std::uint8_t* at = &*found;
  xor_low_bytes(at, length, pass);
  xor_low_bytes(at + length, length, pass);
  xor_low_bytes(decoded.key.src.data(), length, pass);
  xor_low_bytes(decoded.key.dst.data(), length, pass);
  return true;
}

}  // namespace flowseal::capture
