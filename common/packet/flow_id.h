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
// Everything here is pure and thread-safe except a Sha1, which one thread at a time uses;
// community_id() needs a SHA-1 the caller fetched once (EVP_MD_fetch is too slow per record).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
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
  return proto == kProtoTcp || proto == kProtoUdp || proto == kProtoSctp || proto == kProtoIcmp ||
         proto == kProtoIcmpv6;
}

// A flow's uid: stable across a replay (no clock, no counter), different per shard so two
// flowd shards never hand out the same one. `key_hash` is symmetric_hash64(flow key).
constexpr std::uint64_t flow_uid(std::uint64_t key_hash, std::int64_t first_ts_ns,
                                 std::uint32_t shard) {
  return mix64(mix64(key_hash ^ static_cast<std::uint64_t>(first_ts_ns)) ^
               (std::uint64_t{shard} * 0x9E3779B97F4A7C15ULL));
}

// "1:" + 28 base64 characters, NUL-terminated. Aligned to its size so that it never straddles
// a page: glibc's memcmp/memcpy take a longer path for a short buffer near a page's end, and a
// stack copy of this text (the column encoder compares one per record) landed there or not
// depending on the environment's size: perfgate's counts then moved with it (tests/perfgate).
struct CommunityIdText {
  alignas(32) std::array<char, 32> chars{};
  std::uint8_t size = 0;  // 0: no id could be computed
  std::string_view view() const { return {chars.data(), size}; }
};

// SHA-1 for the per-flow and per-record Community ID: the algorithm fetched once and a digest
// context initialised once, copied for each digest. OpenSSL 3.0's one-shot EVP_Digest
// allocates, initialises, cleanses and frees a context per call; the copy of a ready one is
// its cheapest path (callgrind, a 40-byte input: 2,579 instructions per digest one-shot,
// 2,121 re-initialising one kept context, 2,004 copying; the SHA-1 block itself is 1,204).
// Not thread-safe: one per thread (flowd's flow table, each BatchCodec).
class Sha1 {
 public:
  Sha1();  // ok() is false if OpenSSL has no SHA-1
  bool ok() const { return initial_ != nullptr; }
  const EVP_MD* md() const { return md_.get(); }
  // SHA-1 of `data` into `out`; false if OpenSSL failed (or !ok()).
  bool digest(std::span<const std::uint8_t> data, std::array<std::uint8_t, 20>& out);

 private:
  struct Free {
    void operator()(EVP_MD* md) const;
    void operator()(EVP_MD_CTX* ctx) const;
  };
  std::unique_ptr<EVP_MD, Free> md_;
  std::unique_ptr<EVP_MD_CTX, Free> initial_;  // initialised with md_, never updated
  std::unique_ptr<EVP_MD_CTX, Free> work_;
};

// Community ID v1 (https://github.com/corelight/community-id-spec): SHA-1 over the seed, the
// two addresses and ports in a fixed order, proto and a pad byte; base64 with a "1:" prefix.
// ICMP request/reply types use the counterpart type as the "port" (flow_key() does that);
// other ICMP types are one-way and keep the originator first. `orig` and `resp` are both 4
// or both 16 bytes; anything else (or a failing digest) gives an empty id.
CommunityIdText community_id(Sha1& sha1, std::uint16_t seed, std::uint8_t proto,
                             std::span<const std::uint8_t> orig, std::span<const std::uint8_t> resp,
                             std::uint16_t orig_port, std::uint16_t resp_port);
// The same with a one-shot digest (a context made and freed per call): for callers that
// compute few IDs. A null `sha1` gives an empty id.
CommunityIdText community_id(const EVP_MD* sha1, std::uint16_t seed, std::uint8_t proto,
                             std::span<const std::uint8_t> orig, std::span<const std::uint8_t> resp,
                             std::uint16_t orig_port, std::uint16_t resp_port);

}  // namespace flowseal::packet
