#include "run_command.h"

#include <fcntl.h>
#include <poll.h>
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
#include <spdlog/sinks/base_sink.h>
#include <spdlog/spdlog.h>

#include "child_process.h"
#include "control_block.h"
#include "instance.h"
#include "pressure.h"
#include "proc_stats.h"
#include "progress.h"
#include "ring.h"
#include "seal/keys.h"
#include "stage_output.h"
#include "stage_runtime.h"
#include "stage_user.h"
#include "summary.h"
#include "systemd_notify.h"
#include "unique_fd.h"

namespace flowseal::supervisor {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

std::atomic<int> g_stop_signals{0};
// The write end of the supervisor's self-pipe: a stop signal or a stage's exit writes a byte
// so that the loop's poll() returns at once (a flag alone could be set just after the loop
// looked at it, and would then wait for the whole tick). -1 outside run_pipeline.
std::atomic<int> g_wake_fd{-1};
void wake_loop() {
  const int fd = g_wake_fd.load();
  if (fd >= 0) {
    const char byte = 0;
    [[maybe_unused]] const ssize_t n = ::write(fd, &byte, 1);  // full pipe: already woken
  }
}
extern "C" void on_supervisor_signal(int) {
  g_stop_signals.fetch_add(1);
  wake_loop();
}
extern "C" void on_child_exit(int) { wake_loop(); }

// The self-pipe and the handlers that write to it, for one run.
class LoopWakeup {
 public:
  LoopWakeup() {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) != 0) {
      throw std::runtime_error(fmt::format("cannot create the supervisor's wake-up pipe: {}",
                                           std::strerror(errno)));
    }
    read_end_.reset(fds[0]);
    write_end_.reset(fds[1]);
    g_wake_fd.store(fds[1]);
    struct sigaction stop {};
    stop.sa_handler = on_supervisor_signal;
    sigemptyset(&stop.sa_mask);
    sigaction(SIGINT, &stop, nullptr);
    sigaction(SIGTERM, &stop, nullptr);
    struct sigaction child {};
    child.sa_handler = on_child_exit;
    child.sa_flags = SA_NOCLDSTOP | SA_RESTART;
    sigemptyset(&child.sa_mask);
    sigaction(SIGCHLD, &child, nullptr);
  }
  ~LoopWakeup() {
    signal(SIGCHLD, SIG_DFL);
    g_wake_fd.store(-1);
  }
  LoopWakeup(const LoopWakeup&) = delete;
  LoopWakeup& operator=(const LoopWakeup&) = delete;

  // Sleeps until a signal, a stage's exit, `also` readable (if >= 0) or the timeout.
  void wait(std::chrono::milliseconds timeout, int also) {
    pollfd fds[2] = {{read_end_.get(), POLLIN, 0}, {also, POLLIN, 0}};  // poll skips fd -1
    ::poll(fds, 2, static_cast<int>(std::max<std::int64_t>(timeout.count(), 0)));
    char buf[64];
    while (::read(read_end_.get(), buf, sizeof buf) > 0) {
    }
  }

 private:
  UniqueFd read_end_;
  UniqueFd write_end_;
};

// The supervisor's longest sleep once the run is up: what it only polls (restart requests
// of `flowseal restart`, heartbeat ages) is seen within this. Exits and signals wake it at
// once; timed work (restart backoff, memory samples, the watchdog) sets its own deadline.
constexpr auto kIdleTick = std::chrono::milliseconds(250);
// Until every stage is ready: readiness is reported within this of happening.
constexpr auto kStartTick = std::chrono::milliseconds(5);

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
  // `flowseal restart`, or over its memory limit: the stage was asked to leave and is
  // replaced at once when it exits.
  bool operator_restart = false;
  bool memory_restart = false;  // the request came from its memory limit
  double cpu_seconds = 0;     // of the processes that ended
  std::uint64_t peak_pss = 0;
  std::uint64_t peak_private = 0;
  std::uint64_t private_limit = 0;  // bytes; 0: none
  std::uint32_t memory_restarts = 0;
  Clock::time_point operator_restart_deadline{};
};

