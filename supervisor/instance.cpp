#include "instance.h"

#include <signal.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string_view>
#include <thread>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "command_error.h"
#include "ring.h"
#include "stage_runtime.h"

namespace flowseal::supervisor {
namespace {

namespace fs = std::filesystem;

bool process_alive(pid_t pid) { return pid > 0 && (kill(pid, 0) == 0 || errno == EPERM); }

// One line of /proc/PID/maps: the device, inode and path of what it maps.
struct MapsEntry {
  unsigned major = 0, minor = 0;
  unsigned long long inode = 0;
  std::string path;  // without a " (deleted)" suffix
};

std::optional<MapsEntry> parse_maps_line(const std::string& line) {
  std::istringstream in(line);
  std::string range, perms, offset, dev;
  MapsEntry entry;
  if (!(in >> range >> perms >> offset >> dev >> entry.inode)) return std::nullopt;
  if (std::sscanf(dev.c_str(), "%x:%x", &entry.major, &entry.minor) != 2) return std::nullopt;
  std::getline(in, entry.path);
  const auto start = entry.path.find_first_not_of(' ');
  entry.path = start == std::string::npos ? "" : entry.path.substr(start);
  constexpr std::string_view kDeleted = " (deleted)";
  if (entry.path.ends_with(kDeleted)) entry.path.resize(entry.path.size() - kDeleted.size());
  return entry;
}

// The run directories of `instance` (RunDirectory in run_command.cpp: mkdtemp of
// <tmp>/flowseal.<instance>.<supervisor pid>.XXXXXX; before, <tmp>/flowseal.<instance>.XXXXXX),
// real directories only, each with its owner and the pid its name carries (nullopt: the older
// name).
struct RunDirectoryEntry {
  fs::path path;
  uid_t owner = 0;
  std::optional<pid_t> supervisor;
};
std::vector<RunDirectoryEntry> run_directories(const std::string& instance) {
  std::vector<RunDirectoryEntry> found;
  const std::string prefix = fmt::format("flowseal.{}.", instance);
  constexpr std::string_view kTempChars =
      "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(fs::temp_directory_path(ec), ec)) {
    const std::string name = entry.path().filename().string();
    if (!name.starts_with(prefix) || name.size() < prefix.size() + 6) continue;
    const std::string_view tail = std::string_view(name).substr(name.size() - 6);
    if (tail.find_first_not_of(kTempChars) != std::string_view::npos) continue;
    std::optional<pid_t> supervisor;
    if (name.size() > prefix.size() + 6) {  // "<pid>." before the mkdtemp characters
      const std::string_view pid_text =
          std::string_view(name).substr(prefix.size(), name.size() - prefix.size() - 6);
      pid_t pid = 0;
      const auto [end, error] =
          std::from_chars(pid_text.data(), pid_text.data() + pid_text.size() - 1, pid);
      if (error != std::errc() || end != pid_text.data() + pid_text.size() - 1 ||
          pid_text.back() != '.' || pid <= 0) {
        continue;  // another instance's (a name with dots) or not ours
      }
      supervisor = pid;
    }
    struct stat st {};
    if (::lstat(entry.path().c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
      found.push_back({entry.path(), st.st_uid, supervisor});
    }
  }
  return found;
}

}  // namespace

std::vector<std::string> Instance::all_names(const std::string& instance) {
  std::vector<std::string> names{control_block_name(instance), ring_name(instance, kDedupEdge),
                                 ring_name(instance, kSealedEdge)};
  for (std::size_t s = 0; s < kMaxShards; ++s) {
    names.push_back(ring_name(instance, packet_edge(s)));
    names.push_back(ring_name(instance, flow_edge(s)));
    names.push_back(flow_table_name(instance, s));
  }
  return names;
}

InstanceUsers processes_using(const std::string& instance) {
  std::set<std::string> paths;
  for (const auto& name : Instance::all_names(instance)) paths.insert(ShmSegment::path_of(name));
  InstanceUsers users;
  const pid_t self = getpid();
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator("/proc", ec)) {
    const std::string name = entry.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    const pid_t pid = static_cast<pid_t>(std::stol(name));
    if (pid == self) continue;
    std::ifstream maps(entry.path() / "maps");
    if (!maps) {
      if (errno == EACCES || errno == EPERM) ++users.unreadable;
      continue;  // or it ended meanwhile
    }
    std::string line;
    while (std::getline(maps, line)) {
      const auto parsed = parse_maps_line(line);
      if (parsed && paths.contains(parsed->path)) {
        users.pids.push_back(pid);
        break;
      }
    }
  }
  return users;
}

