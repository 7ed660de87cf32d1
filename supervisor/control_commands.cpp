// `flowseal status`, `flowseal stop` and `flowseal restart STAGE`: talk to a running instance
// through its control block in shared memory (and, for stop, a signal to its supervisor).
// They work from another terminal as the same user; they never block the running stages.
#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <optional>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <thread>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "command_error.h"
#include "commands.h"
#include "instance.h"
#include "control_block.h"
#include "layout.h"
#include "pressure_level.h"
#include "proc_stats.h"
#include "ring.h"
#include "shm.h"
#include "unique_fd.h"
#include "stage_runtime.h"
#include "status_snapshot.h"

namespace flowseal::supervisor {
namespace {

using Clock = std::chrono::steady_clock;

// The control block of a running instance, checked before a byte of it is believed: the
// object is ours (or, for root, one its root supervisor gave to supervisor.user), mode 0600,
// the size of a control block, with the right magic, version, shard count and slot layout.
// Anything else is an exception that says what and whose.
struct AttachedInstance {
  explicit AttachedInstance(const std::string& instance)
      : name(control_block_name(instance)),
        segment(open_control(instance, name)),
        control(control_block_attach(segment.bytes())) {
    // The owner check needs the supervisor pid, so it comes after attach read the header
    // (which only checked sizes and values, never trusted them).
    if (const std::string why = untrusted_control(
            name, segment.info(), control.supervisor_pid.load(), control.supervisor_start_ticks);
        !why.empty()) {
      throw CommandError(exit_code::kNoPermission,
                         fmt::format("instance '{}': {}. If no flowseal of that user runs, "
                                     "remove it as root: flowseal cleanup --instance {}",
                                     instance, why, instance));
    }
  }

  static ShmSegment open_control(const std::string& instance, const std::string& name) {
    const auto info = ShmSegment::inspect(name);
    if (!info) {
      throw CommandError(exit_code::kUnavailable,
                         fmt::format("no flowseal instance '{}' is running (no {})", instance,
                                     ShmSegment::path_of(name)));
    }
    // Type, mode and size before mapping: a short object would be read past its end.
    if (!info->regular() || (info->mode & 077) != 0 || info->size != sizeof(ControlBlock)) {
      throw CommandError(exit_code::kNoPermission,
                         fmt::format("instance '{}': {}: not used", instance,
                                     untrusted_control(name, *info, -1, 0)));
    }
    try {
      return ShmSegment::open(name);
    } catch (const std::exception& e) {
      if (::access(ShmSegment::path_of(name).c_str(), R_OK | W_OK) != 0 && errno == EACCES) {
        throw CommandError(exit_code::kNoPermission,
                           fmt::format("instance '{}': {} belongs to {}: permission denied "
                                       "(run this as that user or as root)",
                                       instance, ShmSegment::path_of(name), info->owner()));
      }
      throw;
    }
  }

