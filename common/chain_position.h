// ChainPosition: where signerd's hash chain stands — the stream id, the seq of the next batch
// and the Merkle root of the batch before it — kept in signerd's control-block slot, after its
// record counters.
//
// signerd stores it after every published batch, so a restarted signerd continues the chain
// without gap or fork. The supervisor stores it once, before signerd first starts, when the
// run continues the stream of a store that already holds batches (supervisor/
// stream_adoption.h); with no position stored, signerd starts a new stream (random id, seq 0).
// Only signerd's slot holds one; the words are written before the valid flag.
//
// With it goes the head of the signerd -> writerd ring as of the position: a signerd killed
// after publishing a batch and before (or while) storing the position it leads to leaves a
// head that has moved past the stored one, and its successor reads the batch it published
// back from the ring (signerd/signer_stage.cpp) rather than seal that input again as the same
// seq with other records, which would fork the chain. The head is kept in the valid word
// (head + 1: 0 still means none), so the slot needs no more room.
#pragma once

#include <array>
#include <cstdint>
#include <optional>

#include "control_block.h"

namespace flowseal {

struct ChainPosition {
  std::array<std::uint8_t, 16> stream_id{};
  std::uint64_t next_seq = 0;
  std::array<std::uint8_t, 32> prev_root{};

  bool operator==(const ChainPosition&) const = default;
};

struct StoredChainPosition {
  ChainPosition position;
  std::uint64_t ring_head = 0;  // the signerd -> writerd ring's published head as of it
};

// nullopt if none was stored in this control block (a new stream).
std::optional<StoredChainPosition> load_chain_position(const StageSlot& signerd_slot);
void store_chain_position(StageSlot& signerd_slot, const ChainPosition& position,
                          std::uint64_t ring_head);

}  // namespace flowseal