std::string not_the_supervisor(pid_t pid, const std::string& control_name, const ShmInfo& control,
                               std::uint64_t start_ticks) {
  if (pid <= 0) return fmt::format("its supervisor pid {} is not a process id", pid);
  if (!process_alive(pid)) return fmt::format("its supervisor (pid {}) is gone", pid);
  std::error_code ec;
  std::string exe = fs::read_symlink(fmt::format("/proc/{}/exe", pid), ec).filename().string();
  if (ec) {
    return fmt::format("cannot tell what pid {} runs: {}", pid, ec.message());
  }
  if (exe.ends_with(" (deleted)")) exe.resize(exe.size() - std::string_view(" (deleted)").size());
  if (exe != "flowseal") {
    return fmt::format("pid {} is not a flowseal supervisor (it runs {})", pid, exe);
  }
  if (start_ticks != 0 && process_start_ticks(pid) != start_ticks) {
    return fmt::format(
        "pid {} started after the supervisor that made the block (a reused "
        "pid)",
        pid);
  }
  std::ifstream maps(fmt::format("/proc/{}/maps", pid));
  if (!maps) {
    return fmt::format("cannot read /proc/{}/maps: {}", pid, std::strerror(errno));
  }
  const std::string path = ShmSegment::path_of(control_name);
  std::string line;
  while (std::getline(maps, line)) {
    const auto entry = parse_maps_line(line);
    if (entry && entry->path == path && entry->inode == control.inode &&
        makedev(entry->major, entry->minor) == control.device) {
      return {};
    }
  }
  return fmt::format(
      "pid {} is a flowseal process but does not map {}: it is not this "
      "instance's supervisor",
      pid, path);
}

std::string untrusted_control(const std::string& control_name, const ShmInfo& info,
                              pid_t supervisor_pid, std::uint64_t start_ticks) {
  const std::string path = ShmSegment::path_of(control_name);
  if (!info.regular()) return fmt::format("{} is not a regular shared-memory object", path);
  if ((info.mode & 077) != 0) {
    return fmt::format("{} has mode {:04o} ({}): flowseal makes its objects 0600", path,
                       info.mode & 07777, info.owner());
  }
  if (info.size != sizeof(ControlBlock)) {
    return fmt::format("{} holds {} bytes, not the {} of a control block ({})", path, info.size,
                       sizeof(ControlBlock), info.owner());
  }
  const uid_t self = geteuid();
  if (info.uid == self) return {};
  if (self == 0) {
    // Root's supervisor gives every object to supervisor.user: believe such a block only if
    // the supervisor it names is a root flowseal that maps this very object.
    const std::string why = not_the_supervisor(supervisor_pid, control_name, info, start_ticks);
    struct stat st {};
    if (why.empty() && ::stat(fmt::format("/proc/{}", supervisor_pid).c_str(), &st) == 0 &&
        st.st_uid == 0) {
      return {};
    }
    return fmt::format(
        "{} belongs to {}, and {}: it was not made by a supervisor of yours; "
        "not trusted",
        path, info.owner(),
        why.empty() ? fmt::format("its supervisor pid {} does not run as root", supervisor_pid)
                    : why);
  }
  return fmt::format("{} belongs to {}, not to you ({}): not trusted", path, info.owner(),
                     describe_user(self));
}

CleanupResult cleanup_instance(const std::string& instance) {
  CleanupResult result;
  const InstanceUsers users = processes_using(instance);
  if (!users.pids.empty()) {
    result.live = users.pids;
    return result;
  }
  const uid_t self = geteuid();
  auto ours = [&](uid_t owner) { return self == 0 || owner == self; };
  for (const auto& name : Instance::all_names(instance)) {
    const auto info = ShmSegment::inspect(name);
    if (!info) continue;
    const std::string path = ShmSegment::path_of(name);
    if (!ours(info->uid)) {
      result.refused.push_back(fmt::format("{} ({}): not yours to remove", path, info->owner()));
      continue;
    }
    if (ShmSegment::remove(name)) {
      result.removed.push_back(fmt::format("{} ({})", path, info->owner()));
    } else {
      result.refused.push_back(fmt::format("{}: cannot remove: {}", path, std::strerror(errno)));
    }
  }
  for (const auto& [dir, owner, supervisor] : run_directories(instance)) {
    if (!ours(owner)) {
      result.refused.push_back(
          fmt::format("{} ({}): not yours to remove", dir.string(), describe_user(owner)));
      continue;
    }
    std::error_code ec;
    fs::remove_all(dir, ec);  // never follows a symlink inside
    if (ec) {
      result.refused.push_back(fmt::format("{}: cannot remove: {}", dir.string(), ec.message()));
    } else {
      result.removed.push_back(fmt::format("{} ({})", dir.string(), describe_user(owner)));
    }
  }
  return result;
}

namespace {

// The run directories (the effective config) that supervisors of `instance` now gone left: a
// SIGKILLed supervisor cannot remove its own. Only a directory whose name carries a pid no
// process has any more, and made by this user: a live supervisor's is never touched, however
// the starts of two supervisors of one instance interleave.
void remove_dead_run_directories(const std::string& instance, uid_t self) {
  for (const auto& [dir, owner, supervisor] : run_directories(instance)) {
    if (owner != self || !supervisor || ::kill(*supervisor, 0) == 0 || errno != ESRCH) continue;
    std::error_code ec;
    fs::remove_all(dir, ec);  // never follows a symlink inside
    if (ec) {
      spdlog::warn("instance '{}': cannot remove {}, left by a supervisor that is gone: {}",
                   instance, dir.string(), ec.message());
    } else {
      spdlog::info("instance '{}': removed {}, left by a supervisor that is gone", instance,
                   dir.string());
    }
  }
}

}  // namespace

