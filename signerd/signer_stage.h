// signerd's loop: FlowEventBatch frames in, SealedBatch frames out.
//
// A batch closes at seal.batch_records or seal.batch_ms, whichever comes first, and only at
// an input frame boundary, so that committing the input after publishing the sealed batch
// never splits a frame: a restarted signerd re-reads exactly the frames of the batches it
// did not publish. The chain position (stream id, next seq, previous root) is kept in the
// control block after each publish, so a restart continues the chain without gap or fork;
// re-sealing the same records after a crash gives the same root, and Ed25519 signatures are
// deterministic, so a batch published twice is byte-identical and writerd drops the repeat.
#pragma once

#include "stage_runtime.h"

namespace flowseal::signerd {

int run_signerd(StageRuntime& runtime);

}  // namespace flowseal::signerd
