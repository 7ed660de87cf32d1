#include "net_prefix.h"

#include <arpa/inet.h>

#include <algorithm>
#include <charconv>
#include <stdexcept>

#include <fmt/format.h>

namespace flowseal {

std::optional<NetPrefix> NetPrefix::parse(std::string_view text, std::string& why) {
  NetPrefix p;
  const auto slash = text.find('/');
  const std::string address(text.substr(0, slash));
  if (inet_pton(AF_INET, address.c_str(), p.address.data()) == 1) {
    p.ip_version = 4;
  } else if (inet_pton(AF_INET6, address.c_str(), p.address.data()) == 1) {
    p.ip_version = 6;
  } else {
    why = fmt::format("'{}' is not an IPv4 or IPv6 address", address);
    return std::nullopt;
  }
  const unsigned max = p.ip_version == 4 ? 32 : 128;
  unsigned length = max;
  if (slash != std::string_view::npos) {
    const std::string_view digits = text.substr(slash + 1);
    const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), length);
    if (digits.empty() || ec != std::errc() || end != digits.data() + digits.size() ||
        length > max) {
      why = fmt::format("prefix length '{}' is not a number from 0 to {}", digits, max);
      return std::nullopt;
    }
  }
  p.length = static_cast<std::uint8_t>(length);
  for (unsigned bit = length; bit < max; ++bit) {
    if (p.address[bit / 8] & (0x80u >> (bit % 8))) {
      NetPrefix network = p;
      for (unsigned b = length; b < max; ++b) network.address[b / 8] &= ~(0x80u >> (b % 8));
      char buffer[INET6_ADDRSTRLEN] = {};
      inet_ntop(p.ip_version == 4 ? AF_INET : AF_INET6, network.address.data(), buffer,
                sizeof buffer);
      why = fmt::format("address bits are set past the prefix length (the network is {}/{})",
                        buffer, length);
      return std::nullopt;
    }
  }
  return p;
}

bool NetPrefix::contains(std::span<const std::uint8_t> candidate) const {
  if (candidate.size() != (ip_version == 4 ? 4u : 16u)) return false;
  const unsigned whole = length / 8;
  if (!std::equal(candidate.begin(), candidate.begin() + whole, address.begin())) return false;
  const unsigned rest = length % 8;
  if (rest == 0) return true;
  const auto mask = static_cast<std::uint8_t>(0xFF00u >> rest);
  return (candidate[whole] & mask) == address[whole];
}

LocalNets::LocalNets(const std::vector<std::string>& prefixes) {
  for (const auto& text : prefixes) {
    std::string why;
    const auto prefix = NetPrefix::parse(text, why);
    if (!prefix) throw std::invalid_argument(fmt::format("'{}': {}", text, why));
    prefixes_.push_back(*prefix);
  }
}

schema::Locality LocalNets::locality(std::span<const std::uint8_t> address) const {
  if (prefixes_.empty()) return schema::Locality::UNKNOWN;
  const bool local = std::any_of(prefixes_.begin(), prefixes_.end(),
                                 [&](const NetPrefix& p) { return p.contains(address); });
  return local ? schema::Locality::LOCAL : schema::Locality::REMOTE;
}

}  // namespace flowseal
