// IP fragments counted as the datagrams they make up.
//
// Zeek reassembles IP fragments and its conn.log counts each reassembled datagram once: one
// packet, with the reassembled IP length, at the time its last piece arrived; a datagram that
// never completes is never counted. flowd does the same with counts, not payload: the first
// fragment (offset 0) carries the transport header (and any tunnel inside), so its decode
// names the flow; the others only add their fragmentable bytes, and the one without "more
// fragments" gives the datagram's length. Fragments may come in any order: pieces before the
// first are held as counts until it arrives.
//
// Bounded: a fixed number of datagrams in flight, allocated once. An entry ends when its
// datagram completes, when no piece has arrived for `timeout_ns` (counted as incomplete, or
// as without first when the first never came), or, when the table is full, as the least
// recently touched entry (counted as evicted). Overlapping or repeated pieces are not
// resolved byte by byte: a datagram is complete once the bytes received cover its length,
// and one that received more is counted as overlapping.
//
// Process memory: a flowd restart loses the datagrams in flight (at most `capacity`, each a
// datagram whose pieces straddle the restart; they are never counted, as if incomplete).
// Not thread-safe: one per flow table.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "packet/decode.h"

namespace flowseal::flowd {

struct FragmentTableOptions {
  std::size_t capacity = 4096;              // datagrams in flight
  std::int64_t timeout_ns = 30'000'000'000;  // since the last piece (Linux ipfrag_time: 30 s)
};

// Cumulative counts ("weird" kinds for the last four).
struct FragmentStats {
  std::uint64_t fragments = 0;      // pieces taken
  std::uint64_t datagrams = 0;      // datagrams completed and handed on
  std::uint64_t incomplete = 0;     // expired with the first piece but not all bytes
  std::uint64_t without_first = 0;  // expired, the first piece never came
  std::uint64_t evicted = 0;        // ended early because the table was full
  std::uint64_t overlapping = 0;    // completed with more bytes than the datagram's length
};

class FragmentTable {
 public:
  explicit FragmentTable(FragmentTableOptions options = {});

  // Takes one fragment (packet.fragment) seen at `ts_ns`. When it completes its datagram,
  // fills `datagram` with the first piece's decode, the fragmented layer's lengths made the
  // whole datagram's, and returns true.
  bool add(const packet::DecodedPacket& packet, std::int64_t ts_ns,
           packet::DecodedPacket& datagram);
  // Ends the entries idle past the timeout as of `now_ns`.
  void expire(std::int64_t now_ns);
  // Ends every entry (shutdown): each is counted as incomplete or without first.
  void clear();

  std::size_t in_flight() const { return used_; }
  const FragmentStats& stats() const { return stats_; }

 private:
  static constexpr std::uint32_t kNil = 0xFFFFFFFF;
  struct Key {
    std::array<std::uint8_t, 16> src{};
    std::array<std::uint8_t, 16> dst{};
    std::uint32_t id = 0;
    std::uint16_t vlan = 0;
    std::uint8_t proto = 0;
    std::uint8_t ip_version = 0;
    bool operator==(const Key&) const = default;
  };
  struct Entry {
    Key key;
    std::uint64_t hash = 0;
    std::int64_t last_ts = 0;
    std::uint32_t received = 0;  // fragmentable bytes received
    std::uint32_t total = 0;     // the datagram's fragmentable bytes, once the last piece came
    bool have_total = false;
    bool have_first = false;
    packet::DecodedPacket first;
    std::uint32_t chain = kNil;  // next in the hash bucket
    std::uint32_t older = kNil;  // LRU list
    std::uint32_t newer = kNil;
  };

  std::uint32_t find(const Key& key, std::uint64_t hash) const;
  std::uint32_t insert(const Key& key, std::uint64_t hash);
  void remove(std::uint32_t index);  // unlinks and frees, counts nothing
  void end(std::uint32_t index);     // counts the entry as incomplete / without first
  void touch(std::uint32_t index);
  void push_newest(std::uint32_t index);  // links an unlinked entry as the newest
  void unlink_lru(std::uint32_t index);

  FragmentTableOptions options_;
  std::vector<Entry> entries_;
  std::vector<std::uint32_t> buckets_;
  std::uint64_t bucket_mask_ = 0;
  std::uint32_t free_ = kNil;    // free entries, chained through `chain`
  std::uint32_t oldest_ = kNil;  // LRU ends
  std::uint32_t newest_ = kNil;
  std::size_t used_ = 0;
  FragmentStats stats_;
};

}  // namespace flowseal::flowd
