// The pressure policy without processes: usage samples in, levels out.
#include <catch2/catch.hpp>

#include <vector>

#include "pressure.h"

namespace {

using flowseal::PressureLevel;
using flowseal::supervisor::PressureGauge;
using flowseal::supervisor::PressureThresholds;
using flowseal::supervisor::usage_of;
using flowseal::supervisor::UsageSample;

PressureThresholds defaults(std::uint32_t down_samples = 1) {
  PressureThresholds t;  // 70 / 85 / 95 %, hysteresis 5 %
  t.down_samples = down_samples;
  return t;
}

std::vector<PressureLevel> feed(PressureGauge& gauge, const std::vector<double>& usage) {
  std::vector<PressureLevel> levels;
  for (double u : usage) levels.push_back(gauge.update(u));
  return levels;
}

}  // namespace

TEST_CASE("each threshold starts its level, and a jump skips levels at once") {
  PressureGauge gauge(defaults());
  CHECK(gauge.update(0.69) == PressureLevel::kLow);
  CHECK(gauge.update(0.70) == PressureLevel::kMedium);
  CHECK(gauge.update(0.85) == PressureLevel::kHigh);
  CHECK(gauge.update(0.95) == PressureLevel::kCritical);
  PressureGauge jump(defaults());
  CHECK(jump.update(1.30) == PressureLevel::kCritical);
}

TEST_CASE("a level is left only below its threshold minus the hysteresis") {
  PressureGauge gauge(defaults());
  gauge.update(0.86);
  // 80 % is exactly HIGH's threshold minus 5 %: still HIGH; just under it: down.
  CHECK(gauge.update(0.84) == PressureLevel::kHigh);
  CHECK(gauge.update(0.80) == PressureLevel::kHigh);
  CHECK(gauge.update(0.7999) == PressureLevel::kMedium);
}

TEST_CASE("usage hovering around a threshold does not flap the level") {
  PressureGauge gauge(defaults());
  const auto levels = feed(gauge, {0.71, 0.69, 0.70, 0.68, 0.66, 0.70, 0.67});
  for (auto level : levels) CHECK(level == PressureLevel::kMedium);
}

TEST_CASE("stepping down needs down_samples samples in a row below the band") {
  PressureGauge gauge(defaults(3));
  gauge.update(0.90);
  CHECK(feed(gauge, {0.10, 0.10}) ==
        std::vector<PressureLevel>{PressureLevel::kHigh, PressureLevel::kHigh});
  // One sample back inside the band restarts the count.
  CHECK(gauge.update(0.82) == PressureLevel::kHigh);
  CHECK(feed(gauge, {0.10, 0.10}) ==
        std::vector<PressureLevel>{PressureLevel::kHigh, PressureLevel::kHigh});
  // The third in a row goes straight to the level the samples support.
  CHECK(gauge.update(0.10) == PressureLevel::kLow);
}

TEST_CASE("a rise during a pending step down is taken at once") {
  PressureGauge gauge(defaults(5));
  gauge.update(0.88);
  gauge.update(0.20);
  gauge.update(0.20);
  CHECK(gauge.update(0.97) == PressureLevel::kCritical);
  // and the step-down count starts over from CRITICAL
  CHECK(feed(gauge, {0.2, 0.2, 0.2, 0.2}) ==
        std::vector<PressureLevel>(4, PressureLevel::kCritical));
  CHECK(gauge.update(0.2) == PressureLevel::kLow);
}

TEST_CASE("thresholds come from the memory config in percent") {
  flowseal::MemoryConfig memory;
  memory.medium_pct = 50;
  memory.high_pct = 60;
  memory.critical_pct = 90;
  memory.hysteresis_pct = 10;
  memory.down_samples = 2;
  PressureGauge gauge(PressureThresholds::from(memory));
  CHECK(gauge.update(0.55) == PressureLevel::kMedium);
  CHECK(gauge.update(0.61) == PressureLevel::kHigh);
  CHECK(gauge.update(0.51) == PressureLevel::kHigh);  // 60 - 10 = 50: still in the band
  CHECK(gauge.update(0.45) == PressureLevel::kHigh);  // first sample below
  CHECK(gauge.update(0.45) == PressureLevel::kMedium);
}

TEST_CASE("usage is the largest of flow table fill, budget share and system share") {
  UsageSample sample;
  sample.budget_bytes = 100 << 20;
  sample.flow_table_bytes = 60 << 20;  // two shards of 30 MiB
  sample.flow_table_fill = {0.9, 0.1};
  sample.private_bytes = 5 << 20;

  const auto u = usage_of(sample);
  CHECK(u.flow_table_fill == Approx(0.9));
  // 0.9 * 30 + 0.1 * 30 + 5 = 35 MiB of 100
  CHECK(u.budget_share == Approx(0.35));
  CHECK(u.system_share == 0);
  CHECK(u.value == Approx(0.9));

  sample.flow_table_fill = {0.1, 0.1};
  sample.private_bytes = 80 << 20;  // a stage's heap ran away: over budget
  CHECK(usage_of(sample).value == Approx((6 + 80) / 100.0));

  sample.private_bytes = 0;
  sample.system = {1000, 30};  // 97 % of the machine in use
  CHECK(usage_of(sample).system_share == Approx(0.97));
  CHECK(usage_of(sample).value == Approx(0.97));
}

TEST_CASE("a flow table not yet started counts as empty") {
  UsageSample sample;
  sample.budget_bytes = 64 << 20;
  sample.flow_table_bytes = 32 << 20;
  sample.flow_table_fill = {0.0};
  CHECK(usage_of(sample).value == 0);
}

TEST_CASE("each level sheds at least as much as the one below it") {
  using flowseal::pressure_effects;
  for (std::uint32_t raw = 1; raw < flowseal::kPressureLevels; ++raw) {
    const auto& lower = pressure_effects(static_cast<PressureLevel>(raw - 1));
    const auto& upper = pressure_effects(static_cast<PressureLevel>(raw));
    CHECK(upper.sampling_rate < lower.sampling_rate);
    CHECK(upper.payload_keep < lower.payload_keep);
    CHECK(upper.idle_timeout_scale < lower.idle_timeout_scale);
    CHECK(upper.dedup_cap_scale < lower.dedup_cap_scale);
    CHECK((upper.hold_flow_table || !lower.hold_flow_table));
  }
  // DESIGN.md's figures.
  CHECK(pressure_effects(PressureLevel::kCritical).sampling_rate == 0.25f);
  CHECK(pressure_effects(PressureLevel::kCritical).payload_keep == 64);
  CHECK_FALSE(pressure_effects(PressureLevel::kMedium).hold_flow_table);
  // A level past CRITICAL reads as CRITICAL.
  CHECK(flowseal::pressure_level_from(7) == PressureLevel::kCritical);
  CHECK(flowseal::to_string(PressureLevel::kHigh) == "HIGH");
}

TEST_CASE("the flow table is held inside the HIGH band, above the level's way down") {
  flowseal::MemoryConfig memory;  // HIGH at 85 %, hysteresis 5 %
  const double hold = flowseal::flow_table_hold_fraction(memory);
  CHECK(hold == Approx(0.825));
  // A table held there keeps the level at HIGH while a flood refills it...
  PressureGauge gauge(defaults(1));
  gauge.update(0.90);
  CHECK(gauge.update(hold) == PressureLevel::kHigh);
  // ...and from CRITICAL it comes down to HIGH, not lower.
  PressureGauge critical(defaults(1));
  critical.update(1.0);
  CHECK(critical.update(hold) == PressureLevel::kHigh);
}
