// flowseal-shipd: ships the batches of a store to a NATS JetStream Core (ship_stage.h) and
// exports its records to an IPFIX collector (ipfix_exporter.h) and to Kafka
// (kafka_exporter.h), each when configured (outputs.h).
//
// As the supervisor's optional sixth stage (`flowseal run` with ship.url, export.ipfix.url or
// export.kafka.brokers set):
//   flowseal-shipd --instance NAME --config EFFECTIVE_CONFIG [--key-fd N]
// It heartbeats and publishes its counters in its control-block slot (ship_counter), leaves
// on SIGTERM (exit 75: its successor resumes at the durable shipped position), and once
// writerd has finished its drain (writerd's slot is done) it ends when every batch is acked
// (0) or ship.drain_timeout_s later (75, the unshipped batches counted). --key-fd: the TLS
// client's private key (PEM) on an inherited descriptor, read by the supervisor (a shipd that
// runs as supervisor.user cannot read root's 0600 key file).
//
// Standalone, on a store (tests, a one-off catch-up):
//   flowseal-shipd -c CONFIG [--set KEY=VALUE]... [--until-shipped]
// Reads the effective config (writer.dir, ship.*, export.*). --until-shipped: the store
// is complete (writerd has drained); exit 0 once every batch is acked and exported, 75 after
// ship.drain_timeout_s.
// Exit codes: 0 done, 64 usage, 75 stopped or drain timeout (a restart resumes), 78 config.
#include <unistd.h>

#include <array>
#include <csignal>
#include <cstring>
#include <mutex>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "shipd/outputs.h"
#include "stage_runtime.h"
#include "version.h"

namespace {
volatile std::sig_atomic_t g_stop = 0;
void on_signal(int) { g_stop = 1; }

using namespace flowseal;

std::string read_key_fd(int fd) {
  std::string pem;
  char buffer[4096];
  for (;;) {
    const ssize_t n = ::read(fd, buffer, sizeof buffer);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      throw ConfigError(
          fmt::format("ship.tls_key: cannot read the key the supervisor passed "
                      "on fd {}: {}",
                      fd, std::strerror(errno)));
    }
    if (n == 0) break;
    pem.append(buffer, static_cast<std::size_t>(n));
  }
  ::close(fd);
  return pem;
}

// Each output's counters into the slot (ship_counter), where `flowseal status`, the summary
// and /metrics read them as the run's. A restarted shipd counts from 0, so each total goes on
// from what the shipd processes before it left in the slot; levels (in flight, lag, the last
// seq) are this process's own.
shipd::StatsSinks counter_sinks(StageRuntime& runtime) {
  namespace sc = ship_counter;
  std::array<std::uint64_t, sc::kCount> before{};
  for (std::size_t i = 0; i < sc::kCount; ++i) before[i] = runtime.counter(i).load();
  const auto total = [&runtime, before](std::size_t i, std::uint64_t mine) {
    runtime.counter(i).store(before[i] + mine);
  };
  const auto level = [&runtime](std::size_t i, std::uint64_t now) {
    runtime.counter(i).store(now);
  };
  shipd::StatsSinks sinks;
  sinks.ship = [total, level](const shipd::ShipStats& s) {
    total(sc::kBatchesPublished, s.batches_published);
    total(sc::kRecordsPublished, s.records_published);
    total(sc::kBatchesAcked, s.batches_acked);
    total(sc::kRecordsAcked, s.records_acked);
    level(sc::kInflight, s.inflight);
    total(sc::kRetried, s.rewinds);
    level(sc::kLagBatches, s.lag_batches);
    total(sc::kDuplicates, s.duplicates);
    total(sc::kConnectFailures, s.connect_failures);
    total(sc::kTlsRefused, s.tls_refused);
    total(sc::kUnreachableMs, s.unreachable_ms);
    total(sc::kStoreErrors, s.store_errors);
    level(sc::kShippedSeq, s.shipped_seq);
  };
  sinks.ipfix = [total, level](const shipd::IpfixStats& s) {
    total(sc::kIpfixBatchesExported, s.batches_exported);
    total(sc::kIpfixRecordsSent, s.records_sent);
    total(sc::kIpfixSendFailures, s.send_failures);
    level(sc::kIpfixLagBatches, s.lag_batches);
    level(sc::kIpfixExportedSeq, s.exported_seq);
  };
  sinks.kafka = [total, level](const shipd::KafkaStats& s) {
    total(sc::kKafkaBatchesDelivered, s.batches_delivered);
    total(sc::kKafkaRecordsDelivered, s.records_delivered);
    total(sc::kKafkaDeliveryFailures, s.delivery_failures);
    level(sc::kKafkaLagBatches, s.lag_batches);
    level(sc::kKafkaExportedSeq, s.exported_seq);
  };
  return sinks;
}

