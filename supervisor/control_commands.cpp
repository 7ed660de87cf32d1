// `flowseal status`, `flowseal stop` and `flowseal restart STAGE`: talk to a running instance
// through its control block in shared memory (and, for stop, a signal to its supervisor).
// They work from another terminal as the same user; they never block the running stages.
#include <signal.h>

#include <cerrno>
#include <cstring>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <thread>

#include <fmt/format.h>

#include "commands.h"
#include "control_block.h"
#include "layout.h"
#include "pressure_level.h"
#include "proc_stats.h"
#include "ring.h"
#include "shm.h"
#include "stage_runtime.h"

namespace flowseal::supervisor {
namespace {

using Clock = std::chrono::steady_clock;

// The control block of a running instance, or an exception that says there is none.
struct AttachedInstance {
  explicit AttachedInstance(const std::string& instance)
      : segment(open_control(instance)), control(control_block_attach(segment.bytes())) {}

  static ShmSegment open_control(const std::string& instance) {
    if (!ShmSegment::exists(control_block_name(instance))) {
      throw std::runtime_error(fmt::format(
          "no flowseal instance '{}' is running (no {} in /dev/shm)", instance,
          control_block_name(instance)));
    }
    return ShmSegment::open(control_block_name(instance));
  }

  ShmSegment segment;
  ControlBlock& control;
};

bool process_alive(pid_t pid) { return pid > 0 && (kill(pid, 0) == 0 || errno == EPERM); }

struct SlotSample {
  std::string name;
  pid_t pid = 0;
  StageState state = StageState::kNotStarted;
  std::uint32_t restarts = 0;
  std::uint32_t memory_restarts = 0;  // of restarts: over the stage's memory limit
  double uptime_s = 0;
  double heartbeat_age_ms = 0;
  std::uint64_t pss = 0;
  std::uint64_t in = 0;   // packets (capture, flowd) or records (the rest)
  std::uint64_t out = 0;
};

SlotSample sample_slot(const ControlBlock& control, std::size_t index) {
  namespace cc = capture_counter;
  namespace fc = flowd_counter;
  namespace rc = record_counter;
  const StageSlot& slot = control.slots[index];
  SlotSample s;
  s.name = slot_name(control, index);
  s.pid = slot.pid.load();
  s.state = static_cast<StageState>(slot.state.load());
  s.restarts = slot.restarts.load();
  s.memory_restarts = slot.memory_restarts.load();
  const std::int64_t now = monotonic_ns();
  if (slot.started_ns.load() != 0) s.uptime_s = double(now - slot.started_ns.load()) / 1e9;
  if (slot.heartbeat_ns.load() != 0) s.heartbeat_age_ms = double(now - slot.heartbeat_ns.load()) / 1e6;
  if (process_alive(s.pid)) s.pss = pss_bytes(s.pid);
  switch (static_cast<StageKind>(slot.kind.load())) {
    case StageKind::kCapture:
      s.in = slot.counters[cc::kReceived].load();
      s.out = slot.counters[cc::kPublished].load();
      break;
    case StageKind::kFlowd:
      s.in = slot.counters[fc::kPackets].load() + slot.counters[fc::kNotIp].load() +
             slot.counters[fc::kMalformed].load();
      s.out = slot.counters[fc::kEventsOut].load();
      break;
    default:
      s.in = slot.counters[rc::kRecordsIn].load();
      s.out = slot.counters[rc::kRecordsOut].load();
  }
  return s;
}

// Ring fill per edge, read from the ring headers (the stats a producer and consumer keep).
std::vector<std::pair<std::string, double>> ring_fill(const std::string& instance,
                                                      std::size_t shards) {
  std::vector<std::string> edges;
  for (std::size_t s = 0; s < shards; ++s) {
    edges.push_back(packet_edge(s));
    edges.push_back(flow_edge(s));
  }
  edges.emplace_back(kDedupEdge);
  edges.emplace_back(kSealedEdge);
  std::vector<std::pair<std::string, double>> fill;
  for (const auto& edge : edges) {
    try {
      ShmSegment segment = ShmSegment::open(ring_name(instance, edge));
      const RingHeader& header = ring_attach(segment.bytes());
      const double used = double(header.head.load() - header.tail.load());
      fill.emplace_back(edge, 100.0 * used / double(header.capacity));
    } catch (const std::exception&) {
      fill.emplace_back(edge, -1);
    }
  }
  return fill;
}

}  // namespace

int status_command(const StatusOptions& options) {
  AttachedInstance attached(options.instance);
  const ControlBlock& control = attached.control;
  const std::size_t slots = control.slot_count();
  // Two samples half a second apart give the rates.
  std::vector<SlotSample> before, after;
  for (std::size_t i = 0; i < slots; ++i) before.push_back(sample_slot(control, i));
  const auto t0 = Clock::now();
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  for (std::size_t i = 0; i < slots; ++i) after.push_back(sample_slot(control, i));
  const double dt = std::chrono::duration<double>(Clock::now() - t0).count();

  namespace cc = capture_counter;
  const StageSlot& capture = control.slots[0];
  const PressureLevel level = pressure_level_from(control.pressure_level.load());
  const double usage_pct = control.pressure_usage_permille.load() / 10.0;
  const std::uint64_t level_changes = control.pressure_changes.load();
  const pid_t supervisor = control.supervisor_pid.load();
  const auto fill = ring_fill(options.instance, control.shards);
  const std::uint64_t ring_dropped = capture.counters[cc::kRingFullDropped].load();
  const std::uint64_t kernel_dropped = capture.counters[cc::kKernelDropped].load();
  const std::uint64_t sampled = capture.counters[cc::kSampledOut].load();
  const std::uint64_t stalled_dropped = capture.counters[cc::kWriterStalledDropped].load();
  const StageSlot& writer = control.slots[slot_index(StageKind::kWriterd, 0, control.shards)];
  const std::int64_t stalled_since = static_cast<std::int64_t>(
      writer.counters[record_counter::kStalledSinceNs].load());
  const double stalled_s = stalled_since > 0 ? double(monotonic_ns() - stalled_since) / 1e9 : 0;
  const std::uint64_t write_errors = writer.counters[record_counter::kWriteErrors].load();

  if (options.json) {
    std::string out = fmt::format(
        "{{\"instance\":\"{}\",\"supervisor_pid\":{},\"supervisor_alive\":{},\"pressure\":\"{}\","
        "\"pressure_usage_pct\":{:.1f},\"pressure_changes\":{},\"pressure_peak\":\"{}\","
        "\"stop_requested\":{},\"drops\":{{\"ring_full\":{},\"kernel\":{},\"sampled_out\":{},"
        "\"writer_stalled\":{}}},\"writer\":{{\"stalled\":{},\"stalled_s\":{:.1f},"
        "\"write_errors\":{}}},\"stages\":[",
        options.instance, supervisor, process_alive(supervisor) ? "true" : "false",
        to_string(level), usage_pct, level_changes,
        to_string(pressure_level_from(control.pressure_peak_level.load())),
        control.stop_requested.load() != 0 ? "true" : "false", ring_dropped, kernel_dropped,
        sampled, stalled_dropped, stalled_since > 0 ? "true" : "false", stalled_s, write_errors);
    for (std::size_t i = 0; i < slots; ++i) {
      const auto& a = after[i];
      out += fmt::format(
          "{}{{\"stage\":\"{}\",\"pid\":{},\"state\":\"{}\",\"uptime_s\":{:.1f},\"restarts\":{},"
          "\"memory_limit_restarts\":{},\"heartbeat_age_ms\":{:.0f},\"pss_bytes\":{},\"in_per_s\":{:.0f},\"out_per_s\":{:.0f},"
          "\"in_total\":{},\"out_total\":{}}}",
          i ? "," : "", a.name, a.pid, to_string(a.state), a.uptime_s, a.restarts,
          a.memory_restarts, a.heartbeat_age_ms, a.pss, double(a.in - before[i].in) / dt,
          double(a.out - before[i].out) / dt, a.in, a.out);
    }
    out += "],\"rings\":{";
    for (std::size_t i = 0; i < fill.size(); ++i) {
      out += fmt::format("{}\"{}\":{:.1f}", i ? "," : "", fill[i].first, fill[i].second);
    }
    out += "}}\n";
    std::fputs(out.c_str(), stdout);
    return exit_code::kOk;
  }

  std::string out = fmt::format(
      "instance {}: supervisor pid {} ({}), pressure {} (usage {:.0f}%, {} level changes){}\n",
      options.instance, supervisor, process_alive(supervisor) ? "running" : "GONE",
      to_string(level), usage_pct, level_changes,
      control.stop_requested.load() != 0 ? ", draining" : "");
  out += fmt::format("{:<10} {:>8} {:<9} {:>9} {:>8} {:>10} {:>9} {:>12} {:>12}\n", "STAGE",
                     "PID", "STATE", "UPTIME", "RESTARTS", "HEARTBEAT", "PSS", "IN/s", "OUT/s");
  std::uint64_t total_pss = 0;
  for (std::size_t i = 0; i < slots; ++i) {
    const auto& a = after[i];
    total_pss += a.pss;
    // "3 (1m)": three restarts, one of them for the memory limit.
    const std::string restarts = a.memory_restarts
                                     ? fmt::format("{} ({}m)", a.restarts, a.memory_restarts)
                                     : std::to_string(a.restarts);
    out += fmt::format("{:<10} {:>8} {:<9} {:>8.1f}s {:>8} {:>8.0f}ms {:>7.1f}Mi {:>12.0f} {:>12.0f}\n",
                       a.name, a.pid, to_string(a.state), a.uptime_s, restarts,
                       a.heartbeat_age_ms, double(a.pss) / (1 << 20),
                       double(a.in - before[i].in) / dt, double(a.out - before[i].out) / dt);
  }
  out += fmt::format("total PSS {:.1f} MiB\nrings:", double(total_pss) / (1 << 20));
  for (const auto& [edge, percent] : fill) out += fmt::format(" {}={:.0f}%", edge, percent);
  out += fmt::format("\npackets: received {}, dropped ring-full {} ({} while writerd could not "
                     "write), kernel {}, sampled out {}\n",
                     capture.counters[cc::kReceived].load(), ring_dropped, stalled_dropped,
                     kernel_dropped, sampled);
  if (stalled_since > 0) {
    out += fmt::format("writer: STALLED for {:.0f} s, {} failed writes (disk full? its log says "
                       "why): live capture drops, offline input waits\n",
                       stalled_s, write_errors);
  }
  std::fputs(out.c_str(), stdout);
  return exit_code::kOk;
}

int stop_command(const StopOptions& options) {
  pid_t supervisor = 0;
  {
    AttachedInstance attached(options.instance);
    supervisor = attached.control.supervisor_pid.load();
  }
  if (!process_alive(supervisor)) {
    std::fprintf(stderr, "flowseal: instance '%s': its supervisor (pid %d) is gone; the next "
                 "`flowseal run --instance %s` cleans up what it left\n",
                 options.instance.c_str(), supervisor, options.instance.c_str());
    return exit_code::kNoInput;
  }
  // The supervisor drains on SIGTERM exactly as at the end of its input.
  if (kill(supervisor, SIGTERM) != 0) {
    std::fprintf(stderr, "flowseal: cannot signal supervisor pid %d: %s\n", supervisor,
                 std::strerror(errno));
    return exit_code::kTempFail;
  }
  std::fprintf(stderr, "flowseal: instance '%s' draining (supervisor pid %d)...\n",
               options.instance.c_str(), supervisor);
  const auto deadline = Clock::now() + std::chrono::seconds(options.timeout_s);
  while (Clock::now() < deadline) {
    if (!process_alive(supervisor)) {
      std::fprintf(stderr, "flowseal: instance '%s' stopped\n", options.instance.c_str());
      return exit_code::kOk;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  std::fprintf(stderr, "flowseal: instance '%s' still draining after %d s (pid %d)\n",
               options.instance.c_str(), options.timeout_s, supervisor);
  return exit_code::kTempFail;
}

int restart_command(const RestartOptions& options) {
  AttachedInstance attached(options.instance);
  ControlBlock& control = attached.control;
  if (!process_alive(control.supervisor_pid.load())) {
    throw std::runtime_error(fmt::format("instance '{}' has no live supervisor",
                                         options.instance));
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
    std::fprintf(stderr, "flowseal restart: no stage '%s' (capture, flowd, flowd[N], dedupd, "
                 "signerd, writerd)\n", options.stage.c_str());
    return exit_code::kUsage;
  }
  std::vector<pid_t> old_pids;
  for (std::size_t i : chosen) old_pids.push_back(control.slots[i].pid.load());
  control.restart_requests.fetch_or(mask);
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

}  // namespace flowseal::supervisor
