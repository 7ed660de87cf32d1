// The `flowseal` subcommands. Each returns a sysexits-style exit code; start-up problems
// (bad config, unreadable files) are thrown and turned into one line by main.
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace flowseal::supervisor {

struct RunOptions {
  std::string config_file;
  std::vector<std::string> files;
  std::string interface;
  std::string output_dir;
  std::optional<std::int64_t> budget_mb;
  std::optional<std::int64_t> loop;
  std::string instance;
  std::vector<std::string> overrides;
};
int run_command(const RunOptions& options);

struct CatOptions {
  std::string path;
  bool all_events = false;
};
int cat_command(const CatOptions& options);

struct VerifyOptions {
  std::string dir;
  std::string public_key;
};
int verify_command(const VerifyOptions& options);

struct KeygenOptions {
  std::string private_key;
  std::string algorithm = "ed25519";
};
int keygen_command(const KeygenOptions& options);

struct ConfigCheckOptions {
  std::string config_file;
  std::vector<std::string> overrides;
};
int config_check_command(const ConfigCheckOptions& options);

}  // namespace flowseal::supervisor
