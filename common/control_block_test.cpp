// The control block in plain memory: what format lays out (slots, kinds, shards, zeroed
// fields), what attach accepts and what it refuses with a message naming the mismatch, and the
// slot and shared-memory names the supervisor and the stages agree on.
#include "control_block.h"

#include <cstddef>
#include <cstring>
#include <unistd.h>
#include <functional>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>

#include <catch2/catch.hpp>

namespace flowseal {
namespace {

// Zeroed, suitably aligned memory for one block (as a fresh shm object is).
struct alignas(ControlBlock) Memory {
  std::byte bytes[sizeof(ControlBlock)] = {};
  std::span<std::byte> all() { return {bytes, sizeof bytes}; }
};

std::unique_ptr<Memory> zeroed() { return std::make_unique<Memory>(); }

std::string what_of(const std::function<void()>& action) {
  try {
    action();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(no exception)";
}

}  // namespace

TEST_CASE("format lays out capture, one flowd per shard, then dedupd, signerd and writerd") {
  for (std::size_t shards = 1; shards <= kMaxShards; ++shards) {
    CAPTURE(shards);
    auto memory = zeroed();
    ControlBlock& block = control_block_format(memory->all(), shards);
    CHECK(block.magic == ControlBlock::kMagic);
    CHECK(block.layout_version == ControlBlock::kLayoutVersion);
    CHECK(block.shards == shards);
    REQUIRE(block.slot_count() == 4 + shards);

    CHECK(static_cast<StageKind>(block.slots[0].kind.load()) == StageKind::kCapture);
    for (std::size_t s = 0; s < shards; ++s) {
      CHECK(static_cast<StageKind>(block.slots[1 + s].kind.load()) == StageKind::kFlowd);
      CHECK(block.slots[1 + s].shard.load() == s);
    }
    CHECK(static_cast<StageKind>(block.slots[1 + shards].kind.load()) == StageKind::kDedupd);
    CHECK(static_cast<StageKind>(block.slots[2 + shards].kind.load()) == StageKind::kSignerd);
    CHECK(static_cast<StageKind>(block.slots[3 + shards].kind.load()) == StageKind::kWriterd);
  }
}

TEST_CASE("a run that ships has shipd's slot after writerd's") {
  for (std::size_t shards = 1; shards <= kMaxShards; ++shards) {
    CAPTURE(shards);
    auto memory = zeroed();
    ControlBlock& block = control_block_format(memory->all(), shards, /*ship=*/true);
    REQUIRE(block.ships());
    REQUIRE(block.slot_count() == 5 + shards);
    CHECK(static_cast<StageKind>(block.slots[3 + shards].kind.load()) == StageKind::kWriterd);
    CHECK(static_cast<StageKind>(block.slots[4 + shards].kind.load()) == StageKind::kShipd);
    CHECK(slot_index(StageKind::kShipd, 0, shards) == block.slot_count() - 1);
    CHECK(slot_name(block, 4 + shards) == "shipd");
  }
  auto memory = zeroed();
  CHECK_FALSE(control_block_format(memory->all(), 2).ships());
}

TEST_CASE("slot_index finds each stage in the slot format gave it") {
  for (std::size_t shards = 1; shards <= kMaxShards; ++shards) {
    CAPTURE(shards);
    auto memory = zeroed();
    const ControlBlock& block = control_block_format(memory->all(), shards);
    const auto kind_at = [&](std::size_t index) {
      return static_cast<StageKind>(block.slots[index].kind.load());
    };
    CHECK(kind_at(slot_index(StageKind::kCapture, 0, shards)) == StageKind::kCapture);
    CHECK(kind_at(slot_index(StageKind::kDedupd, 0, shards)) == StageKind::kDedupd);
    CHECK(kind_at(slot_index(StageKind::kSignerd, 0, shards)) == StageKind::kSignerd);
    CHECK(kind_at(slot_index(StageKind::kWriterd, 0, shards)) == StageKind::kWriterd);
    for (std::size_t s = 0; s < shards; ++s) {
      const std::size_t index = slot_index(StageKind::kFlowd, s, shards);
      CHECK(kind_at(index) == StageKind::kFlowd);
      CHECK(block.slots[index].shard.load() == s);
    }
    CHECK(slot_index(StageKind::kWriterd, 0, shards) == block.slot_count() - 1);
  }
}

TEST_CASE("a freshly formatted block has no pids, no counters, no requests and a creation time") {
  auto memory = zeroed();
  const std::int64_t before = realtime_ns();
  const ControlBlock& block = control_block_format(memory->all(), 3);
  const std::int64_t after = realtime_ns();

  CHECK(block.created_ns.load() >= before);
  CHECK(block.created_ns.load() <= after);
  CHECK(block.stop_requested.load() == 0);
  CHECK(block.pressure_level.load() == 0);
  CHECK(block.ready.load() == 0);
  CHECK(block.restart_requests.load() == 0);
  for (std::size_t i = 0; i < block.slot_count(); ++i) {
    CAPTURE(i);
    const StageSlot& slot = block.slots[i];
    CHECK(slot.pid.load() == 0);
    CHECK(static_cast<StageState>(slot.state.load()) == StageState::kNotStarted);
    CHECK(slot.heartbeat_ns.load() == 0);
    CHECK(slot.ready_ns.load() == 0);
    CHECK(slot.restarts.load() == 0);
    CHECK(slot.memory_restarts.load() == 0);
    for (const auto& counter : slot.counters) CHECK(counter.load() == 0);
  }
}

TEST_CASE("format refuses zero shards, too many shards and memory smaller than a block") {
  auto memory = zeroed();
  CHECK_THROWS_AS(control_block_format(memory->all(), 0), std::invalid_argument);
  CHECK_THROWS_AS(control_block_format(memory->all(), kMaxShards + 1), std::invalid_argument);
  CHECK_THROWS_WITH(control_block_format(memory->all(), kMaxShards + 1),
                    Catch::Contains(std::to_string(kMaxShards + 1) + " shards"));
  CHECK_THROWS_AS(control_block_format(memory->all().first(sizeof(ControlBlock) - 1), 1),
                  std::invalid_argument);
}

TEST_CASE("attach returns the block format made, with what a stage wrote into it") {
  auto memory = zeroed();
  ControlBlock& formatted = control_block_format(memory->all(), 2);
  formatted.slots[1].counters[flowd_counter::kPackets].store(1234);
  formatted.stop_requested.store(1);

  ControlBlock& attached = control_block_attach(memory->all());
  CHECK(&attached == &formatted);
  CHECK(attached.shards == 2);
  CHECK(attached.slots[1].counters[flowd_counter::kPackets].load() == 1234);
  CHECK(attached.stop_requested.load() == 1);
}

TEST_CASE("attach refuses memory the supervisor has not formatted yet, naming the magic") {
  auto memory = zeroed();
  const std::string what = what_of([&] { control_block_attach(memory->all()); });
  CHECK_THAT(what, Catch::Contains("magic mismatch"));
}

TEST_CASE("attach refuses a block of another layout version, naming both versions") {
  auto memory = zeroed();
  ControlBlock& block = control_block_format(memory->all(), 1);
  block.layout_version = ControlBlock::kLayoutVersion - 1;
  const std::string what = what_of([&] { control_block_attach(memory->all()); });
  CHECK_THAT(what, Catch::Contains(std::to_string(ControlBlock::kLayoutVersion - 1)) &&
                       Catch::Contains(std::to_string(ControlBlock::kLayoutVersion)));
}

TEST_CASE("attach refuses a mapping smaller than a block, naming both sizes") {
  auto memory = zeroed();
  control_block_format(memory->all(), 1);
  const std::string what =
      what_of([&] { control_block_attach(memory->all().first(sizeof(ControlBlock) / 2)); });
  CHECK_THAT(what, Catch::Contains(std::to_string(sizeof(ControlBlock) / 2)) &&
                       Catch::Contains(std::to_string(sizeof(ControlBlock))));
}

TEST_CASE("slots are named by stage, flowd slots with their shard") {
  auto memory = zeroed();
  const ControlBlock& block = control_block_format(memory->all(), 2);
  CHECK(slot_name(block, 0) == "capture");
  CHECK(slot_name(block, 1) == "flowd[0]");
  CHECK(slot_name(block, 2) == "flowd[1]");
  CHECK(slot_name(block, 3) == "dedupd");
  CHECK(slot_name(block, 4) == "signerd");
  CHECK(slot_name(block, 5) == "writerd");
}

TEST_CASE("every stage kind and state has its own name") {
  CHECK(to_string(StageKind::kCapture) == "capture");
  CHECK(to_string(StageKind::kFlowd) == "flowd");
  CHECK(to_string(StageKind::kDedupd) == "dedupd");
  CHECK(to_string(StageKind::kSignerd) == "signerd");
  CHECK(to_string(StageKind::kWriterd) == "writerd");
  CHECK(to_string(StageState::kNotStarted) == "not-started");
  CHECK(to_string(StageState::kRunning) == "running");
  CHECK(to_string(StageState::kDraining) == "draining");
  CHECK(to_string(StageState::kDone) == "done");
  CHECK(to_string(StageState::kFailed) == "failed");
}

TEST_CASE("an instance's shared-memory objects are named after the instance") {
  CHECK(control_block_name("probe1") == "/flowseal.probe1.control");
  CHECK(ring_name("probe1", "flowd0-dedupd") == "/flowseal.probe1.ring.flowd0-dedupd");
  CHECK(control_block_name("a") != control_block_name("b"));
}

TEST_CASE("the monotonic clock never goes back") {
  std::int64_t last = monotonic_ns();
  for (int i = 0; i < 1000; ++i) {
    const std::int64_t now = monotonic_ns();
    REQUIRE(now >= last);
    last = now;
  }
  CHECK(last > 0);
}

// Attach believes nothing it has not checked; what readers index by stays bounded.
namespace {

std::string what_of_attach(std::span<std::byte> memory) {
  return what_of([&] { control_block_attach(memory); });
}

}  // namespace

TEST_CASE("a formatted control block attaches with its shard count and slot layout") {
  auto m = zeroed();
  control_block_format(m->all(), 3, /*ship=*/false, 12345);
  ControlBlock& block = control_block_attach(m->all());
  CHECK(block.shard_count() == 3);
  CHECK(block.slot_count() == 7);
  CHECK(block.supervisor_start_ticks == 12345);
  CHECK(slot_name(block, 2) == "flowd[1]");
  CHECK(slot_name(block, 6) == "writerd");
}

TEST_CASE("attach refuses a forged shard count before anything indexes by it") {
  for (std::uint32_t forged : {0u, 9u, 200u, 0xffffffffu}) {
    auto m = zeroed();
    control_block_format(m->all(), 2);
    reinterpret_cast<ControlBlock*>(m->all().data())->shards = forged;
    const std::string error = what_of_attach(m->all());
    CHECK_THAT(error, Catch::Contains(std::to_string(forged) + " flowd shards") &&
                          Catch::Contains("forged"));
  }
}

TEST_CASE("attach refuses slots that do not match the layout of the block's shard count") {
  auto m = zeroed();
  control_block_format(m->all(), 2);
  auto* block = reinterpret_cast<ControlBlock*>(m->all().data());
  block->shards = 4;  // in range, but slots 3..7 were laid out for 2 shards
  CHECK_THAT(what_of_attach(m->all()), Catch::Contains("slot 3") && Catch::Contains("forged"));
  block->shards = 2;
  block->slots[1].shard.store(7);
  CHECK_THAT(what_of_attach(m->all()), Catch::Contains("slot 1"));
}

TEST_CASE("attach refuses a short mapping, a foreign magic and another layout version") {
  auto m = zeroed();
  control_block_format(m->all(), 1);
  CHECK_THAT(what_of_attach(m->all().first(100)), Catch::Contains("smaller"));
  auto* block = reinterpret_cast<ControlBlock*>(m->all().data());
  block->layout_version = ControlBlock::kLayoutVersion + 1;
  CHECK_THAT(what_of_attach(m->all()), Catch::Contains("layout version"));
  block->layout_version = ControlBlock::kLayoutVersion;
  block->magic = 0x1234;
  CHECK_THAT(what_of_attach(m->all()), Catch::Contains("magic"));
}

TEST_CASE("a shard count rewritten after attach still bounds every slot index") {
  auto m = zeroed();
  control_block_format(m->all(), 8);
  ControlBlock& block = control_block_attach(m->all());
  block.shards = 1000;  // the owner of the object can do this at any time
  CHECK(block.shard_count() == kMaxShards);
  CHECK(block.slot_count() == std::size(block.slots) - 1);
  block.ship_slot = 1;  // ... and so can it claim a shipd slot
  CHECK(block.slot_count() == std::size(block.slots));
}

TEST_CASE("a process's start time is read from /proc and is 0 for no process") {
  const std::uint64_t mine = process_start_ticks(getpid());
  CHECK(mine > 0);
  CHECK(process_start_ticks(getpid()) == mine);
  CHECK(process_start_ticks(0x3fffffff) == 0);
}

TEST_CASE("/proc/PID/stat fields are read by number; none for no process or no such field") {
  const auto fields = proc_stat_fields(getpid(), {14, 15, 22});
  REQUIRE(fields);
  REQUIRE(fields->size() == 3);
  CHECK((*fields)[2] == process_start_ticks(getpid()));
  CHECK_FALSE(proc_stat_fields(0x3fffffff, {14}));
  CHECK_FALSE(proc_stat_fields(getpid(), {3}));     // the state: a letter, not a number
  CHECK_FALSE(proc_stat_fields(getpid(), {2}));     // the command name comes before
  CHECK_FALSE(proc_stat_fields(getpid(), {1000}));  // past the last field
}

}  // namespace flowseal
