#include "pressure_level.h"

#include <algorithm>
#include <array>
#include <limits>

namespace flowseal {
namespace {

constexpr std::size_t kWholePacket = std::numeric_limits<std::size_t>::max();

constexpr std::array<PressureEffects, kPressureLevels> kEffects{{
    {1.00f, kWholePacket, 1.00, 1.00, false},  // LOW
    {0.75f, 512, 0.50, 0.75, false},           // MEDIUM
    {0.50f, 256, 0.25, 0.50, true},            // HIGH
    {0.25f, 64, 0.10, 0.25, true},             // CRITICAL
}};

}  // namespace

PressureLevel pressure_level_from(std::uint32_t raw) {
  return static_cast<PressureLevel>(std::min<std::uint32_t>(raw, kPressureLevels - 1));
}

std::string_view to_string(PressureLevel level) {
  constexpr std::array<std::string_view, kPressureLevels> kNames{"LOW", "MEDIUM", "HIGH",
                                                                 "CRITICAL"};
  return kNames[static_cast<std::size_t>(pressure_level_from(static_cast<std::uint32_t>(level)))];
}

const PressureEffects& pressure_effects(PressureLevel level) {
  return kEffects[static_cast<std::size_t>(pressure_level_from(static_cast<std::uint32_t>(level)))];
}

double flow_table_hold_fraction(const MemoryConfig& memory) {
  return std::clamp((memory.high_pct - memory.hysteresis_pct / 2) / 100.0, 0.01, 1.0);
}

}  // namespace flowseal
