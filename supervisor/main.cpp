// flowseal: the one command operators type. Parses the command line and hands each
// subcommand to its part of the supervisor library.
#include <exception>
#include <functional>

#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include "collect_command.h"
#include "command_error.h"
#include "commands.h"
#include "instance.h"
#include "stage_runtime.h"
#include "version.h"

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
  std::function<int()> action;

  RunOptions run;
  auto* run_cmd = app.add_subcommand("run", "capture/read packets and store sealed flow records");
  run_cmd->add_option("-c,--config", run.config_file, "YAML config file")->check(CLI::ExistingFile);
  run_cmd->add_option("-r,--read", run.files, "pcap/pcapng files, read in order");
  run_cmd->add_option("-i,--interface", run.interface, "live interface");
  run_cmd->add_option("-o,--output", run.output_dir, "output directory (writer.dir)");
  run_cmd->add_option("--budget", run.budget_mb, "memory budget in MiB (memory.budget_mb)");
  run_cmd->add_option("--instance", run.instance, "instance name (supervisor.instance)");
  run_cmd->add_option("--set", run.overrides, "override a config key: KEY=VALUE")->take_all();
  run_cmd->add_option("--loop", run.loop, "offline: passes over the input (capture.loop)");
  run_cmd->callback([&] { action = [&] { return run_command(run); }; });

  CatOptions cat;
  auto* cat_cmd = app.add_subcommand("cat", "print stored flow records as JSON lines");
  cat_cmd->add_option("path", cat.path, "output directory or segment file")->required();
  cat_cmd->add_flag("--events", cat.all_events,
                    "every start/update/end/summary event (default: flow ends and dedup summaries, "
                    "one line per finished connection or group of repeated connections)");
  cat_cmd->add_option("--since", cat.since,
                      "flows that end at or after this time (RFC 3339 or epoch seconds)");
  cat_cmd->add_option("--until", cat.until, "flows that start before this time");
  cat_cmd->add_option("--host", cat.hosts, "address or CIDR prefix on either side (repeatable)");
  cat_cmd->add_option("--port", cat.ports, "port on either side (repeatable)");
  cat_cmd->add_option("--format", cat.format, "json (default) | tsv (Zeek-style, #fields header)");
  cat_cmd->add_flag("--no-verify", cat.no_verify,
                    "do not check signatures, Merkle roots and the chain as records are read "
                    "(stderr says the output is unverified)");
  cat_cmd->add_option("--pubkey", cat.public_key, "public key to pin (PEM)");
  cat_cmd->callback([&] { action = [&] { return cat_command(cat); }; });

  VerifyOptions verify;
  auto* verify_cmd =
      app.add_subcommand("verify", "check every signature, Merkle root and the chain");
  verify_cmd->add_option("dir", verify.dir, "output directory")->required();
  verify_cmd->add_option("--pubkey", verify.public_key, "public key to pin (PEM)");
  verify_cmd->add_option("--proof", verify.proof_event,
                         "print the inclusion proof of event UID:KIND:NUMBER (e.g. C4a:end:1)");
  verify_cmd->callback([&] { action = [&] { return verify_command(verify); }; });

  VerifyProofOptions verify_proof;
  auto* verify_proof_cmd =
      app.add_subcommand("verify-proof", "check a proof printed by verify --proof, on its own");
  verify_proof_cmd->add_option("file", verify_proof.file, "proof file")->required();
  verify_proof_cmd->add_option("--pubkey", verify_proof.public_key, "public key to pin (PEM)");
  verify_proof_cmd->callback([&] { action = [&] { return verify_proof_command(verify_proof); }; });

  KeygenOptions keygen;
  auto* keygen_cmd =
      app.add_subcommand("keygen", "make a signing key pair (private key mode 0600)");
  keygen_cmd->add_option("-o,--out", keygen.private_key, "private key file (public: .pub)")
      ->required();
  keygen_cmd->add_option("-a,--algorithm", keygen.algorithm, "ed25519 | ecdsa-p256 | rsa-4096");
  keygen_cmd->callback([&] { action = [&] { return keygen_command(keygen); }; });

  CollectOptions collect;
  auto* collect_cmd = app.add_subcommand(
      "collect",
      "Core side: consume shipped batches from NATS JetStream, verify each on arrival, "
      "store one chain per probe under DIR/<key id>/<stream id>/ (exit 69 no server, "
      "77 certificate refused)");
  collect_cmd->add_option("--url", collect.url, "tls://HOST:PORT")->required();
  collect_cmd->add_option("--tls-ca", collect.tls_ca, "CA of the server's certificate (PEM)");
  collect_cmd->add_option("--tls-cert", collect.tls_cert, "our client certificate (PEM)");
  collect_cmd->add_option("--tls-key", collect.tls_key, "its private key (PEM, mode 0600)");
  collect_cmd->add_flag("--insecure", collect.insecure, "allow a plaintext nats:// URL");
  collect_cmd->add_option("-o,--output", collect.output_dir, "output directory")->required();
  collect_cmd->add_option("--pubkey", collect.pubkey_dir,
                          "folder of pinned probe public keys (*.pub): other keys are refused");
  collect_cmd->add_option("--stream", collect.stream, "JetStream stream (ship.stream)");
  collect_cmd->add_option("--subject-prefix", collect.subject_prefix, "ship.subject_prefix");
  collect_cmd->add_option("--durable", collect.durable,
                          "durable consumer name (shared by collects)");
  collect_cmd->add_option("--idle-exit", collect.idle_exit_s,
                          "exit 0 once nothing arrived for SECONDS");
  collect_cmd->add_flag("--json", collect.json, "print the counters as one JSON object at exit");
  collect_cmd->callback([&] { action = [&] { return collect_command(collect); }; });

  StatusOptions status;
  auto* status_cmd = app.add_subcommand("status",
                                        "every stage of a running instance: pid, state, "
                                        "restarts, heartbeat, memory, rates, rings");
  status_cmd->add_option("--instance", status.instance, "instance name");
  status_cmd->add_flag("--json", status.json, "one JSON object");
  status_cmd->callback([&] { action = [&] { return status_command(status); }; });

  StopOptions stop;
  auto* stop_cmd = app.add_subcommand("stop", "drain a running instance and wait until it exits");
  stop_cmd->add_option("--instance", stop.instance, "instance name");
  stop_cmd->add_option("--timeout", stop.timeout_s, "seconds to wait for the drain");
  stop_cmd->callback([&] { action = [&] { return stop_command(stop); }; });

  RestartOptions restart;
  auto* restart_cmd = app.add_subcommand("restart", "restart one stage without losing a record");
  restart_cmd
      ->add_option("stage", restart.stage,
                   "capture | flowd | flowd[N] | dedupd | signerd | writerd")
      ->required();
  restart_cmd->add_option("--instance", restart.instance, "instance name");
  restart_cmd->add_option("--timeout", restart.timeout_s, "seconds to wait for the new process");
  restart_cmd->callback([&] { action = [&] { return restart_command(restart); }; });

  CleanupOptions cleanup;
  auto* cleanup_cmd = app.add_subcommand("cleanup",
                                         "remove the shared memory and run directory "
                                         "a dead instance left (refused while it lives)");
  cleanup_cmd->add_option("--instance", cleanup.instance, "instance name");
  cleanup_cmd->callback([&] { action = [&] { return cleanup_command(cleanup); }; });

  ConfigCheckOptions check;
  auto* config_cmd = app.add_subcommand("config", "configuration tools");
  auto* check_cmd = config_cmd->add_subcommand("check", "validate and print the effective config");
  check_cmd->add_option("-c,--config", check.config_file, "YAML config file");
  check_cmd->add_option("--set", check.overrides, "override a config key: KEY=VALUE")->take_all();
  check_cmd->callback([&] { action = [&] { return config_check_command(check); }; });
  config_cmd->require_subcommand(1);

  // --version on every command and subcommand, as on every stage program.
  std::function<void(CLI::App*)> add_version = [&](CLI::App* command) {
    command->set_version_flag("--version", std::string("flowseal ") + FLOWSEAL_VERSION);
    for (CLI::App* sub : command->get_subcommands([](CLI::App*) { return true; })) {
      add_version(sub);
    }
  };
  add_version(&app);

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