// While the progress bar is on the terminal, every log line of the supervisor erases it
// first: a sink placed before the real one in the default logger, for the guard's lifetime.
class LogClearsBar {
 public:
  explicit LogClearsBar(ProgressBar& bar) : sink_(std::make_shared<ClearingSink>(bar)) {
    auto& sinks = spdlog::default_logger()->sinks();
    sinks.insert(sinks.begin(), sink_);
  }
  ~LogClearsBar() {
    auto& sinks = spdlog::default_logger()->sinks();
    sinks.erase(std::remove(sinks.begin(), sinks.end(), sink_), sinks.end());
  }
  LogClearsBar(const LogClearsBar&) = delete;
  LogClearsBar& operator=(const LogClearsBar&) = delete;

 private:
  // The supervisor logs from its one thread: no mutex.
  class ClearingSink final : public spdlog::sinks::base_sink<spdlog::details::null_mutex> {
   public:
    explicit ClearingSink(ProgressBar& bar) : bar_(bar) {}

   protected:
    void sink_it_(const spdlog::details::log_msg&) override { bar_.clear(); }
    void flush_() override {}

   private:
    ProgressBar& bar_;
  };
  std::shared_ptr<spdlog::sinks::sink> sink_;
};

double mib(std::uint64_t bytes) { return double(bytes) / double(1 << 20); }

// How long a stage asked to leave for a restart may take before it is killed.
constexpr auto kRestartGrace = std::chrono::seconds(5);

void publish_public_key(const Config& config, const fs::path& key);

void ensure_key(Config& config, const std::optional<Credentials>& user) {
  if (config.seal.key_file.empty()) {
    config.seal.key_file = default_key_file(config, user.has_value()).string();
  }
  const fs::path key(config.seal.key_file);
  if (!fs::exists(key)) {
    fs::create_directories(key.parent_path());
    ::chmod(key.parent_path().c_str(), 0700);
  }
  if (user) require_key_out_of_reach(*user, key);
  if (!fs::exists(key)) {
    fs::path pub = key;
    pub.replace_extension(".pub");
    seal::generate_key_pair(seal::parse_algorithm(config.seal.algorithm), key, pub);
    spdlog::info("no signing key: made a new {} key pair {} (private, 0600) and {}",
                 config.seal.algorithm, key.string(), pub.string());
  }
  if (user) publish_public_key(config, key);
}

