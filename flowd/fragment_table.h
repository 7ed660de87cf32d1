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
// Bounded: a fixed number of datagrams in flight, in memory given once. An entry ends when
// its datagram completes, when no piece has arrived for `timeout_ns` (counted as incomplete,
// or as without first when the first never came), or, when the table is full, as the least
// recently touched entry (counted as evicted). Overlapping or repeated pieces are not
// resolved byte by byte: a datagram is complete once the bytes received cover its length,
// and one that received more is counted as overlapping. A flood of fragments therefore
// never grows memory: it evicts (and counts) the oldest datagrams.
//
// Shared memory, crash-consistent with the flow table. A datagram's pieces usually arrive in
// different input frames, and flowd commits a frame once its step is committed; a table kept
// in process memory lost every datagram in flight when flowd was killed (issue 13). So the
// entries live in slots inside the flow table's shared segment (FlowTable places them), and
// every slot is handed to a FragmentUndo before it is changed: the flow table's undo journal
// saves it, so a killed step is undone for flows and fragments together and replayed from
// the same packet. Why not keep the frames uncommitted until their datagrams complete
// instead: a datagram that never completes would hold its frame (and every frame behind it)
// for the 30 s timeout, so the input ring would fill and capture stall or drop; and frames
// re-read after a restart would have to be applied for their fragments only. The slots cost
// one journal copy per piece and nothing for unfragmented packets.
//
// Nothing in the slots is trusted: on attach every used slot is checked field by field
// (flags 0 or 1, IP versions, tunnel counts and layer indexes within bounds, lengths in
// range, no two slots for one datagram; times are only compared, without overflow); a slot
// that fails is dropped and counted (FragmentStats::corrupt). The indexes (hash buckets, LRU
// order, free list) are process memory, derived from the slots on attach: a slot's
// `touched` stamp gives the LRU order.
//
// Not thread-safe: one per flow table.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "packet/decode.h"

namespace flowseal::flowd {

struct FragmentTableOptions {
  // Datagrams in flight; 0: derived from the flow table's capacity
  // (FlowTable::fragment_capacity_for), which is what its memory is sized for.
  std::size_t capacity = 0;
  std::int64_t timeout_ns = 30'000'000'000;  // since the last piece (Linux ipfrag_time: 30 s)
};

// Cumulative counts ("weird" kinds for the last five). Kept in the flow table's header, so a
// restarted flowd goes on counting.
struct FragmentStats {
  std::uint64_t fragments = 0;      // pieces taken
  std::uint64_t datagrams = 0;      // datagrams completed and handed on
  std::uint64_t incomplete = 0;     // expired with the first piece but not all bytes
  std::uint64_t without_first = 0;  // expired, the first piece never came
  std::uint64_t evicted = 0;        // ended early because the table was full
  std::uint64_t overlapping = 0;    // completed with more bytes than the datagram's length
  std::uint64_t corrupt = 0;        // slots found invalid in shared memory and dropped
};

namespace detail {

// One datagram in flight, as it sits in shared memory. Integers only (no bool, no pointer):
// any byte pattern is a value the checks can reject. The first piece's decode is stored
// field by field (its FragmentInfo's addresses, id, VLAN and protocol are the slot's key,
// its offset is 0).
struct FragmentSlot {
  std::array<std::uint8_t, 16> src;
  std::array<std::uint8_t, 16> dst;
  std::uint32_t id;
  std::uint16_t vlan;
  std::uint8_t proto;
  std::uint8_t ip_version;
  std::uint8_t in_use;       // 0 free, 1 used
  std::uint8_t have_first;   // 0 / 1
  std::uint8_t have_total;   // 0 / 1
  std::uint8_t first_flags;  // kHasPorts | kPortsCut | kMore of the first piece
  std::uint32_t received;    // fragmentable bytes received
  std::uint32_t total;       // the datagram's fragmentable bytes, once the last piece came
  std::int64_t last_ts;
  std::uint64_t touched;  // LRU stamp: larger was touched later

