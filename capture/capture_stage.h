// The capture stage's loop: packets from a PcapSource, hashed symmetrically (so both
// directions of a flow reach the same flowd shard), sampled by the current pressure level,
// batched per shard and published to the shards' rings.
//
// Accounting, kept in the control block: received = published + sampled out + dropped
// because a ring was full (live only; offline a full ring makes the reader wait) + kernel
// drops (counted by libpcap before we ever see the packet).
#pragma once

#include "stage_runtime.h"

namespace flowseal::capture {

// Runs until the input ends or a stop is requested; returns the stage's exit code
// (65 when a capture file was damaged or unreadable: the good packets before it still went
// through).
int run_capture(StageRuntime& runtime);

// Sampling rate and payload cut for a pressure level (0 LOW .. 3 CRITICAL), from DESIGN.md.
float sampling_rate_for(std::uint32_t pressure_level);
std::size_t payload_keep_for(std::uint32_t pressure_level, std::size_t snaplen);

}  // namespace flowseal::capture
