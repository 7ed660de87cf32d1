// flowd's loop: PacketBatch frames from capture in, FlowEventBatch frames out to dedupd.
//
// The flow table lives in this shard's shared-memory segment, so a restarted flowd keeps
// every active flow. Packets carry per-shard sequence numbers; the last one applied is kept
// in the control block, so a batch seen again (a capture restart) is not applied twice.
// Time: packet timestamps drive expiry when reading files (a replay gives the same records);
// a live capture also expires on wall time while idle, so a quiet link still exports.
#pragma once

#include "stage_runtime.h"

namespace flowseal::flowd {

int run_flowd(StageRuntime& runtime);

}  // namespace flowseal::flowd
