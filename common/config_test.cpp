// Config loading: every bad value is an error that names the key (and file:line for files),
// and what dump_config writes loads back to the same configuration.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "config.h"

namespace {

using flowseal::Config;
using flowseal::ConfigError;

// A YAML file in a private temp dir, removed when the test ends.
class TempYaml {
 public:
  explicit TempYaml(const std::string& text)
      : path_(std::filesystem::temp_directory_path() /
              ("flowseal-config-test-" + std::to_string(getpid()) + "-" +
               std::to_string(counter_++) + ".yaml")) {
    std::ofstream(path_) << text;
  }
  ~TempYaml() { std::filesystem::remove(path_); }
  const std::filesystem::path& path() const { return path_; }

 private:
  static inline int counter_ = 0;
  std::filesystem::path path_;
};

std::string error_of(const std::function<void()>& action) {
  try {
    action();
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("a config file sets nested keys and leaves the rest at their defaults") {
  TempYaml file("flowd:\n  shards: 2\n  udp_idle_timeout: 12.5\ndedup:\n  enabled: false\n");
  Config config;
  flowseal::load_config_file(config, file.path());
  CHECK(config.flowd.shards == 2);
  CHECK(config.flowd.udp_idle_timeout == 12.5);
  CHECK_FALSE(config.dedup.enabled);
  CHECK(config.seal.batch_records == Config{}.seal.batch_records);
}

TEST_CASE("an unknown key in a file is an error naming the key, the file and the line") {
  TempYaml file("flowd:\n  shards: 1\n  udp_idle_timeot: 5\n");
  Config config;
  const std::string message = error_of([&] { flowseal::load_config_file(config, file.path()); });
  CHECK_THAT(message, Catch::Contains("udp_idle_timeot"));
  CHECK_THAT(message, Catch::Contains(file.path().string() + ":3"));
}

TEST_CASE("a wrongly typed value is an error naming the key and the value") {
  Config config;
  const std::string message =
      error_of([&] { flowseal::apply_override(config, "dedup.enabled=maybe"); });
  CHECK_THAT(message, Catch::Contains("dedup.enabled"));
  CHECK_THAT(message, Catch::Contains("maybe"));
  CHECK_THAT(error_of([&] { flowseal::apply_override(config, "flowd.shards=[1, 2]"); }),
             Catch::Contains("flowd.shards"));
}

TEST_CASE("an out-of-range value is an error naming the key and the range") {
  Config config;
  const std::string message =
      error_of([&] { flowseal::apply_override(config, "flowd.shards=99"); });
  CHECK_THAT(message, Catch::Contains("flowd.shards"));
  CHECK_THAT(message, Catch::Contains("out of range"));
  CHECK(config.flowd.shards == 1);
}

TEST_CASE("--set overrides a value and a malformed assignment is named") {
  Config config;
  flowseal::apply_override(config, "writer.zstd_level=9");
  CHECK(config.writer.zstd_level == 9);
  CHECK_THAT(error_of([&] { flowseal::apply_override(config, "writer.zstd_level"); }),
             Catch::Contains("KEY=VALUE"));
}

TEST_CASE("a file that is not valid YAML names the file and line") {
  TempYaml file("flowd:\n  shards: [1,\n");
  Config config;
  CHECK_THAT(error_of([&] { flowseal::load_config_file(config, file.path()); }),
             Catch::Contains(file.path().string()));
}

TEST_CASE("a key that is not a name is an error naming the file, not an internal error") {
  // Found by tests/fuzz/fuzz_config.cpp: YAML's complex keys ("? ...") made yaml-cpp throw
  // TypedBadConversion out of load_config_file, which `flowseal run` reports as exit 70.
  for (const char* text : {"? :\n", "? [a, b]\n: 1\n", "flowd:\n  ? {x: 1}\n  : 2\n"}) {
    TempYaml file(text);
    Config config;
    CHECK_THAT(error_of([&] { flowseal::load_config_file(config, file.path()); }),
               Catch::Contains("a key must be a name"));
  }
}

TEST_CASE("cross-key rules are checked by validate") {
  Config config;
  config.capture.interface = "eth0";
  config.capture.files = {"a.pcap"};
  CHECK_THAT(error_of([&] { flowseal::validate(config); }), Catch::Contains("capture.interface"));
}

TEST_CASE("pressure thresholds out of order are an error naming both keys") {
  Config config;
  flowseal::validate(config);  // the defaults are in order
  flowseal::apply_override(config, "memory.high_pct=60");
  const std::string message = error_of([&] { flowseal::validate(config); });
  CHECK_THAT(message, Catch::Contains("memory.medium_pct") && Catch::Contains("memory.high_pct"));

  Config wide;
  flowseal::apply_override(wide, "memory.medium_pct=30");
  flowseal::apply_override(wide, "memory.hysteresis_pct=40");  // LOW could never be reached again
  CHECK_THAT(error_of([&] { flowseal::validate(wide); }), Catch::Contains("memory.hysteresis_pct"));

  Config out_of_range;
  CHECK_THAT(error_of([&] { flowseal::apply_override(out_of_range, "memory.critical_pct=120"); }),
             Catch::Contains("memory.critical_pct") && Catch::Contains("out of range"));
}

TEST_CASE("the dumped config loads back to the same config") {
  Config config;
  flowseal::apply_override(config, "flowd.shards=3");
  flowseal::apply_override(config, "capture.filter=not port 22");
  flowseal::apply_override(config, "capture.files=[a.pcap, b.pcapng]");
  flowseal::apply_override(config, "dedup.enabled=false");
  TempYaml file(flowseal::dump_config(config, true));
  Config loaded;
  flowseal::load_config_file(loaded, file.path());
  CHECK(flowseal::dump_config(loaded) == flowseal::dump_config(config));
}

TEST_CASE("supervisor.user must name a user of this host; the error names the key and line") {
  TempYaml file("supervisor:\n  instance: x\n  user: no-such-user-flowseal-test\n");
  Config config;
  const std::string message = error_of([&] { flowseal::load_config_file(config, file.path()); });
  CHECK_THAT(message, Catch::Contains("supervisor.user") && Catch::Contains("no such user"));
  CHECK_THAT(message, Catch::Contains(file.path().string() + ":3"));
  Config root;
  flowseal::apply_override(root, "supervisor.user=root");  // every host has root
  CHECK(root.supervisor.user == "root");
  flowseal::apply_override(root, "supervisor.user=");
  CHECK(root.supervisor.user.empty());
}

TEST_CASE("a stage's memory limit is a non-negative number of MiB") {
  Config config;
  flowseal::apply_override(config, "memory.dedupd_limit_mb=2.5");
  CHECK(config.memory.dedupd_limit_mb == 2.5);
  CHECK_THAT(error_of([&] { flowseal::apply_override(config, "memory.flowd_limit_mb=-1"); }),
             Catch::Contains("memory.flowd_limit_mb") && Catch::Contains("out of range"));
}

TEST_CASE("--set takes a string key's value as typed: a BPF filter may start with !, # or %") {
  for (const std::string filter : {"!tcp", "# not a comment", "%x", "&anchor", "*alias",
                                   "!udp and not port 53", "'quoted'", "[not a list]"}) {
    Config config;
    flowseal::apply_override(config, "capture.filter=" + filter);
    CHECK(config.capture.filter == filter);
    // ... and the effective config the stages load carries it unchanged.
    TempYaml file(flowseal::dump_config(config));
    Config loaded;
    flowseal::load_config_file(loaded, file.path());
    CHECK(loaded.capture.filter == filter);
  }
  Config config;
  flowseal::apply_override(config, "writer.dir=#out");
  CHECK(config.writer.dir == "#out");
  flowseal::apply_override(config, "capture.filter=");
  CHECK(config.capture.filter.empty());
  // A string key with a fixed set of values still checks it.
  CHECK_THAT(error_of([&] { flowseal::apply_override(config, "writer.fsync=!batch"); }),
             Catch::Contains("writer.fsync") && Catch::Contains("not one of"));
}

TEST_CASE("export.kafka.brokers must be HOST:PORT entries and the topic a Kafka topic name") {
  Config config;
  flowseal::apply_override(config, "export.kafka.brokers=127.0.0.1:9092, kafka-2:19092");
  CHECK(flowseal::parse_broker_list(config.exports.kafka.brokers, "k") ==
        std::vector<std::string>{"127.0.0.1:9092", "kafka-2:19092"});
  for (const char* bad :
       {"localhost", "host:0", "host:65536", ":9092", "host:90x2", "a:1,,b:2", "h:1/x"}) {
    CHECK_THAT(error_of([&] {
                 flowseal::apply_override(config, std::string("export.kafka.brokers=") + bad);
               }),
               Catch::Contains("export.kafka.brokers") && Catch::Contains("HOST:PORT"));
  }
  for (const char* bad : {"..", "a b", "x/y", "topic*"}) {
    CHECK_THAT(error_of([&] {
                 flowseal::apply_override(config, std::string("export.kafka.topic='") + bad + "'");
               }),
               Catch::Contains("export.kafka.topic") && Catch::Contains("not a Kafka topic"));
  }
  CHECK_THAT(error_of([&] { flowseal::apply_override(config, "export.kafka.topic="); }),
             Catch::Contains("export.kafka.topic"));
  flowseal::apply_override(config, "export.kafka.topic=flows.v1_probe-2");
  CHECK(config.exports.kafka.topic == "flows.v1_probe-2");
  CHECK(config.exports.kafka.compression == "zstd");
  flowseal::apply_override(config, "export.kafka.compression=lz4");
  CHECK(config.exports.kafka.compression == "lz4");
  CHECK_THAT(error_of([&] { flowseal::apply_override(config, "export.kafka.compression=lzma"); }),
             Catch::Contains("export.kafka.compression") && Catch::Contains("not one of"));
}

TEST_CASE("the Kafka queue is sized from the memory budget unless set") {
  Config config;
  flowseal::apply_override(config, "memory.budget_mb=256");
  CHECK(flowseal::kafka_queue_mb(config) == 32);
  flowseal::apply_override(config, "memory.budget_mb=16");
  CHECK(flowseal::kafka_queue_mb(config) == 2);
  flowseal::apply_override(config, "export.kafka.queue_mb=100");
  CHECK(flowseal::kafka_queue_mb(config) == 100);
}

TEST_CASE("the export keys dump and load back") {
  Config config;
  flowseal::apply_override(config, "export.kafka.brokers=k1:9092,k2:9092");
  flowseal::apply_override(config, "export.kafka.topic=flows");
  TempYaml file(flowseal::dump_config(config, true));
  Config loaded;
  flowseal::load_config_file(loaded, file.path());
  CHECK(loaded.exports.kafka.brokers == "k1:9092,k2:9092");
  CHECK(flowseal::dump_config(loaded) == flowseal::dump_config(config));
}
