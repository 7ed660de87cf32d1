// The dedup engine: flow events in, fewer flow events out, every fact kept.
//
// Rules, all on packet time (the records' own timestamps, so a replay gives the
// same output):
//   - An end always passes, and so does a start — except that both may be folded into a
//     summary when the flow is a repeated short flow (below). An update passes when the
//     flow's conn_state changed since its last passed record, when `report_interval` of
//     packet time went by since then, or when its byte rate moved by more than
//     `rate_change` (relative) against the rate reported last time. Otherwise it is
//     suppressed: updates are cumulative snapshots, and the end carries the totals.
//   - Repeated short flows. A flow is SHORT when its end reaches the engine while its start
//     is still held, and it lasted at most `window` (lastTs - firstTs). A start is held for
//     `window + linger` of packet time after the flow's first packet, where `linger` is the
//     longest of flowd's non-established idle timeouts (UDP/ICMP/other idle, TCP attempt,
//     TCP closed), so that a flow of at most `window` whose end flowd reports by a timeout
//     still counts as short. Short flows are grouped by (originator address, responder
//     address, responder port, protocol, VLAN). Per group, a window opens at the first
//     short flow's first packet; the first `burst` short flows of the window pass one by one
//     (held start, then end); the rest are folded into ONE summary record (kind summary,
//     flowCount = n, packets and bytes of each direction summed, firstTsNs/lastTsNs the
//     earliest and latest, firstUid/lastUid the uids of the first and last folded flow in
//     arrival order, endReason and connState of the last one, TCP flags OR-ed). A short flow
//     whose first packet is `window` or more past the window's opening closes the window
//     (its summary is emitted) and opens the next. A summary is emitted when its window
//     closes, when its group's window expires (`window + linger` after it opened, on packet
//     time), when its entry is evicted, or on flush_all() (pressure, shutdown).
//     A summary's event id is (firstUid, summary, 0): unique, since a folded flow's own
//     events never appear.
//   - Why starts are held: "start always passes" and "fold the short flows" conflict — a
//     folded flow must not leave a start without its end. So a start waits until the flow
//     is known not to be folded: it is released (emitted) when the flow gets an update, when
//     its hold time runs out, when its entry is evicted, on flush_all(), or, with its end,
//     when the flow passes as one of the first `burst`. A folded flow's start is dropped:
//     everything in it is in the end record that the summary counts.
//
// Guarantee (tested on randomized input): every input end is either emitted as it is, or
// counted in exactly one summary; the packets and bytes of the emitted ends plus summaries
// equal those of the input ends; every start is emitted before its flow's end, or its flow
// is folded. Events the engine cannot place (an end or update of a flow it has no state for,
// e.g. after eviction) pass unchanged — ambiguity costs reduction, never facts.
//
// Memory: at most `max_entries` entries (group entries + per-flow entries together; fewer
// under memory pressure, see set_entry_cap()), least recently used evicted first; an evicted group
// emits its pending summary, an evicted flow releases its held start. A held start keeps a
// canonical copy of its record.
//
// Crash safety is the caller's: the engine reports, per input source, whether it still holds
// facts that came from it (holds()), so the caller commits an input only when nothing from
// it is held; see dedup_stage.h.
//
// Not thread-safe. No exceptions for per-record reasons: on_event() first traverses the
// whole record (the only place a malformed Cap'n Proto record throws kj::Exception), before
// any state changes, so a bad record leaves the engine as it was.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <list>
#include <unordered_map>
#include <vector>

#include <capnp/message.h>
#include <kj/array.h>

#include "config.h"
#include "flowseal.capnp.h"
#include "record/direction.h"

namespace flowseal::dedupd {

struct DedupOptions {
  std::int64_t report_interval_ns = 300'000'000'000;
  double rate_change = 0.5;
  std::uint32_t burst = 3;
  std::int64_t window_ns = 60'000'000'000;
  std::int64_t linger_ns = 60'000'000'000;
  std::size_t max_entries = 65536;

