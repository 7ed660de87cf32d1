// IP prefixes (CIDR: "10.0.0.0/8", "2001:db8::/32") and the set net.local_nets names, which
// decides a flow's local_orig / local_resp (conn.log): a side is local when its address lies
// in any of the prefixes.
//
// NetPrefix::parse is strict, so that a typo is a configuration error rather than a silently
// wrong column: a valid address, a length within the family (a bare address is one host),
// and no address bits set past the length. Thread-safe; LocalNets never allocates after
// construction.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "flowseal.capnp.h"

namespace flowseal {

struct NetPrefix {
  std::array<std::uint8_t, 16> address{};  // network order; IPv4 in the first 4 bytes
  std::uint8_t ip_version = 4;
  std::uint8_t length = 0;  // 0..32 (IPv4) or 0..128 (IPv6)

  // The prefix `text` names, or nullopt with the reason in `why`.
  static std::optional<NetPrefix> parse(std::string_view text, std::string& why);
  // `candidate`: 4 bytes (IPv4) or 16 (IPv6); an address of the other family is never inside.
  bool contains(std::span<const std::uint8_t> candidate) const;
};

class LocalNets {
 public:
  LocalNets() = default;
  // Throws std::invalid_argument naming the first prefix that does not parse, and why.
  explicit LocalNets(const std::vector<std::string>& prefixes);

  // unknown when no prefix is configured (conn.log then leaves the columns unset).
  schema::Locality locality(std::span<const std::uint8_t> address) const;
  bool empty() const { return prefixes_.empty(); }

 private:
  std::vector<NetPrefix> prefixes_;
};

}  // namespace flowseal