// With a user the key lives outside writer.dir; `flowseal verify DIR` looks for DIR/keys/
// *.pub, so the public half is copied there. writer.dir is the user's: every step refuses a
// symbolic link and the file is made afresh (O_EXCL), so root never writes through one.
void publish_public_key(const Config& config, const fs::path& key) {
  fs::path pub = key;
  pub.replace_extension(".pub");
  std::ifstream in(pub, std::ios::binary);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (!in && !in.eof()) throw std::runtime_error(fmt::format("cannot read {}", pub.string()));
  auto fail = [&](const char* step) {
    return std::runtime_error(fmt::format("cannot copy the public key into {}/keys ({}): {}",
                                          config.writer.dir, step, std::strerror(errno)));
  };
  UniqueFd dir(::open(config.writer.dir.c_str(), O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (dir.get() < 0) throw fail("open writer.dir");
  if (::mkdirat(dir.get(), "keys", 0755) != 0 && errno != EEXIST) throw fail("mkdir keys");
  UniqueFd keys(::openat(dir.get(), "keys", O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (keys.get() < 0) throw fail("open keys");
  const std::string name = pub.filename().string();
  if (::unlinkat(keys.get(), name.c_str(), 0) != 0 && errno != ENOENT) throw fail("unlink");
  UniqueFd out(::openat(keys.get(), name.c_str(),
                                 O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644));
  if (out.get() < 0) throw fail("create");
  if (::write(out.get(), text.data(), text.size()) != static_cast<ssize_t>(text.size())) {
    throw fail("write");
  }
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
  SystemdNotifier notifier = SystemdNotifier::from_environment();
  const std::optional<Credentials> user = stage_credentials(config);
  prepare_output_dir(config, user);
  ensure_key(config, user);

  RunDirectory run_dir(config.supervisor.instance);
  const fs::path config_file = run_dir.path() / "config.yaml";
  {
    std::ofstream out(config_file);
    out << dump_config(config);
    if (!out) throw std::runtime_error(fmt::format("cannot write {}", config_file.string()));
  }
  if (user) {
    share_read_only(*user, run_dir.path(), config_file);
    require_access(*user, config_file, R_OK, "the effective config");
    spdlog::info("flowd, dedupd, signerd and writerd run as {} (uid {}, gid {}, no capabilities)",
                 user->user, user->uid, user->gid);
  }

  Instance instance(config, owner_of(user));
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
    if (kind == StageKind::kSignerd && user) {
      stage.argv.push_back("--key-fd");
      stage.argv.push_back(std::to_string(kPassedFd));
    }
    stage.private_limit = private_limit(config, instance.plan(), kind);
    stages.push_back(std::move(stage));
  };
  add_stage(StageKind::kWriterd, 0);
  add_stage(StageKind::kSignerd, 0);
  add_stage(StageKind::kDedupd, 0);
  for (std::size_t s = 0; s < shards; ++s) add_stage(StageKind::kFlowd, s);
  add_stage(StageKind::kCapture, 0);

  LoopWakeup wakeup;

  // A file run on a terminal shows the progress bar; the stages' log lines then come
  // through the supervisor so that none lands on the bar's row.
  ProgressBar bar(STDERR_FILENO);
  const bool show_progress = bar.enabled() && !config.capture.files.empty();
  std::optional<StageOutput> stage_output;
  std::optional<LogClearsBar> log_clears_bar;
  if (show_progress) {
    stage_output.emplace();
    log_clears_bar.emplace(bar);
  }

  auto spawn = [&](Stage& stage) {
    SpawnOptions options;
    if (stage_output) options.stderr_fd = stage_output->stage_fd();
    if (stage.kind != StageKind::kCapture) options.credentials = user;
    // Opened for each signerd on its own: the file stays root's and 0600.
    UniqueFd key;
    if (user && stage.kind == StageKind::kSignerd) {
      key.reset(::open(config.seal.key_file.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
      if (key.get() < 0) {
        throw std::runtime_error(fmt::format("cannot open the signing key {} for signerd: {}",
                                             config.seal.key_file, std::strerror(errno)));
      }
      // Only a key of the supervisor's own is handed on: never one someone else put there.
      struct stat st {};
      if (::fstat(key.get(), &st) != 0 || !S_ISREG(st.st_mode) || st.st_uid != geteuid() ||
          (st.st_mode & 077) != 0) {
        throw ConfigError(fmt::format(
            "seal.key_file {}: not a regular file of uid {} with mode 0600; signerd is not "
            "given it", config.seal.key_file, geteuid()));
      }
      options.pass_fd = key.get();
    }
    stage.process = ChildProcess::spawn(stage.argv, options);
  };
  for (auto& stage : stages) spawn(stage);
  spdlog::info("instance '{}' running: {} stage processes, {} MiB of shared memory", config.supervisor.instance,
               stages.size(), instance.plan().total() >> 20);

  // systemd (Type=notify): ready once every stage is, stopping at the drain.
  bool ready_reported = false;
  bool stopping_reported = false;
  auto report_stopping = [&](std::string_view why) {
    if (stopping_reported) return;
    stopping_reported = true;
    notifier.notify(fmt::format("STOPPING=1\nSTATUS=draining: {}", why));
  };
  auto last_watchdog = Clock::now();
  auto ask_to_restart = [&](Stage& stage) {
    stage.operator_restart = true;
    stage.operator_restart_deadline = Clock::now() + kRestartGrace;
    // capture takes SIGTERM as the end of its input and would close its rings; it is
    // replaced the way a crash is, which resumes after the packets it published.
    stage.process.signal(stage.kind == StageKind::kCapture ? SIGKILL : SIGTERM);
  };

  int result = exit_code::kOk;
  bool aborting = false;
  // Stages asked to leave on an abort get this long before they are killed: one blocked on
  // a full ring behind a dead consumer would otherwise hold the run for ever.
  std::optional<Clock::time_point> abort_deadline;
  auto slot_of = [&](const Stage& s) -> StageSlot& {
    return control.slots[slot_index(s.kind, s.shard, shards)];
  };
  auto last_stats = Clock::now();
  const auto memory_sample_interval = std::chrono::milliseconds(config.memory.sample_ms);
  // The first memory sample comes a moment after start, when every stage has mapped its rings.
  auto last_memory_sample = Clock::now() - memory_sample_interval +
                            std::min<Clock::duration>(memory_sample_interval, std::chrono::milliseconds(200));
  std::uint64_t peak_total_pss = 0;
  std::uint64_t peak_held = 0;  // the same without mapped files
  PressureMonitor pressure(config, instance.plan(), control);
  const auto heartbeat_timeout_ns = config.supervisor.heartbeat_timeout_ms * 1'000'000;

  for (;;) {
    const int signals = g_stop_signals.load();
    if (signals == 1 && control.stop_requested.load() == 0) {
      spdlog::info("stop requested: draining (send the signal again to abort)");
      control.stop_requested.store(1);
      report_stopping("stop requested");
    } else if (signals >= 2 && !aborting) {
      spdlog::warn("second stop signal: aborting without drain");
      report_stopping("aborting");
      aborting = true;
      result = exit_code::kTempFail;
      for (auto& s : stages) s.process.signal(SIGKILL);
    }

    if (const std::uint64_t requests = control.restart_requests.exchange(0);
        requests != 0 && !aborting) {
      for (auto& stage : stages) {
        const std::size_t index = slot_index(stage.kind, stage.shard, shards);
        if (((requests >> index) & 1) == 0 || stage.finished || stage.waiting_restart) continue;
        stage.memory_restart = false;
        spdlog::info("{} (pid {}): restart requested", stage.name, stage.process.pid());
        ask_to_restart(stage);
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
          spawn(stage);
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
          if (stage.memory_restart) {
            ++stage.memory_restarts;
            slot.memory_restarts.store(stage.memory_restarts);
          }
          spawn(stage);
          spdlog::info("{} restarted {} (pid {}, {})", stage.name,
                       stage.memory_restart ? "after going over its memory limit" : "on request",
                       stage.process.pid(), exit->describe());
          continue;
        }
        stage.operator_restart = false;
        if (stage.kind == StageKind::kCapture && exit->code == 0) report_stopping("end of input");
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
          report_stopping(fmt::format("{} failed", stage.name));
          result = exit->code;
          aborting = true;
          for (auto& s : stages) s.process.signal(SIGTERM);
          continue;
        }
        if (stage.restarts >= static_cast<std::uint32_t>(config.supervisor.max_restarts)) {
          spdlog::error("{} failed ({}) after {} restarts: giving up", stage.name,
                        exit->describe(), stage.restarts);
          report_stopping(fmt::format("{} keeps failing", stage.name));
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
      const bool in_slot = slot.pid.load(std::memory_order_acquire) == stage.process.pid();
      const std::int64_t silent = monotonic_ns() - slot.heartbeat_ns.load();
      if (in_slot && slot.heartbeat_ns.load() != 0 && silent > heartbeat_timeout_ns) {
        spdlog::warn("{} (pid {}) sent no heartbeat for {} ms: killing it", stage.name,
                     stage.process.pid(), silent / 1'000'000);
        stage.process.signal(SIGKILL);
      }
    }
    if (all_finished) break;

    if (!ready_reported) {
      // Ready: every stage that has not already finished runs and has heartbeaten from its
      // loop (its rings and inputs are open; capture's handle too).
      const bool ready = std::all_of(stages.begin(), stages.end(), [&](const Stage& s) {
        if (s.finished) return true;
        const StageSlot& slot = slot_of(s);
        return s.process.running() && slot.pid.load(std::memory_order_acquire) == s.process.pid() &&
               slot.ready_ns.load(std::memory_order_acquire) != 0;
      });
      if (ready) {
        ready_reported = true;
        control.ready.store(1);
        const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started);
        spdlog::info("ready: every stage is up ({} ms after start)", ms.count());
        notifier.notify(fmt::format("READY=1\nSTATUS=running: {} stage processes, instance '{}'\nMAINPID={}",
                                    stages.size(), config.supervisor.instance, getpid()));
      }
    }
    if (const auto interval = notifier.watchdog_interval();
        interval && Clock::now() - last_watchdog >= *interval) {
      last_watchdog = Clock::now();
      notifier.notify("WATCHDOG=1");
    }

    // memory.sample_ms (once a second by default: smaps_rollup walks every
    // mapping of a stage, the rings' too), and short runs get one. Each sample also sets the pressure level and holds every stage to
    // its private-memory limit.
    if (Clock::now() - last_memory_sample >= memory_sample_interval) {
      last_memory_sample = Clock::now();
      std::uint64_t total = 0, held = 0, private_total = 0;
      for (auto& stage : stages) {
        if (!stage.process.running()) continue;
        const ProcessMemory memory = process_memory(stage.process.pid());
        stage.peak_pss = std::max(stage.peak_pss, memory.pss);
        stage.peak_private = std::max(stage.peak_private, memory.pss_anon);
        total += memory.pss;
        held += memory.held();
        private_total += memory.pss_anon;
        // Over its limit: replaced the way `flowseal restart` does it (asked to leave, its
        // successor resumes from the rings); a stage already leaving is left to it.
        if (stage.private_limit > 0 && memory.pss_anon > stage.private_limit &&
            !stage.operator_restart && !aborting &&
            slot_of(stage).pid.load(std::memory_order_acquire) == stage.process.pid()) {
          spdlog::warn("{} (pid {}) holds {:.1f} MiB of private memory, over its limit of {:.1f} "
                       "MiB (memory.{}_limit_mb; PSS {:.1f} MiB): restarting it",
                       stage.name, stage.process.pid(), mib(memory.pss_anon),
                       mib(stage.private_limit), to_string(stage.kind), mib(memory.pss));
          if (stage.restarts >= static_cast<std::uint32_t>(config.supervisor.max_restarts)) {
            spdlog::error("{} over its memory limit after {} restarts: giving up", stage.name,
                          stage.restarts);
            report_stopping(fmt::format("{} keeps going over its memory limit", stage.name));
            result = exit_code::kSoftware;
            aborting = true;
            for (auto& s : stages) s.process.signal(SIGTERM);
            continue;
          }
          stage.memory_restart = true;
          ask_to_restart(stage);
        }
      }
      peak_total_pss = std::max(peak_total_pss, total);
      peak_held = std::max(peak_held, held);
      pressure.sample(private_total, last_memory_sample);
    }
    if (config.supervisor.stats_interval_s > 0 &&
        Clock::now() - last_stats >= std::chrono::seconds(config.supervisor.stats_interval_s)) {
      last_stats = Clock::now();
      bar.clear();
      print_stats_line(control, instance.rings());
    }
    if (show_progress) {
      namespace cc = capture_counter;
      const StageSlot& capture = control.slots[slot_index(StageKind::kCapture, 0, shards)];
      stage_output->pump(bar);
      bar.update(capture.counters[cc::kBytesRead].load(), capture.counters[cc::kBytesTotal].load(),
                 capture.counters[cc::kReceived].load(), Clock::now());
    }

    // Sleep until the next thing that is due; an idle run wakes 4 times a second.
    const auto now = Clock::now();
    auto next = now + (ready_reported ? std::chrono::duration_cast<Clock::duration>(kIdleTick)
                                      : std::chrono::duration_cast<Clock::duration>(kStartTick));
    next = std::min(next, last_memory_sample + memory_sample_interval);
    if (const auto interval = notifier.watchdog_interval()) next = std::min(next, last_watchdog + *interval);
    for (const auto& stage : stages) {
      if (stage.waiting_restart) next = std::min(next, stage.restart_at);
    }
    wakeup.wait(std::chrono::ceil<std::chrono::milliseconds>(next - now),
                stage_output ? stage_output->read_fd() : -1);
  }
  report_stopping("exiting");
  if (stage_output) stage_output->finish(bar);
  bar.clear();

  pressure.finish(Clock::now());
  const double seconds = std::chrono::duration<double>(Clock::now() - started).count();
  std::vector<StageUsage> usage;
  for (auto it = stages.rbegin(); it != stages.rend(); ++it) {  // capture first, as data flows
    usage.push_back({it->name, it->cpu_seconds, it->peak_pss, it->peak_private, it->restarts,
                     it->memory_restarts});
  }
  print_run_summary(config, control, seconds, usage, {peak_total_pss, peak_held});
  return result;
}

}  // namespace flowseal::supervisor
