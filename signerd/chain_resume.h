// Where a starting signerd continues its stream's hash chain.
//
// signerd publishes a sealed batch, then stores the position it leads to (seq + 1, its Merkle
// root) with the sealed ring's head (common/chain_position.h). A signerd killed between the
// two, or inside the store, leaves a ring whose head is past the stored one: its successor
// must go on after the batch it published, which writerd may already hold, and not seal that
// input again as the same seq with other records (a fork: writerd would drop it as a replay
// and the next batch would link to what it dropped). The published batch is read back from
// the ring's data area, where it stays until a producer writes over it, and only the
// successor produces there.
#pragma once

#include "chain_position.h"
#include "ring.h"

namespace flowseal::signerd {

// `stored` as it is when the sealed ring's head is where it says; else the position after
// the last batch published since (its seq + 1, its Merkle root). Throws std::runtime_error
// naming what does not fit when the bytes since are not such a batch of this stream at or
// after the stored seq (damaged shared memory).
ChainPosition resume_chain(const StoredChainPosition& stored, const RingProducer& producer);

}  // namespace flowseal::signerd
