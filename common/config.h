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
#include <optional>
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
  std::int64_t buffer_mb = 8;  // kernel capture buffer (live); see deploy/flowseal.yaml
  bool immediate = false;      // live: deliver packets without buffering delay
  std::int64_t batch_packets = 256;
  std::int64_t batch_timeout_ms = 10;  // live: publish a partial batch after this long
  std::int64_t loop = 1;               // offline: passes over the files (benchmarks)
  std::string user;                    // live: drop privileges to this user once open
};

struct FlowdConfig {
  std::int64_t shards = 1;
  double tcp_idle_timeout = 300;       // s, established TCP (Zeek: 5 min)
  double tcp_attempt_timeout = 5;      // s, TCP not established
  double tcp_closed_timeout = 5;       // s, lingering after FIN/RST
  double udp_idle_timeout = 60;        // s (Zeek: 1 min)
  double icmp_idle_timeout = 60;       // s
  double other_idle_timeout = 60;      // s
  double active_timeout = 1800;        // s, an update is emitted and the flow goes on
  std::int64_t max_flows = 0;          // 0: derived from memory.budget_mb
  std::int64_t community_id_seed = 0;  // 0..65535
};

struct NetConfig {
  std::vector<std::string> local_nets;  // CIDR prefixes (net_prefix.h), checked when set
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
  std::int64_t end_batch_ms = 10;     // a batch holding a flow's end is sealed within this long
  std::int64_t leaf_hint_bytes = 2;   // 0..32: unsigned leaf-hash prefixes per record, so verify
                                      // can name a damaged record (seal/leaf_hints.h); 0: none
  std::string algorithm = "ed25519";  // ed25519 | ecdsa-p256 | rsa-4096
  std::string key_file;               // empty: <output>/keys/flowseal.key (made if missing)
};

struct WriterConfig {
  std::string dir = "flowseal-out";
  std::int64_t segment_max_mb = 64;
  double segment_max_age = 300;  // s
  std::int64_t zstd_level = 3;
  std::string fsync = "batch";  // batch | interval | rotate
  std::int64_t fsync_interval_ms = 1000;
  double retention_max_age = 0;       // s, 0: keep forever
  std::int64_t retention_max_mb = 0;  // 0: unlimited
  // Mode of every file flowseal writes into the store (segments, the public key); the
  // store's directories get the same bits plus x wherever r is set (0640 -> 0750).
  std::int64_t file_mode = 0640;
};

// The directory mode that goes with a file mode: x added wherever r is set (0640 -> 0750).
constexpr std::int64_t directory_mode(std::int64_t file_mode) {
  return file_mode | ((file_mode & 0444) >> 2);
}

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
  // A stage's failures within restart_window_s count toward max_restarts (and its backoff):
  // a crash loop gives up, a crash now and then in a months-long run does not.
  std::int64_t max_restarts = 10;
  std::int64_t restart_window_s = 300;
  // Run as root with this set: flowd, dedupd, signerd and writerd run as this user (capture
  // starts as root and drops to capture.user once its handle is open). Empty: stages run as
  // the supervisor does.
  std::string user;
  // The read-only HTTP endpoint (supervisor/http_server.h): /metrics (Prometheus), /status.json
  // and a status page at /. "HOST:PORT" (an IP literal, [v6]:PORT for IPv6); empty: off.
  std::string http_listen;
  bool http_allow_remote = false;  // permit a non-loopback http_listen address
  // Added to shipd's nice value: the one stage whose lag costs nothing (the store is its
  // buffer) gives way to the capture path when the CPU is short, and takes what is left.
  std::int64_t shipd_nice = 10;
};

// shipd (shipd/): every durable batch to a NATS JetStream Core over mutual TLS. Off while
// url is empty.
struct ShipConfig {
  std::string url;                          // tls://HOST:PORT (nats:// only with insecure)
  std::string subject_prefix = "flowseal";  // subject <prefix>.<key id>.batches
  std::string stream = "FLOWSEAL";          // JetStream stream, created if missing
  std::string tls_ca;                       // CA that signed the server's certificate (PEM)
  std::string tls_cert;                     // this probe's client certificate (PEM)
  std::string tls_key;                      // its private key (PEM, 0600, no symlink)
  bool insecure = false;                    // allow a plaintext nats:// URL
  std::int64_t max_inflight = 256;          // unacked publishes at most
  double drain_timeout_s = 30;              // offline drain: give up (exit 75) after this long
};

