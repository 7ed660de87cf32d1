// writerd's loop: SealedBatch frames in, segment files out. A frame is committed on the ring
// only after the segment store has it (durable as writer.fsync says), so a crash replays it,
// and the store drops a batch whose seq it already holds. A failed write (disk full) keeps
// the frame, says why once, retries, and the full ring makes the stages before it wait (or,
// for a live capture, drop and count).
#pragma once

#include "stage_runtime.h"

namespace flowseal::writerd {

int run_writerd(StageRuntime& runtime);

}  // namespace flowseal::writerd