// Under the supervisor: a StageRuntime for the slot, heartbeat and counters.
int run_supervised(StageRuntime& runtime) {
  const Config& config = runtime.config();
  std::string key_pem;
  const int key_fd = runtime.take_key_fd();
  shipd::OutputSettings settings;
  try {
    if (key_fd >= 0) key_pem = read_key_fd(key_fd);
    settings = shipd::output_settings(config, std::move(key_pem));
    // An earlier shipd of this run acked batches: their repeated acks are not counted again.
    if (settings.ship && runtime.counter(ship_counter::kBatchesAcked).load() > 0) {
      settings.ship->counted_through = runtime.counter(ship_counter::kShippedSeq).load();
    }
  } catch (const ConfigError& e) {
    spdlog::error("config: {}", e.what());
    return exit_code::kConfig;
  }
  ControlBlock& control = runtime.control();
  const StageSlot& writer =
      control.slots[slot_index(StageKind::kWriterd, 0, control.shard_count())];
  // The outputs run on threads of their own when several are configured; StageRuntime's
  // heartbeat is not thread-safe (the counters are atomics).
  std::mutex runtime_mutex;
  shipd::OutputHooks hooks;
  // Only a signal to shipd itself: the supervisor's stop flag starts a drain, and shipd
  // drains after writerd.
  hooks.stop = [&runtime] { return runtime.signalled(); };
  hooks.writer_done = [&writer] {
    return static_cast<StageState>(writer.state.load(std::memory_order_acquire)) ==
           StageState::kDone;
  };
  hooks.heartbeat = [&runtime, &runtime_mutex] {
    const std::lock_guard lock(runtime_mutex);
    runtime.heartbeat();
  };
  return shipd::run_outputs(config, settings, hooks, counter_sinks(runtime));
}

bool has_instance_option(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--instance") == 0 || std::strncmp(argv[i], "--instance=", 11) == 0) {
      return true;
    }
  }
  return false;
}

}  // namespace

int main(int argc, char** argv) {
  if (has_instance_option(argc, argv)) {
    return run_stage(StageKind::kShipd, argc, argv, run_supervised);
  }
  init_logging("shipd");
  CLI::App app{
      "flowseal-shipd: ship stored sealed batches to NATS JetStream, export their "
      "records to IPFIX"};
  app.set_version_flag("--version", std::string("flowseal-shipd ") + FLOWSEAL_VERSION);
  std::string config_file;
  std::vector<std::string> overrides;
  bool until_shipped = false;
  app.add_option("-c,--config", config_file, "effective config (YAML)");
  app.add_option("--set", overrides, "KEY=VALUE")->take_all();
  app.add_flag("--until-shipped", until_shipped, "the store is complete: end once all is acked");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? exit_code::kOk : exit_code::kUsage;
  }
  std::signal(SIGTERM, on_signal);
  std::signal(SIGINT, on_signal);
  try {
    Config config;
    if (!config_file.empty()) load_config_file(config, config_file);
    for (const auto& o : overrides) apply_override(config, o);
    validate(config);
    const shipd::OutputSettings settings = shipd::output_settings(config);
    shipd::OutputHooks hooks;
    hooks.stop = [] { return g_stop != 0; };
    hooks.writer_done = [until_shipped] { return until_shipped; };
    return shipd::run_outputs(config, settings, hooks);
  } catch (const ConfigError& e) {
    spdlog::error("config: {}", e.what());
    return exit_code::kConfig;
  } catch (const std::exception& e) {
    spdlog::error("{}", e.what());
    return exit_code::kSoftware;
  }
}
