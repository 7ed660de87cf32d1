#include "config.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <algorithm>
#include <charconv>
#include <functional>
#include <limits>
#include <map>
#include <sstream>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <pwd.h>
#include <yaml-cpp/yaml.h>

#include "net_prefix.h"

namespace flowseal {
namespace {

// One configuration key: how to read it from YAML into Config, and how to print it back.
struct KeySpec {
  std::string path;  // "flowd.udp_idle_timeout"
  std::string doc;
  std::function<void(Config&, const YAML::Node&, const std::string& where)> set;
  std::function<std::string(const Config&)> get;
  // `--set KEY=VALUE` takes VALUE as it is typed, not as YAML: a BPF filter "!tcp" or a
  // name starting with '#', '%', '&' or '*' would otherwise be a tag, a comment, a
  // directive or an anchor and arrive mangled or empty.
  bool plain_override = false;
};

std::string where_of(const YAML::Node& node, const std::string& source) {
  const YAML::Mark mark = node.Mark();
  if (source.empty() || mark.is_null()) return source.empty() ? "--set" : source;
  return fmt::format("{}:{}", source, mark.line + 1);
}

template <typename T>
T scalar_as(const YAML::Node& node, const std::string& key, const std::string& where,
            std::string_view type_name) {
  if (!node.IsScalar()) {
    throw ConfigError(fmt::format("{}: key '{}' must be {}, not a {}", where, key, type_name,
                                  node.IsSequence() ? "list" : "map"));
  }
  try {
    return node.as<T>();
  } catch (const YAML::Exception&) {
    throw ConfigError(
        fmt::format("{}: key '{}' must be {}, got '{}'", where, key, type_name, node.Scalar()));
  }
}

KeySpec int_key(std::string path, std::function<std::int64_t&(Config&)> field, std::int64_t lo,
                std::int64_t hi, std::string doc) {
  KeySpec spec{path, std::move(doc), nullptr, nullptr};
  spec.set = [path, field, lo, hi](Config& c, const YAML::Node& n, const std::string& where) {
    const auto v = scalar_as<std::int64_t>(n, path, where, "an integer");
    if (v < lo || v > hi) {
      throw ConfigError(
          fmt::format("{}: key '{}' = {} is out of range [{}, {}]", where, path, v, lo, hi));
    }
    field(c) = v;
  };
  spec.get = [field](const Config& c) { return std::to_string(field(const_cast<Config&>(c))); };
  return spec;
}

KeySpec double_key(std::string path, std::function<double&(Config&)> field, double lo, double hi,
                   std::string doc) {
  KeySpec spec{path, std::move(doc), nullptr, nullptr};
  spec.set = [path, field, lo, hi](Config& c, const YAML::Node& n, const std::string& where) {
    const auto v = scalar_as<double>(n, path, where, "a number");
    if (!(v >= lo && v <= hi)) {
      throw ConfigError(
          fmt::format("{}: key '{}' = {} is out of range [{}, {}]", where, path, v, lo, hi));
    }
    field(c) = v;
  };
  spec.get = [field](const Config& c) { return fmt::format("{}", field(const_cast<Config&>(c))); };
  return spec;
}

KeySpec bool_key(std::string path, std::function<bool&(Config&)> field, std::string doc) {
  KeySpec spec{path, std::move(doc), nullptr, nullptr};
  spec.set = [path, field](Config& c, const YAML::Node& n, const std::string& where) {
    field(c) = scalar_as<bool>(n, path, where, "true or false");
  };
  spec.get = [field](const Config& c) { return field(const_cast<Config&>(c)) ? "true" : "false"; };
  return spec;
}

KeySpec string_key(std::string path, std::function<std::string&(Config&)> field,
                   std::vector<std::string> allowed, std::string doc) {
  KeySpec spec{path, std::move(doc), nullptr, nullptr};
  spec.set = [path, field, allowed](Config& c, const YAML::Node& n, const std::string& where) {
    auto v = n.IsNull() ? std::string() : scalar_as<std::string>(n, path, where, "a string");
    if (!allowed.empty() && std::find(allowed.begin(), allowed.end(), v) == allowed.end()) {
      throw ConfigError(fmt::format("{}: key '{}' = '{}' is not one of: {}", where, path, v,
                                    fmt::join(allowed, ", ")));
    }
    field(c) = std::move(v);
  };
  spec.get = [field](const Config& c) {
    YAML::Emitter out;
    out << YAML::DoubleQuoted << field(const_cast<Config&>(c));
    return std::string(out.c_str());
  };
  spec.plain_override = true;
  return spec;
}

// A user name that must exist on this host (empty: none), checked where it is set so that
// the message carries the file and line.
KeySpec user_key(std::string path, std::function<std::string&(Config&)> field, std::string doc) {
  KeySpec spec = string_key(path, field, {}, std::move(doc));
  auto set_string = spec.set;
  spec.set = [path, field, set_string](Config& c, const YAML::Node& n, const std::string& where) {
    set_string(c, n, where);
    const std::string& user = field(c);
    if (!user.empty() && getpwnam(user.c_str()) == nullptr) {
      throw ConfigError(
          fmt::format("{}: key '{}' = '{}': no such user on this host", where, path, user));
    }
  };
  return spec;
}

// A file mode in octal ("0640" or 640), at most 0777, readable and writable by the owner.
KeySpec mode_key(std::string path, std::function<std::int64_t&(Config&)> field, std::string doc) {
  KeySpec spec{path, std::move(doc), nullptr, nullptr};
  spec.set = [path, field](Config& c, const YAML::Node& n, const std::string& where) {
    const auto text = scalar_as<std::string>(n, path, where, "an octal file mode");
    std::int64_t mode = 0;
    const bool digits = !text.empty() && text.size() <= 4 &&
                        text.find_first_not_of("01234567") == std::string::npos;
    if (digits) mode = std::stoll(text, nullptr, 8);
    if (!digits || mode > 0777 || (mode & 0600) != 0600) {
      throw ConfigError(
          fmt::format("{}: key '{}' = '{}' must be an octal file mode from 0600 "
                      "to 0777 that lets the owner read and write (e.g. 0640)",
                      where, path, text));
    }
    field(c) = mode;
  };
  spec.get = [field](const Config& c) {
    return fmt::format("\"{:04o}\"", field(const_cast<Config&>(c)));
  };
  spec.plain_override = true;
  return spec;
}

KeySpec list_key(std::string path, std::function<std::vector<std::string>&(Config&)> field,
                 std::string doc) {
  KeySpec spec{path, std::move(doc), nullptr, nullptr};
  spec.set = [path, field](Config& c, const YAML::Node& n, const std::string& where) {
    std::vector<std::string> values;
    if (n.IsSequence()) {
      for (const auto& item : n)
        values.push_back(scalar_as<std::string>(item, path, where, "a string"));
    } else if (!n.IsNull()) {
      values.push_back(scalar_as<std::string>(n, path, where, "a string or a list of strings"));
    }
    field(c) = std::move(values);
  };
  spec.get = [field](const Config& c) {
    YAML::Emitter out;
    out << YAML::Flow << YAML::BeginSeq;
    for (const auto& v : field(const_cast<Config&>(c))) out << YAML::DoubleQuoted << v;
    out << YAML::EndSeq;
    return std::string(out.c_str());
  };
  return spec;
}

// A list of IP prefixes (net_prefix.h), each checked where it is set.
KeySpec prefix_list_key(std::string path, std::function<std::vector<std::string>&(Config&)> field,
                        std::string doc) {
  KeySpec spec = list_key(path, field, std::move(doc));
  auto set_list = spec.set;
  spec.set = [path, field, set_list](Config& c, const YAML::Node& n, const std::string& where) {
    set_list(c, n, where);
    try {
      LocalNets{field(c)};
    } catch (const std::invalid_argument& e) {
      throw ConfigError(fmt::format("{}: key '{}': {}", where, path, e.what()));
    }
  };
  return spec;
}

// A Kafka bootstrap list, checked where it is set.
KeySpec broker_list_key(std::string path, std::function<std::string&(Config&)> field,
                        std::string doc) {
  KeySpec spec = string_key(path, field, {}, std::move(doc));
  auto set_string = spec.set;
  spec.set = [path, field, set_string](Config& c, const YAML::Node& n, const std::string& where) {
    set_string(c, n, where);
    try {
      parse_broker_list(field(c), path);
    } catch (const ConfigError& e) {
      throw ConfigError(fmt::format("{}: {}", where, e.what()));
    }
  };
  return spec;
}

// A Kafka topic name, checked where it is set.
KeySpec topic_key(std::string path, std::function<std::string&(Config&)> field, std::string doc) {
  KeySpec spec = string_key(path, field, {}, std::move(doc));
  auto set_string = spec.set;
  spec.set = [path, field, set_string](Config& c, const YAML::Node& n, const std::string& where) {
    set_string(c, n, where);
    if (!is_kafka_topic_name(field(c))) {
      throw ConfigError(
          fmt::format("{}: key '{}' = '{}' is not a Kafka topic name (1 to 249 of "
                      "A-Z a-z 0-9 . _ -, not '.' or '..')",
                      where, path, field(c)));
    }
  };
  return spec;
}

constexpr std::int64_t kMaxI = std::numeric_limits<std::int32_t>::max();
constexpr double kYear = 365.0 * 86400;

// function-length: data table (every config key: path, bounds, help; one entry per key)
const std::vector<KeySpec>& key_table() {
  static const std::vector<KeySpec> table = [] {
    std::vector<KeySpec> t;
    // capture
    t.push_back(list_key(
        "capture.files", [](Config & c) -> auto& { return c.capture.files; },
        "offline sources (pcap or pcapng), read in this order"));
    t.push_back(string_key(
        "capture.interface", [](Config & c) -> auto& { return c.capture.interface; }, {},
        "live interface to capture on"));
    t.push_back(string_key(
        "capture.filter", [](Config & c) -> auto& { return c.capture.filter; }, {},
        "BPF filter expression (tcpdump syntax)"));
    t.push_back(int_key(
        "capture.snaplen", [](Config & c) -> auto& { return c.capture.snaplen; }, 64, 262144,
        "bytes kept of each packet"));
    t.push_back(bool_key(
        "capture.promiscuous", [](Config & c) -> auto& { return c.capture.promiscuous; },
        "live: put the interface in promiscuous mode"));
    t.push_back(int_key(
        "capture.buffer_mb", [](Config & c) -> auto& { return c.capture.buffer_mb; }, 1, 4096,
        "live: kernel capture buffer in MiB"));
    t.push_back(bool_key(
        "capture.immediate", [](Config & c) -> auto& { return c.capture.immediate; },
        "live: deliver packets at once (lower latency, more wakeups)"));
    t.push_back(int_key(
        "capture.batch_packets", [](Config & c) -> auto& { return c.capture.batch_packets; }, 1,
        4096, "packets per PacketBatch frame"));
    t.push_back(int_key(
        "capture.batch_timeout_ms", [](Config & c) -> auto& { return c.capture.batch_timeout_ms; },
        1, 10000, "live: publish a partial batch after this many ms"));
    t.push_back(int_key(
        "capture.loop", [](Config & c) -> auto& { return c.capture.loop; }, 1, 1000000,
        "offline: passes over the files, addresses rewritten per pass (benchmarks)"));
    t.push_back(string_key(
        "capture.user", [](Config & c) -> auto& { return c.capture.user; }, {},
        "live: user to switch to once the capture handle is open"));
    // flowd
    t.push_back(int_key(
        "flowd.shards", [](Config & c) -> auto& { return c.flowd.shards; }, 1, 8,
        "flowd processes; both directions of a flow meet in one shard"));
    t.push_back(double_key(
        "flowd.tcp_idle_timeout", [](Config & c) -> auto& { return c.flowd.tcp_idle_timeout; },
        0.001, kYear, "s of inactivity that end an established TCP flow"));
    t.push_back(double_key(
        "flowd.tcp_attempt_timeout",
        [](Config & c) -> auto& { return c.flowd.tcp_attempt_timeout; }, 0.001, kYear,
        "s after its SYN that end an unanswered TCP connection attempt"));
    t.push_back(double_key(
        "flowd.tcp_closed_timeout", [](Config & c) -> auto& { return c.flowd.tcp_closed_timeout; },
        0.0, kYear, "s a closed TCP flow lingers for late packets"));
    t.push_back(double_key(
        "flowd.udp_idle_timeout", [](Config & c) -> auto& { return c.flowd.udp_idle_timeout; },
        0.001, kYear, "s of inactivity that end a UDP flow"));
    t.push_back(double_key(
        "flowd.icmp_idle_timeout", [](Config & c) -> auto& { return c.flowd.icmp_idle_timeout; },
        0.001, kYear, "s of inactivity that end an ICMP flow"));
    t.push_back(double_key(
        "flowd.other_idle_timeout", [](Config & c) -> auto& { return c.flowd.other_idle_timeout; },
        0.001, kYear, "s of inactivity that end a flow of another protocol"));
    t.push_back(double_key(
        "flowd.active_timeout", [](Config & c) -> auto& { return c.flowd.active_timeout; }, 0.0,
        kYear, "s after which a long flow emits an update (0: never)"));
    t.push_back(int_key(
        "flowd.max_flows", [](Config & c) -> auto& { return c.flowd.max_flows; }, 0,
        std::int64_t{1} << 32, "flow table capacity (0: from memory.budget_mb)"));
    t.push_back(int_key(
        "flowd.community_id_seed", [](Config & c) -> auto& { return c.flowd.community_id_seed; }, 0,
        65535, "Community ID v1 seed"));
    // net
    t.push_back(prefix_list_key(
        "net.local_nets", [](Config & c) -> auto& { return c.net.local_nets; },
        "CIDR prefixes of the local networks (conn.log local_orig / "
        "local_resp); empty: those columns stay unset"));
    // dedup
    t.push_back(bool_key(
        "dedup.enabled", [](Config & c) -> auto& { return c.dedup.enabled; },
        "suppress repetition (false: every event passes)"));
    t.push_back(double_key(
        "dedup.report_interval", [](Config & c) -> auto& { return c.dedup.report_interval; }, 1,
        kYear, "s of packet time between updates of one long-lived flow"));
    t.push_back(double_key(
        "dedup.rate_change", [](Config & c) -> auto& { return c.dedup.rate_change; }, 0, 1000,
        "relative byte-rate change that lets an update through early"));
    t.push_back(int_key(
        "dedup.burst", [](Config & c) -> auto& { return c.dedup.burst; }, 0, kMaxI,
        "repeated short flows that pass one by one per window"));
    t.push_back(double_key(
        "dedup.window", [](Config & c) -> auto& { return c.dedup.window; }, 0.001, kYear,
        "s of the repeated-flow window"));
    t.push_back(int_key(
        "dedup.max_entries", [](Config & c) -> auto& { return c.dedup.max_entries; }, 0,
        std::int64_t{1} << 32, "dedup state cap (0: from memory.budget_mb)"));
    // seal
    t.push_back(int_key(
        "seal.batch_records", [](Config & c) -> auto& { return c.seal.batch_records; }, 1, 1 << 20,
        "records per signed batch"));
    t.push_back(int_key(
        "seal.batch_ms", [](Config & c) -> auto& { return c.seal.batch_ms; }, 1, 3600000,
        "ms after which a partial batch is sealed"));
    t.push_back(int_key(
        "seal.end_batch_ms", [](Config & c) -> auto& { return c.seal.end_batch_ms; }, 1, 3600000,
        "ms after which a partial batch holding a flow end is sealed (export latency)"));
    t.push_back(int_key(
        "seal.leaf_hint_bytes", [](Config & c) -> auto& { return c.seal.leaf_hint_bytes; }, 0, 32,
        "bytes of each record's leaf hash stored unsigned beside its batch, so verify can name a "
        "damaged record (0: none)"));
    t.push_back(string_key(
        "seal.algorithm", [](Config & c) -> auto& { return c.seal.algorithm; },
        {"ed25519", "ecdsa-p256", "rsa-4096"}, "signature algorithm"));
    t.push_back(string_key(
        "seal.key_file", [](Config & c) -> auto& { return c.seal.key_file; }, {},
        "private key (PEM, mode 0600); empty: <writer.dir>/keys/flowseal.key, made if missing"));
    // writer
    t.push_back(string_key(
        "writer.dir", [](Config & c) -> auto& { return c.writer.dir; }, {},
        "directory of the sealed segments"));
    t.push_back(int_key(
        "writer.segment_max_mb", [](Config & c) -> auto& { return c.writer.segment_max_mb; }, 1,
        1 << 20, "rotate a segment at this size (MiB)"));
    t.push_back(double_key(
        "writer.segment_max_age", [](Config & c) -> auto& { return c.writer.segment_max_age; }, 1,
        kYear, "rotate a segment at this age (s)"));
    t.push_back(int_key(
        "writer.zstd_level", [](Config & c) -> auto& { return c.writer.zstd_level; }, 1, 19,
        "zstd compression level"));
    t.push_back(string_key(
        "writer.fsync", [](Config & c) -> auto& { return c.writer.fsync; },
        {"batch", "interval", "rotate"}, "when segments are fsynced"));
    t.push_back(int_key(
        "writer.fsync_interval_ms", [](Config & c) -> auto& { return c.writer.fsync_interval_ms; },
        1, 3600000, "fsync period when writer.fsync = interval"));
    t.push_back(double_key(
        "writer.retention_max_age", [](Config & c) -> auto& { return c.writer.retention_max_age; },
        0, 100 * kYear, "s after which closed segments are deleted (0: never)"));
    t.push_back(int_key(
        "writer.retention_max_mb", [](Config & c) -> auto& { return c.writer.retention_max_mb; }, 0,
        std::int64_t{1} << 40, "total MiB of segments kept (0: unlimited)"));
    t.push_back(mode_key(
        "writer.file_mode", [](Config & c) -> auto& { return c.writer.file_mode; },
        "mode of the files flowseal writes into writer.dir (segments, public key); its directories "
        "get x where r is set (0640: 0750)"));
    // memory
    t.push_back(int_key(
        "memory.budget_mb", [](Config & c) -> auto& { return c.memory.budget_mb; }, 16,
        std::int64_t{1} << 20, "shared memory for rings, flow table and dedup state (MiB)"));
    t.push_back(double_key(
        "memory.medium_pct", [](Config & c) -> auto& { return c.memory.medium_pct; }, 1, 100,
        "memory usage (% of the budget, see docs/OPERATIONS.md) from which the level is MEDIUM"));
    t.push_back(double_key(
        "memory.high_pct", [](Config & c) -> auto& { return c.memory.high_pct; }, 1, 100,
        "usage % from which the level is HIGH"));
    t.push_back(double_key(
        "memory.critical_pct", [](Config & c) -> auto& { return c.memory.critical_pct; }, 1, 100,
        "usage % from which the level is CRITICAL"));
    t.push_back(double_key(
        "memory.hysteresis_pct", [](Config & c) -> auto& { return c.memory.hysteresis_pct; }, 0, 50,
        "a level is left only below its threshold minus this many %"));
    t.push_back(int_key(
        "memory.down_samples", [](Config & c) -> auto& { return c.memory.down_samples; }, 1, 10000,
        "samples in a row below a level's threshold before it steps down"));
    t.push_back(int_key(
        "memory.sample_ms", [](Config & c) -> auto& { return c.memory.sample_ms; }, 20, 60000,
        "ms between the supervisor's memory samples (PSS, MemAvailable, fill)"));
    t.push_back(bool_key(
        "memory.system_pressure", [](Config & c) -> auto& { return c.memory.system_pressure; },
        "system memory in use (1 - MemAvailable/MemTotal) also raises the level"));
    t.push_back(double_key(
        "memory.capture_limit_mb", [](Config & c) -> auto& { return c.memory.capture_limit_mb; }, 0,
        1 << 20,
        "hard limit of capture's private memory (MiB); over it the stage is restarted (0: from "
        "budget_mb)"));
    t.push_back(double_key(
        "memory.flowd_limit_mb", [](Config & c) -> auto& { return c.memory.flowd_limit_mb; }, 0,
        1 << 20, "the same for each flowd shard (the flow table is shared memory, not counted)"));
    t.push_back(double_key(
        "memory.dedupd_limit_mb", [](Config & c) -> auto& { return c.memory.dedupd_limit_mb; }, 0,
        1 << 20, "the same for dedupd (its state is private memory)"));
    t.push_back(double_key(
        "memory.signerd_limit_mb", [](Config & c) -> auto& { return c.memory.signerd_limit_mb; }, 0,
        1 << 20, "the same for signerd"));
    t.push_back(double_key(
        "memory.writerd_limit_mb", [](Config & c) -> auto& { return c.memory.writerd_limit_mb; }, 0,
        1 << 20, "the same for writerd"));
    // supervisor
    t.push_back(string_key(
        "supervisor.instance", [](Config & c) -> auto& { return c.supervisor.instance; }, {},
        "instance name: shared-memory names and the control socket derive from it"));
    t.push_back(int_key(
        "supervisor.heartbeat_timeout_ms",
        [](Config & c) -> auto& { return c.supervisor.heartbeat_timeout_ms; }, 500, 3600000,
        "a stage silent this long is killed and restarted"));
    t.push_back(int_key(
        "supervisor.stats_interval_s",
        [](Config & c) -> auto& { return c.supervisor.stats_interval_s; }, 0, 3600,
        "s between stats lines (0: none)"));
    t.push_back(int_key(
        "supervisor.max_restarts", [](Config & c) -> auto& { return c.supervisor.max_restarts; }, 0,
        1000000,
        "failures of one stage (crashes, hangs, memory-limit restarts; not operator restarts) "
        "within supervisor.restart_window_s before the run gives up"));
    t.push_back(int_key(
        "supervisor.restart_window_s",
        [](Config & c) -> auto& { return c.supervisor.restart_window_s; }, 1, 2592000,
        "s a stage's failure counts toward max_restarts and its backoff; quiet this long, the "
        "stage starts afresh"));
    t.push_back(int_key(
        "supervisor.shipd_nice", [](Config & c) -> auto& { return c.supervisor.shipd_nice; }, 0, 19,
        "added to shipd's nice value: shipping and exports yield the CPU to the capture path "
        "and catch up from the store"));
    t.push_back(user_key(
        "supervisor.user", [](Config & c) -> auto& { return c.supervisor.user; },
        "run as root: flowd, dedupd, signerd and writerd run as this user (empty: as the "
        "supervisor)"));
    t.push_back(string_key(
        "supervisor.http_listen", [](Config & c) -> auto& { return c.supervisor.http_listen; }, {},
        "HOST:PORT of the read-only HTTP endpoint: /metrics, /status.json, / (empty: off)"));
    t.push_back(bool_key(
        "supervisor.http_allow_remote",
        [](Config & c) -> auto& { return c.supervisor.http_allow_remote; },
        "allow supervisor.http_listen on a non-loopback address"));
    // ship (shipd/, docs/OPERATIONS.md "Shipping to a Core")
    t.push_back(string_key(
        "ship.url", [](Config & c) -> auto& { return c.ship.url; }, {},
        "NATS JetStream server, tls://HOST:PORT (empty: no shipping)"));
    t.push_back(string_key(
        "ship.subject_prefix", [](Config & c) -> auto& { return c.ship.subject_prefix; }, {},
        "batches go to subject <prefix>.<key id>.batches"));
    t.push_back(string_key(
        "ship.stream", [](Config & c) -> auto& { return c.ship.stream; }, {},
        "JetStream stream (subjects <prefix>.>), created file-backed if missing"));
    t.push_back(string_key(
        "ship.tls_ca", [](Config & c) -> auto& { return c.ship.tls_ca; }, {},
        "CA certificate (PEM) the server's certificate must chain to"));
    t.push_back(string_key(
        "ship.tls_cert", [](Config & c) -> auto& { return c.ship.tls_cert; }, {},
        "client certificate (PEM) presented to the server"));
    t.push_back(string_key(
        "ship.tls_key", [](Config & c) -> auto& { return c.ship.tls_key; }, {},
        "client private key (PEM, mode 0600, not a symlink)"));
    t.push_back(bool_key(
        "ship.insecure", [](Config & c) -> auto& { return c.ship.insecure; },
        "allow a plaintext nats:// URL (logged at every start)"));
    t.push_back(int_key(
        "ship.max_inflight", [](Config & c) -> auto& { return c.ship.max_inflight; }, 1, 65536,
        "published batches not yet acked by JetStream, at most"));
    t.push_back(double_key(
        "ship.drain_timeout_s", [](Config & c) -> auto& { return c.ship.drain_timeout_s; }, 0,
        86400, "offline run: s to wait for the last acks before exit 75"));
    // export.ipfix (shipd/ipfix_exporter.h, docs/OPERATIONS.md "IPFIX export")
    KeySpec ipfix_url = string_key(
        "export.ipfix.url", [](Config & c) -> auto& { return c.exports.ipfix.url; }, {},
        "IPFIX collector, udp://HOST:PORT or tcp://HOST:PORT (empty: no IPFIX export)");
    ipfix_url.set = [set_string = ipfix_url.set](Config& c, const YAML::Node& n,
                                                 const std::string& where) {
      set_string(c, n, where);
      std::string why;
      if (!c.exports.ipfix.url.empty() && !parse_ipfix_url(c.exports.ipfix.url, why)) {
        throw ConfigError(
            fmt::format("{}: key 'export.ipfix.url' = '{}': {}", where, c.exports.ipfix.url, why));
      }
    };
    t.push_back(std::move(ipfix_url));
    t.push_back(string_key(
        "export.ipfix.mode", [](Config & c) -> auto& { return c.exports.ipfix.mode; },
        {"biflow", "uniflow"},
        "biflow: one record per flow with RFC 5103 reverse elements; uniflow: one per direction"));
    t.push_back(int_key(
        "export.ipfix.observation_domain",
        [](Config & c) -> auto& { return c.exports.ipfix.observation_domain; }, 0, 4294967295,
        "observation domain id of the IPFIX messages"));
    t.push_back(int_key(
        "export.ipfix.template_refresh_s",
        [](Config & c) -> auto& { return c.exports.ipfix.template_refresh_s; }, 1, 86400,
        "UDP: s between re-sends of the templates (TCP sends them once per connection)"));
    t.push_back(int_key(
        "export.ipfix.max_records_per_s",
        [](Config & c) -> auto& { return c.exports.ipfix.max_records_per_s; }, 0, 100000000,
        "IPFIX records sent per s at most (0: no pacing)"));
    // export (shipd/kafka_exporter.h, docs/OPERATIONS.md "Exporting to Kafka")
    t.push_back(broker_list_key(
        "export.kafka.brokers", [](Config & c) -> auto& { return c.exports.kafka.brokers; },
        "Kafka bootstrap servers HOST:PORT[,HOST:PORT...] (empty: no Kafka export)"));
    t.push_back(topic_key(
        "export.kafka.topic", [](Config & c) -> auto& { return c.exports.kafka.topic; },
        "Kafka topic the records go to (one JSON line each, key: Community ID)"));
    t.push_back(int_key(
        "export.kafka.queue_mb", [](Config & c) -> auto& { return c.exports.kafka.queue_mb; }, 0,
        1 << 20, "MiB of records queued for Kafka in memory, at most (0: memory.budget_mb / 8)"));
    t.push_back(int_key(
        "export.kafka.max_inflight",
        [](Config & c) -> auto& { return c.exports.kafka.max_inflight; }, 1, 65536,
        "stored batches produced to Kafka and not all delivered, at most"));
    t.push_back(double_key(
        "export.kafka.drain_timeout_s",
        [](Config & c) -> auto& { return c.exports.kafka.drain_timeout_s; }, 0, 86400,
        "offline run: s to wait for the last delivery reports before exit 75"));
    t.push_back(string_key(
        "export.kafka.compression", [](Config & c) -> auto& { return c.exports.kafka.compression; },
        {"zstd", "lz4", "snappy", "gzip", "none"},
        "compression of the record batches sent to Kafka (lz4: less CPU, larger)"));
    t.push_back(int_key(
        "export.kafka.compression_level",
        [](Config & c) -> auto& { return c.exports.kafka.compression_level; }, -1, 12,
        "level of that compression (-1: zstd at 1, any other codec at its default)"));
    return t;
  }();
  return table;
}

const KeySpec* find_key(std::string_view path) {
  for (const auto& spec : key_table()) {
    if (spec.path == path) return &spec;
  }
  return nullptr;
}

void apply_key(Config& config, const std::string& path, const YAML::Node& value,
               const std::string& where) {
  const KeySpec* spec = find_key(path);
  if (spec == nullptr) {
    throw ConfigError(fmt::format("{}: unknown key '{}'", where, path));
  }
  spec->set(config, value, where);
}

void apply_tree(Config& config, const YAML::Node& node, const std::string& prefix,
                const std::string& source) {
  for (const auto& item : node) {
    if (!item.first.IsScalar()) {  // `? [a, b]: 1`, `? : 1`: YAML allows it, as<string> throws
      throw ConfigError(fmt::format("{}: a key must be a name, not a {}",
                                    where_of(item.first, source),
                                    item.first.IsNull() ? "null" : "list or map"));
    }
    const std::string key = item.first.as<std::string>();
    const std::string path = prefix.empty() ? key : prefix + "." + key;
    if (item.second.IsMap()) {
      apply_tree(config, item.second, path, source);
    } else {
      apply_key(config, path, item.second, where_of(item.first, source));
    }
  }
}

}  // namespace

std::optional<IpfixEndpoint> parse_ipfix_url(std::string_view url, std::string& why) {
  IpfixEndpoint endpoint;
  std::string_view rest;
  if (url.rfind("udp://", 0) == 0) {
    rest = url.substr(6);
  } else if (url.rfind("tcp://", 0) == 0) {
    endpoint.tcp = true;
    rest = url.substr(6);
  } else {
    why = "want udp://HOST:PORT or tcp://HOST:PORT";
    return std::nullopt;
  }
  std::string_view host, port;
  if (!rest.empty() && rest.front() == '[') {
    const auto close = rest.find(']');
    if (close == std::string_view::npos || close + 1 >= rest.size() || rest[close + 1] != ':') {
      why = "an IPv6 address goes in brackets: udp://[::1]:4739";
      return std::nullopt;
    }
    host = rest.substr(1, close - 1);
    port = rest.substr(close + 2);
  } else {
    const auto colon = rest.rfind(':');
    if (colon == std::string_view::npos || rest.find(':') != colon) {
      why = "want HOST:PORT after the scheme (an IPv6 address in brackets)";
      return std::nullopt;
    }
    host = rest.substr(0, colon);
    port = rest.substr(colon + 1);
  }
  if (host.empty() || host.find_first_of("/ \t") != std::string_view::npos) {
    why = "no host name or address";
    return std::nullopt;
  }
  unsigned value = 0;
  for (char ch : port) {
    if (ch < '0' || ch > '9' || value > 65535) {
      value = 0;
      break;
    }
    value = value * 10 + static_cast<unsigned>(ch - '0');
  }
  if (port.empty() || value == 0 || value > 65535) {
    why = fmt::format("port '{}' is not 1..65535", port);
    return std::nullopt;
  }
  endpoint.host = std::string(host);
  endpoint.port = static_cast<std::uint16_t>(value);
  return endpoint;
}

void load_config_file(Config& config, const std::filesystem::path& file) {
  YAML::Node root;
  try {
    root = YAML::LoadFile(file.string());
  } catch (const YAML::BadFile&) {
    throw ConfigError(fmt::format("{}: cannot read the config file", file.string()));
  } catch (const YAML::ParserException& e) {
    throw ConfigError(
        fmt::format("{}:{}: not valid YAML: {}", file.string(), e.mark.line + 1, e.msg));
  }
  if (root.IsNull()) return;
  if (!root.IsMap()) {
    throw ConfigError(fmt::format("{}: the top level must be a map of sections", file.string()));
  }
  apply_tree(config, root, "", file.string());
}

void apply_override(Config& config, std::string_view assignment) {
  const auto eq = assignment.find('=');
  if (eq == std::string_view::npos || eq == 0) {
    throw ConfigError(fmt::format("--set {}: expected KEY=VALUE", assignment));
  }
  const std::string key(assignment.substr(0, eq));
  const std::string text(assignment.substr(eq + 1));
  if (const KeySpec* spec = find_key(key); spec != nullptr && spec->plain_override) {
    // A string key: the text is the value, byte for byte (empty: the empty string).
    spec->set(config, text.empty() ? YAML::Node(YAML::NodeType::Null) : YAML::Node(text), "--set");
    return;
  }
  YAML::Node value;
  try {
    value = text.empty() ? YAML::Node(YAML::NodeType::Null) : YAML::Load(text);
  } catch (const YAML::ParserException& e) {
    throw ConfigError(fmt::format("--set {}: value is not valid YAML: {}", key, e.msg));
  }
  apply_key(config, key, value, "--set");
}

std::vector<std::string> parse_broker_list(const std::string& text, std::string_view key) {
  std::vector<std::string> brokers;
  if (text.empty()) return brokers;
  std::string_view rest = text;
  for (;;) {
    const auto comma = rest.find(',');
    std::string_view entry = rest.substr(0, comma);
    while (!entry.empty() && entry.front() == ' ') entry.remove_prefix(1);
    while (!entry.empty() && entry.back() == ' ') entry.remove_suffix(1);
    const auto colon = entry.rfind(':');
    const std::string_view host = colon == std::string_view::npos ? "" : entry.substr(0, colon);
    const std::string_view port = colon == std::string_view::npos ? "" : entry.substr(colon + 1);
    std::uint32_t number = 0;
    bool ok = !host.empty() && !port.empty() && port.size() <= 5 &&
              host.find_first_of(" \t/@") == std::string_view::npos;
    for (const char ch : port) {
      ok = ok && ch >= '0' && ch <= '9';
      number = number * 10 + static_cast<std::uint32_t>(ch - '0');
    }
    if (!ok || number == 0 || number > 65535) {
      throw ConfigError(
          fmt::format("key '{}': '{}' is not HOST:PORT (a list is "
                      "HOST:PORT,HOST:PORT)",
                      key, entry));
    }
    brokers.emplace_back(entry);
    if (comma == std::string_view::npos) break;
    rest.remove_prefix(comma + 1);
  }
  return brokers;
}

bool is_kafka_topic_name(std::string_view name) {
  if (name.empty() || name.size() > 249 || name == "." || name == "..") return false;
  return std::all_of(name.begin(), name.end(), [](char ch) {
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           ch == '.' || ch == '_' || ch == '-';
  });
}

std::int64_t kafka_queue_mb(const Config& config) {
  if (config.exports.kafka.queue_mb > 0) return config.exports.kafka.queue_mb;
  return std::max<std::int64_t>(1, config.memory.budget_mb / 8);
}

bool runs_shipd(const Config& config) {
  return !config.ship.url.empty() || !config.exports.ipfix.url.empty() ||
         !config.exports.kafka.brokers.empty();
}

void validate(const Config& config) {
  if (!config.capture.interface.empty() && !config.capture.files.empty()) {
    throw ConfigError("capture.interface and capture.files are both set: choose one source");
  }
  if (config.writer.dir.empty()) throw ConfigError("writer.dir must not be empty");
  const MemoryConfig& m = config.memory;
  if (!(m.medium_pct < m.high_pct)) {
    throw ConfigError(fmt::format("memory.medium_pct = {} must be below memory.high_pct = {}",
                                  m.medium_pct, m.high_pct));
  }
  if (!(m.high_pct < m.critical_pct)) {
    throw ConfigError(fmt::format("memory.high_pct = {} must be below memory.critical_pct = {}",
                                  m.high_pct, m.critical_pct));
  }
  if (!(m.hysteresis_pct < m.medium_pct)) {
    throw ConfigError(fmt::format("memory.hysteresis_pct = {} must be below memory.medium_pct = {}",
                                  m.hysteresis_pct, m.medium_pct));
  }
  if (config.supervisor.instance.empty() ||
      config.supervisor.instance.find_first_of("/ \t") != std::string::npos) {
    throw ConfigError(
        fmt::format("supervisor.instance '{}' must be a non-empty name without "
                    "'/' or spaces",
                    config.supervisor.instance));
  }
  if (!config.supervisor.http_listen.empty()) {
    const ListenAddress address = parse_listen_address(config.supervisor.http_listen);
    if (!address.loopback() && !config.supervisor.http_allow_remote) {
      throw ConfigError(fmt::format(
          "supervisor.http_listen = '{}' is not a loopback address: the endpoint has no "
          "authentication, so it binds elsewhere only with supervisor.http_allow_remote=true",
          config.supervisor.http_listen));
    }
  }
}

bool ListenAddress::loopback() const {
  if (ipv6) {
    in6_addr a{};
    return ::inet_pton(AF_INET6, host.c_str(), &a) == 1 && IN6_IS_ADDR_LOOPBACK(&a);
  }
  in_addr a{};
  return ::inet_pton(AF_INET, host.c_str(), &a) == 1 && (ntohl(a.s_addr) >> 24) == 127;
}

std::string ListenAddress::to_string() const {
  return ipv6 ? fmt::format("[{}]:{}", host, port) : fmt::format("{}:{}", host, port);
}

ListenAddress parse_listen_address(std::string_view text) {
  const auto bad = [&](std::string_view why) {
    return ConfigError(
        fmt::format("supervisor.http_listen = '{}': {} (expected HOST:PORT with an "
                    "IP address or localhost, e.g. 127.0.0.1:9108 or [::1]:9108)",
                    text, why));
  };
  ListenAddress address;
  std::string_view port;
  if (text.starts_with('[')) {
    const auto close = text.find("]:");
    if (close == std::string_view::npos) throw bad("no ']:' after an IPv6 address");
    address.host = std::string(text.substr(1, close - 1));
    address.ipv6 = true;
    port = text.substr(close + 2);
    in6_addr a{};
    if (::inet_pton(AF_INET6, address.host.c_str(), &a) != 1) throw bad("not an IPv6 address");
  } else {
    const auto colon = text.rfind(':');
    if (colon == std::string_view::npos) throw bad("no port");
    address.host = std::string(text.substr(0, colon));
    if (address.host == "localhost") address.host = "127.0.0.1";
    port = text.substr(colon + 1);
    in_addr a{};
    if (::inet_pton(AF_INET, address.host.c_str(), &a) != 1) throw bad("not an IPv4 address");
  }
  unsigned value = 0;
  const auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
  if (port.empty() || ec != std::errc() || end != port.data() + port.size() || value > 65535) {
    throw bad("the port must be 0..65535 (0: any free port)");
  }
  address.port = static_cast<std::uint16_t>(value);
  return address;
}

std::string dump_config(const Config& config, bool with_comments) {
  std::ostringstream out;
  std::string section;
  for (const auto& spec : key_table()) {
    const auto dot = spec.path.find('.');
    const std::string this_section = spec.path.substr(0, dot);
    if (this_section != section) {
      section = this_section;
      out << section << ":\n";
    }
    out << "  " << spec.path.substr(dot + 1) << ": " << spec.get(config);
    if (with_comments) out << "  # " << spec.doc;
    out << "\n";
  }
  return out.str();
}

}  // namespace flowseal
