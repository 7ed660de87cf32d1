// The flow table: packets in, flow events (start / update / end) out.
//
// One bidirectional flow per 5-tuple plus VLAN (ICMP request/reply types pair up as in
// Zeek). The originator is the side that sent first, except that a SYN-ACK seen first makes
// its receiver the originator, and a first packet from a likely server port to another port
// makes it the responder (never towards 255.255.255.255). Per flow the table keeps both
// directions' packets, IP bytes and payload bytes, TCP flags, Zeek's endpoint states and
// prev states (its UpdateStateMachine -> conn_state) and history letters, and the
// Community ID v1 computed once at the start.
//
// Memory: the whole table lives in the span it is given (a shared-memory segment): a header
// (magic, layout version, capacity, list ends, stats) then capacity fixed-size slots then the
// hash buckets, then the slots of the IP datagrams in flight (fragment_table.h). Nothing in it is a
// pointer, so a restarted flowd maps the same segment and resumes every active flow; the
// constructor rebuilds the index lists from the slots on resume, so a flowd killed in the middle of
// an update leaves nothing dangling. The table never allocates after construction and never grows:
// when full, the least-recently-seen flow is ended with reason eviction.
//
// Time is the packets' time: on_packet() and expire() take the timestamps the caller has,
// so a replay of a capture gives the same events, uids included. Flows sit in one list per
// idle-timeout class, requeued lazily in last-seen order (a packet does not move its flow;
// a head touched since it was queued goes to the tail when expire() or eviction meets it),
// and in one list in order of last report for the active timeout; so expire() and eviction
// only look at flows that are due, O(1) amortised.
//
// Crash consistency (a flowd SIGKILLed at any instruction): between begin_step() and
// commit_step() the table keeps an undo journal in its memory — every slot a step changes,
// flow or fragment, is saved before it is written, with the stats, the active count and next_seq().
// A table that finds an open journal when it is mapped again undoes the step, so it is exactly as
// it was at the last commit: no packet is applied twice or half. The caller commits only after the
// events the step emitted are published, so a step's events are never lost; if it dies
// between the two, the replayed step emits them again with the same event ids (recognisable
// repeats). A step that would overflow the journal (many flows expiring at once) is cut at
// a packet or flow boundary: the table calls EventSink::sync(), commits and goes on.
//
// Not thread-safe: one flowd process owns one table.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>

#include "event_encode.h"
#include "fragment_table.h"
#include "net_prefix.h"
#include "packet/decode.h"
#include "packet/flow_id.h"

namespace flowseal::flowd {

struct FlowTimeouts {
  // Any TCP flow not an attempt and not closed, one-sided ones too (Zeek:
  // tcp_inactivity_timeout).
  std::int64_t tcp_established_idle_ns = 300'000'000'000;
  // A SYN not answered: counted from the SYN, not from the last packet (Zeek's
  // tcp_attempt_delay, 5 s).
  std::int64_t tcp_attempt_idle_ns = 5'000'000'000;
  // After FIN both ways, a RST, or a FIN from a side whose peer never sent.
  std::int64_t tcp_closed_linger_ns = 5'000'000'000;
  std::int64_t udp_idle_ns = 60'000'000'000;
  std::int64_t icmp_idle_ns = 60'000'000'000;
  std::int64_t other_idle_ns = 60'000'000'000;
  std::int64_t active_timeout_ns = 1'800'000'000'000;  // <= 0: no update events
};

struct FlowTableOptions {
  FlowTimeouts timeouts;
  std::uint16_t community_id_seed = 0;
  std::uint32_t shard = 0;  // mixed into uids so two shards never share one
  FragmentTableOptions fragments;
  LocalNets local_nets;  // net.local_nets: each event's orig/resp locality
};

// Cumulative since the table was formatted (kept in the table's memory, so a restarted
// flowd goes on counting).
struct FlowTableStats {
  std::uint64_t flows_started = 0;
  std::uint64_t flows_ended = 0;
  std::uint64_t evictions = 0;
  std::uint64_t updates = 0;
  std::uint64_t packets = 0;
  std::array<std::uint64_t, static_cast<std::size_t>(packet::DecodeStatus::kCount)> weird{};
  FragmentStats fragments;
};

namespace detail {
struct TableHeader;
struct FlowSlot;
struct Journal;
}  // namespace detail

class FlowTable final : private FragmentUndo {
 public:
  // Formats `memory` for `capacity` flows, or resumes the table already in it when its
  // magic, layout version and capacities match. Throws std::invalid_argument (start-up only)
  // when capacity is 0 or too large, options.fragments.capacity is larger than
  // fragment_capacity_for(capacity), or `memory` is smaller than bytes_needed(capacity) or
  // not 8-byte aligned.
  FlowTable(std::span<std::byte> memory, std::size_t capacity, FlowTableOptions options);
  ~FlowTable();
  FlowTable(const FlowTable&) = delete;
  FlowTable& operator=(const FlowTable&) = delete;

  // Bytes a table of `capacity` flows needs; non-decreasing in capacity (callers binary-search
  // the largest capacity that fits a segment). SIZE_MAX past the largest capacity supported.
  // They include the IP fragment slots (fragment_capacity_for(capacity) of them).
  static std::size_t bytes_needed(std::size_t capacity);
  // Datagrams in flight a table of `capacity` flows has room for: 1/16 of the flows, within
  // 64..4096 (about 5 % of the table's memory; 4096 is what flowd held before it kept them in
  // shared memory). Non-decreasing in capacity.
  static std::size_t fragment_capacity_for(std::size_t capacity);

