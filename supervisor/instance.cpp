#include "instance.h"

#include <signal.h>

#include <cerrno>
#include <stdexcept>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "ring.h"

namespace flowseal::supervisor {
namespace {

std::vector<std::string> all_names(const std::string& instance, std::size_t shards) {
  std::vector<std::string> names{control_block_name(instance),
                                 ring_name(instance, kDedupEdge),
                                 ring_name(instance, kSealedEdge)};
  for (std::size_t s = 0; s < shards; ++s) {
    names.push_back(ring_name(instance, packet_edge(s)));
    names.push_back(ring_name(instance, flow_edge(s)));
    names.push_back(flow_table_name(instance, s));
  }
  return names;
}

bool process_alive(pid_t pid) { return pid > 0 && (kill(pid, 0) == 0 || errno == EPERM); }

}  // namespace

int Instance::remove_leftovers(const std::string& instance, std::size_t max_shards) {
  int removed = 0;
  for (const auto& name : all_names(instance, max_shards)) removed += ShmSegment::remove(name);
  return removed;
}

Instance::Instance(const Config& config, std::optional<FileOwner> owner)
    : instance_(config.supervisor.instance), owner_(owner), plan_(plan_memory(config)) {
  const std::size_t shards = static_cast<std::size_t>(config.flowd.shards);
  const std::string control_name = control_block_name(instance_);
  if (ShmSegment::exists(control_name)) {
    pid_t running_pid = -1;
    try {
      ShmSegment existing = ShmSegment::open(control_name);
      running_pid = control_block_attach(existing.bytes()).supervisor_pid.load();
    } catch (const std::exception&) {
      // half-initialised: its creator died before formatting it
    }
    if (process_alive(running_pid)) {
      throw InstanceRunning(fmt::format(
          "instance '{}' is already running (supervisor pid {}); stop it with "
          "`flowseal stop --instance {}` or choose another --instance",
          instance_, running_pid, instance_));
    }
    const int removed = remove_leftovers(instance_, kMaxShards);
    spdlog::warn("instance '{}': removed {} shared-memory objects left by a supervisor that "
                 "is gone",
                 instance_, removed);
  }

  segments_.push_back(ShmSegment::create(control_name, sizeof(ControlBlock), owner_));
  control_ = &control_block_format(segments_.back().bytes(), shards);
  control_->supervisor_pid.store(getpid());

  for (std::size_t s = 0; s < shards; ++s) {
    create_ring(packet_edge(s), plan_.packet_ring);
    create_ring(flow_edge(s), plan_.event_ring);
    segments_.push_back(ShmSegment::create(flow_table_name(instance_, s), plan_.flow_table_bytes, owner_));
  }
  create_ring(std::string(kDedupEdge), plan_.event_ring);
  create_ring(std::string(kSealedEdge), plan_.sealed_ring);
}

void Instance::create_ring(const std::string& edge, std::size_t capacity) {
  segments_.push_back(ShmSegment::create(ring_name(instance_, edge), ring_bytes(capacity), owner_));
  ring_format(segments_.back().bytes(), capacity);
  rings_.push_back({edge, segments_.back().bytes()});
}

}  // namespace flowseal::supervisor
