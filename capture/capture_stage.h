// The capture stage's loop: packets from a PcapSource, hashed symmetrically (so both
// directions of a flow reach the same flowd shard), sampled by the current pressure level when
// live (offline every packet goes on: a file waits for the pipeline instead), batched per shard
// and published to the shards' rings.
//
// Loop mode (capture.loop > 1): on every pass after the first, the packet is copied and both
// IP addresses get the pass number XORed into their low bytes (pass_rewrite.h) before the
// flow hash, so each pass's flows are new flows; the source shifts each pass's timestamps
// past the previous pass (pcap_source.h).
//
// Live, the handle is opened as root, then capture.user (if set) takes over: groups, gid and
// uid switched, every capability gone (effective, permitted and bounding set), no_new_privs.
// The line "listening on IFACE" is logged once that is done.
//
// Accounting, kept in the control block: received = published + sampled out + dropped
// because a ring was full (live only; offline a full ring makes the reader wait) + kernel
// drops (counted by libpcap before we ever see the packet).
#pragma once

#include "stage_runtime.h"

namespace flowseal::capture {

// Runs until the input ends or a stop is requested; returns the stage's exit code: 65 when
// a capture file was damaged, unreadable or of an unsupported link type (every problem is
// logged as "capture: FILE: record N at offset O: what"; the good packets still went
// through), 66 for an interface that does not exist, 75 for one that is down, 78 for a bad
// filter or capture.user.
int run_capture(StageRuntime& runtime);

// Sampling rate and payload cut for a pressure level (0 LOW .. 3 CRITICAL), from DESIGN.md.
float sampling_rate_for(std::uint32_t pressure_level);
std::size_t payload_keep_for(std::uint32_t pressure_level, std::size_t snaplen);

}  // namespace flowseal::capture