  packet::FlowKey key;
  std::uint32_t ip_bytes;
  std::uint32_t payload_bytes;
  std::uint32_t tcp_seq;
  std::uint32_t tcp_ack;
  std::uint16_t tcp_window;
  std::uint8_t tcp_flags;
  std::uint8_t tunnel_depth;
  std::uint8_t outer_count;
  std::uint8_t frag_layer;
  std::uint8_t frag_outer_before;
  std::uint8_t frag_depth;
  std::uint16_t frag_header_len;
  std::uint16_t pad;
  std::uint32_t frag_length;
  std::array<packet::OuterFlow, packet::kMaxOuterFlows> outer;
};

}  // namespace detail

// Where a slot's old contents go before it changes (the flow table's undo journal).
class FragmentUndo {
 public:
  virtual void save_fragment(std::uint32_t index, const detail::FragmentSlot& before) = 0;

 protected:
  ~FragmentUndo() = default;
};

class FragmentTable {
 public:
  // Bytes `capacity` slots take (8-byte aligned).
  static std::size_t bytes_needed(std::size_t capacity);

  // Attaches to `memory` (bytes_needed(capacity), 8-byte aligned). `resume`: the slots hold
  // a table a previous flowd left (already rolled back to its last commit): each used slot
  // is checked, the bad ones dropped and counted in `stats`. Otherwise the memory is zero
  // (fresh) and is not read. Throws std::invalid_argument (start-up only) for a capacity
  // outside 1..2^32-2 or memory too small.
  FragmentTable(std::span<std::byte> memory, std::size_t capacity, std::int64_t timeout_ns,
                FragmentStats& stats, FragmentUndo& undo, bool resume);

  // Takes one fragment (packet.fragment) seen at `ts_ns`. When it completes its datagram,
  // fills `datagram` with the first piece's decode, the fragmented layer's lengths made the
  // whole datagram's, and returns true. Saves at most 3 slots (kMaxSavesPerPiece).
  bool add(const packet::DecodedPacket& packet, std::int64_t ts_ns,
           packet::DecodedPacket& datagram);
  static constexpr std::size_t kMaxSavesPerPiece = 3;
  // Ends the least recently touched entry if it is idle past the timeout as of `now_ns`
  // (counted as incomplete / without first); returns whether it ended one. One slot saved.
  bool expire_one(std::int64_t now_ns);
  // Ends the least recently touched entry (shutdown); returns whether there was one.
  bool end_oldest();

  std::size_t capacity() const { return index_.size(); }
  std::size_t in_flight() const { return used_; }
  const FragmentStats& stats() const { return stats_; }

  // The first piece's decode as a slot stores it, and back; load() checks every field and
  // returns false for a slot no store() could have written (tests use both directly).
  static void store_first(detail::FragmentSlot& slot, const packet::DecodedPacket& packet);
  static bool load_first(const detail::FragmentSlot& slot, packet::DecodedPacket& packet);
  // Whether a used slot is one this table could have written.
  static bool valid(const detail::FragmentSlot& slot);

 private:
  static constexpr std::uint32_t kNil = 0xFFFFFFFF;
  struct Index {  // process memory, derived from the slots
    std::uint64_t hash = 0;
    std::uint32_t chain = kNil;  // next in the hash bucket, or in the free list
    std::uint32_t older = kNil;  // LRU list
    std::uint32_t newer = kNil;
  };

  std::uint32_t find(const packet::FragmentInfo& f, std::uint64_t hash) const;
  std::uint32_t insert(const packet::FragmentInfo& f, std::uint64_t hash);
  void link(std::uint32_t index, std::uint64_t hash);  // into its bucket and as the newest
  void remove(std::uint32_t index);                    // saves, frees and unlinks; counts nothing
  void end(std::uint32_t index);  // counts the entry as incomplete / without first
  void touch(std::uint32_t index);
  void push_newest(std::uint32_t index);
  void unlink_lru(std::uint32_t index);
  void rebuild();

  detail::FragmentSlot* slots_;
  std::int64_t timeout_ns_;
  FragmentStats& stats_;
  FragmentUndo& undo_;
  std::vector<Index> index_;
  std::vector<std::uint32_t> buckets_;
  std::uint64_t bucket_mask_ = 0;
  std::uint32_t free_ = kNil;
  std::uint32_t oldest_ = kNil;
  std::uint32_t newest_ = kNil;
  std::size_t used_ = 0;
  std::uint64_t clock_ = 0;  // the last `touched` stamp given
};

}  // namespace flowseal::flowd
