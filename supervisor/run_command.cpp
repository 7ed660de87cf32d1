#include "run_command.h"

#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <fstream>
#include <optional>
#include <thread>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "child_process.h"
#include "control_block.h"
#include "instance.h"
#include "pressure.h"
#include "proc_stats.h"
#include "ring.h"
#include "seal/keys.h"
#include "stage_runtime.h"
#include "summary.h"

namespace flowseal::supervisor {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

std::atomic<int> g_stop_signals{0};
extern "C" void on_supervisor_signal(int) { g_stop_signals.fetch_add(1); }

// A private directory for the effective config, removed at the end of the run.
class RunDirectory {
 public:
  explicit RunDirectory(const std::string& instance) {
    std::string pattern = (fs::temp_directory_path() / fmt::format("flowseal.{}.XXXXXX", instance)).string();
    if (mkdtemp(pattern.data()) == nullptr) {
      throw std::runtime_error(fmt::format("cannot create a run directory {}: {}", pattern,
                                           std::strerror(errno)));
    }
    path_ = pattern;
  }
  ~RunDirectory() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  RunDirectory(const RunDirectory&) = delete;
  RunDirectory& operator=(const RunDirectory&) = delete;
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

// Exit codes after which a restart cannot help: the stage said the input or config is bad.
bool is_permanent(int code) {
  return code == exit_code::kUsage || code == exit_code::kDataError ||
         code == exit_code::kNoInput || code == exit_code::kConfig;
}

struct Stage {
  StageKind kind;
  std::size_t shard;
  std::string name;
  std::vector<std::string> argv;
  ChildProcess process;
  bool finished = false;
  int exit_code = 0;
  std::uint32_t restarts = 0;
  Clock::time_point restart_at{};
  bool waiting_restart = false;
  // `flowseal restart`: the stage was asked to leave and is replaced at once when it exits.
  bool operator_restart = false;
  double cpu_seconds = 0;     // of the processes that ended
  std::uint64_t peak_pss = 0;
  Clock::time_point operator_restart_deadline{};
};

// How long a stage asked to leave for a restart may take before it is killed.
constexpr auto kRestartGrace = std::chrono::seconds(5);

void ensure_key(Config& config) {
  if (config.seal.key_file.empty()) {
    config.seal.key_file = (fs::path(config.writer.dir) / "keys" / "flowseal.key").string();
  }
  const fs::path key(config.seal.key_file);
  if (fs::exists(key)) return;
  fs::create_directories(key.parent_path());
  ::chmod(key.parent_path().c_str(), 0700);
  fs::path pub = key;
  pub.replace_extension(".pub");
  seal::generate_key_pair(seal::parse_algorithm(config.seal.algorithm), key, pub);
  spdlog::info("no signing key: made a new {} key pair {} (private, 0600) and {}",
               config.seal.algorithm, key.string(), pub.string());
}

}  // namespace

fs::path stage_binary(const std::string& stage) {
  const fs::path self = fs::read_symlink("/proc/self/exe");
  const std::string file = "flowseal-" + stage;
  for (const fs::path& candidate :
       {self.parent_path() / file, self.parent_path().parent_path() / stage / file,
        self.parent_path().parent_path() / "libexec" / "flowseal" / file}) {
    if (fs::exists(candidate)) return candidate;
  }
  throw std::runtime_error(
      fmt::format("cannot find the stage binary {} next to {}", file, self.string()));
}

int run_pipeline(Config config) {
  const auto started = Clock::now();
  fs::create_directories(config.writer.dir);
  ensure_key(config);

  RunDirectory run_dir(config.supervisor.instance);
  const fs::path config_file = run_dir.path() / "config.yaml";
  {
    std::ofstream out(config_file);
    out << dump_config(config);
    if (!out) throw std::runtime_error(fmt::format("cannot write {}", config_file.string()));
  }

  Instance instance(config);
  ControlBlock& control = instance.control();
  const std::size_t shards = static_cast<std::size_t>(config.flowd.shards);

  // Downstream first, so every ring has its consumer before its producer starts.
  std::vector<Stage> stages;
  auto add_stage = [&](StageKind kind, std::size_t shard) {
    Stage stage{kind, shard, kind == StageKind::kFlowd ? fmt::format("flowd[{}]", shard)
                                                       : std::string(to_string(kind)),
                {}, {}};
    stage.argv = {stage_binary(std::string(to_string(kind))).string(), "--instance",
                  config.supervisor.instance, "--config", config_file.string()};
    if (kind == StageKind::kFlowd) {
      stage.argv.push_back("--shard");
      stage.argv.push_back(std::to_string(shard));
    }
    stages.push_back(std::move(stage));
  };
  add_stage(StageKind::kWriterd, 0);
  add_stage(StageKind::kSignerd, 0);
  add_stage(StageKind::kDedupd, 0);
  for (std::size_t s = 0; s < shards; ++s) add_stage(StageKind::kFlowd, s);
  add_stage(StageKind::kCapture, 0);

  struct sigaction action {};
  action.sa_handler = on_supervisor_signal;
  sigemptyset(&action.sa_mask);
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);