  std::size_t capacity() const;
  std::size_t active() const;
  FlowTableStats stats() const;
  // True if the constructor found a table in the memory and kept its flows.
  bool resumed() const { return resumed_; }

  // Accounts one decoded packet (status kOk) seen at `ts_ns`. May emit the end of a flow it
  // replaces (idle past its timeout, a new SYN on a closed flow, eviction), then this
  // flow's start or an active-timeout update.
  void on_packet(const packet::DecodedPacket& packet, std::int64_t ts_ns, EventSink& sink);
  // Ends flows idle past their timeout and emits updates for flows past the active timeout,
  // as of `now_ns`. Costs O(1) plus the flows that are due.
  void expire(std::int64_t now_ns, EventSink& sink);
  // The earliest time at which expire() may have something to do (it may be earlier than
  // the first flow due: a head touched since it was queued is due later), or INT64_MAX if
  // the table is empty. A live flowd sleeps until then rather than a fixed slice. Exact
  // while the timer lists are in queue order; a requeue past the bounded walk (see
  // settle_head) can make it late by less than 1/256 of a timeout.
  std::int64_t next_due_ns() const;
  // Ends every flow (reason shutdown; a flow already closed by FIN/RST keeps that reason).
  void flush(EventSink& sink);
  // Counts a packet decode() rejected, by kind.
  void count_weird(packet::DecodeStatus status);
  // IP fragments: a datagram is accounted once, when all its pieces have come (see
  // fragment_table.h). Its pieces in flight are kept in the table's memory and journaled
  // with its steps, so a restarted flowd goes on with them.
  const FragmentStats& fragment_stats() const { return header_stats().fragments; }
  std::size_t fragments_in_flight() const { return fragments_->in_flight(); }
  std::size_t fragment_capacity() const { return fragments_->capacity(); }

  // Sequence number of the next input packet to apply, kept (and journaled) in the table.
  std::uint64_t next_seq() const;
  void set_next_seq(std::uint64_t seq);
  // Opens / commits the undo journal (see the top of this header). Without an open step
  // nothing is journaled (unit tests, tools).
  void begin_step();
  void commit_step();
  // True if the constructor undid a step a killed flowd left open.
  bool rolled_back() const { return rolled_back_; }
  // Memory pressure (common/pressure_level.h). New timeouts apply from the next packet or
  // expire(): every flow of a timer class shares one timeout, so the lists stay in order.
  void set_timeouts(const FlowTimeouts& timeouts) { options_.timeouts = timeouts; }
  const FlowTimeouts& timeouts() const { return options_.timeouts; }
  // Ends the least recently seen flows (reason eviction; a flow already closed by FIN/RST
  // keeps that reason) until at most `target` are active; returns how many it ended.
  std::size_t evict_to(std::size_t target, EventSink& sink);

 private:
  using Slot = detail::FlowSlot;
  // Accounts one flow's share of a packet (the inner flow, or one tunnel's outer flow).
  // `parent`: the uid of the tunnel connection around it (0: none). Returns the flow's uid.
  std::uint64_t apply(const packet::DecodedPacket& packet, std::int64_t ts_ns, EventSink& sink,
                      std::uint64_t parent);
  // Accounts packet.outer[from..to): the UDP tunnel connections around the packet, the first
  // inside `parent`. Returns the uid of the innermost one applied (`parent` if none).
  std::uint64_t apply_layers(const packet::DecodedPacket& packet, std::size_t from, std::size_t to,
                             std::int64_t ts_ns, EventSink& sink, std::uint64_t parent);
  std::uint64_t uid_of(const packet::FlowKey& key) const;  // 0: no such flow
  void add_tunnel_parent(Slot& slot, std::uint64_t parent);
  std::uint32_t find(const packet::FlowKey& key, std::uint64_t hash, bool& from_orig) const;
  std::uint32_t create(const packet::DecodedPacket& packet, const packet::FlowKey& key,
                       std::uint64_t hash, std::int64_t ts_ns, EventSink& sink);
  void end_flow(std::uint32_t index, schema::EndReason reason, EventSink& sink);
  void evict_oldest(EventSink& sink);
  void settle_head(std::uint8_t timer_class);
  void evict_oldest_in_bucket(std::uint64_t hash, EventSink& sink);
  // `hash`: symmetric_hash64() of the slot's key (the uid is derived from it).
  void emit(Slot& slot, std::uint64_t hash, schema::EventKind kind, schema::EndReason reason,
            EventSink& sink);
  std::int64_t idle_timeout(std::uint8_t timer_class) const;
  void format();
  void rebuild_indexes();
  void save(std::uint32_t index);
  void checkpoint_if_full(EventSink& sink);
  void roll_back();
  void save_fragment(std::uint32_t index, const detail::FragmentSlot& before) override;
  const FlowTableStats& header_stats() const;

  Slot& slot(std::uint32_t index) const;
  std::uint32_t& bucket(std::uint64_t hash) const;

  detail::TableHeader* header_ = nullptr;
  detail::Journal* journal_ = nullptr;
  Slot* slots_ = nullptr;  // slots_[0] is the nil sentinel; flows use 1..capacity
  std::uint32_t* buckets_ = nullptr;
  detail::FragmentSlot* fragment_slots_ = nullptr;  // FragmentTable's; roll_back() restores them
  std::uint64_t bucket_mask_ = 0;
  FlowTableOptions options_;
  std::optional<FragmentTable> fragments_;  // attached after a roll-back: see the constructor
  bool resumed_ = false;
  bool rolled_back_ = false;
  packet::Sha1 sha1_;  // Community ID
};

}  // namespace flowseal::flowd