  // From the effective config: dedup.* plus flowd's timeouts (linger), and max_entries
  // derived from the plan's dedup_bytes when dedup.max_entries is 0.
  static DedupOptions from_config(const Config& config);
};

// Budget per entry used to turn dedup_bytes into max_entries: measured allocator use of the
// largest entry kind (a flow entry holding a start, see docs/PERFORMANCE.md, "Memory per entry")
// with headroom.
inline constexpr std::size_t kBudgetBytesPerEntry = 768;

// Receives what the engine emits, in order. The reader is valid only during the call.
class DedupSink {
 public:
  virtual ~DedupSink() = default;
  virtual void emit(schema::FlowEvent::Reader event) = 0;
  // A record the engine kept as its canonical form (a held start: record_buffer.h
  // canonical_copy(); `direct`: written by seal::append_canonical()). A sink that keeps
  // canonical bytes itself can take them as they are; by default, emit() of a reader on them.
  virtual void emit_canonical(kj::ArrayPtr<const capnp::word> canonical, bool direct) {
    (void)direct;
    emit(capnp::readMessageUnchecked<schema::FlowEvent>(canonical.begin()));
  }
};

struct DedupStats {
  std::uint64_t records_in = 0;
  std::uint64_t records_out = 0;
  std::uint64_t summaries = 0;       // summary records emitted
  std::uint64_t folded = 0;          // ends folded into summaries
  std::uint64_t starts_dropped = 0;  // starts of folded flows
  std::uint64_t updates_suppressed = 0;
  std::uint64_t evictions = 0;  // entries evicted by the cap
};

// Up to this many input sources (rings) are told apart by holds().
inline constexpr std::uint32_t kMaxSources = 64;

class DedupEngine {
 public:
  DedupEngine(DedupOptions options, DedupSink& sink);
  DedupEngine(const DedupEngine&) = delete;
  DedupEngine& operator=(const DedupEngine&) = delete;

  // Takes one event that came from input `source` (< kMaxSources). May emit any number of
  // events (this one, released starts, summaries whose time came).
  void on_event(schema::FlowEvent::Reader event, std::uint32_t source = 0);
  // Emits every held start and pending summary and forgets all state.
  void flush_all();
  // Memory pressure: the entry cap in force, clamped to [1, options().max_entries].
  // Shrinking evicts least recently used entries down to it at once, each emitting what it
  // holds (pending summary, held start), so no count is lost; growing only lets more in.
  void set_entry_cap(std::size_t cap);
  std::size_t entry_cap() const { return entry_cap_; }

  // True while the engine holds a fact (a start or a folded end) that came from `source`.
  bool holds(std::uint32_t source) const { return held_[source] != 0; }
  bool holds_any() const;
  std::size_t entries() const { return groups_.size() + flows_.size(); }
  std::size_t held_starts() const { return held_starts_; }
  const DedupStats& stats() const { return stats_; }
  const DedupOptions& options() const { return options_; }
  // sizeof of an entry's value types (docs/PERFORMANCE.md, "Memory per entry", sets them beside
  // allocator use).
  static std::size_t flow_entry_size();
  static std::size_t group_entry_size();

  // What a repeated short flow is grouped by.
  struct GroupKey {
    std::array<std::uint8_t, 16> orig{};
    std::array<std::uint8_t, 16> resp{};
    std::uint16_t resp_port = 0;
    std::uint16_t vlan = 0;
    std::uint8_t proto = 0;
    std::uint8_t addr_len = 0;  // 4 or 16 (0..16: whatever the record carried)
    bool operator==(const GroupKey&) const = default;
  };
  struct GroupKeyHash {
    std::size_t operator()(const GroupKey& key) const;
  };

  // One side's figures over the folded flows (see fold_side in dedup_engine.cpp): its
  // inter-arrival times are the gaps inside each folded flow, not between them.
  struct FoldedSide {
    record::DirectionStats stats;
    std::uint64_t gaps = 0;  // inter-arrival times folded so far (whether min/max are set)
  };

