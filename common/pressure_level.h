// Memory pressure levels and what each one makes the stages do: one table, read by every
// stage that acts on the level, so the levels mean the same thing everywhere.
//
// The supervisor decides the level (supervisor/pressure.h) and writes it to
// ControlBlock::pressure_level; each stage only reads it and applies its own row of this
// table:
//   - capture: sampling rate (whole flows, by hash) and payload bytes kept per packet;
//   - flowd:   idle timeouts scaled down, and at HIGH and CRITICAL the flow table held to
//              flow_table_hold_fraction() of its capacity by ending the least recently seen
//              flows (reason eviction);
//   - dedupd:  a smaller entry cap; entries over it are evicted least recently used first,
//              which emits their pending summaries and releases their held starts.
// Nothing here allocates or throws; every function accepts any level and clamps it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "config.h"

namespace flowseal {

enum class PressureLevel : std::uint32_t { kLow, kMedium, kHigh, kCritical };
inline constexpr std::size_t kPressureLevels = 4;

// "LOW", "MEDIUM", "HIGH", "CRITICAL" (a level past CRITICAL reads as CRITICAL).
std::string_view to_string(PressureLevel level);
PressureLevel pressure_level_from(std::uint32_t raw);

struct PressureEffects {
  float sampling_rate;        // share of flows capture keeps
  std::size_t payload_keep;   // bytes kept per packet (LOW: the whole snaplen)
  double idle_timeout_scale;  // flowd's idle timeouts are multiplied by this
  double dedup_cap_scale;     // dedupd's entry cap is multiplied by this
  bool hold_flow_table;       // flowd evicts down to flow_table_hold_fraction()
};

const PressureEffects& pressure_effects(PressureLevel level);

// Share of its capacity a flow table is held to at HIGH and CRITICAL: half the hysteresis
// below the HIGH threshold. Evicting into the hysteresis band (not below it) keeps a table
// that a flood refills at HIGH instead of flapping between MEDIUM and HIGH; once the flood
// ends, the shorter timeouts drain the table and the level steps down.
double flow_table_hold_fraction(const MemoryConfig& memory);

}  // namespace flowseal
