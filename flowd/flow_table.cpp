#include "flow_table.h"

#include <algorithm>
#include <atomic>
#include <cassert>
#include <cstdlib>
#include <bit>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "packet/flow_id.h"

namespace flowseal::flowd {
namespace detail {

// Zeek's TCP endpoint states; conn_state is a function of the pair.
enum TcpState : std::uint8_t {
  kInactive,
  kSynSent,
  kSynAckSent,
  kPartial,
  kEstablished,
  kClosed,
  kReset,
};

// Each class has its own idle timeout, so each keeps its own list in last-seen order.
enum TimerClass : std::uint8_t {
  kTcpAttempt,
  kTcpEstablished,
  kTcpClosed,
  kUdp,
  kIcmp,
  kOther,
  kTimerClassCount,
};

struct Link {
  std::uint32_t prev;
  std::uint32_t next;
};

struct ListEnds {
  std::uint32_t head;
  std::uint32_t tail;
};

struct Direction {
  std::uint64_t pkts;
  std::uint64_t ip_bytes;
  std::uint64_t size_sumsq;  // sum of squared IP lengths
  std::int64_t last_ts;      // this side's last packet
  std::uint64_t iat_sum_us;
  double iat_sumsq_us;
  std::uint32_t iat_min_us;  // saturating: an idle gap past ~71 min is not a flow any more
  std::uint32_t iat_max_us;
  // TCP sequence space, relative to seq_base (the ISN, or the first seq - 1 when the SYN was
  // not seen, as Zeek does so the FIN octet is not counted as data): the highest segment end
  // this side sent and the highest ack the peer sent for it. 32 bits: a side that sends more
  // than 4 GiB wraps, as it does in Zeek without its 64-bit high words.
  // Until seq_known, seq_base and seq_end hold the side's payload bytes by the IP lengths
  // instead (low and high word, see payload_bytes()): TCP reads that count only while its
  // sequence base is unknown, and no other protocol has one.
  std::uint32_t seq_base;
  std::uint32_t seq_end;
  std::uint32_t acked_end;
  std::uint32_t rexmits;
  // Zeek's hist_last_RST: the relative sequence number of this side's last RST (a RST at
  // another one is marked again).
  std::uint32_t last_rst_seq;
  std::uint16_t size_min;
  std::uint16_t size_max;
  // Zero-window advertisements (w/W at the 1st, 10th, 100th, ...); saturating, so past
  // 65535 no more letters (Zeek would add one at the 100000th).
  std::uint16_t zero_windows;
  std::uint8_t tcp_flags;
  std::uint8_t tcp_state;     // TcpState
  std::uint8_t history_seen;  // one bit per history letter already recorded
  std::uint8_t seq_known;     // 1: seq_base is set
  std::uint8_t prev_state;    // Zeek's TCP_Endpoint::prev_state: the state before the last change
  // The originator's only: 1 if it opened with a SYN, so Zeek's attempt timer runs (see
  // is_attempt()).
  std::uint8_t attempt_timer;
};

// The history letters (Zeek's conn.log history), 5 bits each: code i + 1 is
// kHistoryAlphabet[i], 0 is none. Letters 0..11 are in words[0], 12..22 in words[1], whose
// top 5 bits hold the length. 23 letters at most, as the 24-byte text this replaced held.
inline constexpr std::string_view kHistoryAlphabet = "^sShHaAdDfFrRqQiItTwW";
inline constexpr std::size_t kMaxHistory = 23;
inline constexpr unsigned kHistoryBits = 5;
inline constexpr unsigned kHistoryPerWord = 12;
inline constexpr unsigned kHistoryLenShift = 59;
struct History {
  std::uint64_t words[2];
};

// A slot is in use if its ip_version is 4 or 6 (a free one is all zero). Derived, not kept:
// the bucket hash and the uid (from the key: symmetric_hash64() is the same either way
// round), the Community ID text (from its digest) and the timer list the flow is in
// (timer_class_of() its state, which only apply() changes, moving it to the list it names).
struct FlowSlot {
  // The key, as packet::flow_key() gives it, the originator first.
  std::array<std::uint8_t, 16> orig_addr;
  std::array<std::uint8_t, 16> resp_addr;
  std::uint16_t orig_port;
  std::uint16_t resp_port;
  std::uint16_t vlan;
  std::uint8_t proto;
  std::uint8_t ip_version;
  std::uint32_t hash_next;  // beside the key: a bucket walk reads both
  // The step (TableHeader::step) that last journaled this slot: a step saves a slot once,
  // before its first change, however many of the step's packets touch it.
  std::uint32_t journal_step;

  std::int64_t first_ts;
  std::int64_t last_ts;
  std::int64_t report_ts;  // start or last update: the active timeout counts from here
  std::int64_t queued_ts;  // last_ts when the flow was last put at its timer list's tail
  // Beside queued_ts: settle_head() walks a list reading both (mostly one cache line).
  Link timer;   // in its timer class's list
  Link active;  // in the active-timeout list

  Direction orig;
  Direction resp;

  History history;
  // uids of the enclosing tunnel connections, first seen first; 0 = none (FlowEventData).
  std::uint64_t tunnel_parents[FlowEventData::kMaxTunnelParents];
  // Community ID v1 without its "1:": the 28 base64 characters of its SHA-1, no NUL; a NUL
  // first: none (OpenSSL failed). Kept as text, 8 bytes more than the digest, because
  // writing the base64 for every event cost flowd 4 % of its instructions.
  std::array<char, 28> community_id;
  std::uint32_t event_number;
};

struct TableHeader {
  std::uint64_t magic;
  std::uint32_t layout_version;
  std::uint32_t slot_bytes;
  std::uint64_t capacity;
  std::uint64_t bucket_count;
  std::uint64_t active;
  std::uint32_t free_head;    // chained through FlowSlot::hash_next
  std::uint32_t next_unused;  // slots from here on were never used (a fresh table is all zero)
  ListEnds timer_lists[kTimerClassCount];
  ListEnds active_list;
  FlowTableStats stats;
  std::uint64_t next_seq;  // input packets before this one are applied (see the journal)
  std::uint32_t fragment_capacity;
  std::uint32_t fragment_slot_bytes;
  // Numbers the steps, for FlowSlot::journal_step. Never journaled or rolled back: after a
  // kill the next step takes a number no slot carries for it. Never 0 (a fresh slot's).
  std::uint32_t step;
  std::uint32_t pad;
};

// The undo journal of one step (see flow_table.h): what the step found before it changed
// anything. Entries are appended before the slot they save is written; a slot saved twice
// is restored from its first entry because entries are undone last to first.
enum JournalKind : std::uint32_t { kFlowEntry, kFragmentEntry };
struct JournalEntry {
  std::uint32_t index;
  std::uint32_t kind;  // JournalKind: which slots `index` is in
  union {
    FlowSlot flow;
    FragmentSlot fragment;
  } before;
};
inline constexpr std::size_t kJournalEntries = 1024;
struct Journal {
  std::uint64_t open;  // 1 from begin_step() until commit_step()
  std::uint64_t count;
  std::uint64_t active_before;
  std::uint64_t next_seq_before;
  FlowTableStats stats_before;
  JournalEntry entries[kJournalEntries];
};

constexpr std::uint64_t kMagic = 0x3142544C57465346ULL;  // "FSFWLTB1" little-endian
constexpr std::uint32_t kLayoutVersion =
    9;  // 4: two more weird kinds (802.11); 5: tunnel parents; 6: Zeek's TCP states (prev state,
        // attempt, letters); 7: IP fragments in the table; 8: slots journaled once per step;
        // 9: 336-byte slots (no hash, uid or timer class; Community ID without "1:", history
        // packed)
constexpr std::size_t kHeaderBytes = 512;

static_assert(std::is_standard_layout_v<FlowSlot> && std::is_trivially_copyable_v<FlowSlot>);
static_assert(std::is_standard_layout_v<TableHeader> && std::is_trivially_copyable_v<TableHeader>);
static_assert(sizeof(Direction) == 88);
// The slot is most of a flow's memory (benchmarks/flow_bench: bytes_per_flow).
static_assert(sizeof(FlowSlot) == 336 && alignof(FlowSlot) == 8);
static_assert(sizeof(TableHeader) <= kHeaderBytes && alignof(TableHeader) == 8);
static_assert(std::is_trivially_copyable_v<Journal> && sizeof(Journal) % 8 == 0);
static_assert(sizeof(FragmentSlot) <= sizeof(FlowSlot));  // a journal entry holds either

}  // namespace detail

namespace {

using detail::FlowSlot;
using detail::Link;
using detail::ListEnds;
using detail::TableHeader;
using namespace detail;

constexpr std::uint32_t kNil = 0;

// Empties a slot the step has saved, keeping its journal stamp: the step's later changes to
// it (a new flow in the freed slot) need no second copy.
void clear_slot(FlowSlot& s) {
  const std::uint32_t stamp = s.journal_step;
  s = FlowSlot{};
  s.journal_step = stamp;
}
constexpr std::size_t kMaxCapacity = std::size_t{1} << 31;
// A bucket chain longer than this evicts its oldest flow: lookups stay bounded even when
// someone crafts colliding keys (the hash is unseeded so shards agree across processes).
constexpr std::size_t kMaxChain = 16;
// Timer lists (see FlowTable::apply() and settle_head()): how far behind its list's order a
// touched flow may fall before it moves, and how far a lazy requeue walks to its place.
constexpr std::int64_t kRequeueFraction = 256;
constexpr std::size_t kMaxRequeueWalk = 64;

constexpr std::uint8_t kProtoIcmp = 1;
constexpr std::uint8_t kProtoTcp = 6;
constexpr std::uint8_t kProtoUdp = 17;
constexpr std::uint8_t kProtoIcmpv6 = 58;
constexpr std::uint8_t kProtoSctp = 132;

constexpr std::uint8_t kFin = 0x01;
constexpr std::uint8_t kSyn = 0x02;
constexpr std::uint8_t kRst = 0x04;
constexpr std::uint8_t kAck = 0x10;

std::size_t bucket_count_for(std::size_t capacity) { return std::bit_ceil(capacity); }

std::size_t journal_offset() { return detail::kHeaderBytes; }
std::size_t slots_offset() { return journal_offset() + sizeof(detail::Journal); }
// Most slots one packet can save: per flow (the inner one and each tunnel's) the flow found,
// the same flow again as it ends, a bucket and a table eviction, and the new flow; and the
// fragment slots a piece changes.
constexpr std::size_t kJournalPerPacket =
    5 * (1 + packet::kMaxOuterFlows) + FragmentTable::kMaxSavesPerPiece;
// Stops the compiler from moving a store across this point: a SIGKILL leaves memory as the
// program order wrote it up to here (the restarted process runs after a context switch).
void order_point() { std::atomic_signal_fence(std::memory_order_seq_cst); }
std::size_t buckets_offset(std::size_t capacity) {
  return slots_offset() + (capacity + 1) * sizeof(FlowSlot);
}
std::size_t fragments_offset(std::size_t capacity) {
  const std::size_t end = buckets_offset(capacity) + bucket_count_for(capacity) * 4;
  return (end + 7) / 8 * 8;
}

// Doubly linked lists threaded through the slots by index; slot 0 is nil.
template <Link FlowSlot::*kLink>
struct List {
  FlowSlot* slots;
  ListEnds& ends;

