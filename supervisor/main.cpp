// flowseal: the one command operators type. Parses the command line and hands each
// subcommand to its part of the supervisor library.
#include <exception>
#include <functional>

#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include "commands.h"
#include "stage_runtime.h"

int main(int argc, char** argv) {
  using namespace flowseal;
  using namespace flowseal::supervisor;
  init_logging("flowseal");

  CLI::App app{"flowseal: network flows, deduplicated, sealed in signed hash chains, stored "
               "compressed.\nExit codes: 0 ok, 64 usage, 65 bad input data, 66 no input, "
               "70 internal error, 74 I/O error, 75 temporary failure, 78 bad config."};
  app.require_subcommand(1);
  std::function<int()> action;

  RunOptions run;
  auto* run_cmd = app.add_subcommand("run", "capture/read packets and store sealed flow records");
  run_cmd->add_option("-c,--config", run.config_file, "YAML config file")->check(CLI::ExistingFile);
  run_cmd->add_option("-r,--read", run.files, "pcap/pcapng files, read in order");
  run_cmd->add_option("-i,--interface", run.interface, "live interface");
  run_cmd->add_option("-o,--output", run.output_dir, "output directory (writer.dir)");
  run_cmd->add_option("--budget", run.budget_mb, "memory budget in MiB (memory.budget_mb)");
  run_cmd->add_option("--instance", run.instance, "instance name (supervisor.instance)");
  run_cmd->add_option("--set", run.overrides, "override a config key: KEY=VALUE")
      ->take_all();
  run_cmd->add_option("--loop", run.loop, "offline: passes over the input (capture.loop)");
  run_cmd->callback([&] { action = [&] { return run_command(run); }; });

  CatOptions cat;
  auto* cat_cmd = app.add_subcommand("cat", "print stored flow records as JSON lines");
  cat_cmd->add_option("path", cat.path, "output directory or segment file")->required();
  cat_cmd->add_flag("--events", cat.all_events, "every start/update/end event, not only ends");
  cat_cmd->callback([&] { action = [&] { return cat_command(cat); }; });

  VerifyOptions verify;
  auto* verify_cmd = app.add_subcommand("verify", "check every signature, Merkle root and the chain");
  verify_cmd->add_option("dir", verify.dir, "output directory")->required();
  verify_cmd->add_option("--pubkey", verify.public_key, "public key to pin (PEM)");
  verify_cmd->callback([&] { action = [&] { return verify_command(verify); }; });

  KeygenOptions keygen;
  auto* keygen_cmd = app.add_subcommand("keygen", "make a signing key pair (private key mode 0600)");
  keygen_cmd->add_option("-o,--out", keygen.private_key, "private key file (public: .pub)")
      ->required();
  keygen_cmd->add_option("-a,--algorithm", keygen.algorithm, "ed25519 | ecdsa-p256 | rsa-4096");
  keygen_cmd->callback([&] { action = [&] { return keygen_command(keygen); }; });

  ConfigCheckOptions check;
  auto* config_cmd = app.add_subcommand("config", "configuration tools");
  auto* check_cmd = config_cmd->add_subcommand("check", "validate and print the effective config");
  check_cmd->add_option("-c,--config", check.config_file, "YAML config file");
  check_cmd->add_option("--set", check.overrides, "override a config key: KEY=VALUE")->take_all();
  check_cmd->callback([&] { action = [&] { return config_check_command(check); }; });
  config_cmd->require_subcommand(1);

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
  } catch (const std::exception& e) {
    spdlog::error("{}", e.what());
    return exit_code::kSoftware;
  }
}