  std::string name;
  ShmSegment segment;
  ControlBlock& control;
};

// control_block_attach's complaints about a forged or damaged block, as a clear refusal.
template <typename F>
auto with_instance(const std::string& instance, F&& use) {
  std::optional<AttachedInstance> attached;
  try {
    attached.emplace(instance);
  } catch (const CommandError&) {
    throw;
  } catch (const std::exception& e) {
    throw CommandError(exit_code::kDataError,
                       fmt::format("instance '{}': {}: {}; not used", instance,
                                   ShmSegment::path_of(control_block_name(instance)), e.what()));
  }
  return use(*attached);
}

}  // namespace

static int show_status(const StatusOptions& options, const ControlBlock& control);
static int request_restart(const RestartOptions& options, AttachedInstance& attached);

int status_command(const StatusOptions& options) {
  return with_instance(options.instance, [&](AttachedInstance& attached) {
    return show_status(options, attached.control);
  });
}

static int show_status(const StatusOptions& options, const ControlBlock& control) {
  const std::size_t slots = control.slot_count();
  // Two samples half a second apart give the rates.
  const std::vector<SlotSample> before = sample_slots(control, slots);
  const auto t0 = Clock::now();
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  const std::vector<SlotSample> after = sample_slots(control, slots);
  const double dt = std::chrono::duration<double>(Clock::now() - t0).count();
  const auto fill = ring_fill(options.instance, control.shard_count());

  if (options.json) {
    const std::string out =
        status_json(options.instance, control, before, after, dt, fill).dump() + "\n";
    std::fputs(out.c_str(), stdout);
    return exit_code::kOk;
  }

  namespace cc = capture_counter;
  const StageSlot& capture = control.slots[0];
  const PressureLevel level = pressure_level_from(control.pressure_level.load());
  const double usage_pct = control.pressure_usage_permille.load() / 10.0;
  const std::uint64_t level_changes = control.pressure_changes.load();
  const pid_t supervisor = control.supervisor_pid.load();
  const std::uint64_t ring_dropped = capture.counters[cc::kRingFullDropped].load();
  const std::uint64_t kernel_dropped = capture.counters[cc::kKernelDropped].load();
  const std::uint64_t sampled = capture.counters[cc::kSampledOut].load();
  const std::uint64_t stalled_dropped = capture.counters[cc::kWriterStalledDropped].load();
  const StageSlot& writer =
      control.slots[slot_index(StageKind::kWriterd, 0, control.shard_count())];
  const std::int64_t stalled_since =
      static_cast<std::int64_t>(writer.counters[record_counter::kStalledSinceNs].load());
  const double stalled_s =
      stalled_since > 0 ? (double(monotonic_ns()) - double(stalled_since)) / 1e9 : 0;
  const std::uint64_t write_errors = writer.counters[record_counter::kWriteErrors].load();

  std::string out = fmt::format(
      "instance {}: supervisor pid {} ({}), pressure {} (usage {:.0f}%, {} level changes){}\n",
      options.instance, supervisor, process_alive(supervisor) ? "running" : "GONE",
      to_string(level), usage_pct, level_changes,
      control.stop_requested.load() != 0 ? ", draining" : "");
  if (const std::uint32_t refused = control.reloads_refused.load(),
      applied = control.reloads_applied.load();
      refused + applied != 0) {
    out += fmt::format("reloads (SIGHUP): {} applied, {} refused{}\n", applied, refused,
                       refused != 0 ? " (the supervisor's log names each reason)" : "");
  }
  out += fmt::format("{:<10} {:>8} {:<9} {:>9} {:>8} {:>10} {:>9} {:>12} {:>12}\n", "STAGE", "PID",
                     "STATE", "UPTIME", "RESTARTS", "HEARTBEAT", "PSS", "IN/s", "OUT/s");
  std::uint64_t total_pss = 0;
  for (std::size_t i = 0; i < slots; ++i) {
    const auto& a = after[i];
    total_pss += a.pss;
    // "3 (1m)": three restarts, one of them for the memory limit.
    const std::string restarts = a.memory_restarts
                                     ? fmt::format("{} ({}m)", a.restarts, a.memory_restarts)
                                     : std::to_string(a.restarts);
    out += fmt::format(
        "{:<10} {:>8} {:<9} {:>8.1f}s {:>8} {:>8.0f}ms {:>7.1f}Mi {:>12.0f} {:>12.0f}\n", a.name,
        a.pid, to_string(a.state), a.uptime_s, restarts, a.heartbeat_age_ms,
        double(a.pss) / (1 << 20), double(a.in - before[i].in) / dt,
        double(a.out - before[i].out) / dt);
  }
  out += fmt::format("total PSS {:.1f} MiB\nrings:", double(total_pss) / (1 << 20));
  for (const auto& [edge, percent] : fill) out += fmt::format(" {}={:.0f}%", edge, percent);
  out += fmt::format(
      "\npackets: received {}, dropped ring-full {} ({} while writerd could not "
      "write), kernel {}, sampled out {}\n",
      capture.counters[cc::kReceived].load(), ring_dropped, stalled_dropped, kernel_dropped,
      sampled);
  if (control.ships()) {
    namespace sc = ship_counter;
    const StageSlot& ship = control.slots[slot_index(StageKind::kShipd, 0, control.shard_count())];
    const auto c = [&](std::size_t index) { return ship.counters[index].load(); };
    out += fmt::format(
        "shipping: {} batches ({} records) acked, {} in flight, {} retried, lag {} "
        "batches, {} connect failures, ship.dropped_records {}\n",
        c(sc::kBatchesAcked), c(sc::kRecordsAcked), c(sc::kInflight), c(sc::kRetried),
        c(sc::kLagBatches), c(sc::kConnectFailures),
        writer.counters[record_counter::kShipDroppedRecords].load());
    if (c(sc::kIpfixRecordsSent) + c(sc::kIpfixSendFailures) + c(sc::kIpfixLagBatches) != 0) {
      out += fmt::format(
          "ipfix export: {} batches ({} records) sent, lag {} batches, {} send failures\n",
          c(sc::kIpfixBatchesExported), c(sc::kIpfixRecordsSent), c(sc::kIpfixLagBatches),
          c(sc::kIpfixSendFailures));
    }
    if (c(sc::kKafkaRecordsDelivered) + c(sc::kKafkaDeliveryFailures) + c(sc::kKafkaLagBatches) !=
        0) {
      out += fmt::format(
          "kafka export: {} batches ({} records) delivered, lag {} batches, {} delivery "
          "failures\n",
          c(sc::kKafkaBatchesDelivered), c(sc::kKafkaRecordsDelivered), c(sc::kKafkaLagBatches),
          c(sc::kKafkaDeliveryFailures));
    }
  }
  if (stalled_since > 0) {
    out += fmt::format(
        "writer: STALLED for {:.0f} s, {} failed writes (disk full? its log says "
        "why): live capture drops, offline input waits\n",
        stalled_s, write_errors);
  }
  std::fputs(out.c_str(), stdout);
  return exit_code::kOk;
}

namespace {

// A descriptor on a process (pidfd): signals through it reach that process or none, never a
// later holder of its pid; it polls readable when the process ends.
class ProcessHandle {
 public:
  explicit ProcessHandle(pid_t pid) : fd_(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0))) {}
  bool ok() const { return fd_.get() >= 0; }
  bool alive() const { return ::syscall(SYS_pidfd_send_signal, fd_.get(), 0, nullptr, 0) == 0; }
  bool signal(int sig) const {
    return ::syscall(SYS_pidfd_send_signal, fd_.get(), sig, nullptr, 0) == 0;
  }
  // True once the process has ended, false at the deadline.
  bool wait_exit(Clock::time_point deadline) const {
    for (;;) {
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
      pollfd p{fd_.get(), POLLIN, 0};
      const int n = ::poll(&p, 1, static_cast<int>(std::max<std::int64_t>(left.count(), 0)));
      if (n > 0) return true;
      if (n == 0 || (n < 0 && errno != EINTR)) return !alive();
    }
  }

