#include "control_block.h"

#include <time.h>

#include <new>
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
  }
  return 0;
}

std::string slot_name(const ControlBlock& control, std::size_t index) {
  const StageSlot& slot = control.slots[index];
  const auto kind = static_cast<StageKind>(slot.kind.load());
  return kind == StageKind::kFlowd ? fmt::format("flowd[{}]", slot.shard.load())
                                   : std::string(to_string(kind));
}

ControlBlock& control_block_format(std::span<std::byte> memory, std::size_t shards) {
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
  for (std::size_t i = 0; i < block->slot_count(); ++i) {
    StageKind kind = i == 0                ? StageKind::kCapture
                     : i <= shards         ? StageKind::kFlowd
                     : i == shards + 1     ? StageKind::kDedupd
                     : i == shards + 2     ? StageKind::kSignerd
                                           : StageKind::kWriterd;
    block->slots[i].kind.store(static_cast<std::uint32_t>(kind));
    block->slots[i].shard.store(kind == StageKind::kFlowd ? static_cast<std::uint32_t>(i - 1) : 0);
  }
  std::atomic_thread_fence(std::memory_order_release);
  block->magic = ControlBlock::kMagic;
  return *block;
}

ControlBlock& control_block_attach(std::span<std::byte> memory) {
  if (memory.size() < sizeof(ControlBlock)) {
    throw std::runtime_error(fmt::format("control block mapping of {} bytes is smaller than "
                                         "the {} this build expects",
                                         memory.size(), sizeof(ControlBlock)));
  }
  auto* block = std::launder(reinterpret_cast<ControlBlock*>(memory.data()));
  if (block->magic != ControlBlock::kMagic) {
    throw std::runtime_error("control block is not initialised (magic mismatch): the "
                             "supervisor has not finished creating it, or it is foreign");
  }
  if (block->layout_version != ControlBlock::kLayoutVersion) {
    throw std::runtime_error(fmt::format("control block layout version {} does not match this "
                                         "build's {}",
                                         block->layout_version, ControlBlock::kLayoutVersion));
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
