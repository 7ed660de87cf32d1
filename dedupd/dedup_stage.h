// dedupd's loop: FlowEventBatch frames from every flowd shard in, FlowEventBatch frames out
// to signerd, each input frame committed only once what it produced is published.
//
// With dedup.enabled=false every frame is copied through unchanged (pure pass-through).
// Otherwise the frames go through a DedupEngine (dedup_engine.h).
//
// Crash safety: commit pinning, bounded. The engine holds facts across frames (held starts,
// folded ends in pending summaries) only in this process's memory. So an input ring is
// committed only when the engine holds nothing that came from it (DedupEngine::holds());
// until then its frames stay in the ring, and a dedupd that crashes or is killed is replayed
// from the last commit by its successor, which rebuilds the same held state from the same
// records. To keep that from pinning a ring until it is full (flowd would then block and,
// with enough shards, never let the holds end), once the frames read but not committed from
// one ring pass half its capacity the engine is flushed (every held start released, every
// pending summary emitted early), its output published, and every ring committed. That
// costs reduction under load, never a fact. A live source that goes quiet is flushed the
// same way after `dedup.window` seconds of wall time with nothing to read, so held starts
// do not wait forever for packet time to move.
//
// What a crash can do: repeat. Records published from frames that were not yet committed
// are published again after the replay — the same passed records with the same event ids
// (readers drop those), and summaries, which may group differently the second time (a
// crash between a flush and its commit can count a flow in a summary and again in a
// replayed record). Nothing held is lost. Shared-memory engine state would remove the
// repeats and the pinning; it is not built (docs/PERFORMANCE.md, "Crash safety").
#pragma once

#include "stage_runtime.h"

namespace flowseal::dedupd {

int run_dedupd(StageRuntime& runtime);

}  // namespace flowseal::dedupd
