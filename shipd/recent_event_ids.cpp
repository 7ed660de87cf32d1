#include "shipd/recent_event_ids.h"

#include <bit>
#include <stdexcept>

namespace flowseal::shipd {

RecentEventIds::RecentEventIds(std::size_t capacity)
    : capacity_(capacity),
      initial_slots_(std::bit_ceil(capacity + capacity / 2 + capacity / 8 + 16)) {
  if (capacity == 0) throw std::invalid_argument("RecentEventIds: capacity 0");
  slots_.resize(initial_slots_);
  mask_ = slots_.size() - 1;
  ring_.resize(capacity);
}

std::size_t RecentEventIds::home(const EventId& id) const {
  // Both halves mixed: one flow's events share a uid and differ in kind and number.
  std::uint64_t h = id.uid ^ std::rotl(id.kind_and_number, 29);
  h *= 0x9E3779B97F4A7C15ull;
  h ^= h >> 32;
  return static_cast<std::size_t>(h) & mask_;
}

std::size_t RecentEventIds::find(const EventId& id) const {
  std::size_t i = home(id);
  while (slots_[i].used() && !(slots_[i].id == id)) i = (i + 1) & mask_;
  return i;
}

bool RecentEventIds::contains(const EventId& id) const { return slots_[find(id)].used(); }

bool RecentEventIds::insert(const EventId& id) {
  if ((size_ + 1) * 8 > slots_.size() * 5) rebuild(slots_.size() * 2);
  Slot& slot = slots_[find(id)];
  if (slot.used()) return false;
  slot.id = id;
  ++size_;
  return true;
}

void RecentEventIds::erase(const EventId& id) {
  std::size_t hole = find(id);
  if (!slots_[hole].used()) return;
  slots_[hole] = Slot{};
  --size_;
  // Backward shift: move up every later entry of the run that may sit in the hole, so that
  // no lookup stops early at it.
  for (std::size_t i = (hole + 1) & mask_; slots_[i].used(); i = (i + 1) & mask_) {
    const std::size_t want = home(slots_[i].id);
    // slots_[i] may move to the hole if its home is not cyclically within (hole, i].
    if (((i - want) & mask_) >= ((i - hole) & mask_)) {
      slots_[hole] = slots_[i];
      slots_[i] = Slot{};
      hole = i;
    }
  }
}

void RecentEventIds::rebuild(std::size_t slots) {
  std::vector<Slot> old = std::move(slots_);
  slots_.assign(slots, Slot{});
  mask_ = slots_.size() - 1;
  size_ = 0;
  for (const Slot& slot : old) {
    if (slot.used()) insert(slot.id);
  }
}

void RecentEventIds::add_pending(const EventId& id) {
  if (id.kind_and_number == kEmpty) {
    throw std::invalid_argument("RecentEventIds: kind_and_number UINT64_MAX is reserved");
  }
  // An id already here (committed or pending) stays as it is: a rollback must not take a
  // committed one out.
  if (insert(id)) pending_.push_back(id);
}

void RecentEventIds::shrink_after_batch() {
  // A huge batch grew the table; back to the usual size once its ids are settled.
  if (slots_.size() > initial_slots_ && size_ * 8 <= initial_slots_ * 5) rebuild(initial_slots_);
}

void RecentEventIds::commit() {
  constexpr std::size_t kAhead = 8;  // ids forgotten in ring order: load their slots early
  for (std::size_t i = 0; i < pending_.size() && i < kAhead && i < ring_count_; ++i) {
    prefetch(ring_[(ring_head_ + i) % capacity_]);
  }
  for (const EventId& id : pending_) {
    if (ring_count_ == capacity_) {
      prefetch(ring_[(ring_head_ + kAhead) % capacity_]);
      erase(ring_[ring_head_]);
      ring_head_ = (ring_head_ + 1) % capacity_;
      --ring_count_;
    }
    ring_[(ring_head_ + ring_count_) % capacity_] = id;
    ++ring_count_;
  }
  pending_.clear();
  shrink_after_batch();
}

void RecentEventIds::rollback() {
  for (const EventId& id : pending_) erase(id);
  pending_.clear();
  shrink_after_batch();
}

}  // namespace flowseal::shipd
