// What the supervisor prints for people: a stats line while running and a summary at the end,
// both read from the control block's counters.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "config.h"
#include "control_block.h"
#include "instance.h"

namespace flowseal::supervisor {

void print_stats_line(const ControlBlock& control, const std::vector<Instance::RingView>& rings);
// What one stage cost over the run, across its restarts.
struct StageUsage {
  std::string name;
  double cpu_seconds = 0;
  std::uint64_t peak_pss = 0;      // bytes, at the memory samples
  std::uint64_t peak_private = 0;  // anonymous PSS, what its hard memory limit bounds
  std::uint32_t restarts = 0;
  std::uint32_t memory_restarts = 0;  // of `restarts`: over its memory limit
};

// Peaks of the stages' summed PSS, each over the run's samples.
struct MemoryPeaks {
  std::uint64_t total_pss = 0;
  std::uint64_t held = 0;  // anonymous + shmem: without mapped files (programs, input files)
};

// `leftovers`: what a dead instance of the same name left in its rings and what of it was
// recovered (sealed_recovery.h), one line each.
void print_run_summary(const Config& config, const ControlBlock& control, double seconds,
                       const std::vector<StageUsage>& usage, const MemoryPeaks& peaks,
                       const std::vector<std::string>& leftovers = {});

}  // namespace flowseal::supervisor
