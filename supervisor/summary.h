// What the supervisor prints for people: a stats line while running and a summary at the end,
// both read from the control block's counters.
#pragma once

#include <vector>

#include "config.h"
#include "control_block.h"
#include "instance.h"

namespace flowseal::supervisor {

void print_stats_line(const ControlBlock& control, const std::vector<Instance::RingView>& rings);
void print_run_summary(const Config& config, const ControlBlock& control, double seconds);

}  // namespace flowseal::supervisor