// IPFIX export (shipd/ipfix_exporter.h): every flow end, long-flow update and dedup summary
// of the store to an IPFIX collector. Off while url is empty.
struct IpfixExportConfig {
  std::string url;              // udp://HOST:PORT or tcp://HOST:PORT (parse_ipfix_url)
  std::string mode = "biflow";  // biflow (RFC 5103 reverse elements) | uniflow
  std::int64_t observation_domain = 0;
  std::int64_t template_refresh_s = 60;  // UDP: templates re-sent this often
  std::int64_t max_records_per_s = 0;    // pacing (0: as fast as the transport takes)
};

// export.ipfix.url taken apart. IPv6 literals in brackets: udp://[::1]:4739.
struct IpfixEndpoint {
  bool tcp = false;
  std::string host;
  std::uint16_t port = 0;
};
// nullopt with `why` when `url` is not udp://HOST:PORT or tcp://HOST:PORT.
std::optional<IpfixEndpoint> parse_ipfix_url(std::string_view url, std::string& why);

// The Kafka export (shipd/kafka_exporter.h): every stored record as cat's JSON line. Off
// while brokers is empty.
struct KafkaExportConfig {
  std::string brokers;  // bootstrap servers, HOST:PORT[,HOST:PORT...]
  std::string topic = "flowseal";
  std::int64_t queue_mb = 0;       // librdkafka's local queue; 0: memory.budget_mb / 8
  std::int64_t max_inflight = 64;  // stored batches produced but not all delivered, at most
  double drain_timeout_s = 30;     // offline drain: give up (exit 75) after this long
  // librdkafka's compression.type. zstd (issue 16): the smallest batches; lz4 costs shipd
  // less CPU on the JSON lines (docs/PERFORMANCE.md) and every broker reads it (zstd: 2.1+).
  std::string compression = "zstd";
  // librdkafka's compression.level. -1: zstd at 1, which makes flow JSON lines as small as
  // its own default 3 for half the CPU (docs/PERFORMANCE.md); any other codec at its own.
  std::int64_t compression_level = -1;
};

struct ExportConfig {
  IpfixExportConfig ipfix;
  KafkaExportConfig kafka;
};

struct Config {
  CaptureConfig capture;
  FlowdConfig flowd;
  NetConfig net;
  DedupConfig dedup;
  SealConfig seal;
  WriterConfig writer;
  MemoryConfig memory;
  SupervisorConfig supervisor;
  ShipConfig ship;
  ExportConfig exports;  // `export` is a C++ keyword
};

// Thrown for any bad configuration; what() names the key (and file:line when known).
struct ConfigError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Applies a YAML file on top of `config`.
void load_config_file(Config& config, const std::filesystem::path& file);
// Applies one `KEY=VALUE` override. For a string key VALUE is taken as typed ("!tcp" stays
// "!tcp"); for the others it is parsed as a YAML scalar or flow sequence.
void apply_override(Config& config, std::string_view assignment);
// The bootstrap servers of a HOST:PORT[,HOST:PORT...] list; throws ConfigError naming `key`
// and the entry that is not one.
std::vector<std::string> parse_broker_list(const std::string& text, std::string_view key);
// Kafka's topic name rule: 1..249 of [A-Za-z0-9._-], not "." or "..".
bool is_kafka_topic_name(std::string_view name);
// export.kafka.queue_mb, or its default from memory.budget_mb, in MiB.
std::int64_t kafka_queue_mb(const Config& config);
// supervisor.http_listen split and checked: an IP literal (v4, or v6 in brackets) or
// "localhost" (127.0.0.1) and a port 1..65535 (0: any free port); ConfigError naming the key
// otherwise.
struct ListenAddress {
  std::string host;  // without brackets
  std::uint16_t port = 0;
  bool ipv6 = false;
  bool loopback() const;
  std::string to_string() const;  // "127.0.0.1:9108", "[::1]:9108"
};
ListenAddress parse_listen_address(std::string_view text);
// Checks cross-key rules that a single key's range cannot express.
void validate(const Config& config);
// The run has the sixth stage, shipd: shipping (ship.url) or an export (export.*) is on.
bool runs_shipd(const Config& config);
// The effective configuration as YAML, every key with its comment (for `config check` and
// for the stages).
std::string dump_config(const Config& config, bool with_comments = false);

}  // namespace flowseal
