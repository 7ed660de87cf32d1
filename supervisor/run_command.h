// `flowseal run`: create the instance's shared memory, start the stages downstream-first,
// watch them (exit status and heartbeats), restart a crashed one with backoff, and drain
// cleanly at the end of the input or on SIGINT/SIGTERM.
#pragma once

#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "config.h"

namespace flowseal::supervisor {

// Directory holding the stage binaries (flowseal-capture, ...): next to this executable when
// installed, or the build tree's per-stage folders.
std::filesystem::path stage_binary(const std::string& stage);

// Assembles the configuration again from the sources the run started with (SIGHUP).
struct ConfigSource {
  std::string origin;            // what reload messages name: the config file, or the flags
  std::function<Config()> read;  // empty: nothing to read again (every reload is refused)
};

// The keys a running supervisor applies on SIGHUP (documented in docs/OPERATIONS.md and
// deploy/flowseal.yaml); every other key is read by the stages at start or sizes the shared
// memory, and a change needs a new run.
inline constexpr std::string_view kRuntimeKeys[] = {"supervisor.heartbeat_timeout_ms",
                                                    "supervisor.stats_interval_s",
                                                    "supervisor.max_restarts",
                                                    "supervisor.restart_window_s",
                                                    "memory.sample_ms",
                                                    "memory.capture_limit_mb",
                                                    "memory.flowd_limit_mb",
                                                    "memory.dedupd_limit_mb",
                                                    "memory.signerd_limit_mb",
                                                    "memory.writerd_limit_mb"};

// What a reload changed: "KEY: OLD -> NEW" lines.
struct ConfigChanges {
  std::vector<std::string> applied;       // runtime keys, now in `running`
  std::vector<std::string> need_restart;  // every other changed key; `running` keeps its value
};
ConfigChanges apply_runtime_keys(Config& running, const Config& fresh);

// Runs to completion; returns the process exit code. `config` is the effective config
// (validated by the caller); `reread` assembles it again on SIGHUP. `rotate_key`: `run
// --rotate-key`, continue a store sealed with another key with seal.key_file's
// (stream_adoption.h).
int run_pipeline(Config config, ConfigSource reread = {}, bool rotate_key = false);

}  // namespace flowseal::supervisor
