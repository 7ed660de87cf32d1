// Instance: the shared memory one run creates, measured as /dev/shm holds it.
#include "instance.h"

#include <unistd.h>

#include <cstdint>
#include <string>

#include <catch2/catch.hpp>
#include <fmt/format.h>

namespace flowseal::supervisor {
namespace {

// The sizes /dev/shm gives every object under the instance's names (fstat of each).
std::uint64_t bytes_in_dev_shm(const std::string& instance, std::size_t& objects) {
  std::uint64_t bytes = 0;
  objects = 0;
  for (const auto& name : Instance::all_names(instance)) {
    if (const auto info = ShmSegment::inspect(name)) {
      bytes += info->size;
      ++objects;
    }
  }
  return bytes;
}

TEST_CASE("the plan's total is the size of every object the instance creates, for 1..8 shards") {
  for (std::int64_t shards = 1; shards <= static_cast<std::int64_t>(kMaxShards); ++shards) {
    CAPTURE(shards);
    Config config;
    config.memory.budget_mb = 64;  // 8 shards need 43 MiB (plan_check)
    config.flowd.shards = shards;
    config.supervisor.instance = fmt::format("plantotal{}x{}", getpid(), shards);
    std::size_t objects = 0;
    {
      Instance instance(config);
      const MemoryPlan& plan = instance.plan();
      CHECK(plan.shards == static_cast<std::size_t>(shards));
      const std::uint64_t created = bytes_in_dev_shm(config.supervisor.instance, objects);
      // The control block, a packet ring, an event ring and a flow table per shard, dedupd's
      // event ring and the sealed ring.
      CHECK(objects == 3 + 3 * static_cast<std::size_t>(shards));
      CHECK(plan.total() == created);
      // What total() said before it counted every shard: a shard's worth, no headers.
      const std::uint64_t one_shard = plan.packet_ring + plan.event_ring + plan.sealed_ring +
                                      plan.flow_table_bytes + plan.dedup_bytes;
      if (shards > 1) CHECK(one_shard < created);
      // Inside the budget it was planned from.
      CHECK(created + plan.dedup_bytes <= std::uint64_t{64} << 20);
    }
    CHECK(bytes_in_dev_shm(config.supervisor.instance, objects) == 0);  // removed with it
    CHECK(objects == 0);
  }
}

}  // namespace
}  // namespace flowseal::supervisor
