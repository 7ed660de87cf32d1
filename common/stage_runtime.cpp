#include "stage_runtime.h"

#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <exception>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "ring_io.h"
#include "version.h"

namespace flowseal {
namespace {

// Set from the signal handlers; the only process-wide state a stage has.
std::atomic<int> g_signal_received{0};
// An eventfd every handler writes to (StageRuntime::wake_fd): made before any handler.
std::atomic<int> g_wake_fd{-1};

void wake_process() {  // async-signal-safe
  const int fd = g_wake_fd.load();
  if (fd < 0) return;
  const std::uint64_t one = 1;
  [[maybe_unused]] const ssize_t n = ::write(fd, &one, sizeof one);
}

extern "C" void on_stop_signal(int signo) {
  g_signal_received.store(signo);
  wake_process();
}
extern "C" void on_look_at_control(int) { wake_process(); }

// How long a stage whose supervisor died may take to leave on its own. A stage blocked on a
// full ring whose consumer died with the supervisor would wait for ever; past this the
// default action of SIGALRM ends it. Nothing is lost either way: what it had not committed
// stays in shared memory for the next run, which recovers or removes it.
constexpr unsigned kOrphanGraceSeconds = 3;

// The parent-death signal: not SIGHUP, which a terminal's hangup sends to the whole process
// group and which the supervisor takes as "reload the config".
constexpr int kSupervisorDied = SIGUSR2;

extern "C" void on_supervisor_death(int) {
  g_signal_received.store(kSupervisorDied);
  alarm(kOrphanGraceSeconds);  // async-signal-safe
  wake_process();
}

void install_signal_handlers() {
  g_wake_fd.store(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  // No SA_RESTART anywhere: a stage asleep in futex(2) or poll(2) wakes with EINTR.
  struct sigaction look {};
  look.sa_handler = on_look_at_control;
  sigemptyset(&look.sa_mask);
  sigaction(kLookAtControl, &look, nullptr);
  struct sigaction action {};
  action.sa_handler = on_stop_signal;
  sigemptyset(&action.sa_mask);
  sigaction(SIGTERM, &action, nullptr);
  struct sigaction orphaned {};
  orphaned.sa_handler = on_supervisor_death;
  sigemptyset(&orphaned.sa_mask);
  sigaction(kSupervisorDied, &orphaned, nullptr);
  // Ctrl-C and a hangup of the terminal go to the whole process group; the supervisor
  // decides when each stage stops (SIGHUP: it reloads), so a stage ignores both.
  signal(SIGINT, SIG_IGN);
  signal(SIGHUP, SIG_IGN);
  signal(SIGPIPE, SIG_IGN);
}

}  // namespace

std::chrono::milliseconds heartbeat_every(std::int64_t heartbeat_timeout_ms) {
  return std::chrono::milliseconds(std::clamp<std::int64_t>(
      heartbeat_timeout_ms / 5, 100, std::chrono::milliseconds(kIdleWait).count()));
}

int StageRuntime::wake_fd() { return g_wake_fd.load(); }

StageRuntime::StageRuntime(StageKind kind, std::string instance, Config config, std::size_t shard)
    : instance_(std::move(instance)),
      config_(std::move(config)),
      shard_(shard),
      name_(kind == StageKind::kFlowd ? fmt::format("flowd[{}]", shard)
                                      : std::string(to_string(kind))),
      control_segment_(ShmSegment::open(control_block_name(instance_))),
      control_(&control_block_attach(control_segment_.bytes())),
      slot_(&control_->slots[slot_index(kind, shard, control_->shards)]) {
  if (kind == StageKind::kFlowd && shard >= control_->shards) {
    throw std::runtime_error(
        fmt::format("shard {} does not exist: the instance has {}", shard, control_->shards));
  }
  // Heartbeat first: the supervisor judges a stage hung once the slot's pid is this
  // process's, so the pid is published last.
  slot_->started_ns.store(monotonic_ns());
  slot_->ready_ns.store(0);
  slot_->heartbeat_ns.store(monotonic_ns(), std::memory_order_relaxed);  // not ready yet
  slot_->pid.store(static_cast<std::int32_t>(getpid()), std::memory_order_release);
  set_state(StageState::kRunning);
}

bool StageRuntime::stop_requested() const {
  return g_signal_received.load(std::memory_order_relaxed) != 0 ||
         control_->stop_requested.load(std::memory_order_relaxed) != 0;
}

bool StageRuntime::signalled() const {
  return g_signal_received.load(std::memory_order_relaxed) != 0;
}

ShmSegment StageRuntime::open_ring(std::string_view edge) const {
  return ShmSegment::open(ring_name(instance_, edge));
}

void init_logging(const std::string& stage_name) {
  auto logger = spdlog::stderr_color_mt(stage_name);
  logger->set_pattern(kLogPattern);
  spdlog::set_default_logger(logger);
  if (const char* level = std::getenv("FLOWSEAL_LOG")) {
    spdlog::set_level(spdlog::level::from_str(level));
  }
}

int run_stage(StageKind kind, int argc, char** argv,
              const std::function<int(StageRuntime&)>& body) {
  const std::string stage(to_string(kind));
  CLI::App app{fmt::format("flowseal {} stage (started by `flowseal run`)", stage),
               fmt::format("flowseal-{}", stage)};
  app.set_version_flag("--version", fmt::format("flowseal-{} {}", stage, FLOWSEAL_VERSION));
  std::string instance = "default";
  std::string config_file;
  std::size_t shard = 0;
  app.add_option("--instance", instance, "instance name")->required();
  app.add_option("--config", config_file, "effective config written by the supervisor")->required();
  app.add_option("--shard", shard, "flowd shard number");
  int key_fd = -1;
  app.add_option("--key-fd", key_fd,
                 "signerd: the private key on this inherited fd (supervisor.user)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? exit_code::kOk : exit_code::kUsage;
  }
  const std::string name = kind == StageKind::kFlowd ? fmt::format("flowd[{}]", shard) : stage;
  init_logging(name);
  // Die with the supervisor: an orphaned stage would hold shared memory nobody watches.
  // The handler goes in first, so a supervisor dying in between cannot kill the stage
  // without it noticing.
  install_signal_handlers();
  prctl(PR_SET_PDEATHSIG, kSupervisorDied);
  if (getppid() == 1) return exit_code::kTempFail;

  Config config;
  try {
    load_config_file(config, config_file);
    validate(config);
  } catch (const std::exception& e) {
    spdlog::error("{}", e.what());
    return exit_code::kConfig;
  }
  try {
    StageRuntime runtime(kind, instance, std::move(config), shard);
    runtime.set_key_fd(key_fd);
    const int code = body(runtime);
    runtime.set_state(code == 0 ? StageState::kDone : StageState::kFailed);
    return code;
  } catch (const std::exception& e) {
    spdlog::error("{}", e.what());
    return exit_code::kSoftware;
  }
}

}  // namespace flowseal
