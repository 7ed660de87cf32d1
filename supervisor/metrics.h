// The Prometheus text exposition (format 0.0.4) of one instance: the packet ledger, flows,
// records, batches, bytes stored, per-stage CPU / PSS / restarts, ring fill, memory pressure
// and writerd's export latency histogram. Everything comes from the control block's atomics
// and /proc, so rendering never waits on the stages or the supervisor's loop.
#pragma once

#include <cstdint>
#include <string>

#include "control_block.h"
#include "status_snapshot.h"

namespace flowseal::supervisor {

// user + system CPU seconds of a live process (/proc/PID/stat), 0 if it is gone.
double process_cpu_seconds(pid_t pid);

std::string render_metrics(const ControlBlock& control, const RingFill& fill,
                           std::uint64_t memory_budget_bytes);

}  // namespace flowseal::supervisor
