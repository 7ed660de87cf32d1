// dedupd's loop: FlowEventBatch frames from every flowd shard in, FlowEventBatch frames out
// to signerd, each input frame committed only once what it produced is published.
#pragma once

#include "stage_runtime.h"

namespace flowseal::dedupd {

int run_dedupd(StageRuntime& runtime);

}  // namespace flowseal::dedupd
