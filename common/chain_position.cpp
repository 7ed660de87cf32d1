#include "chain_position.h"

#include <cstring>

namespace flowseal {
namespace {

namespace rc = record_counter;
// After the named counters: stream id (2 words), next seq, previous root (4 words), and a
// flag saying the position is valid.
constexpr std::size_t kStreamId = rc::kCount;
constexpr std::size_t kNextSeq = kStreamId + 2;
constexpr std::size_t kPrevRoot = kNextSeq + 1;
constexpr std::size_t kChainValid = kPrevRoot + 4;
static_assert(kChainValid < kStageCounters);

template <std::size_t N>
void load_words(const StageSlot& slot, std::size_t first, std::array<std::uint8_t, N>& out) {
  static_assert(N % 8 == 0);
  for (std::size_t i = 0; i < N / 8; ++i) {
    const std::uint64_t w = slot.counters[first + i].load();
    std::memcpy(out.data() + 8 * i, &w, 8);
  }
}

template <std::size_t N>
void store_words(StageSlot& slot, std::size_t first, const std::array<std::uint8_t, N>& in) {
  static_assert(N % 8 == 0);
  for (std::size_t i = 0; i < N / 8; ++i) {
    std::uint64_t w;
    std::memcpy(&w, in.data() + 8 * i, 8);
    slot.counters[first + i].store(w);
  }
}

}  // namespace

std::optional<StoredChainPosition> load_chain_position(const StageSlot& slot) {
  const std::uint64_t valid = slot.counters[kChainValid].load();
  if (valid == 0) return std::nullopt;
  StoredChainPosition stored;
  load_words(slot, kStreamId, stored.position.stream_id);
  stored.position.next_seq = slot.counters[kNextSeq].load();
  load_words(slot, kPrevRoot, stored.position.prev_root);
  stored.ring_head = valid - 1;
  return stored;
}

void store_chain_position(StageSlot& slot, const ChainPosition& position, std::uint64_t ring_head) {
  store_words(slot, kStreamId, position.stream_id);
  slot.counters[kNextSeq].store(position.next_seq);
  store_words(slot, kPrevRoot, position.prev_root);
  slot.counters[kChainValid].store(ring_head + 1);
}

}  // namespace flowseal
