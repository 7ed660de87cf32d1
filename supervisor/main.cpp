// flowseal: the one command operators type. Parses the command line (each subcommand's
// options: command_line.h) and runs the subcommand, turning what it throws into one line and
// an exit code.
#include <exception>

#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include "command_error.h"
#include "command_line.h"
#include "instance.h"
#include "stage_runtime.h"

int main(int argc, char** argv) {
  using namespace flowseal;
  using namespace flowseal::supervisor;
  init_logging("flowseal");

  CLI::App app{
      "flowseal: network flows, deduplicated, sealed in signed hash chains, stored "
      "compressed.\nExit codes: 0 ok, 64 usage, 65 bad input data, 66 no input, "
      "69 no such instance running, 70 internal error, 73 cannot create output, "
      "74 I/O error, 75 temporary failure, 77 permission denied, 78 bad config."};
  app.require_subcommand(1);
  Action action;
  add_run_command(app, action);
  add_cat_command(app, action);
  add_verify_command(app, action);
  add_verify_proof_command(app, action);
  add_keygen_command(app, action);
  add_collect_command(app, action);
  add_status_command(app, action);
  add_stop_command(app, action);
  add_restart_command(app, action);
  add_cleanup_command(app, action);
  add_config_command(app, action);
  add_version_flags(app);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? exit_code::kOk : exit_code::kUsage;
  }
  try {
    return action ? action() : exit_code::kUsage;
  } catch (const ConfigError& e) {
    spdlog::error("config: {}", e.what());
    return exit_code::kConfig;
  } catch (const CommandError& e) {
    spdlog::error("{}", e.what());
    return e.exit_code();
  } catch (const InstanceRunning& e) {
    spdlog::error("{}", e.what());
    return exit_code::kTempFail;
  } catch (const std::exception& e) {
    spdlog::error("{}", e.what());
    return exit_code::kSoftware;
  }
}
