// `flowseal run` (config assembly), `flowseal config check` and `flowseal keygen`.
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include <fmt/format.h>

#include "command_error.h"
#include "commands.h"
#include "config.h"
#include "plan_check.h"
#include "run_command.h"
#include "seal/keys.h"
#include "stage_runtime.h"

namespace flowseal::supervisor {
namespace {

Config assemble(const std::string& config_file, const std::vector<std::string>& overrides) {
  Config config;
  if (!config_file.empty()) load_config_file(config, config_file);
  for (const auto& assignment : overrides) apply_override(config, assignment);
  return config;
}

Config assemble_run(const RunOptions& options) {
  Config config = assemble(options.config_file, options.overrides);
  // Command-line options are the most specific: they win over the file and --set.
  if (!options.files.empty()) config.capture.files = options.files;
  if (!options.interface.empty()) config.capture.interface = options.interface;
  if (!options.output_dir.empty()) config.writer.dir = options.output_dir;
  if (options.budget_mb)
    apply_override(config, fmt::format("memory.budget_mb={}", *options.budget_mb));
  if (options.loop) apply_override(config, fmt::format("capture.loop={}", *options.loop));
  if (!options.instance.empty()) config.supervisor.instance = options.instance;
  return config;
}

}  // namespace

int run_command(const RunOptions& options) {
  Config config = assemble_run(options);
  validate(config);
  require_runnable(config);  // before any output, key, run directory or shared memory
  if (config.capture.files.empty() && config.capture.interface.empty()) {
    throw ConfigError(
        "no input: give -r FILE... or -i INTERFACE (or capture.files / "
        "capture.interface in the config)");
  }
  for (const auto& file : config.capture.files) {
    if (!std::filesystem::exists(file)) {
      std::fprintf(stderr, "flowseal: %s: no such capture file\n", file.c_str());
      return exit_code::kNoInput;
    }
  }
  // SIGHUP assembles it again the same way (run_pipeline applies what can change).
  ConfigSource reread;
  reread.origin = options.config_file.empty() ? std::string("the command line (no config file)")
                                              : options.config_file;
  reread.read = [options] { return assemble_run(options); };
  return run_pipeline(std::move(config), std::move(reread), options.rotate_key);
}

int config_check_command(const ConfigCheckOptions& options) {
  Config config = assemble(options.config_file, options.overrides);
  validate(config);
  require_runnable(config);
  std::fputs(dump_config(config, true).c_str(), stdout);
  return exit_code::kOk;
}

int keygen_command(const KeygenOptions& options) {
  std::filesystem::path key(options.private_key);
  std::filesystem::path pub = key;
  pub.replace_extension(".pub");
  const std::filesystem::path dir = key.has_parent_path() ? key.parent_path() : ".";
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) {
    throw CommandError(
        exit_code::kCantCreate,
        fmt::format("keygen: {}: no such directory to write the key into", dir.string()));
  }
  if (::access(dir.c_str(), W_OK | X_OK) != 0) {
    throw CommandError(
        errno == EACCES ? exit_code::kNoPermission : exit_code::kCantCreate,
        fmt::format("keygen: {}: cannot write there: {}", dir.string(), std::strerror(errno)));
  }
  seal::generate_key_pair(seal::parse_algorithm(options.algorithm), key, pub);
  std::printf("private key: %s (mode 0600)\npublic key:  %s\n", key.c_str(), pub.c_str());
  return exit_code::kOk;
}

}  // namespace flowseal::supervisor
