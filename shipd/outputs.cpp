#include "shipd/outputs.h"

#include <functional>
#include <thread>
#include <utility>
#include <vector>

#include <spdlog/spdlog.h>

#include "stage_runtime.h"

namespace flowseal::shipd {

OutputSettings output_settings(const Config& config, std::string ship_key_pem) {
  OutputSettings settings;
  if (!config.ship.url.empty()) settings.ship = publisher_settings(config, std::move(ship_key_pem));
  if (!config.exports.ipfix.url.empty()) settings.ipfix = ipfix_settings(config);
  if (!config.exports.kafka.brokers.empty()) settings.kafka = kafka_settings(config);
  if (!settings.ship && !settings.ipfix && !settings.kafka) {
    throw ConfigError(
        "none of ship.url, export.ipfix.url and export.kafka.brokers is set: "
        "shipd has nothing to do");
  }
  return settings;
}

int run_outputs(const Config& config, const OutputSettings& settings, const OutputHooks& hooks,
                const StatsSinks& sinks) {
  // Each configured output as a name and a body; the first runs here, the others on threads.
  std::vector<std::pair<const char*, std::function<int()>>> outputs;
  if (settings.ship) {
    outputs.emplace_back("ship",
                         [&] { return run_ship(config, *settings.ship, hooks, sinks.ship); });
  }
  if (settings.ipfix) {
    outputs.emplace_back(
        "ipfix", [&] { return run_ipfix_export(config, *settings.ipfix, hooks, sinks.ipfix); });
  }
  if (settings.kafka) {
    outputs.emplace_back(
        "kafka", [&] { return run_kafka_export(config, *settings.kafka, hooks, sinks.kafka); });
  }
  std::vector<int> results(outputs.size(), exit_code::kSoftware);
  std::vector<std::thread> threads;
  for (std::size_t i = 1; i < outputs.size(); ++i) {
    threads.emplace_back([&, i] {
      try {
        results[i] = outputs[i].second();
      } catch (const std::exception& e) {
        spdlog::error("{}: {}", outputs[i].first, e.what());
      }
    });
  }
  if (!outputs.empty()) results[0] = outputs[0].second();
  for (std::thread& t : threads) t.join();
  for (const int result : results) {
    if (result != exit_code::kOk) return result;
  }
  return exit_code::kOk;
}

}  // namespace flowseal::shipd
