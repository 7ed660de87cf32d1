// Sealed batches a dead instance left in its signerd -> writerd ring, handed to this run's
// writerd so that its store's chain goes on through them.
//
// Such a batch is complete and signed: signerd published it, writerd had not stored it (or
// had, and not yet committed the frame) when the supervisor died. Only batches that continue
// this directory's stream exactly are taken: each must read as a SealedBatch, verify as
// `flowseal verify` checks it (Merkle root over its records, signature by seal.key_file's
// key), carry the store's stream id, and link to the batch before it (seq + 1, prevRoot = its
// Merkle root), starting right after the newest durable batch. Batches the store holds
// already (seq at or below its newest) are skipped; the first batch that does not continue
// the chain ends the recovery, and why is said. Nothing is written here: the caller places
// the frames in the new sealed ring before writerd starts, and signerd starts after them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include <optional>

#include "chain_position.h"
#include "leftover_rings.h"
#include "seal/keys.h"

namespace flowseal::supervisor {

struct SealedRecovery {
  struct Batch {
    std::size_t frame = 0;  // index into the frames given
    std::uint64_t seq = 0;
    std::uint64_t records = 0;
    ChainPosition after;  // where the chain stands after it
  };
  std::vector<Batch> taken;          // in chain order
  std::uint64_t already_stored = 0;  // frames whose seq the store holds
  std::string stopped;               // why the frames after the taken ones were left, if any
};

// `from`: where the store's chain stands (stream id, next seq, prev root), `key`: the key the
// batches must be signed with.
SealedRecovery continue_chain(const std::vector<std::vector<std::byte>>& frames,
                              const ChainPosition& from, const seal::PublicKey& key);

// What a run does with a dead instance's leftover rings (Instance::leftovers()): logs what each
// ring held, and, when `position` is the store's chain (the directory holds a stream), places
// the sealed batches that continue it in `sealed_ring` (the new run's, before any stage starts)
// and moves `position` past them, so that writerd stores them first and signerd seals on after
// them. `key_file`: seal.key_file, whose public half the batches must verify with. Returns the
// lines the run summary prints (none if the dead instance's rings held nothing).
std::vector<std::string> take_over_leftovers(const std::vector<LeftoverRing>& rings,
                                             std::span<std::byte> sealed_ring,
                                             std::optional<ChainPosition>& position,
                                             const std::string& key_file);

}  // namespace flowseal::supervisor
