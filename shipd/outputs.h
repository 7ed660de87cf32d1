// What one flowseal-shipd runs over a store: shipping to a NATS JetStream Core (ship.url,
// ship_stage.h), IPFIX export (export.ipfix.url, ipfix_exporter.h) and Kafka export
// (export.kafka.brokers, kafka_exporter.h), each when configured. Each follows the store on
// its own and keeps its own durable position, so one being slow or cut off never holds the
// others back; with more than one set, each beyond the first runs on a thread of its own. The hooks
// (stop, writer done, heartbeat) are called from both threads and must be thread-safe.
#pragma once

#include <functional>
#include <optional>
#include <string>

#include "config.h"
#include "shipd/ipfix_exporter.h"
#include "shipd/kafka_exporter.h"
#include "shipd/ship_stage.h"

namespace flowseal::shipd {

struct OutputSettings {
  std::optional<PublisherSettings> ship;  // ship.url set
  std::optional<IpfixSettings> ipfix;     // export.ipfix.url set
  std::optional<KafkaSettings> kafka;     // export.kafka.brokers set
};

// Start-up checks of every configured output (ConfigError naming the key); a config with
// none is an error too (shipd has nothing to do). ship_key_pem: the TLS client key the
// supervisor passed (empty: read ship.tls_key).
OutputSettings output_settings(const Config& config, std::string ship_key_pem = {});

// Where each output's counters go (each may be empty): called every 100 ms from the thread
// that runs that output.
struct StatsSinks {
  std::function<void(const ShipStats&)> ship;
  std::function<void(const IpfixStats&)> ipfix;
  std::function<void(const KafkaStats&)> kafka;
};

// Runs the configured outputs to their end; every output gets `hooks`. The exit code: 0 when
// all ended 0, else the first non-zero one's (75 when stopped or a drain timed out: a restart
// resumes).
int run_outputs(const Config& config, const OutputSettings& settings, const OutputHooks& hooks,
                const StatsSinks& sinks = {});

}  // namespace flowseal::shipd