 private:
  UniqueFd fd_;
};

}  // namespace

int stop_command(const StopOptions& options) {
  const std::string name = control_block_name(options.instance);
  struct Target {
    pid_t pid;
    std::uint64_t start_ticks;
    ShmInfo info;
  };
  const Target target = with_instance(options.instance, [](AttachedInstance& attached) {
    return Target{attached.control.supervisor_pid.load(), attached.control.supervisor_start_ticks,
                  attached.segment.info()};
  });
  const pid_t supervisor = target.pid;
  if (!process_alive(supervisor)) {
    throw CommandError(exit_code::kUnavailable,
                       fmt::format("instance '{}' is not running: its supervisor (pid {}) is "
                                   "gone; `flowseal cleanup --instance {}` removes what it left",
                                   options.instance, supervisor, options.instance));
  }
  // Pin the process first, then prove it is the supervisor: the proof is about the process
  // the descriptor holds as long as that process is still alive afterwards.
  const ProcessHandle handle(supervisor);
  if (!handle.ok()) {
    throw CommandError(exit_code::kUnavailable,
                       fmt::format("instance '{}': cannot open supervisor pid {}: {}",
                                   options.instance, supervisor, std::strerror(errno)));
  }
  if (const std::string why = not_the_supervisor(supervisor, name, target.info, target.start_ticks);
      !why.empty() || !handle.alive()) {
    throw CommandError(exit_code::kNoPermission,
                       fmt::format("instance '{}': will not signal pid {}: {}", options.instance,
                                   supervisor, why.empty() ? "it ended meanwhile" : why));
  }
  // The supervisor drains on SIGTERM exactly as at the end of its input.
  if (!handle.signal(SIGTERM)) {
    std::fprintf(stderr, "flowseal: cannot signal supervisor pid %d: %s\n", supervisor,
                 std::strerror(errno));
    return exit_code::kTempFail;
  }
  std::fprintf(stderr, "flowseal: instance '%s' draining (supervisor pid %d)...\n",
               options.instance.c_str(), supervisor);
  if (handle.wait_exit(Clock::now() + std::chrono::seconds(options.timeout_s))) {
    std::fprintf(stderr, "flowseal: instance '%s' stopped\n", options.instance.c_str());
    return exit_code::kOk;
  }
  std::fprintf(stderr, "flowseal: instance '%s' still draining after %d s (pid %d)\n",
               options.instance.c_str(), options.timeout_s, supervisor);
  return exit_code::kTempFail;
}

