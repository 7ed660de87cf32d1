#include "command_line.h"

#include <memory>
#include <string>

#include "collect_command.h"
#include "commands.h"
#include "version.h"

namespace flowseal::supervisor {
namespace {

// Options of type T, alive as long as the subcommand's callback that holds them; choosing
// the subcommand makes `action` call `command` with them.
template <typename T>
std::shared_ptr<T> options_for(CLI::App* command, Action& action, int (*run)(const T&)) {
  auto options = std::make_shared<T>();
  command->callback([options, run, &action] { action = [options, run] { return run(*options); }; });
  return options;
}

}  // namespace

void add_run_command(CLI::App& app, Action& action) {
  auto* cmd = app.add_subcommand("run", "capture/read packets and store sealed flow records");
  auto run = options_for<RunOptions>(cmd, action, run_command);
  cmd->add_option("-c,--config", run->config_file, "YAML config file")->check(CLI::ExistingFile);
  cmd->add_option("-r,--read", run->files, "pcap/pcapng files, read in order");
  cmd->add_option("-i,--interface", run->interface, "live interface");
  cmd->add_option("-o,--output", run->output_dir, "output directory (writer.dir)");
  cmd->add_option("--budget", run->budget_mb, "memory budget in MiB (memory.budget_mb)");
  cmd->add_option("--instance", run->instance, "instance name (supervisor.instance)");
  cmd->add_option("--set", run->overrides, "override a config key: KEY=VALUE")->take_all();
  cmd->add_option("--loop", run->loop, "offline: passes over the input (capture.loop)");
  cmd->add_flag("--rotate-key", run->rotate_key,
                "continue a store sealed with another key, signing from here on with "
                "seal.key_file's (key rotation; the old public key must be in OUT/keys/)");
}

void add_cat_command(CLI::App& app, Action& action) {
  auto* cmd = app.add_subcommand("cat", "print stored flow records as JSON lines");
  auto cat = options_for<CatOptions>(cmd, action, cat_command);
  cmd->add_option("path", cat->path, "output directory or segment file")->required();
  cmd->add_flag("--events", cat->all_events,
                "every start/update/end/summary event (default: flow ends and dedup summaries, "
                "one line per finished connection or group of repeated connections)");
  cmd->add_option("--since", cat->since,
                  "flows that end at or after this time (RFC 3339 or epoch seconds)");
  cmd->add_option("--until", cat->until, "flows that start before this time");
  cmd->add_option("--host", cat->hosts, "address or CIDR prefix on either side (repeatable)");
  cmd->add_option("--port", cat->ports, "port on either side (repeatable)");
  cmd->add_option("--format", cat->format, "json (default) | tsv (Zeek-style, #fields header)");
  cmd->add_flag("--no-verify", cat->no_verify,
                "do not check signatures, Merkle roots and the chain as records are read "
                "(stderr says the output is unverified)");
  cmd->add_option("--pubkey", cat->public_key, "public key to pin (PEM, or a directory of *.pub)");
}

void add_verify_command(CLI::App& app, Action& action) {
  auto* cmd = app.add_subcommand("verify", "check every signature, Merkle root and the chain");
  auto verify = options_for<VerifyOptions>(cmd, action, verify_command);
  cmd->add_option("dir", verify->dir, "output directory")->required();
  cmd->add_option("--pubkey", verify->public_key,
                  "public key to pin (PEM, or a directory of *.pub)");
  cmd->add_option("--proof", verify->proof_event,
                  "print the inclusion proof of event UID:KIND:NUMBER (e.g. C4a:end:1)");
  cmd->add_flag("--no-gaps", verify->no_gaps,
                "fail (65) on batches given up inside the chain, even with their signed gap "
                "markers: for audits that need every batch");
}

void add_verify_proof_command(CLI::App& app, Action& action) {
  auto* cmd =
      app.add_subcommand("verify-proof", "check a proof printed by verify --proof, on its own");
  auto verify_proof = options_for<VerifyProofOptions>(cmd, action, verify_proof_command);
  cmd->add_option("file", verify_proof->file, "proof file")->required();
  cmd->add_option("--pubkey", verify_proof->public_key, "public key to pin (PEM)");
}

void add_keygen_command(CLI::App& app, Action& action) {
  auto* cmd = app.add_subcommand("keygen", "make a signing key pair (private key mode 0600)");
  auto keygen = options_for<KeygenOptions>(cmd, action, keygen_command);
  cmd->add_option("-o,--out", keygen->private_key, "private key file (public: .pub)")->required();
  cmd->add_option("-a,--algorithm", keygen->algorithm, "ed25519 | ecdsa-p256 | rsa-4096");
}

void add_collect_command(CLI::App& app, Action& action) {
  auto* cmd = app.add_subcommand(
      "collect",
      "Core side: consume shipped batches from NATS JetStream, verify each on arrival, "
      "store one chain per probe under DIR/<key id>/<stream id>/ (exit 69 no server, "
      "77 certificate refused)");
  auto collect = options_for<CollectOptions>(cmd, action, collect_command);
  cmd->add_option("--url", collect->url, "tls://HOST:PORT")->required();
  cmd->add_option("--tls-ca", collect->tls_ca, "CA of the server's certificate (PEM)");
  cmd->add_option("--tls-cert", collect->tls_cert, "our client certificate (PEM)");
  cmd->add_option("--tls-key", collect->tls_key, "its private key (PEM, mode 0600)");
  cmd->add_flag("--insecure", collect->insecure, "allow a plaintext nats:// URL");
  cmd->add_option("-o,--output", collect->output_dir, "output directory")->required();
  cmd->add_option("--pubkey", collect->pubkey_dir,
                  "folder of pinned probe public keys (*.pub): other keys are refused");
  cmd->add_option("--stream", collect->stream, "JetStream stream (ship.stream)");
  cmd->add_option("--subject-prefix", collect->subject_prefix, "ship.subject_prefix");
  cmd->add_option("--durable", collect->durable, "durable consumer name (shared by collects)");
  cmd->add_option("--idle-exit", collect->idle_exit_s, "exit 0 once nothing arrived for SECONDS");
  cmd->add_flag("--json", collect->json, "print the counters as one JSON object at exit");
}

void add_status_command(CLI::App& app, Action& action) {
  auto* cmd = app.add_subcommand("status",
                                 "every stage of a running instance: pid, state, "
                                 "restarts, heartbeat, memory, rates, rings");
  auto status = options_for<StatusOptions>(cmd, action, status_command);
  cmd->add_option("--instance", status->instance, "instance name");
  cmd->add_flag("--json", status->json, "one JSON object");
}

void add_stop_command(CLI::App& app, Action& action) {
  auto* cmd = app.add_subcommand("stop", "drain a running instance and wait until it exits");
  auto stop = options_for<StopOptions>(cmd, action, stop_command);
  cmd->add_option("--instance", stop->instance, "instance name");
  cmd->add_option("--timeout", stop->timeout_s, "seconds to wait for the drain");
}

void add_restart_command(CLI::App& app, Action& action) {
  auto* cmd = app.add_subcommand("restart", "restart one stage without losing a record");
  auto restart = options_for<RestartOptions>(cmd, action, restart_command);
  cmd->add_option("stage", restart->stage,
                  "capture | flowd | flowd[N] | dedupd | signerd | writerd")
      ->required();
  cmd->add_option("--instance", restart->instance, "instance name");
  cmd->add_option("--timeout", restart->timeout_s, "seconds to wait for the new process");
}

void add_cleanup_command(CLI::App& app, Action& action) {
  auto* cmd = app.add_subcommand("cleanup",
                                 "remove the shared memory and run directory "
                                 "a dead instance left (refused while it lives)");
  auto cleanup = options_for<CleanupOptions>(cmd, action, cleanup_command);
  cmd->add_option("--instance", cleanup->instance, "instance name");
}

void add_config_command(CLI::App& app, Action& action) {
  auto* config = app.add_subcommand("config", "configuration tools");
  auto* cmd = config->add_subcommand("check", "validate and print the effective config");
  auto check = options_for<ConfigCheckOptions>(cmd, action, config_check_command);
  cmd->add_option("-c,--config", check->config_file, "YAML config file");
  cmd->add_option("--set", check->overrides, "override a config key: KEY=VALUE")->take_all();
  config->require_subcommand(1);
}

void add_version_flags(CLI::App& app) {
  app.set_version_flag("--version", std::string("flowseal ") + FLOWSEAL_VERSION);
  for (CLI::App* sub : app.get_subcommands([](CLI::App*) { return true; })) {
    add_version_flags(*sub);
  }
}

}  // namespace flowseal::supervisor