  for (auto& stage : stages) stage.process = ChildProcess::spawn(stage.argv);
  control.ready.store(1);
  spdlog::info("instance '{}' running: {} stage processes, {} MiB of shared memory", config.supervisor.instance,
               stages.size(), instance.plan().total() >> 20);

  int result = exit_code::kOk;
  bool aborting = false;
  // Stages asked to leave on an abort get this long before they are killed: one blocked on
  // a full ring behind a dead consumer would otherwise hold the run for ever.
  std::optional<Clock::time_point> abort_deadline;
  auto slot_of = [&](const Stage& s) -> StageSlot& {
    return control.slots[slot_index(s.kind, s.shard, shards)];
  };
  auto last_stats = Clock::now();
  // The first memory sample comes a moment after start, when every stage has mapped its rings.
  auto last_memory_sample = Clock::now() - std::chrono::milliseconds(200);
  std::uint64_t peak_total_pss = 0;
  std::uint64_t peak_held = 0;  // the same without mapped files
  const auto memory_sample_interval = std::chrono::milliseconds(config.memory.sample_ms);
  PressureMonitor pressure(config, instance.plan(), control);
  const auto heartbeat_timeout_ns = config.supervisor.heartbeat_timeout_ms * 1'000'000;

  for (;;) {
    const int signals = g_stop_signals.load();
    if (signals == 1 && control.stop_requested.load() == 0) {
      spdlog::info("stop requested: draining (send the signal again to abort)");
      control.stop_requested.store(1);
    } else if (signals >= 2 && !aborting) {
      spdlog::warn("second stop signal: aborting without drain");
      aborting = true;
      result = exit_code::kTempFail;
      for (auto& s : stages) s.process.signal(SIGKILL);
    }

    if (const std::uint64_t requests = control.restart_requests.exchange(0);
        requests != 0 && !aborting) {
      for (auto& stage : stages) {
        const std::size_t index = slot_index(stage.kind, stage.shard, shards);
        if (((requests >> index) & 1) == 0 || stage.finished || stage.waiting_restart) continue;
        stage.operator_restart = true;
        stage.operator_restart_deadline = Clock::now() + kRestartGrace;
        // capture takes SIGTERM as the end of its input and would close its rings; it is
        // replaced the way a crash is, which resumes after the packets it published.
        stage.process.signal(stage.kind == StageKind::kCapture ? SIGKILL : SIGTERM);
        spdlog::info("{} (pid {}): restart requested", stage.name, stage.process.pid());
      }
    }

    if (aborting && !abort_deadline) abort_deadline = Clock::now() + kRestartGrace;
    if (abort_deadline && Clock::now() >= *abort_deadline) {
      for (auto& s : stages) {
        if (s.process.running()) {
          spdlog::warn("{} (pid {}) still running {} s into the abort: killing it", s.name,
                       s.process.pid(), kRestartGrace.count());
          s.process.signal(SIGKILL);
        }
      }
      abort_deadline = Clock::time_point::max();
    }

    bool all_finished = true;
    for (auto& stage : stages) {
      if (stage.finished) continue;
      all_finished = false;
      StageSlot& slot = slot_of(stage);
      if (stage.waiting_restart && aborting) {
        stage.waiting_restart = false;
        stage.finished = true;  // an abort cancels the pending restart
        continue;
      }
      if (stage.waiting_restart) {
        if (Clock::now() >= stage.restart_at && !aborting) {
          stage.waiting_restart = false;
          stage.process = ChildProcess::spawn(stage.argv);
          spdlog::info("{} restarted (restart {})", stage.name, stage.restarts);
        }
        continue;
      }
      if (auto exit = stage.process.poll()) {
        stage.exit_code = exit->code;
        stage.cpu_seconds += exit->cpu_seconds;
        if (stage.operator_restart && exit->code != 0 && !aborting) {
          stage.operator_restart = false;
          ++stage.restarts;
          slot.restarts.store(stage.restarts);
          stage.process = ChildProcess::spawn(stage.argv);
          spdlog::info("{} restarted on request (pid {}, {})", stage.name, stage.process.pid(),
                       exit->describe());
          continue;
        }
        stage.operator_restart = false;
        if (exit->code == 0 || aborting) {
          stage.finished = true;
          if (exit->code != 0) slot.state.store(static_cast<std::uint32_t>(StageState::kFailed));
          continue;
        }
        if (is_permanent(exit->code)) {
          stage.finished = true;
          if (stage.kind == StageKind::kCapture && exit->code == exit_code::kDataError) {
            // The damaged input was reported and the good packets went through: finish the
            // drain, then exit with "data error".
            result = exit->code;
            spdlog::error("capture finished with input errors (see above); draining the rest");
            continue;
          }
          spdlog::error("{} failed ({}): stopping", stage.name, exit->describe());
          result = exit->code;
          aborting = true;
          for (auto& s : stages) s.process.signal(SIGTERM);
          continue;
        }
        if (stage.restarts >= static_cast<std::uint32_t>(config.supervisor.max_restarts)) {
          spdlog::error("{} failed ({}) after {} restarts: giving up", stage.name,
                        exit->describe(), stage.restarts);
          stage.finished = true;
          result = exit_code::kSoftware;
          aborting = true;
          for (auto& s : stages) s.process.signal(SIGTERM);
          continue;
        }
        const auto backoff = std::chrono::milliseconds(
            std::min<std::int64_t>(100LL << std::min<std::uint32_t>(stage.restarts, 6), 5000));
        ++stage.restarts;
        slot.restarts.store(stage.restarts);
        slot.state.store(static_cast<std::uint32_t>(StageState::kFailed));
        spdlog::warn("{} ended ({}); restarting in {} ms", stage.name, exit->describe(),
                     backoff.count());
        stage.waiting_restart = true;
        stage.restart_at = Clock::now() + backoff;
        continue;
      }
      if (stage.operator_restart && Clock::now() >= stage.operator_restart_deadline) {
        spdlog::warn("{} (pid {}) did not leave within {} s of the restart request: killing it",
                     stage.name, stage.process.pid(), kRestartGrace.count());
        stage.process.signal(SIGKILL);
        stage.operator_restart_deadline = Clock::time_point::max();
      }
      // Hung: alive but silent. Kill it; the exit above then restarts it.
      const bool started = slot.pid.load(std::memory_order_acquire) == stage.process.pid();
      const std::int64_t silent = monotonic_ns() - slot.heartbeat_ns.load();
      if (started && slot.heartbeat_ns.load() != 0 && silent > heartbeat_timeout_ns) {
        spdlog::warn("{} (pid {}) sent no heartbeat for {} ms: killing it", stage.name,
                     stage.process.pid(), silent / 1'000'000);
        stage.process.signal(SIGKILL);
      }
    }
    if (all_finished) break;

    // memory.sample_ms (4 a second by default): cheap (one small /proc read per stage), and
    // short runs get one. Each sample also sets the pressure level.
    if (Clock::now() - last_memory_sample >= memory_sample_interval) {
      last_memory_sample = Clock::now();
      std::uint64_t total = 0, held = 0, private_total = 0;
      for (auto& stage : stages) {
        if (!stage.process.running()) continue;
        const ProcessMemory memory = process_memory(stage.process.pid());
        stage.peak_pss = std::max(stage.peak_pss, memory.pss);
        total += memory.pss;
        held += memory.held();
        private_total += memory.pss_anon;
      }
      peak_total_pss = std::max(peak_total_pss, total);
      peak_held = std::max(peak_held, held);
      pressure.sample(private_total, last_memory_sample);
    }
    if (config.supervisor.stats_interval_s > 0 &&
        Clock::now() - last_stats >= std::chrono::seconds(config.supervisor.stats_interval_s)) {
      last_stats = Clock::now();
      print_stats_line(control, instance.rings());
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }

  pressure.finish(Clock::now());
  const double seconds = std::chrono::duration<double>(Clock::now() - started).count();
  std::vector<StageUsage> usage;
  for (auto it = stages.rbegin(); it != stages.rend(); ++it) {  // capture first, as data flows
    usage.push_back({it->name, it->cpu_seconds, it->peak_pss, it->restarts});
  }
  print_run_summary(config, control, seconds, usage, {peak_total_pss, peak_held});
  return result;
}

}  // namespace flowseal::supervisor
