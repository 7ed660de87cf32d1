// What `flowseal status --json` and the HTTP endpoint's /status.json report, built by one
// function from two samples of the control block's slots: both read only the shared
// counters (lock-free atomics), so neither can block the stages or the supervisor's loop.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "control_block.h"

namespace flowseal::supervisor {

// One stage slot at one moment.
struct SlotSample {
  std::string name;
  pid_t pid = 0;
  StageState state = StageState::kNotStarted;
  std::uint32_t restarts = 0;
  std::uint32_t memory_restarts = 0;  // of restarts: over the stage's memory limit
  double uptime_s = 0;
  double heartbeat_age_ms = 0;
  std::uint64_t pss = 0;
  std::uint64_t in = 0;  // packets (capture, flowd) or records (the rest)
  std::uint64_t out = 0;
};

bool process_alive(pid_t pid);
SlotSample sample_slot(const ControlBlock& control, std::size_t index);
// The first `count` slots (status reads control.slot_count() once and passes it to both
// samples, so a field changed in between cannot make them differ in length).
std::vector<SlotSample> sample_slots(const ControlBlock& control, std::size_t count);

// Fill in percent of each ring edge (-1 if its segment cannot be opened), from the ring
// headers in /dev/shm.
using RingFill = std::vector<std::pair<std::string, double>>;
RingFill ring_fill(const std::string& instance, std::size_t shards);

// "ship": shipd's counters and the records retention gave up (status_json adds it when the
// run has a shipd slot).
nlohmann::ordered_json ship_json(const ControlBlock& control);
// "export": the IPFIX and Kafka exports' counters in shipd's slot (0 while an export is off).
nlohmann::ordered_json export_json(const ControlBlock& control);

// The status document: rates are (after - before) / dt_s.
nlohmann::ordered_json status_json(const std::string& instance, const ControlBlock& control,
                                   const std::vector<SlotSample>& before,
                                   const std::vector<SlotSample>& after, double dt_s,
                                   const RingFill& fill);

}  // namespace flowseal::supervisor
