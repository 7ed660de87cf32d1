// flowseal's configuration: plain structs per stage with defaults in one place.
//
// Sources, later ones winning: built-in defaults, a YAML file (`-c FILE`), `--set KEY=VALUE`
// overrides. Every key is described once in the key table (config.cpp) with its type, range
// and meaning; the loader rejects an unknown key, a wrong type or an out-of-range value with
// a message naming the key and, for files, the line. The supervisor writes the effective
// configuration to a file that every stage loads the same way, so all stages see one config.
#pragma once

#include <cstdint>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace flowseal {

struct CaptureConfig {
  std::vector<std::string> files;  // offline sources, read in this order
  std::string interface;           // live source
  std::string filter;              // BPF filter expression
  std::int64_t snaplen = 65535;
  bool promiscuous = true;
  std::int64_t buffer_mb = 8;      // kernel capture buffer (live); see deploy/flowseal.yaml
  bool immediate = false;          // live: deliver packets without buffering delay
  std::int64_t batch_packets = 256;
  std::int64_t batch_timeout_ms = 10;  // live: publish a partial batch after this long
  std::int64_t loop = 1;               // offline: passes over the files (benchmarks)
  std::string user;                    // live: drop privileges to this user once open
};

struct FlowdConfig {
  std::int64_t shards = 1;
  double tcp_idle_timeout = 300;               // s, established TCP (Zeek: 5 min)
  double tcp_attempt_timeout = 5;              // s, TCP not established
  double tcp_closed_timeout = 5;               // s, lingering after FIN/RST
  double udp_idle_timeout = 60;                // s (Zeek: 1 min)
  double icmp_idle_timeout = 60;               // s
  double other_idle_timeout = 60;              // s
  double active_timeout = 1800;                // s, an update is emitted and the flow goes on
  std::int64_t max_flows = 0;                  // 0: derived from memory.budget_mb
  std::int64_t community_id_seed = 0;  // 0..65535
};

struct DedupConfig {
  bool enabled = true;
  double report_interval = 300;  // s of packet time between updates of one flow
  double rate_change = 0.5;      // an update whose byte rate moved more than this passes
  std::int64_t burst = 3;        // repeated short flows passing one by one per window
  double window = 60;            // s
  std::int64_t max_entries = 0;  // 0: derived from memory.budget_mb
};

struct SealConfig {
  std::int64_t batch_records = 1024;
  std::int64_t batch_ms = 100;
  std::int64_t end_batch_ms = 10;  // a batch holding a flow's end is sealed within this long
  std::int64_t leaf_hint_bytes = 2;  // 0..32: unsigned leaf-hash prefixes per record, so verify
                                     // can name a damaged record (seal/leaf_hints.h); 0: none
  std::string algorithm = "ed25519";  // ed25519 | ecdsa-p256 | rsa-4096
  std::string key_file;               // empty: <output>/keys/flowseal.key (made if missing)
};

struct WriterConfig {
  std::string dir = "flowseal-out";
  std::int64_t segment_max_mb = 64;
  double segment_max_age = 300;     // s
  std::int64_t zstd_level = 3;
  std::string fsync = "batch";      // batch | interval | rotate
  std::int64_t fsync_interval_ms = 1000;
  double retention_max_age = 0;     // s, 0: keep forever
  std::int64_t retention_max_mb = 0;  // 0: unlimited
};

struct MemoryConfig {
  std::int64_t budget_mb = 256;
  // Pressure levels (common/pressure_level.h, supervisor/pressure.h): usage at or above a
  // threshold raises the level at once; it falls only once usage stays below the threshold
  // minus hysteresis_pct for down_samples samples in a row.
  double medium_pct = 70;
  double high_pct = 85;
  double critical_pct = 95;
  double hysteresis_pct = 5;
  std::int64_t down_samples = 4;
  std::int64_t sample_ms = 1000;  // the supervisor samples memory this often
  bool system_pressure = true;    // system memory in use (MemAvailable) raises the level too
  // Hard limits of each stage's private memory (anonymous PSS) in MiB, flowd's per shard:
  // a stage over its limit is restarted (it resumes from the rings, as after a crash).
  // 0: derived from budget_mb (private_limit in supervisor/pressure.h).
  double capture_limit_mb = 0;
  double flowd_limit_mb = 0;
  double dedupd_limit_mb = 0;
  double signerd_limit_mb = 0;
  double writerd_limit_mb = 0;
};

struct SupervisorConfig {
  std::string instance = "default";
  std::int64_t heartbeat_timeout_ms = 5000;
  std::int64_t stats_interval_s = 5;
  std::int64_t max_restarts = 10;
  // Run as root with this set: flowd, dedupd, signerd and writerd run as this user (capture
  // starts as root and drops to capture.user once its handle is open). Empty: stages run as
  // the supervisor does.
  std::string user;
};

struct Config {
  CaptureConfig capture;
  FlowdConfig flowd;
  DedupConfig dedup;
  SealConfig seal;
  WriterConfig writer;
  MemoryConfig memory;
  SupervisorConfig supervisor;
};

// Thrown for any bad configuration; what() names the key (and file:line when known).
struct ConfigError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Applies a YAML file on top of `config`.
void load_config_file(Config& config, const std::filesystem::path& file);
// Applies one `KEY=VALUE` override (VALUE is parsed as a YAML scalar or flow sequence).
void apply_override(Config& config, std::string_view assignment);
// Checks cross-key rules that a single key's range cannot express.
void validate(const Config& config);
// The effective configuration as YAML, every key with its comment (for `config check` and
// for the stages).
std::string dump_config(const Config& config, bool with_comments = false);

}  // namespace flowseal
