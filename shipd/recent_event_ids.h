// RecentEventIds: the ids of the last N events an exporter sent, to drop a repeat (a crash of
// an upstream stage may store one event twice, in two nearby batches; `flowseal cat` shows it
// once, and so does the export).
//
// Ids are added as pending while a batch is mapped and either committed with it (the batch
// went out: they join the remembered ones, the oldest forgotten past N) or rolled back (it did
// not: it is sent again later, and its ids must not read as repeats then).
//
// An open-addressing table (linear probing, deletion by backward shift) and a ring of the
// committed ids in the order they came: every operation is O(1) and touches one or two cache
// lines, where a node-based set spent a fifth of an IPFIX export's CPU on its chains.
//
// Not thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace flowseal::shipd {

struct EventId {
  std::uint64_t uid = 0;
  // The event kind in the high half, its number below. Kinds are small: UINT64_MAX is never
  // an id's (the table marks its empty slots with it; add_pending() refuses it).
  std::uint64_t kind_and_number = 0;
  bool operator==(const EventId&) const = default;
};

class RecentEventIds {
 public:
  explicit RecentEventIds(std::size_t capacity);

  // Remembered (committed) or pending in the batch being mapped.
  bool contains(const EventId& id) const;
  // Starts loading the cache line where `id` would be: a caller that knows the ids it will
  // look up a few steps ahead hides most of the table's cache misses.
  void prefetch(const EventId& id) const { __builtin_prefetch(&slots_[home(id)]); }
  // Adds `id` to the pending batch (an id already remembered or pending is left as it is).
  // Throws std::invalid_argument for the reserved kind_and_number UINT64_MAX.
  void add_pending(const EventId& id);
  void commit();
  void rollback();

  std::size_t committed() const { return ring_count_; }
  std::size_t pending() const { return pending_.size(); }
  std::size_t table_slots() const { return slots_.size(); }

 private:
  // 16 bytes, no flag beside the id: the table is probed at random once or twice per event,
  // so its size decides how many probes miss the cache.
  static constexpr std::uint64_t kEmpty = ~0ull;
  struct Slot {
    EventId id{0, kEmpty};
    bool used() const { return id.kind_and_number != kEmpty; }
  };
  static_assert(sizeof(Slot) == 16);
  std::size_t home(const EventId& id) const;
  // The slot holding `id`, or the empty slot where it would go.
  std::size_t find(const EventId& id) const;
  bool insert(const EventId& id);  // false if it was there
  void erase(const EventId& id);
  void rebuild(std::size_t slots);
  void shrink_after_batch();

  std::size_t capacity_;
  std::size_t initial_slots_;
  // A power of two, at most 5/8 full, first sized for 13/8 of the capacity: the committed
  // ids at capacity and a pending batch fit without growing (growing and shrinking back every
  // batch would rebuild the table each time). The batch may hold at least 1/64 of the
  // capacity, a quarter for the IPFIX exporter's 2^17; a larger one grows the table once.
  std::vector<Slot> slots_;
  std::size_t mask_ = 0;
  std::size_t size_ = 0;
  std::vector<EventId> ring_;  // committed ids, oldest at ring_head_
  std::size_t ring_head_ = 0;
  std::size_t ring_count_ = 0;
  std::vector<EventId> pending_;
};

}  // namespace flowseal::shipd