int restart_command(const RestartOptions& options) {
  return with_instance(options.instance, [&](AttachedInstance& attached) {
    return request_restart(options, attached);
  });
}

static int request_restart(const RestartOptions& options, AttachedInstance& attached) {
  ControlBlock& control = attached.control;
  // Bits in the block, then kLookAtControl (ignored unless handled): a live pid is enough.
  if (const pid_t supervisor = control.supervisor_pid.load(); !process_alive(supervisor)) {
    throw CommandError(exit_code::kUnavailable,
                       fmt::format("instance '{}' is not running: its supervisor (pid {}) is "
                                   "gone; `flowseal cleanup --instance {}` removes what it left",
                                   options.instance, supervisor, options.instance));
  }
  // "flowd" means every shard; "flowd[1]" or "flowd1" one of them.
  std::uint64_t mask = 0;
  std::vector<std::size_t> chosen;
  for (std::size_t i = 0; i < control.slot_count(); ++i) {
    const std::string name = slot_name(control, i);
    std::string compact = name;
    std::erase(compact, '[');
    std::erase(compact, ']');
    const std::string kind(to_string(static_cast<StageKind>(control.slots[i].kind.load())));
    if (options.stage == name || options.stage == compact || options.stage == kind) {
      mask |= std::uint64_t{1} << i;
      chosen.push_back(i);
    }
  }
  if (mask == 0) {
    std::fprintf(stderr,
                 "flowseal restart: no stage '%s' (capture, flowd, flowd[N], dedupd, "
                 "signerd, writerd, shipd)\n",
                 options.stage.c_str());
    return exit_code::kUsage;
  }
  std::vector<pid_t> old_pids;
  for (std::size_t i : chosen) old_pids.push_back(control.slots[i].pid.load());
  control.restart_requests.fetch_or(mask);
  // Looked at at once, not at the supervisor's next wake (up to a second away when idle).
  // Ignored by default, so even a process that took over the pid is not harmed.
  ::kill(control.supervisor_pid.load(), kLookAtControl);
  const auto deadline = Clock::now() + std::chrono::seconds(options.timeout_s);
  for (std::size_t k = 0; k < chosen.size(); ++k) {
    const StageSlot& slot = control.slots[chosen[k]];
    for (;;) {
      const pid_t now = slot.pid.load();
      const auto state = static_cast<StageState>(slot.state.load());
      if (now != old_pids[k] && process_alive(now) && state == StageState::kRunning) {
        std::printf("%s restarted: pid %d -> %d\n", slot_name(control, chosen[k]).c_str(),
                    old_pids[k], now);
        break;
      }
      if (state == StageState::kDone) {
        std::printf("%s had already finished its work\n", slot_name(control, chosen[k]).c_str());
        break;
      }
      if (Clock::now() >= deadline) {
        std::fprintf(stderr, "flowseal restart: %s did not come back within %d s\n",
                     slot_name(control, chosen[k]).c_str(), options.timeout_s);
        return exit_code::kTempFail;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  return exit_code::kOk;
}

int cleanup_command(const CleanupOptions& options) {
  const CleanupResult result = cleanup_instance(options.instance);
  if (!result.live.empty()) {
    throw CommandError(
        exit_code::kTempFail,
        fmt::format("instance '{}' is alive: pid {} uses its shared memory; "
                    "nothing removed (stop it with `flowseal stop --instance {}`)",
                    options.instance, fmt::join(result.live, ", "), options.instance));
  }
  for (const auto& line : result.removed) std::printf("removed %s\n", line.c_str());
  for (const auto& line : result.refused)
    std::fprintf(stderr, "flowseal cleanup: %s\n", line.c_str());
  if (result.removed.empty() && result.refused.empty()) {
    std::printf("instance '%s': nothing to clean up\n", options.instance.c_str());
  }
  return result.refused.empty() ? exit_code::kOk : exit_code::kNoPermission;
}

}  // namespace flowseal::supervisor
