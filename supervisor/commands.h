// The `flowseal` subcommands. Each returns a sysexits-style exit code; start-up problems
// (bad config, unreadable files) are thrown and turned into one line by main.
#pragma once

#include <cstdint>
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
  bool rotate_key = false;  // continue a store sealed with another key (key rotation)
};
int run_command(const RunOptions& options);

struct CatOptions {
  std::string path;
  bool all_events = false;
  std::string since;                 // RFC 3339 or epoch seconds: flows that end at or after it
  std::string until;                 // flows that start before it
  std::vector<std::string> hosts;    // an address or CIDR prefix, either side of the flow
  std::vector<std::uint32_t> ports;  // either side
  std::string format = "json";       // json | tsv
  bool no_verify = false;            // print without checking signatures, roots and chain
  std::string public_key;            // pin: batches must be signed with this key
};
int cat_command(const CatOptions& options);

struct VerifyOptions {
  std::string dir;
  std::string public_key;
  std::string proof_event;  // --proof EVENT_ID: print that record's inclusion proof
  bool no_gaps = false;     // a gap passed over on a signed marker fails verify too
};
int verify_command(const VerifyOptions& options);

// `flowseal verify-proof FILE`: checks a proof `verify --proof` printed, on its own.
struct VerifyProofOptions {
  std::string file;
  std::string public_key;  // pin: the proof's key must be this one
};
int verify_proof_command(const VerifyProofOptions& options);

struct KeygenOptions {
  std::string private_key;
  std::string algorithm = "ed25519";
};
int keygen_command(const KeygenOptions& options);

struct StatusOptions {
  std::string instance = "default";
  bool json = false;
};
int status_command(const StatusOptions& options);

struct StopOptions {
  std::string instance = "default";
  int timeout_s = 60;
};
int stop_command(const StopOptions& options);

struct RestartOptions {
  std::string instance = "default";
  std::string stage;  // capture | flowd | flowd[N] | dedupd | signerd | writerd
  int timeout_s = 15;
};
int restart_command(const RestartOptions& options);

// `flowseal cleanup --instance NAME`: removes what a dead instance left (supervisor/instance.h).
struct CleanupOptions {
  std::string instance = "default";
};
int cleanup_command(const CleanupOptions& options);

struct ConfigCheckOptions {
  std::string config_file;
  std::vector<std::string> overrides;
};
int config_check_command(const ConfigCheckOptions& options);

}  // namespace flowseal::supervisor