  void push_back(std::uint32_t i) {
    Link& l = slots[i].*kLink;
    l.prev = ends.tail;
    l.next = kNil;
    if (ends.tail != kNil) (slots[ends.tail].*kLink).next = i;
    else ends.head = i;
    ends.tail = i;
  }
  void remove(std::uint32_t i) {
    Link& l = slots[i].*kLink;
    if (l.prev != kNil) (slots[l.prev].*kLink).next = l.next;
    else ends.head = l.next;
    if (l.next != kNil) (slots[l.next].*kLink).prev = l.prev;
    else ends.tail = l.prev;
    l = Link{kNil, kNil};
  }
  // Inserts i after `at` (kNil: at the front).
  void insert_after(std::uint32_t at, std::uint32_t i) {
    if (at == ends.tail) {
      push_back(i);
      return;
    }
    Link& l = slots[i].*kLink;
    const std::uint32_t next = at == kNil ? ends.head : (slots[at].*kLink).next;
    l.prev = at;
    l.next = next;
    (slots[next].*kLink).prev = i;
    if (at != kNil) (slots[at].*kLink).next = i;
    else ends.head = i;
  }
};

// Zeek's view of a finished TCP connection (TCPSessionAdapter::ConnectionClosed's
// close_complete and ExpireTimer): a side reset, both sides closed, or one side closed while
// the other never sent anything. Such a connection lingers tcp_closed_linger_ns, then ends.
bool is_closed(const FlowSlot& s) {
  if (s.proto != kProtoTcp) return false;
  const auto o = s.orig.tcp_state, r = s.resp.tcp_state;
  return o == kReset || r == kReset || (o == kClosed && (r == kClosed || r == kInactive)) ||
         (r == kClosed && o == kInactive);
}

// Either side sent a FIN or RST (Zeek's IsClosed(): a new SYN then starts a new connection).
bool either_closed(const FlowSlot& s) {
  const auto o = s.orig.tcp_state, r = s.resp.tcp_state;
  return o == kClosed || o == kReset || r == kClosed || r == kReset;
}

// Both sides sent a FIN or RST (Zeek: both endpoints did_close).
bool both_closed(const FlowSlot& s) {
  const auto o = s.orig.tcp_state, r = s.resp.tcp_state;
  return (o == kClosed || o == kReset) && (r == kClosed || r == kReset);
}

// Zeek's IsReuse on a connection neither side closed: a SYN whose sequence number is not the
// originator's initial one (its ISN, or where its numbering started) opens a new connection,
// as a client that reuses its port does; a retransmitted SYN does not.
bool syn_seq_jump(const FlowSlot& s, const packet::DecodedPacket& p) {
  return s.orig.seq_known != 0 && p.tcp_seq != s.orig.seq_base;
}

schema::EndReason closed_reason(const FlowSlot& s) {
  return s.orig.tcp_state == kReset || s.resp.tcp_state == kReset ? schema::EndReason::RST
                                                                  : schema::EndReason::FIN;
}

// Zeek's connection attempt (TCPSessionAdapter::AttemptTimer): the originator opened with a
// SYN and the responder has not answered. Zeek gives it tcp_attempt_delay from that SYN —
// from the SYN, not from the last packet, so a client that goes on sending into the void
// (half-duplex capture) still has its attempt ended and the rest is a new connection.
bool is_attempt(const FlowSlot& s) {
  return s.proto == kProtoTcp && s.orig.attempt_timer != 0 &&
         (s.orig.tcp_state == kSynSent || s.orig.tcp_state == kSynAckSent) &&
         s.resp.tcp_state == kInactive;
}

std::uint8_t timer_class_of(const FlowSlot& s) {
  switch (s.proto) {
    case kProtoTcp:
      if (is_closed(s)) return kTcpClosed;
      // Anything else, one-sided or not, stays for Zeek's tcp_inactivity_timeout: a capture
      // that sees one direction only (asymmetric routing) must not cut its flows at 5 s gaps.
      return is_attempt(s) ? kTcpAttempt : kTcpEstablished;
    case kProtoUdp: return kUdp;
    case kProtoIcmp:
    case kProtoIcmpv6: return kIcmp;
    default: return kOther;
  }
}

// History letters as Zeek records them (TCP_Endpoint::CheckHistory): each at most once per
// direction, upper case for the originator. S and H share one flag, as in Zeek.
enum HistoryBit : std::uint8_t {
  kHistSyn = 1,
  kHistAck = 2,
  kHistData = 4,
  kHistFin = 8,
  kHistRst = 16,
  kHistMultiFlag = 32,
  kHistFinRst = 64,
};

std::size_t history_len(const History& h) { return h.words[1] >> kHistoryLenShift; }

// Each letter's code (0: not a history letter).
constexpr std::array<std::uint8_t, 128> kHistoryCode = [] {
  std::array<std::uint8_t, 128> codes{};
  for (std::size_t i = 0; i < kHistoryAlphabet.size(); ++i) {
    codes[static_cast<unsigned char>(kHistoryAlphabet[i])] = static_cast<std::uint8_t>(i + 1);
  }
  return codes;
}();

// Appends one letter of kHistoryAlphabet (the callers' letters are all in it).
void push_history(History& h, char letter) {
  const std::size_t len = history_len(h);
  if (len >= kMaxHistory) return;
  const std::uint64_t code = kHistoryCode[static_cast<unsigned char>(letter) & 127];
  assert(code != 0);
  h.words[len / kHistoryPerWord] |= code << (len % kHistoryPerWord * kHistoryBits);
  h.words[1] += std::uint64_t{1} << kHistoryLenShift;
}

// The letters as text (what the event carries); `out` gets kMaxHistory at most.
std::string_view history_text(const History& h, std::array<char, kMaxHistory>& out) {
  const std::size_t len = std::min(history_len(h), kMaxHistory);
  for (std::size_t i = 0; i < len; ++i) {
    const auto code = static_cast<std::size_t>(
        (h.words[i / kHistoryPerWord] >> (i % kHistoryPerWord * kHistoryBits)) & 31);
    out[i] = code >= 1 && code <= kHistoryAlphabet.size() ? kHistoryAlphabet[code - 1] : '?';
  }
  return {out.data(), len};
}

void append_history(FlowSlot& s, bool from_orig, char letter) {
  push_history(s.history, from_orig ? static_cast<char>(letter - 'a' + 'A') : letter);
}

// A side's payload bytes by the IP lengths, kept in seq_base / seq_end until it has a
// sequence base (see Direction): afterwards a TCP side counts by sequence numbers.
std::uint64_t payload_bytes(const Direction& d) {
  return d.seq_base | std::uint64_t{d.seq_end} << 32;
}

void add_payload_bytes(Direction& d, std::uint32_t bytes) {
  if (d.seq_known != 0) return;
  const std::uint64_t sum = payload_bytes(d) + bytes;
  d.seq_base = static_cast<std::uint32_t>(sum);
  d.seq_end = static_cast<std::uint32_t>(sum >> 32);
}

void add_history(FlowSlot& s, bool from_orig, HistoryBit bit, char letter) {
  Direction& d = from_orig ? s.orig : s.resp;
  if ((d.history_seen & bit) != 0) return;
  d.history_seen |= bit;
  append_history(s, from_orig, letter);
}

// Zeek records a repeating anomaly's letter again as its count grows (Connection::
// ScaledHistoryEntry): at the 1st, 10th, 100th, ... occurrence.
bool is_power_of_ten(std::uint32_t n) {
  for (std::uint64_t p = 1; p <= n; p *= 10) {
    if (p == n) return true;
  }
  return false;
}

// A SYN or RST whose sequence number jumps this far is not part of the stream (Zeek's
// update_last_seq): it neither moves the side's highest sequence nor counts as a
// retransmission.
constexpr std::int32_t kMaxSeqJump = 16384;

// A side's sequence base, set by its first segment (Zeek's init_endpoint) before anything
// that numbers relative to it.
void init_sequence(Direction& me, const packet::DecodedPacket& p) {
  if (me.seq_known != 0) return;
  me.seq_base = (p.tcp_flags & kSyn) != 0 ? p.tcp_seq : p.tcp_seq - 1;
  me.seq_end = 0;
  me.seq_known = 1;
}

// Sequence-number accounting, as Zeek's TCP analyzer keeps it: the highest segment end each
// side sent, the highest ack its peer sent for it, and the segments with payload that did
// not advance it (retransmissions: history letter t/T, scaled).
void track_sequence(FlowSlot& s, bool from_orig, const packet::DecodedPacket& p) {
  Direction& me = from_orig ? s.orig : s.resp;
  Direction& peer = from_orig ? s.resp : s.orig;
  const bool syn = (p.tcp_flags & kSyn) != 0;
  const bool fin = (p.tcp_flags & kFin) != 0;
  const bool rst = (p.tcp_flags & kRst) != 0;
  const std::uint32_t end =
      p.tcp_seq - me.seq_base + p.payload_bytes + (syn ? 1u : 0u) + (fin ? 1u : 0u);
  const auto delta = static_cast<std::int32_t>(end - me.seq_end);
  if ((syn || rst) && (delta > kMaxSeqJump || delta < -kMaxSeqJump)) {
    // ignored: see kMaxSeqJump
  } else if (delta > 0) {
    me.seq_end = end;
  } else if (p.payload_bytes > 0) {
    ++me.rexmits;
    if (is_power_of_ten(me.rexmits)) append_history(s, from_orig, 't');
  }
  if ((p.tcp_flags & kAck) != 0 && peer.seq_known != 0) {
    const std::uint32_t acked = p.tcp_ack - peer.seq_base;
    if (static_cast<std::int32_t>(acked - peer.acked_end) > 0) peer.acked_end = acked;
  }
}

// Zeek's orig_bytes/resp_bytes for TCP (TCP_Endpoint::Size): the sequence space a side
// covered (what it sent or what its peer acknowledged, whichever reaches further) less the
// SYN and FIN octets. Payload lost before the probe still counts, as in Zeek.
std::uint64_t sequence_bytes(const Direction& d) {
  if (d.seq_known == 0) return payload_bytes(d);
  std::uint32_t top = d.seq_end;
  if (static_cast<std::int32_t>(d.acked_end - top) > 0) top = d.acked_end;
  std::uint64_t size = top;
  if (size > 0) --size;                               // the SYN octet (or Zeek's stand-in)
  if ((d.tcp_flags & kFin) != 0 && size > 0) --size;  // the FIN octet
  return size;
}

// orig_bytes / resp_bytes as Zeek's conn.log has them: TCP by sequence numbers, UDP, ICMP
// and SCTP by the payload lengths; a transport neither knows (Zeek's unknown_transport) 0,
// since no analyzer there knows where its payload starts.
std::uint64_t payload_size(const FlowSlot& s, const Direction& d) {
  switch (s.proto) {
    case kProtoTcp: return sequence_bytes(d);
    case kProtoUdp:
    case kProtoIcmp:
    case kProtoIcmpv6:
    case kProtoSctp: return payload_bytes(d);
    default: return 0;
  }
}

// Packet-size and inter-arrival figures of one side, before the packet is counted.
void record_spread(Direction& d, std::uint32_t ip_bytes, std::int64_t ts_ns) {
  const auto size = static_cast<std::uint16_t>(std::min<std::uint32_t>(ip_bytes, 0xFFFF));
  d.size_sumsq += std::uint64_t{ip_bytes} * ip_bytes;
  if (d.pkts == 0) {
    d.size_min = d.size_max = size;
    d.last_ts = ts_ns;
    return;
  }
  d.size_min = std::min(d.size_min, size);
  d.size_max = std::max(d.size_max, size);
  // A timestamp that went backwards (merged captures) is a gap of zero, not a negative one.
  const auto gap_us =
      static_cast<std::uint64_t>(std::max<std::int64_t>(ts_ns - d.last_ts, 0)) / 1000;
  const auto gap32 = static_cast<std::uint32_t>(std::min<std::uint64_t>(gap_us, UINT32_MAX));
  if (d.pkts == 1) {
    d.iat_min_us = d.iat_max_us = gap32;
  } else {
    d.iat_min_us = std::min(d.iat_min_us, gap32);
    d.iat_max_us = std::max(d.iat_max_us, gap32);
  }
  d.iat_sum_us += gap_us;
  d.iat_sumsq_us += static_cast<double>(gap_us) * static_cast<double>(gap_us);
  d.last_ts = std::max(d.last_ts, ts_ns);
}

// One side's figures as the record carries them (record/direction.h); its locality is set
// by the caller, which knows the address.
record::DirectionStats direction_of(const FlowSlot& s, const Direction& d) {
  record::DirectionStats out;
  out.pkts = d.pkts;
  out.ip_bytes = d.ip_bytes;
  out.bytes = payload_size(s, d);
  out.tcp_flags = d.tcp_flags;
  out.size_min = d.size_min;
  out.size_max = d.size_max;
  out.size_sumsq = d.size_sumsq;
  out.iat_min_us = d.iat_min_us;
  out.iat_max_us = d.iat_max_us;
  out.iat_sum_us = d.iat_sum_us;
  out.iat_sumsq_us = d.iat_sumsq_us;
  out.rexmits = d.rexmits;
  return out;
}

// Zeek's history letters for one TCP segment (update_history in TCPSessionAdapter.cc): a
// segment with two or more of SYN/FIN/RST is only q (or i for FIN+RST), one with one of them
// only its letter (a FIN carrying data is f, not d), and the rest d or a.
void tcp_history(FlowSlot& s, bool from_orig, const packet::DecodedPacket& p) {
  const std::uint8_t flags = p.tcp_flags;
  const std::uint32_t payload = p.payload_bytes;
  const bool syn = (flags & kSyn) != 0, fin = (flags & kFin) != 0, rst = (flags & kRst) != 0;
  const int control = int{syn} + int{fin} + int{rst};
  if (control > 1) {
    if (fin && rst) {
      add_history(s, from_orig, kHistFinRst, 'i');
    } else {
      add_history(s, from_orig, kHistMultiFlag, 'q');
    }
  } else if (syn) {
    add_history(s, from_orig, kHistSyn, (flags & kAck) != 0 ? 'h' : 's');
  } else if (fin) {
    add_history(s, from_orig, kHistFin, 'f');
  } else if (rst) {
    // Marked again for a RST at another sequence number than this side's last one.
    Direction& me = from_orig ? s.orig : s.resp;
    const std::uint32_t rel_seq = p.tcp_seq - me.seq_base;
    if ((me.history_seen & kHistRst) != 0 && rel_seq != me.last_rst_seq) {
      append_history(s, from_orig, 'r');
    } else {
      add_history(s, from_orig, kHistRst, 'r');
    }
    me.last_rst_seq = rel_seq;
  } else if (payload > 0) {
    add_history(s, from_orig, kHistData, 'd');
  } else if ((flags & kAck) != 0) {
    add_history(s, from_orig, kHistAck, 'a');
  }
}

// One side of a TCP connection as Zeek's state machine sees it: its state and the state
// before the last change (TCP_Endpoint::SetState keeps both).
struct Endpoint {
  Direction& d;
  TcpState state() const { return static_cast<TcpState>(d.tcp_state); }
  std::uint8_t prev_state() const { return d.prev_state; }
  void set(TcpState next) {
    if (d.tcp_state == next) return;
    d.prev_state = d.tcp_state;
    d.tcp_state = next;
  }
};

// Zeek's TCP endpoint state machine (TCPSessionAdapter::UpdateStateMachine and its
// Update*State helpers), the transitions only. Where Zeek flips the roles on a SYN answering
// the originator's SYN-ACK, flowseal keeps them (it already made a SYN-ACK seen first
// flip at the start) and only establishes both sides.
void update_tcp(FlowSlot& s, bool from_orig, const packet::DecodedPacket& p) {
  const std::uint8_t flags = p.tcp_flags;
  const std::uint32_t payload = p.payload_bytes;
  Endpoint me{from_orig ? s.orig : s.resp};
  Endpoint peer{from_orig ? s.resp : s.orig};
  me.d.tcp_flags |= flags;
  tcp_history(s, from_orig, p);
  const bool syn = (flags & kSyn) != 0, fin = (flags & kFin) != 0, rst = (flags & kRst) != 0;
  const bool ack = (flags & kAck) != 0;
  // Zeek's update_window, before the states change: a zero window is news unless it comes
  // with or after this side's RST, or after the peer's FIN (no window matters then).
  if (p.tcp_window == 0 && !rst && peer.state() != kClosed && me.state() != kReset) {
    if (me.d.zero_windows < UINT16_MAX && is_power_of_ten(++me.d.zero_windows)) {
      append_history(s, from_orig, 'w');
    }
  }

  switch (me.state()) {
    case kInactive:
      if (syn) {
        if (from_orig) {
          me.set(ack ? kSynAckSent : kSynSent);
          s.orig.attempt_timer = 1;
        } else {
          // The responder's SYN-ACK (or SYN) establishes both sides at once.
          if (peer.state() == kSynSent || (!ack && peer.state() == kSynAckSent)) {
            peer.set(kEstablished);
          }
          me.set(kEstablished);
        }
      }
      if (fin) me.set(kClosed);
      if (rst) me.set(kReset);
      if (me.state() == kInactive) {
        if (!from_orig && payload == 0 && peer.state() == kSynSent) {
          // A responder that acks the SYN before its SYN-ACK: not yet a partial connection.
        } else if (ack && peer.state() == kEstablished) {
          me.set(kEstablished);  // the SYN was missed, the SYN-ACK was not
        } else {
          me.set(kPartial);  // picked up mid-stream
        }
      }
      break;
    case kSynSent:
    case kSynAckSent:
      // Only the peer's SYN-ACK establishes a side that sent a SYN.
      if (fin) me.set(kClosed);
      if (rst) me.set(kReset);
      break;
    case kEstablished:
    case kPartial:
      if (syn && !ack && me.state() == kPartial && peer.state() == kInactive) me.set(kSynSent);
      if (fin && !rst) {
        me.set(kClosed);
        // The peer's FIN then RST was a normal close after all.
        if (peer.state() == kReset && peer.prev_state() == kClosed) peer.set(kClosed);
      }
      if (rst) me.set(kReset);
      break;
    case kClosed:
      // A RST after both sides' FINs does not undo the orderly close (Zeek: SF, not RSTR).
      if (rst && peer.state() != kClosed) me.set(kReset);
      break;
    default: break;  // reset: nothing changes it
  }
}

// Zeek's /^\^?S[^HAFGIQ]*R.*/: the originator sent a SYN, then a RST, with nothing from the
// responder and no handshake, ACK, FIN or data in between.
bool rstos0_history(std::string_view h) {
  if (!h.empty() && h.front() == '^') h.remove_prefix(1);
  if (h.empty() || h.front() != 'S') return false;
  for (char c : h.substr(1)) {
    if (c == 'R') return true;
    if (std::string_view("HAFGIQ").find(c) != std::string_view::npos) return false;
  }
  return false;
}

// Zeek's conn_state (base/protocols/conn/main.zeek).
std::string_view conn_state(const FlowSlot& s) {
  if (s.proto == kProtoTcp) {
    const auto os = s.orig.tcp_state, rs = s.resp.tcp_state;
    const bool o_inactive = os == kInactive || os == kPartial;
    const bool r_inactive = rs == kInactive || rs == kPartial;
    if (rs == kReset) {
      if (os == kSynSent || os == kSynAckSent ||
          (os == kReset && sequence_bytes(s.orig) == 0 && sequence_bytes(s.resp) == 0)) {
        return "REJ";
      }
      return o_inactive ? "RSTRH" : "RSTR";
    }
    if (os == kReset) {
      if (r_inactive) {
        std::array<char, kMaxHistory> text;
        return rstos0_history(history_text(s.history, text)) ? "RSTOS0" : "OTH";
      }
      return "RSTO";
    }
    if (rs == kClosed && os == kClosed) return "SF";
    if (os == kClosed) return r_inactive ? "SH" : "S2";
    if (rs == kClosed) return o_inactive ? "SHR" : "S3";
    if (os == kSynSent && rs == kInactive) return "S0";
    if (os == kEstablished && rs == kEstablished) return "S1";
    return "OTH";
  }
  if (s.proto == kProtoUdp) {
    if (s.orig.pkts > 0) return s.resp.pkts > 0 ? "SF" : "S0";
    return s.resp.pkts > 0 ? "SHR" : "OTH";
  }
  return "OTH";
}

// Ports Zeek's default analyzers register (its likely_server_ports): a connection first seen
// from such a port, to a port that is not one, was picked up from the server's side.
bool likely_server_port(std::uint8_t proto, std::uint16_t port) {
  static constexpr std::uint16_t kTcp[] = {21,   22,   23,   25,   53,   80,   88,   110,  139,
                                           143,  443,  445,  502,  514,  587,  993,  995,  1080,
                                           3128, 3306, 5222, 5269, 6379, 6667, 8000, 8080, 8888};
  static constexpr std::uint16_t kUdp[] = {53,   67,   69,   88,   123,  137,  161,
                                           162,  443,  514,  1812, 1813, 2152, 2123,
                                           3544, 4789, 5060, 5072, 5353, 5355, 6081};
  auto in = [port](const auto& list) {
    return std::find(std::begin(list), std::end(list), port) != std::end(list);
  };
  if (proto == kProtoTcp) return in(kTcp);
  if (proto == kProtoUdp) return in(kUdp);
  return false;
}

// Zeek's choice of originator for a new connection whose first packet may be the answer:
// a SYN-ACK seen first came from the responder (TCP analyzer); a TCP packet without SYN or a
// UDP datagram from a likely server port to a port that is not one came from the server
// (TCPAnalyzer/UDPAnalyzer::WantConnection). When both ports look like servers, TCP flips
// only if the destination port is the larger.
// Zeek never flips a connection to the IPv4 broadcast address (IPAddr::IsBroadcast): a DHCP
// server's broadcast reply stays its own originator.
bool flip_roles(const packet::DecodedPacket& p, const packet::FlowKey& key) {
  if (!p.has_ports) return false;
  if (key.ip_version == 4 && key.dst[0] == 0xFF && key.dst[1] == 0xFF && key.dst[2] == 0xFF &&
      key.dst[3] == 0xFF) {
    return false;
  }
  if (key.proto == kProtoTcp) {
    if (p.ports_cut) return false;
    if ((p.tcp_flags & (kSyn | kAck)) == (kSyn | kAck)) return true;
    if ((p.tcp_flags & kSyn) != 0) return false;
    if (!likely_server_port(kProtoTcp, key.src_port)) return false;
    if (likely_server_port(kProtoTcp, key.dst_port)) return key.dst_port > key.src_port;
    return true;
  }
  if (key.proto == kProtoUdp) {
    return likely_server_port(kProtoUdp, key.src_port) &&
           !likely_server_port(kProtoUdp, key.dst_port);
  }
  return false;
}

using packet::has_ports;

// std::array's == calls memcmp, once per address per probe of every packet's lookup.
bool same_address(const std::array<std::uint8_t, 16>& a, const std::array<std::uint8_t, 16>& b) {
  std::uint64_t a0, a1, b0, b1;
  std::memcpy(&a0, a.data(), 8);
  std::memcpy(&a1, a.data() + 8, 8);
  std::memcpy(&b0, b.data(), 8);
  std::memcpy(&b1, b.data() + 8, 8);
  return ((a0 ^ b0) | (a1 ^ b1)) == 0;
}

bool same_endpoints(const FlowSlot& s, const packet::FlowKey& k, bool& from_orig) {
  if (s.proto != k.proto || s.vlan != k.vlan || s.ip_version != k.ip_version) return false;
  if (s.orig_port == k.src_port && s.resp_port == k.dst_port && same_address(s.orig_addr, k.src) &&
      same_address(s.resp_addr, k.dst)) {
    from_orig = true;
    return true;
  }
  if (s.orig_port == k.dst_port && s.resp_port == k.src_port && same_address(s.orig_addr, k.dst) &&
      same_address(s.resp_addr, k.src)) {
    from_orig = false;
    return true;
  }
  return false;
}

// A slot found in the segment is not trusted: a Community ID that is not base64 is dropped
// (the event carries none), and history bits past its length are cleared, so that later
// letters are not ORed into junk. What a flowd wrote is left exactly as it was.
void sanitize_texts(FlowSlot& s) {
  constexpr std::string_view kBase64 =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=";
  const std::string_view id(s.community_id.data(), s.community_id.size());
  if (id[0] != '\0' && id.find_first_not_of(kBase64) != std::string_view::npos) {
    s.community_id.fill('\0');
  }
  const std::size_t len = history_len(s.history);
  const auto low_bits = [](std::size_t letters) {
    const std::size_t bits = letters * kHistoryBits;
    return bits >= 64 ? ~std::uint64_t{0} : (std::uint64_t{1} << bits) - 1;
  };
  s.history.words[0] &= low_bits(std::min(len, std::size_t{kHistoryPerWord}));
  s.history.words[1] =
      (s.history.words[1] & low_bits(len > kHistoryPerWord ? len - kHistoryPerWord : 0)) |
      std::uint64_t{len} << kHistoryLenShift;
}

// The flow's key as packet::flow_key() gave it (originator first) and its hash: the bucket
// and, with first_ts, the uid (packet::flow_uid()) are derived from it, not kept.
std::uint64_t key_hash(const FlowSlot& s) {
  packet::FlowKey key;
  key.src = s.orig_addr;
  key.dst = s.resp_addr;
  key.src_port = s.orig_port;
  key.dst_port = s.resp_port;
  key.vlan = s.vlan;
  key.proto = s.proto;
  key.ip_version = s.ip_version;
  return packet::symmetric_hash64(key);
}

}  // namespace

FlowTable::FlowTable(std::span<std::byte> memory, std::size_t capacity, FlowTableOptions options)
    : options_(options) {
  if (capacity == 0 || capacity > kMaxCapacity) {
    throw std::invalid_argument("flow table: capacity " + std::to_string(capacity) +
                                " is outside 1.." + std::to_string(kMaxCapacity));
  }
  const std::size_t fragment_capacity = options.fragments.capacity != 0
                                            ? options.fragments.capacity
                                            : fragment_capacity_for(capacity);
  if (fragment_capacity > fragment_capacity_for(capacity)) {
    throw std::invalid_argument("flow table: " + std::to_string(fragment_capacity) +
                                " IP datagrams in flight, room for " +
                                std::to_string(fragment_capacity_for(capacity)));
  }
  if (memory.size() < bytes_needed(capacity)) {
    throw std::invalid_argument("flow table: " + std::to_string(memory.size()) +
                                " bytes of memory, " + std::to_string(bytes_needed(capacity)) +
                                " needed for " + std::to_string(capacity) + " flows");
  }
  if (reinterpret_cast<std::uintptr_t>(memory.data()) % alignof(FlowSlot) != 0) {
    throw std::invalid_argument("flow table: memory is not 8-byte aligned");
  }
  if (!sha1_.ok()) throw std::runtime_error("flow table: OpenSSL has no SHA-1 (Community ID)");

  std::byte* base = memory.data();
  header_ = reinterpret_cast<TableHeader*>(base);
  journal_ = reinterpret_cast<detail::Journal*>(base + journal_offset());
  fragment_slots_ = reinterpret_cast<FragmentSlot*>(base + fragments_offset(capacity));
  slots_ = reinterpret_cast<FlowSlot*>(base + slots_offset());
  buckets_ = reinterpret_cast<std::uint32_t*>(base + buckets_offset(capacity));
  bucket_mask_ = bucket_count_for(capacity) - 1;

  const bool valid = header_->magic == detail::kMagic &&
                     header_->layout_version == detail::kLayoutVersion &&
                     header_->slot_bytes == sizeof(FlowSlot) && header_->capacity == capacity &&
                     header_->bucket_count == bucket_mask_ + 1 &&
                     header_->fragment_capacity == fragment_capacity &&
                     header_->fragment_slot_bytes == sizeof(FragmentSlot);
  if (valid) {
    resumed_ = true;
    if (journal_->open != 0) roll_back();
    rebuild_indexes();
  } else {
    // The supervisor creates the segment zero-filled; clearing it again would touch every
    // page (the whole budget share in PSS, and seconds at large budgets, long enough to miss
    // heartbeats). Only memory something was written to is cleared.
    const auto* first = reinterpret_cast<const unsigned char*>(base);
    if (std::any_of(first, first + sizeof(*header_), [](unsigned char b) { return b != 0; })) {
      std::memset(base, 0, bytes_needed(capacity));
    }
    header_->layout_version = detail::kLayoutVersion;
    header_->slot_bytes = sizeof(FlowSlot);
    header_->capacity = capacity;
    header_->bucket_count = bucket_mask_ + 1;
    header_->next_unused = 1;
    header_->fragment_capacity = static_cast<std::uint32_t>(fragment_capacity);
    header_->fragment_slot_bytes = sizeof(FragmentSlot);
    header_->magic = detail::kMagic;  // last: a half-formatted table is not valid
  }
  // After the roll-back: the fragment slots are as the last commit left them.
  fragments_.emplace(std::span<std::byte>(base + fragments_offset(capacity),
                                          FragmentTable::bytes_needed(fragment_capacity)),
                     fragment_capacity, options.fragments.timeout_ns, header_->stats.fragments,
                     static_cast<FragmentUndo&>(*this), resumed_);
}

FlowTable::~FlowTable() = default;

std::size_t FlowTable::bytes_needed(std::size_t capacity) {
  if (capacity > kMaxCapacity) return std::numeric_limits<std::size_t>::max();
  const std::size_t c = std::max<std::size_t>(capacity, 1);
  return fragments_offset(c) + FragmentTable::bytes_needed(fragment_capacity_for(c));
}

std::size_t FlowTable::fragment_capacity_for(std::size_t capacity) {
  return std::clamp<std::size_t>(capacity / 16, 64, 4096);
}

std::size_t FlowTable::capacity() const { return header_->capacity; }
std::size_t FlowTable::active() const { return header_->active; }
FlowTableStats FlowTable::stats() const { return header_->stats; }
const FlowTableStats& FlowTable::header_stats() const { return header_->stats; }

std::uint64_t FlowTable::next_seq() const { return header_->next_seq; }
void FlowTable::set_next_seq(std::uint64_t seq) { header_->next_seq = seq; }

void FlowTable::begin_step() {
  if (++header_->step == 0) {
    // Wrapped (after 2^32 steps): a slot last saved 2^32 steps ago would look saved in this
    // one. Forget every stamp first.
    for (std::size_t i = 1; i <= header_->capacity; ++i) slots_[i].journal_step = 0;
    header_->step = 1;
  }
  journal_->count = 0;
  journal_->active_before = header_->active;
  journal_->next_seq_before = header_->next_seq;
  journal_->stats_before = header_->stats;
  order_point();
  journal_->open = 1;
  order_point();
}

void FlowTable::commit_step() {
  order_point();
  journal_->open = 0;  // the commit point: from here on a restart keeps this step
  order_point();
}

void FlowTable::save(std::uint32_t index) {
  if (journal_->open == 0) return;
  FlowSlot& slot = slots_[index];
  // Saved in this step already: its first entry restores it (a busy flow is copied once
  // per step, not once per packet).
  if (slot.journal_step == header_->step) return;
  // on_packet() and expire() checkpoint before the journal can fill (kJournalPerPacket).
  if (journal_->count >= detail::kJournalEntries) std::abort();
  detail::JournalEntry& entry = journal_->entries[journal_->count];
  entry.index = index;
  entry.kind = detail::kFlowEntry;
  entry.before.flow = slot;
  order_point();
  ++journal_->count;
  order_point();
  slot.journal_step = header_->step;
}

void FlowTable::save_fragment(std::uint32_t index, const detail::FragmentSlot& before) {
  if (journal_->open == 0) return;
  if (journal_->count >= detail::kJournalEntries) std::abort();  // as save()
  detail::JournalEntry& entry = journal_->entries[journal_->count];
  entry.index = index;
  entry.kind = detail::kFragmentEntry;
  entry.before.fragment = before;
  order_point();
  ++journal_->count;
  order_point();
}

void FlowTable::checkpoint_if_full(EventSink& sink) {
  if (journal_->open == 0 || journal_->count + kJournalPerPacket <= detail::kJournalEntries) {
    return;
  }
  sink.sync();
  commit_step();
  begin_step();
}

void FlowTable::roll_back() {
  for (std::uint64_t i = journal_->count; i-- > 0;) {
    const detail::JournalEntry& entry = journal_->entries[i];
    if (entry.kind == detail::kFlowEntry && entry.index >= 1 && entry.index <= header_->capacity) {
      slots_[entry.index] = entry.before.flow;
    } else if (entry.kind == detail::kFragmentEntry && entry.index < header_->fragment_capacity) {
      fragment_slots_[entry.index] = entry.before.fragment;  // checked again on attach
    }
  }
  header_->active = journal_->active_before;
  header_->next_seq = journal_->next_seq_before;
  header_->stats = journal_->stats_before;
  order_point();
  journal_->open = 0;
  rolled_back_ = true;
}

void FlowTable::count_weird(packet::DecodeStatus status) {
  const auto i = static_cast<std::size_t>(status);
  if (i < header_->stats.weird.size()) ++header_->stats.weird[i];
}

FlowSlot& FlowTable::slot(std::uint32_t index) const { return slots_[index]; }
std::uint32_t& FlowTable::bucket(std::uint64_t hash) const {
  // Re-mixed: capture chose this shard from the same hash, so its low bits are not free.
  return buckets_[packet::mix64(hash ^ 0x5BD1E9955BD1E995ULL) & bucket_mask_];
}

// Every list and bucket is derived data: after a crash they are rebuilt from the slots
// alone, in last-seen order, so whatever a killed flowd was doing to them does not matter.
void FlowTable::rebuild_indexes() {
  const auto capacity = static_cast<std::uint32_t>(header_->capacity);
  std::memset(buckets_, 0, (bucket_mask_ + 1) * sizeof(std::uint32_t));
  for (auto& ends : header_->timer_lists) ends = ListEnds{kNil, kNil};
  header_->active_list = ListEnds{kNil, kNil};
  header_->free_head = kNil;
  header_->next_unused = capacity + 1;
  std::vector<std::uint32_t> live;
  for (std::uint32_t i = capacity; i >= 1; --i) {
    FlowSlot& s = slots_[i];
    if ((s.ip_version != 4 && s.ip_version != 6) || history_len(s.history) > kMaxHistory) {
      s = FlowSlot{};
      s.hash_next = header_->free_head;
      header_->free_head = i;
      continue;
    }
    sanitize_texts(s);
    live.push_back(i);
  }
  header_->active = live.size();

  std::sort(live.begin(), live.end(), [this](std::uint32_t a, std::uint32_t b) {
    return slots_[a].last_ts < slots_[b].last_ts;
  });
  for (std::uint32_t i : live) {
    FlowSlot& s = slots_[i];
    const std::uint64_t hash = key_hash(s);
    s.hash_next = bucket(hash);
    bucket(hash) = i;
    s.queued_ts = s.last_ts;
    List<&FlowSlot::timer>{slots_, header_->timer_lists[timer_class_of(s)]}.push_back(i);
  }
  std::stable_sort(live.begin(), live.end(), [this](std::uint32_t a, std::uint32_t b) {
    return slots_[a].report_ts < slots_[b].report_ts;
  });
  for (std::uint32_t i : live) List<&FlowSlot::active>{slots_, header_->active_list}.push_back(i);
}

std::int64_t FlowTable::idle_timeout(std::uint8_t timer_class) const {
  const FlowTimeouts& t = options_.timeouts;
  switch (timer_class) {
    case kTcpAttempt: return t.tcp_attempt_idle_ns;
    case kTcpEstablished: return t.tcp_established_idle_ns;
    case kTcpClosed: return t.tcp_closed_linger_ns;
    case kUdp: return t.udp_idle_ns;
    case kIcmp: return t.icmp_idle_ns;
    default: return t.other_idle_ns;
  }
}

std::uint32_t FlowTable::find(const packet::FlowKey& key, std::uint64_t hash,
                              bool& from_orig) const {
  for (std::uint32_t i = bucket(hash); i != kNil; i = slots_[i].hash_next) {
    if (same_endpoints(slots_[i], key, from_orig)) return i;
  }
  return kNil;
}

void FlowTable::on_packet(const packet::DecodedPacket& packet, std::int64_t ts_ns,
                          EventSink& sink) {
  checkpoint_if_full(sink);
  ++header_->stats.packets;
  if (packet.fragment) {
    // The tunnels around the fragmented layer carried this piece as a whole packet; the
    // datagram itself counts once, when complete (fragment_table.h).
    apply_layers(packet, 0, packet.frag.outer_before, ts_ns, sink, 0);
    packet::DecodedPacket datagram;
    if (fragments_->add(packet, ts_ns, datagram)) {
      const std::size_t from = datagram.frag.outer_before;
      // The tunnel around the datagram was applied with its pieces: find its uid again.
      const std::uint64_t parent = from > 0 ? uid_of(datagram.outer[from - 1].key) : 0;
      apply(datagram, ts_ns, sink,
            apply_layers(datagram, from, datagram.outer_count, ts_ns, sink, parent));
    }
    return;
  }
  apply(packet, ts_ns, sink, apply_layers(packet, 0, packet.outer_count, ts_ns, sink, 0));
}

std::uint64_t FlowTable::uid_of(const packet::FlowKey& raw) const {
  const packet::FlowKey key = packet::flow_key(raw);
  bool from_orig = true;
  const std::uint64_t hash = packet::symmetric_hash64(key);
  const std::uint32_t index = find(key, hash, from_orig);
  return index == kNil ? 0 : packet::flow_uid(hash, slots_[index].first_ts, options_.shard);
}

void FlowTable::add_tunnel_parent(FlowSlot& s, std::uint64_t parent) {
  if (parent == 0) return;
  for (std::uint64_t& p : s.tunnel_parents) {
    if (p == parent) return;
    if (p == 0) {
      p = parent;
      return;
    }
  }
  // A third distinct parent is not recorded: the set is capped (FlowEvent.tunnelParents).
}

std::uint64_t FlowTable::apply_layers(const packet::DecodedPacket& packet, std::size_t from,
                                      std::size_t to, std::int64_t ts_ns, EventSink& sink,
                                      std::uint64_t parent) {
  // A UDP tunnel's own connection counts the whole outer packet, as Zeek's conn.log does;
  // each layer's parent is the tunnel connection directly around it.
  for (std::size_t i = from; i < to && i < packet.outer_count && i < packet.outer.size(); ++i) {
    packet::DecodedPacket outer;
    outer.key = packet.outer[i].key;
    outer.ip_bytes = packet.outer[i].ip_bytes;
    outer.payload_bytes = packet.outer[i].payload_bytes;
    outer.has_ports = true;
    parent = apply(outer, ts_ns, sink, parent);
  }
  return parent;
}

std::uint64_t FlowTable::apply(const packet::DecodedPacket& packet, std::int64_t ts_ns,
                               EventSink& sink, std::uint64_t parent) {
  const packet::FlowKey key = packet::flow_key(packet.key);
  const std::uint64_t hash = packet::symmetric_hash64(key);
  bool from_orig = true;
  std::uint32_t index = find(key, hash, from_orig);
  std::uint8_t queued_class = 0;  // the timer list the flow is in
  if (index != kNil) {
    save(index);
    FlowSlot& s = slots_[index];
    const bool new_syn = (packet.tcp_flags & (kSyn | kAck)) == kSyn;
    queued_class = timer_class_of(s);
    if (ts_ns - s.last_ts > idle_timeout(queued_class)) {
      // Idle past its timeout between two expire() calls: that flow is over.
      end_flow(index, is_closed(s) ? closed_reason(s) : schema::EndReason::IDLE, sink);
      index = kNil;
    } else if (queued_class == kTcpAttempt && ts_ns - s.first_ts > idle_timeout(kTcpAttempt)) {
      // Zeek's attempt timer ran out since the SYN (see is_attempt(); the class is kept up to
      // date after every packet), however busy the originator was since: the attempt ends
      // and this packet starts a new connection.
      end_flow(index, schema::EndReason::IDLE, sink);
      index = kNil;
    } else if (s.proto == kProtoTcp && new_syn && (either_closed(s) || syn_seq_jump(s, packet))) {
      // The port pair is reused by a new connection. The old one ends with the reason its
      // timer would have given it: FIN or RST if it is closed, idle if it was not (a
      // half-closed or never-closed connection has no FIN both ways to report).
      end_flow(index, is_closed(s) ? closed_reason(s) : schema::EndReason::IDLE, sink);
      index = kNil;
    }
  }
  const bool is_new = index == kNil;
  if (is_new) {
    index = create(packet, key, hash, ts_ns, sink);
    queued_class = timer_class_of(slots_[index]);
    from_orig =
        same_address(slots_[index].orig_addr, key.src) && slots_[index].orig_port == key.src_port;
  }

  FlowSlot& s = slots_[index];
  Direction& d = from_orig ? s.orig : s.resp;
  record_spread(d, packet.ip_bytes, ts_ns);
  ++d.pkts;
  d.ip_bytes += packet.ip_bytes;
  add_payload_bytes(d, packet.payload_bytes);
  // Zeek stops a TCP connection's clock once both sides have closed (each sent a FIN or a
  // RST): the last ACK and a RST after the FINs lengthen neither its duration nor its linger.
  if (s.proto != kProtoTcp || !both_closed(s)) s.last_ts = std::max(s.last_ts, ts_ns);
  if (s.proto == kProtoTcp && packet.has_ports && !packet.ports_cut) {
    init_sequence(d, packet);
    update_tcp(s, from_orig, packet);
    track_sequence(s, from_orig, packet);
  } else if (s.proto == kProtoUdp) {
    add_history(s, from_orig, kHistData, 'd');  // Zeek's UDP analyzer: every datagram, even empty
  }
  add_tunnel_parent(s, parent);

  // A touched flow mostly stays where it is in its timer list (moving it costs two more
  // cache misses per packet); settle_head() requeues it lazily, in order, when it reaches the
  // head. So that lazy place is never far, a flow touched more than 1/kRequeueFraction of its
  // timeout after it was queued moves to the tail now: at most that many moves per timeout.
  const std::uint8_t timer_class = timer_class_of(s);
  if (timer_class == queued_class &&
      s.last_ts - s.queued_ts > idle_timeout(timer_class) / kRequeueFraction) {
    List<&FlowSlot::timer> list{slots_, header_->timer_lists[timer_class]};
    list.remove(index);
    s.queued_ts = s.last_ts;
    list.push_back(index);
  } else if (timer_class != queued_class) {
    List<&FlowSlot::timer>{slots_, header_->timer_lists[queued_class]}.remove(index);
    s.queued_ts = s.last_ts;
    List<&FlowSlot::timer>{slots_, header_->timer_lists[timer_class]}.push_back(index);
  }

  if (is_new) {
    emit(s, hash, schema::EventKind::START, schema::EndReason::NONE, sink);
  } else if (options_.timeouts.active_timeout_ns > 0 &&
             ts_ns - s.report_ts >= options_.timeouts.active_timeout_ns) {
    emit(s, hash, schema::EventKind::UPDATE, schema::EndReason::ACTIVE, sink);
    ++header_->stats.updates;
    s.report_ts = ts_ns;
    List<&FlowSlot::active> list{slots_, header_->active_list};
    list.remove(index);
    list.push_back(index);
  }
  return packet::flow_uid(hash, s.first_ts, options_.shard);
}

std::uint32_t FlowTable::create(const packet::DecodedPacket& packet, const packet::FlowKey& key,
                                std::uint64_t hash, std::int64_t ts_ns, EventSink& sink) {
  evict_oldest_in_bucket(hash, sink);
  if (header_->free_head == kNil && header_->next_unused > header_->capacity) {
    evict_oldest(sink);
  }
  std::uint32_t index;
  if (header_->free_head != kNil) {
    index = header_->free_head;
    header_->free_head = slots_[index].hash_next;
  } else {
    index = header_->next_unused++;
  }

  save(index);
  FlowSlot& s = slots_[index];
  clear_slot(s);
  const bool flip = flip_roles(packet, key);
  s.orig_addr = flip ? key.dst : key.src;
  s.resp_addr = flip ? key.src : key.dst;
  s.orig_port = flip ? key.dst_port : key.src_port;
  s.resp_port = flip ? key.src_port : key.dst_port;
  s.vlan = key.vlan;
  s.proto = key.proto;
  s.ip_version = key.ip_version;
  s.first_ts = ts_ns;
  s.last_ts = ts_ns;
  s.report_ts = ts_ns;
  s.queued_ts = ts_ns;
  if (flip) push_history(s.history, '^');
  const std::size_t addr_len = s.ip_version == 4 ? 4 : 16;
  const packet::CommunityIdText id = packet::community_id(
      sha1_, options_.community_id_seed, s.proto, {s.orig_addr.data(), addr_len},
      {s.resp_addr.data(), addr_len}, s.orig_port, s.resp_port);
  if (id.size == 2 + s.community_id.size()) {  // "" if OpenSSL failed: the slot keeps zeros
    std::memcpy(s.community_id.data(), id.chars.data() + 2, s.community_id.size());
  }  // zero if it failed

  s.hash_next = bucket(hash);
  bucket(hash) = index;
  List<&FlowSlot::timer>{slots_, header_->timer_lists[timer_class_of(s)]}.push_back(index);
  List<&FlowSlot::active>{slots_, header_->active_list}.push_back(index);
  ++header_->active;
  ++header_->stats.flows_started;
  return index;
}

void FlowTable::evict_oldest_in_bucket(std::uint64_t hash, EventSink& sink) {
  std::size_t length = 0;
  std::uint32_t oldest = kNil;
  for (std::uint32_t i = bucket(hash); i != kNil; i = slots_[i].hash_next) {
    ++length;
    if (oldest == kNil || slots_[i].last_ts < slots_[oldest].last_ts) oldest = i;
  }
  if (length < kMaxChain) return;
  ++header_->stats.evictions;
  end_flow(oldest,
           is_closed(slots_[oldest]) ? closed_reason(slots_[oldest]) : schema::EndReason::EVICTION,
           sink);
}

void FlowTable::evict_oldest(EventSink& sink) {
  // Once every list's head is settled (not touched since queued), the least recently seen
  // flow is one of the heads.
  for (std::uint8_t c = 0; c < kTimerClassCount; ++c) settle_head(c);
  std::uint32_t oldest = kNil;
  for (const ListEnds& ends : header_->timer_lists) {
    if (ends.head != kNil &&
        (oldest == kNil || slots_[ends.head].last_ts < slots_[oldest].last_ts)) {
      oldest = ends.head;
    }
  }
  if (oldest == kNil) return;
  ++header_->stats.evictions;
  end_flow(oldest,
           is_closed(slots_[oldest]) ? closed_reason(slots_[oldest]) : schema::EndReason::EVICTION,
           sink);
}

std::size_t FlowTable::evict_to(std::size_t target, EventSink& sink) {
  std::size_t ended = 0;
  while (header_->active > target) {
    // Thousands of flows may go at once under pressure: cut the step before the journal fills.
    checkpoint_if_full(sink);
    const std::uint64_t before = header_->active;
    evict_oldest(sink);
    if (header_->active == before) break;  // nothing left to evict (lists empty)
    ++ended;
  }
  return ended;
}

void FlowTable::end_flow(std::uint32_t index, schema::EndReason reason, EventSink& sink) {
  save(index);
  FlowSlot& s = slots_[index];
  const std::uint64_t hash = key_hash(s);
  emit(s, hash, schema::EventKind::END, reason, sink);

  std::uint32_t* link = &bucket(hash);
  while (*link != kNil && *link != index) link = &slots_[*link].hash_next;
  if (*link == index) *link = s.hash_next;
  List<&FlowSlot::timer>{slots_, header_->timer_lists[timer_class_of(s)]}.remove(index);
  List<&FlowSlot::active>{slots_, header_->active_list}.remove(index);

  clear_slot(s);
  s.hash_next = header_->free_head;
  header_->free_head = index;
  --header_->active;
  ++header_->stats.flows_ended;
}

// Requeues head flows touched since they were queued, so the head is the list's least
// recently seen flow. Each requeue pays for at least one packet, so this is O(1) amortised.
void FlowTable::settle_head(std::uint8_t timer_class) {
  List<&FlowSlot::timer> list{slots_, header_->timer_lists[timer_class]};
  while (list.ends.head != kNil) {
    const std::uint32_t head = list.ends.head;
    FlowSlot& s = slots_[head];
    if (s.last_ts <= s.queued_ts) return;
    s.queued_ts = s.last_ts;
    list.remove(head);
    // Its place is among the flows queued when it was last touched, which apply() keeps
    // within 1/kRequeueFraction of a timeout of its old place: near the head. At the tail
    // it would wait behind every flow queued since and end up to a whole timeout late (seen
    // live: FIN-closed flows ended 5-10 s after their last packet). The walk is bounded; past
    // kMaxRequeueWalk (a dense list) it goes to the tail as before.
    std::uint32_t at = kNil;
    std::size_t steps = 0;
    for (std::uint32_t i = list.ends.head; i != kNil && slots_[i].queued_ts <= s.queued_ts;
         i = slots_[i].timer.next) {
      at = i;
      if (++steps > kMaxRequeueWalk) {
        at = list.ends.tail;
        break;
      }
    }
    list.insert_after(at, head);
    if (at == kNil) return;  // it is the head again, settled: nothing before it is due later
  }
}

void FlowTable::expire(std::int64_t now_ns, EventSink& sink) {
  do {
    checkpoint_if_full(sink);  // each datagram ended saves its slot
  } while (fragments_->expire_one(now_ns));
  for (std::uint8_t c = 0; c < kTimerClassCount; ++c) {
    const std::int64_t timeout = idle_timeout(c);
    ListEnds& ends = header_->timer_lists[c];
    for (;;) {
      settle_head(c);
      if (ends.head == kNil || now_ns - slots_[ends.head].last_ts <= timeout) break;
      checkpoint_if_full(sink);
      const FlowSlot& s = slots_[ends.head];
      end_flow(ends.head, c == kTcpClosed ? closed_reason(s) : schema::EndReason::IDLE, sink);
    }
  }
  const std::int64_t active = options_.timeouts.active_timeout_ns;
  if (active <= 0) return;
  List<&FlowSlot::active> list{slots_, header_->active_list};
  // Each update moves its flow to the tail with report_ts = now, so the loop ends once it
  // meets a flow it has just reported.
  while (list.ends.head != kNil && now_ns - slots_[list.ends.head].report_ts >= active) {
    const std::uint32_t index = list.ends.head;
    checkpoint_if_full(sink);
    save(index);
    FlowSlot& s = slots_[index];
    emit(s, key_hash(s), schema::EventKind::UPDATE, schema::EndReason::ACTIVE, sink);
    ++header_->stats.updates;
    s.report_ts = now_ns;
    list.remove(index);
    list.push_back(index);
  }
}

std::int64_t FlowTable::next_due_ns() const {
  // A list is in order of queued_ts and a flow's last_ts is at least its queued_ts, so the
  // head's queued_ts plus the timeout bounds every due time in the list from below.
  std::int64_t due = std::numeric_limits<std::int64_t>::max();
  for (std::uint8_t c = 0; c < kTimerClassCount; ++c) {
    const std::uint32_t head = header_->timer_lists[c].head;
    // expire() ends a flow once it has been idle for more than its timeout: 1 ns past.
    if (head != kNil) due = std::min(due, slots_[head].queued_ts + idle_timeout(c) + 1);
  }
  const std::int64_t active = options_.timeouts.active_timeout_ns;
  const std::uint32_t head = header_->active_list.head;
  if (active > 0 && head != kNil) due = std::min(due, slots_[head].report_ts + active);
  return due;
}

void FlowTable::flush(EventSink& sink) {
  do {
    checkpoint_if_full(sink);
  } while (fragments_->end_oldest());
  for (ListEnds& ends : header_->timer_lists) {
    while (ends.head != kNil) {
      checkpoint_if_full(sink);
      const FlowSlot& s = slots_[ends.head];
      end_flow(ends.head, is_closed(s) ? closed_reason(s) : schema::EndReason::SHUTDOWN, sink);
    }
  }
}

void FlowTable::emit(FlowSlot& s, std::uint64_t hash, schema::EventKind kind,
                     schema::EndReason reason, EventSink& sink) {
  FlowEventData e;
  const std::uint64_t uid = packet::flow_uid(hash, s.first_ts, options_.shard);
  e.uid = uid;
  e.kind = kind;
  e.event_number = s.event_number++;
  e.end_reason = reason;
  e.proto = s.proto;
  e.ip_version = s.ip_version;
  e.orig_addr = s.orig_addr;
  e.resp_addr = s.resp_addr;
  e.orig_port = s.orig_port;
  e.resp_port = s.resp_port;
  e.vlan = s.vlan;
  e.first_ts_ns = s.first_ts;
  e.last_ts_ns = s.last_ts;
  const std::size_t addr_len = s.ip_version == 4 ? 4 : 16;
  e.orig = direction_of(s, s.orig);
  e.orig.local = options_.local_nets.locality({s.orig_addr.data(), addr_len});
  e.resp = direction_of(s, s.resp);
  e.resp.local = options_.local_nets.locality({s.resp_addr.data(), addr_len});
  e.conn_state.assign(conn_state(s));
  std::array<char, kMaxHistory> history;
  e.history.assign(history_text(s.history, history));
  // Community ID v1 (common/packet/flow_id.h: the segment format recomputes it from the
  // record), from the digest the start computed.
  if (s.community_id[0] != '\0') {
    std::array<char, 2 + std::tuple_size_v<decltype(s.community_id)>> text{'1', ':'};
    std::memcpy(text.data() + 2, s.community_id.data(), s.community_id.size());
    e.community_id.assign(std::string_view(text.data(), text.size()));
  }
  e.first_uid = uid;
  e.last_uid = uid;
  std::copy(std::begin(s.tunnel_parents), std::end(s.tunnel_parents), e.tunnel_parents.begin());
  sink.on_event(e);
}

}  // namespace flowseal::flowd
