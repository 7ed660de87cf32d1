// The `flowseal` command line: each subcommand with its options, one function each, as CLI11
// parses them. main() adds them all to one CLI::App, parses argv and runs the action the
// chosen subcommand left.
//
// Each add_*_command() owns its options (shared with the subcommand's callback, so they live as
// long as `app`); choosing the subcommand sets `action` to call its *_command() function
// (commands.h, collect_command.h) with them.
#pragma once

#include <functional>

#include <CLI/CLI.hpp>

namespace flowseal::supervisor {

// What the chosen subcommand does, returning its exit code; empty until one is chosen.
using Action = std::function<int()>;

void add_run_command(CLI::App& app, Action& action);
void add_cat_command(CLI::App& app, Action& action);
void add_verify_command(CLI::App& app, Action& action);
void add_verify_proof_command(CLI::App& app, Action& action);
void add_keygen_command(CLI::App& app, Action& action);
void add_collect_command(CLI::App& app, Action& action);
void add_status_command(CLI::App& app, Action& action);
void add_stop_command(CLI::App& app, Action& action);
void add_restart_command(CLI::App& app, Action& action);
void add_cleanup_command(CLI::App& app, Action& action);
void add_config_command(CLI::App& app, Action& action);  // `config check`

// --version on `app` and every subcommand under it, as on every stage program. Call it after
// the subcommands are added.
void add_version_flags(CLI::App& app);

}  // namespace flowseal::supervisor
