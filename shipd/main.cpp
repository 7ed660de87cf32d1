// flowseal-shipd: ships the batches of a store to a NATS JetStream Core (ship_stage.h).
//
//   flowseal-shipd -c CONFIG [--set KEY=VALUE]... [--until-shipped]
//
// Reads the effective config (writer.dir, ship.*). --until-shipped: the store is complete
// (writerd has drained); exit 0 once every batch is acked, 75 after ship.drain_timeout_s.
// Exit codes: 0 done, 64 usage, 75 stopped or drain timeout (a restart resumes), 78 config.
#include <csignal>

#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include "shipd/ship_stage.h"
#include "stage_runtime.h"

namespace {
volatile std::sig_atomic_t g_stop = 0;
void on_signal(int) { g_stop = 1; }
}  // namespace

int main(int argc, char** argv) {
  using namespace flowseal;
  init_logging("shipd");
  CLI::App app{"flowseal-shipd: ship stored sealed batches to NATS JetStream"};
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
    const shipd::PublisherSettings settings = shipd::publisher_settings(config);
    shipd::ShipHooks hooks;
    hooks.stop = [] { return g_stop != 0; };
    hooks.writer_done = [until_shipped] { return until_shipped; };
    return shipd::run_ship(config, settings, hooks);
  } catch (const ConfigError& e) {
    spdlog::error("config: {}", e.what());
    return exit_code::kConfig;
  } catch (const std::exception& e) {
    spdlog::error("{}", e.what());
    return exit_code::kSoftware;
  }
}
