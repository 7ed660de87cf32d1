// How memory.budget_mb is split between the shared segments of one instance, and their names.
//
// The supervisor creates every segment with these sizes before it starts a stage, so no
// stage can grow past the budget: rings are fixed, the flow table and dedup state get a fixed
// byte share and derive their capacity from it.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "config.h"

namespace flowseal {

struct MemoryPlan {
  std::size_t shards = 1;            // flowd.shards: how many of the per-shard parts there are
  std::size_t packet_ring = 0;       // capacity of each capture -> flowd[i] ring
  std::size_t event_ring = 0;        // each flowd[i] -> dedupd ring, and dedupd -> signerd
  std::size_t sealed_ring = 0;       // signerd -> writerd
  std::size_t flow_table_bytes = 0;  // per flowd shard
  std::size_t dedup_bytes = 0;       // dedupd's share, in its own process memory (not shared)
  // Bytes of every shared-memory object the instance creates, as their sizes in /dev/shm
  // say: the control block, each ring with its header (a packet ring and an event ring per
  // shard, dedupd's event ring, the sealed ring) and each shard's flow table.
  std::size_t total() const;
};

MemoryPlan plan_memory(const Config& config);

// Ring edge names (the part after "/flowseal.<instance>.ring.").
std::string packet_edge(std::size_t shard);  // capture -> flowd[shard]
std::string flow_edge(std::size_t shard);    // flowd[shard] -> dedupd
inline constexpr std::string_view kDedupEdge = "dedupd-signerd";
inline constexpr std::string_view kSealedEdge = "signerd-writerd";
std::string flow_table_name(std::string_view instance, std::size_t shard);

}  // namespace flowseal
