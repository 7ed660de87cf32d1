// The two identifiers a flow record carries that are functions of its other fields: the flow
// uid (flow key hash, first timestamp, shard) and the Community ID v1 (5-tuple and a seed).
//
// flowd makes them; the segment format (common/segment/columns.h) does not store them when
// they can be recomputed from the record, so writer and reader must compute them exactly as
// flowd does. That is why they live here and nowhere else. The segment encoder only leaves
// an identifier out after checking that this code reproduces it, so flowd may change how it
// makes uids (new records then simply store them in full). But these functions are also
// part of the segment format: segments already written recompute their identifiers with
// them, so changing one needs a new segment format version that keeps the old formula for
// old files (docs/FORMAT.md, "Derived fields").
//
// Everything here is pure and thread-safe; community_id() only needs a SHA-1 the caller
// fetched once (EVP_MD_fetch is too slow per record).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

#include <openssl/types.h>

#include "packet/decode.h"

namespace flowseal::packet {

inline constexpr std::uint8_t kProtoIcmp = 1;
inline constexpr std::uint8_t kProtoTcp = 6;
inline constexpr std::uint8_t kProtoUdp = 17;
inline constexpr std::uint8_t kProtoIcmpv6 = 58;
inline constexpr std::uint8_t kProtoSctp = 132;

// Protocols whose flows are keyed by ports (ICMP: type and code).
constexpr bool has_ports(std::uint8_t proto) {
  return proto == kProtoTcp || proto == kProtoUdp || proto == kProtoSctp ||
         proto == kProtoIcmp || proto == kProtoIcmpv6;
}

// A flow's uid: stable across a replay (no clock, no counter), different per shard so two
// flowd shards never hand out the same one. `key_hash` is symmetric_hash64(flow key).
constexpr std::uint64_t flow_uid(std::uint64_t key_hash, std::int64_t first_ts_ns,
                                 std::uint32_t shard) {
  return mix64(mix64(key_hash ^ static_cast<std::uint64_t>(first_ts_ns)) ^
               (std::uint64_t{shard} * 0x9E3779B97F4A7C15ULL));
}

// "1:" + 28 base64 characters, NUL-terminated.
struct CommunityIdText {
  std::array<char, 32> chars{};
  std::uint8_t size = 0;  // 0: no id could be computed
  std::string_view view() const { return {chars.data(), size}; }
};

// Community ID v1 (https://github.com/corelight/community-id-spec): SHA-1 over the seed, the
// two addresses and ports in a fixed order, proto and a pad byte; base64 with a "1:" prefix.
// ICMP request/reply types use the counterpart type as the "port" (flow_key() does that);
// other ICMP types are one-way and keep the originator first. `orig` and `resp` are both 4
// or both 16 bytes; anything else (or a failing digest) gives an empty id.
CommunityIdText community_id(const EVP_MD* sha1, std::uint16_t seed, std::uint8_t proto,
                             std::span<const std::uint8_t> orig,
                             std::span<const std::uint8_t> resp, std::uint16_t orig_port,
                             std::uint16_t resp_port);

}  // namespace flowseal::packet
