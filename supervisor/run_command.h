// `flowseal run`: create the instance's shared memory, start the stages downstream-first,
// watch them (exit status and heartbeats), restart a crashed one with backoff, and drain
// cleanly at the end of the input or on SIGINT/SIGTERM.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "config.h"

namespace flowseal::supervisor {

// Directory holding the stage binaries (flowseal-capture, ...): next to this executable when
// installed, or the build tree's per-stage folders.
std::filesystem::path stage_binary(const std::string& stage);

// Runs to completion; returns the process exit code. `config` is the effective config
// (validated by the caller).
int run_pipeline(Config config);

}  // namespace flowseal::supervisor
