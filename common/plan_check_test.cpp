// plan_problems(): configurations whose memory plan cannot run are named before anything
// starts; the default and the configurations the tests and benchmarks use are not.
#include "plan_check.h"

#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace flowseal {
namespace {

using Catch::Contains;

constexpr std::uint64_t kGiB = std::uint64_t{1} << 30;
// A roomy machine, so that only the rule a test is about can refuse.
const MachineLimits kBigMachine{64 * kGiB, 64 * kGiB};

Config with(std::vector<std::string> overrides) {
  Config config;
  for (const auto& o : overrides) apply_override(config, o);
  validate(config);
  return config;
}

std::vector<std::string> problems(const Config& config,
                                  const MachineLimits& machine = kBigMachine) {
  return plan_problems(config, plan_memory(config), machine);
}

TEST_CASE("the default configuration and those the tests and benchmarks use can run") {
  CHECK(problems(Config{}).empty());
  for (const auto& set : std::vector<std::vector<std::string>>{
           {"memory.budget_mb=16"},
           {"memory.budget_mb=16", "flowd.shards=2"},
           {"memory.budget_mb=16", "seal.batch_records=64"},
           {"memory.budget_mb=32"},
           {"memory.budget_mb=64", "flowd.shards=4"},
           {"flowd.shards=8"},
           {"memory.budget_mb=1024", "flowd.shards=8"},
           {"memory.budget_mb=4096", "seal.batch_records=4096"},
       }) {
    const auto found = problems(with(set));
    INFO(fmt::format("{}: {}", fmt::join(set, " "), fmt::join(found, " | ")));
    CHECK(found.empty());
  }
}

TEST_CASE("a budget below what the shards' rings and flow tables need names the minimum") {
  const auto found = problems(with({"memory.budget_mb=16", "flowd.shards=8"}));
  INFO(fmt::format("{}", fmt::join(found, " | ")));
  REQUIRE(found.size() == 1);
  const std::int64_t least = min_budget_mb(8);
  CHECK_THAT(found[0],
             Contains(fmt::format(
                 "memory.budget_mb=16 is below the {} MiB that flowd.shards=8 needs", least)));
  // The minimum is exact: one MiB less is refused, the minimum itself runs.
  CHECK(problems(with({fmt::format("memory.budget_mb={}", least), "flowd.shards=8"})).empty());
  CHECK(!problems(with({fmt::format("memory.budget_mb={}", least - 1), "flowd.shards=8"})).empty());
  CHECK(min_budget_mb(1) <= 16);  // the smallest budget the key allows runs one shard
  CHECK(min_budget_mb(1) <= min_budget_mb(2));
  CHECK(min_budget_mb(4) <= min_budget_mb(8));
}

TEST_CASE("a batch larger than one frame of the writer ring names the most that fits") {
  const Config config = with({"seal.batch_records=100000"});
  const std::int64_t most = max_batch_records(plan_memory(config), config.seal.leaf_hint_bytes);
  REQUIRE(most > 1024);  // the default batch fits the default budget
  REQUIRE(most < 100000);
  const auto found = problems(config);
  REQUIRE(found.size() == 1);
  CHECK_THAT(found[0], Contains("seal.batch_records=100000 does not fit one frame of the "
                                "signerd -> writerd ring"));
  CHECK_THAT(found[0], Contains("no memory.budget_mb holds that many"));
  // Refused only past what the smallest records allow: signerd closes a batch of larger
  // records early, so a little over the worst-case count still runs.
  CHECK(problems(with({fmt::format("seal.batch_records={}", most + 1)})).empty());
  CHECK(problems(with({"seal.batch_records=8000"})).size() == 1);
  // A batch a larger budget's ring would carry says which budget.
  const auto small = problems(with({"memory.budget_mb=16", "seal.batch_records=4096"}));
  REQUIRE(small.size() == 1);
  CHECK_THAT(small[0], Contains("or raise memory.budget_mb to"));
}

TEST_CASE("a budget the machine cannot back names the shared memory, /dev/shm and RAM") {
  const Config config = with({"memory.budget_mb=1048576"});
  const auto found = problems(config, MachineLimits{24 * kGiB, 23 * kGiB});
  REQUIRE(found.size() == 1);
  CHECK_THAT(found[0], Contains("memory.budget_mb=1048576 is more than this machine can "
                                "back"));
  CHECK_THAT(found[0], Contains("/dev/shm has 24576 MiB free"));
  CHECK_THAT(found[0], Contains("23552 MiB of physical memory"));
  // Either limit alone refuses: a small /dev/shm, or little RAM.
  CHECK(problems(Config{}, MachineLimits{100 << 20, 64 * kGiB}).size() == 1);
  CHECK(problems(Config{}, MachineLimits{64 * kGiB, 100 << 20}).size() == 1);
  CHECK(problems(Config{}, MachineLimits{300 << 20, 300 << 20}).empty());
}

TEST_CASE("every reason is named, not just the first") {
  const auto found =
      problems(with({"memory.budget_mb=16", "flowd.shards=8", "seal.batch_records=100000"}),
               MachineLimits{1 << 20, 1 << 20});
  CHECK(found.size() == 3);
  CHECK_THROWS_AS(require_runnable(with({"memory.budget_mb=16", "flowd.shards=8"})), ConfigError);
  CHECK_NOTHROW(require_runnable(Config{}));
}

TEST_CASE("the budget holds every shared object of every shard and dedupd's share") {
  const Config config = with({"flowd.shards=4"});
  const MemoryPlan plan = plan_memory(config);
  CHECK(fixed_bytes(plan) == plan.total() + plan.dedup_bytes);
  CHECK(fixed_bytes(plan) <= std::uint64_t{256} << 20);
  // /dev/shm is asked for the shared objects alone: exactly their total refuses one byte less.
  const std::uint64_t ram = 64 * kGiB;
  CHECK(problems(config, MachineLimits{plan.total(), ram}).empty());
  CHECK(problems(config, MachineLimits{plan.total() - 1, ram}).size() == 1);
}

}  // namespace
}  // namespace flowseal