 private:
  // The folded flows of one group's window, not yet emitted.
  struct Summary {
    std::array<FoldedSide, 2> sides;  // by record::Side
    std::uint32_t count = 0;
    std::uint64_t sources = 0;  // bit per source with a fact in here
    std::int64_t first_ts_ns = 0, last_ts_ns = 0;
    std::uint64_t first_uid = 0, last_uid = 0;
    std::uint16_t orig_port = 0;  // of the first folded flow
    schema::EndReason end_reason = schema::EndReason::NONE;
    float sampling_rate = 1.0f;
    std::array<char, 8> conn_state{};  // of the last folded flow, NUL-terminated
  };
  struct Group {
    std::int64_t window_open_ns = 0;
    std::int64_t expires_ns = 0;
    std::uint32_t short_flows = 0;  // in this window
    std::uint64_t touched = 0;
    std::list<GroupKey>::iterator lru;
    Summary summary;
  };
  struct Flow {
    kj::Array<capnp::word> held_start;  // canonical start record while held
    bool held_direct = false;           // held_start written by seal::append_canonical()
    std::uint32_t source = 0;           // where the held start came from
    std::int64_t hold_until_ns = 0;
    std::int64_t reported_ns = 0;  // lastTs of the last passed record
    std::int64_t seen_ns = 0;      // lastTs of the last record
    std::uint64_t seen_bytes = 0;  // orig+resp IP bytes of the last record
    double reported_rate = -1;     // bytes/s of the interval the last passed update ended
    std::array<char, 8> conn_state{};
    std::uint64_t touched = 0;
    std::list<std::uint64_t>::iterator lru;
  };
  struct FlowTimer {
    std::int64_t deadline_ns;
    std::uint64_t uid;
  };
  struct GroupTimer {
    std::int64_t deadline_ns;
    GroupKey key;
  };

  void on_start(schema::FlowEvent::Reader event, std::uint32_t source);
  void on_update(schema::FlowEvent::Reader event);
  void on_end(schema::FlowEvent::Reader event, std::uint32_t source);
  void pass(schema::FlowEvent::Reader event);
  // Passes the record on_event() is at, as the canonical form it wrote of it.
  void pass_current();
  void release_start(Flow& flow);
  void emit_summary(const GroupKey& key, Group& group);
  void fold(Group& group, schema::FlowEvent::Reader end, std::uint32_t source);
  void fire_timers();
  Flow& new_flow(std::uint64_t uid);
  Group& new_group(const GroupKey& key);
  void erase_flow(std::unordered_map<std::uint64_t, Flow>::iterator it);
  void erase_group(std::unordered_map<GroupKey, Group, GroupKeyHash>::iterator it);
  void make_room();
  void evict_down_to(std::size_t keep);
  void compact_timers();
  void touch(Flow& flow);
  void touch(Group& group);

  DedupOptions options_;
  DedupSink& sink_;
  DedupStats stats_;
  std::size_t entry_cap_;
  std::int64_t now_ns_ = INT64_MIN;
  std::uint64_t clock_ = 0;  // LRU stamps
  std::size_t held_starts_ = 0;
  std::array<std::uint64_t, kMaxSources> held_{};
  std::unordered_map<GroupKey, Group, GroupKeyHash> groups_;
  std::unordered_map<std::uint64_t, Flow> flows_;
  std::list<GroupKey> group_lru_;  // most recent first
  std::list<std::uint64_t> flow_lru_;
  // Deadlines in arrival order (nearly time order); stale ones are skipped when they come up.
  std::deque<FlowTimer> flow_timers_;
  std::deque<GroupTimer> group_timers_;
  // The canonical form of the record on_event() is at (record_buffer.h canonical_into()).
  std::vector<capnp::word> current_;
  bool current_direct_ = false;
};

}  // namespace flowseal::dedupd