void Instance::clear_leftovers(std::optional<uid_t> stage_user) {
  const std::string control_name = control_block_name(instance_);
  const uid_t self = geteuid();
  bool any = false;
  for (const auto& name : all_names(instance_)) {
    const auto info = ShmSegment::inspect(name);
    if (!info) continue;
    any = true;
    if (info->uid != self && info->uid != stage_user) {
      throw CommandError(
          exit_code::kCantCreate,
          fmt::format("instance '{}' cannot start: {} belongs to {}, neither you nor "
                      "supervisor.user, so it is not this instance's to reuse or remove. Choose "
                      "another --instance, or, if that user runs no flowseal, remove it as root "
                      "with `flowseal cleanup --instance {}`",
                      instance_, ShmSegment::path_of(name), info->owner(), instance_));
    }
  }
  if (!any) {
    remove_dead_run_directories(instance_, self);
    return;
  }
  // Alive if the block names a supervisor that really maps it, or if any process maps one
  // of its objects: the stages a dead supervisor left leave within seconds, so they are
  // waited for (bounded) before the instance counts as running.
  pid_t owner = -1;
  std::string who;  // how the message names the owner
  try {
    ShmSegment existing = ShmSegment::open(control_name);
    ControlBlock& block = control_block_attach(existing.bytes());
    const pid_t named = block.supervisor_pid.load();
    if (not_the_supervisor(named, control_name, existing.info(), block.supervisor_start_ticks)
            .empty()) {
      owner = named;
      who = fmt::format("supervisor pid {}", owner);
    }
  } catch (const std::exception&) {
    // half-initialised (its creator died before formatting it), or not a control block
  }
  if (owner <= 0) {
    const auto deadline = std::chrono::steady_clock::now() + kOrphanWait;
    InstanceUsers users = processes_using(instance_);
    if (!users.pids.empty()) {
      spdlog::info("instance '{}': waiting for {} process(es) its dead supervisor left (pid {}…)",
                   instance_, users.pids.size(), users.pids.front());
    }
    while (!users.pids.empty() && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      users = processes_using(instance_);
    }
    if (!users.pids.empty()) {
      owner = users.pids.front();
      who = fmt::format("pid {} uses its shared memory", owner);
    }
  }
  if (owner > 0) {
    throw InstanceRunning(
        fmt::format("instance '{}' is already running ({}); stop it with "
                    "`flowseal stop --instance {}` or choose another --instance",
                    instance_, who, instance_));
  }
  // Counted before they go: what the dead instance's stages had not processed is lost from
  // the rings now, and the run says how much (and recovers the sealed batches it can).
  leftovers_ = read_leftover_rings(instance_, stage_user);
  int removed = 0;
  for (const auto& name : all_names(instance_)) removed += ShmSegment::remove(name);
  spdlog::warn(
      "instance '{}': removed {} shared-memory objects left by a supervisor that "
      "is gone",
      instance_, removed);
  remove_dead_run_directories(instance_, self);
}

Instance::Instance(const Config& config, std::optional<FileOwner> owner)
    : instance_(config.supervisor.instance), owner_(owner), plan_(plan_memory(config)) {
  const std::size_t shards = static_cast<std::size_t>(config.flowd.shards);
  const std::string control_name = control_block_name(instance_);
  clear_leftovers(owner ? std::optional<uid_t>(owner->uid) : std::nullopt);

  segments_.push_back(ShmSegment::create(control_name, sizeof(ControlBlock), owner_));
  control_ = &control_block_format(segments_.back().bytes(), shards, runs_shipd(config),
                                   process_start_ticks(getpid()));
  control_->supervisor_pid.store(getpid());

  for (std::size_t s = 0; s < shards; ++s) {
    create_ring(packet_edge(s), plan_.packet_ring);
    create_ring(flow_edge(s), plan_.event_ring);
    segments_.push_back(
        ShmSegment::create(flow_table_name(instance_, s), plan_.flow_table_bytes, owner_));
  }
  create_ring(std::string(kDedupEdge), plan_.event_ring);
  create_ring(std::string(kSealedEdge), plan_.sealed_ring);
}

std::span<std::byte> Instance::sealed_ring() {
  for (const auto& ring : rings_) {
    if (ring.edge == kSealedEdge) return ring.memory;
  }
  throw std::logic_error("the instance has no sealed ring");
}

void Instance::create_ring(const std::string& edge, std::size_t capacity) {
  segments_.push_back(ShmSegment::create(ring_name(instance_, edge), ring_bytes(capacity), owner_));
  ring_format(segments_.back().bytes(), capacity);
  rings_.push_back({edge, segments_.back().bytes()});
}

}  // namespace flowseal::supervisor
