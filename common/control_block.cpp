#include "control_block.h"

#include <time.h>

#include <charconv>
#include <fstream>
#include <new>
#include <sstream>
#include <stdexcept>

#include <fmt/format.h>

namespace flowseal {

std::string_view to_string(StageKind kind) {
  switch (kind) {
    case StageKind::kCapture: return "capture";
    case StageKind::kFlowd: return "flowd";
    case StageKind::kDedupd: return "dedupd";
    case StageKind::kSignerd: return "signerd";
    case StageKind::kWriterd: return "writerd";
    case StageKind::kShipd: return "shipd";
  }
  return "unknown";
}

std::string_view to_string(StageState state) {
  switch (state) {
    case StageState::kNotStarted: return "not-started";
    case StageState::kRunning: return "running";
    case StageState::kDraining: return "draining";
    case StageState::kDone: return "done";
    case StageState::kFailed: return "failed";
  }
  return "unknown";
}

std::size_t slot_index(StageKind kind, std::size_t shard, std::size_t shards) {
  switch (kind) {
    case StageKind::kCapture: return 0;
    case StageKind::kFlowd: return 1 + shard;
    case StageKind::kDedupd: return 1 + shards;
    case StageKind::kSignerd: return 2 + shards;
    case StageKind::kWriterd: return 3 + shards;
    case StageKind::kShipd: return 4 + shards;
  }
  return 0;
}

std::string slot_name(const ControlBlock& control, std::size_t index) {
  const StageSlot& slot = control.slots[index];
  const auto kind = static_cast<StageKind>(slot.kind.load());
  return kind == StageKind::kFlowd ? fmt::format("flowd[{}]", slot.shard.load())
                                   : std::string(to_string(kind));
}

namespace {

StageKind expected_kind(std::size_t slot, std::size_t shards) {
  return slot == 0            ? StageKind::kCapture
         : slot <= shards     ? StageKind::kFlowd
         : slot == shards + 1 ? StageKind::kDedupd
         : slot == shards + 2 ? StageKind::kSignerd
         : slot == shards + 3 ? StageKind::kWriterd
                              : StageKind::kShipd;
}

}  // namespace

std::optional<std::vector<std::uint64_t>> proc_stat_fields(int pid,
                                                           std::initializer_list<int> wanted) {
  if (pid <= 0) return std::nullopt;
  std::ifstream in(fmt::format("/proc/{}/stat", pid));
  std::string line;
  if (!std::getline(in, line)) return std::nullopt;
  // The command name (field 2) may hold spaces and ')': fields are counted after the last ')'.
  const auto close = line.rfind(')');
  if (close == std::string::npos) return std::nullopt;
  std::vector<std::string> fields;  // fields[0] is field 3
  std::istringstream stream(line.substr(close + 1));
  for (std::string field; stream >> field;) fields.push_back(std::move(field));
  std::vector<std::uint64_t> values;
  for (const int number : wanted) {
    if (number < 3 || static_cast<std::size_t>(number - 3) >= fields.size()) return std::nullopt;
    const std::string& text = fields[static_cast<std::size_t>(number - 3)];
    std::uint64_t value = 0;
    const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (error != std::errc() || end != text.data() + text.size()) return std::nullopt;
    values.push_back(value);
  }
  return values;
}

std::uint64_t process_start_ticks(int pid) {
  const auto fields = proc_stat_fields(pid, {22});
  return fields ? fields->front() : 0;
}

ControlBlock& control_block_format(std::span<std::byte> memory, std::size_t shards, bool ship,
                                   std::uint64_t supervisor_start_ticks) {
  if (memory.size() < sizeof(ControlBlock)) {
    throw std::invalid_argument("control block memory too small");
  }
  if (shards == 0 || shards > kMaxShards) {
    throw std::invalid_argument(fmt::format("{} shards: must be 1..{}", shards, kMaxShards));
  }
  auto* block = new (memory.data()) ControlBlock{};
  block->layout_version = ControlBlock::kLayoutVersion;
  block->shards = static_cast<std::uint32_t>(shards);
  block->created_ns.store(realtime_ns());
  block->supervisor_start_ticks = supervisor_start_ticks;
  block->ship_slot = ship ? 1 : 0;
  for (std::size_t i = 0; i < block->slot_count(); ++i) {
    const StageKind kind = expected_kind(i, shards);
    block->slots[i].kind.store(static_cast<std::uint32_t>(kind));
    block->slots[i].shard.store(kind == StageKind::kFlowd ? static_cast<std::uint32_t>(i - 1) : 0);
  }
  std::atomic_thread_fence(std::memory_order_release);
  block->magic = ControlBlock::kMagic;
  return *block;
}

ControlBlock& control_block_attach(std::span<std::byte> memory) {
  if (memory.size() < sizeof(ControlBlock)) {
    throw std::runtime_error(
        fmt::format("control block mapping of {} bytes is smaller than "
                    "the {} this build expects",
                    memory.size(), sizeof(ControlBlock)));
  }
  auto* block = std::launder(reinterpret_cast<ControlBlock*>(memory.data()));
  if (block->magic != ControlBlock::kMagic) {
    throw std::runtime_error(
        "control block is not initialised (magic mismatch): the "
        "supervisor has not finished creating it, or it is foreign");
  }
  if (block->layout_version != ControlBlock::kLayoutVersion) {
    throw std::runtime_error(
        fmt::format("control block layout version {} does not match this "
                    "build's {}",
                    block->layout_version, ControlBlock::kLayoutVersion));
  }
  const std::size_t shards = block->shards;
  if (shards == 0 || shards > kMaxShards) {
    throw std::runtime_error(
        fmt::format("control block claims {} flowd shards (this build "
                    "allows 1..{}): damaged or forged",
                    shards, kMaxShards));
  }
  if (block->ship_slot > 1) {
    throw std::runtime_error(
        fmt::format("control block ship flag is {} (0 or 1): damaged or "
                    "forged",
                    block->ship_slot));
  }
  for (std::size_t i = 0; i < block->slot_count(); ++i) {
    const StageKind kind = expected_kind(i, shards);
    const std::uint32_t shard = kind == StageKind::kFlowd ? static_cast<std::uint32_t>(i - 1) : 0;
    if (block->slots[i].kind.load() != static_cast<std::uint32_t>(kind) ||
        block->slots[i].shard.load() != shard) {
      throw std::runtime_error(
          fmt::format("control block slot {} says kind {} shard {}; a "
                      "block of {} shards has {} shard {} there: damaged "
                      "or forged",
                      i, block->slots[i].kind.load(), block->slots[i].shard.load(), shards,
                      to_string(kind), shard));
    }
  }
  return *block;
}

std::int64_t monotonic_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return std::int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

std::int64_t realtime_ns() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return std::int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

std::string control_block_name(std::string_view instance) {
  return fmt::format("/flowseal.{}.control", instance);
}

std::string ring_name(std::string_view instance, std::string_view edge) {
  return fmt::format("/flowseal.{}.ring.{}", instance, edge);
}

}  // namespace flowseal
