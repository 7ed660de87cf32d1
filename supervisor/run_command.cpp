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
#include <map>
#include <sstream>
#include <optional>
#include <thread>

#include <fmt/format.h>
#include <spdlog/sinks/base_sink.h>
#include <spdlog/spdlog.h>

#include "chain_position.h"
#include "child_process.h"
#include "command_error.h"
#include "control_block.h"
#include "gap_signer.h"
#include "http_server.h"
#include "log_tail.h"
#include "instance.h"
#include "plan_check.h"
#include "pressure.h"
#include "proc_stats.h"
#include "progress.h"
#include "ring.h"
#include "seal/keys.h"
#include "sealed_recovery.h"
#include "segment/format.h"
#include "ship/nats_client.h"
#include "shipd/outputs.h"
#include "stage_output.h"
#include "stage_runtime.h"
#include "stage_set.h"
#include "stage_user.h"
#include "store_lock.h"
#include "stream_adoption.h"
#include "summary.h"
#include "systemd_notify.h"
#include "unique_fd.h"
#include "version.h"

namespace flowseal::supervisor {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

std::atomic<int> g_stop_signals{0};
std::atomic<int> g_reload_signals{0};  // SIGHUP: re-read the config file
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
extern "C" void on_reload_signal(int) {
  g_reload_signals.fetch_add(1);
  wake_loop();
}

// The self-pipe and the handlers that write to it, for one run.
class LoopWakeup {
 public:
  LoopWakeup() {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) != 0) {
      throw std::runtime_error(
          fmt::format("cannot create the supervisor's wake-up pipe: {}", std::strerror(errno)));
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
    // `flowseal restart` sets bits in the control block, then sends this: looked at at once.
    struct sigaction look {};
    look.sa_handler = on_child_exit;
    look.sa_flags = SA_RESTART;
    sigemptyset(&look.sa_mask);
    sigaction(kLookAtControl, &look, nullptr);
    struct sigaction reload {};
    reload.sa_handler = on_reload_signal;
    reload.sa_flags = SA_RESTART;
    sigemptyset(&reload.sa_mask);
    sigaction(SIGHUP, &reload, nullptr);
  }
  ~LoopWakeup() {
    signal(SIGCHLD, SIG_DFL);
    signal(SIGHUP, SIG_DFL);
    signal(kLookAtControl, SIG_DFL);
    g_wake_fd.store(-1);
  }
  LoopWakeup(const LoopWakeup&) = delete;
  LoopWakeup& operator=(const LoopWakeup&) = delete;

  // Sleeps until a signal, a stage's exit, one of `fds` readable (those of -1 are skipped) or
  // the timeout; `fds` then holds what poll() found. fds[0] is the self-pipe's place.
  void wait(std::chrono::milliseconds timeout, std::vector<pollfd>& fds) {
    fds[0] = {read_end_.get(), POLLIN, 0};
    ::poll(fds.data(), fds.size(), static_cast<int>(std::max<std::int64_t>(timeout.count(), 0)));
    char buf[64];
    while (::read(read_end_.get(), buf, sizeof buf) > 0) {
    }
  }

 private:
  UniqueFd read_end_;
  UniqueFd write_end_;
};

// The supervisor's longest sleep once the run is up is the stages' heartbeat interval
// (heartbeat_every, stage_runtime.h: a fifth of supervisor.heartbeat_timeout_ms, at most 1 s):
// heartbeat ages are what it only polls. A stage's exit (its pidfd), a signal and a restart
// request (`flowseal restart` sends kLookAtControl) wake it at once; timed work (restart
// backoff, memory samples, the watchdog) sets its own deadline.
// Until every stage is ready: readiness is reported within this of happening.
constexpr auto kStartTick = std::chrono::milliseconds(5);

// A private directory for the effective config, removed at the end of the run. Its name
// carries the supervisor's pid: a later run removes it only once that pid is gone.
class RunDirectory {
 public:
  explicit RunDirectory(const std::string& instance) {
    std::string pattern =
        (fs::temp_directory_path() / fmt::format("flowseal.{}.{}.XXXXXX", instance, ::getpid()))
            .string();
    if (mkdtemp(pattern.data()) == nullptr) {
      throw std::runtime_error(
          fmt::format("cannot create a run directory {}: {}", pattern, std::strerror(errno)));
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

// Lines of the run's log the status page shows (GET /log.json).
constexpr std::size_t kLogTailLines = 200;

// Puts `sink` into the default logger for the guard's lifetime: last, or before the others.
class LogSinkGuard {
 public:
  enum class Place { kLast, kFirst };
  explicit LogSinkGuard(std::shared_ptr<spdlog::sinks::sink> sink, Place place = Place::kLast)
      : sink_(std::move(sink)) {
    auto& sinks = spdlog::default_logger()->sinks();
    sinks.insert(place == Place::kFirst ? sinks.begin() : sinks.end(), sink_);
  }
  ~LogSinkGuard() {
    auto& sinks = spdlog::default_logger()->sinks();
    sinks.erase(std::remove(sinks.begin(), sinks.end(), sink_), sinks.end());
  }
  LogSinkGuard(const LogSinkGuard&) = delete;
  LogSinkGuard& operator=(const LogSinkGuard&) = delete;

 private:
  std::shared_ptr<spdlog::sinks::sink> sink_;
};

// While the progress bar is on the terminal, every log line of the supervisor erases it
// first: a sink placed before the real one in the default logger, for the guard's lifetime.
class LogClearsBar {
 public:
  explicit LogClearsBar(ProgressBar& bar)
      : guard_(std::make_shared<ClearingSink>(bar), LogSinkGuard::Place::kFirst) {}

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
  LogSinkGuard guard_;
};

double mib(std::uint64_t bytes) { return double(bytes) / double(1 << 20); }

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
    seal::generate_key_pair(seal::parse_algorithm(config.seal.algorithm), key, pub,
                            static_cast<mode_t>(config.writer.file_mode));
    spdlog::info("no signing key: made a new {} key pair {} (private, 0600) and {}",
                 config.seal.algorithm, key.string(), pub.string());
  }
}

// With a user the key lives outside writer.dir, and after a key rotation the new one may
// too; `flowseal verify DIR` looks for DIR/keys/*.pub, so the public half is copied there.
// Called after the stream's adoption, so that a refused run leaves keys/ as it was. A .pub of
// the same name holding another key (the key that sealed the batches before a rotation) is
// never replaced: the new one is published as NAME-<key id prefix>.pub beside it. writer.dir
// is the user's: every step refuses a symbolic link and the file is made afresh (O_EXCL), so
// root never writes through one.
void publish_public_key(const Config& config, const fs::path& key) {
  fs::path pub = key;
  pub.replace_extension(".pub");
  std::ifstream in(pub, std::ios::binary);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (!in && !in.eof()) throw std::runtime_error(fmt::format("cannot read {}", pub.string()));
  const fs::path published = fs::path(config.writer.dir) / "keys" / pub.filename();
  std::error_code ec;
  if (fs::equivalent(published, pub, ec)) return;  // seal.key_file lives in DIR/keys already
  std::string name = pub.filename().string();
  if (!fs::is_symlink(published, ec) && fs::is_regular_file(published, ec)) {
    std::ifstream old(published, std::ios::binary);
    const std::string held((std::istreambuf_iterator<char>(old)), std::istreambuf_iterator<char>());
    if (held != text) {
      const std::string id = seal::to_hex(seal::PublicKey::load(pub).key_id()).substr(0, 16);
      name = fmt::format("{}-{}.pub", pub.stem().string(), id);
    }
  }
  auto fail = [&](const char* step) {
    return std::runtime_error(fmt::format("cannot copy the public key into {}/keys ({}): {}",
                                          config.writer.dir, step, std::strerror(errno)));
  };
  UniqueFd dir(::open(config.writer.dir.c_str(), O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (dir.get() < 0) throw fail("open writer.dir");
  const auto dir_mode = static_cast<mode_t>(directory_mode(config.writer.file_mode));
  if (::mkdirat(dir.get(), "keys", dir_mode) != 0 && errno != EEXIST) throw fail("mkdir keys");
  UniqueFd keys(::openat(dir.get(), "keys", O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (keys.get() < 0) throw fail("open keys");
  if (::unlinkat(keys.get(), name.c_str(), 0) != 0 && errno != ENOENT) throw fail("unlink");
  UniqueFd out(::openat(keys.get(), name.c_str(),
                        O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                        static_cast<mode_t>(config.writer.file_mode)));
  if (out.get() < 0) throw fail("create");
  if (::fchmod(out.get(), static_cast<mode_t>(config.writer.file_mode)) != 0) throw fail("chmod");
  if (::write(out.get(), text.data(), text.size()) != static_cast<ssize_t>(text.size())) {
    throw fail("write");
  }
}

// A store already in writer.dir is continued (stream_adoption.h): its stream, from its newest
// batch. Only then is the key read here (its key id must be the store's): an empty directory
// leaves the key to signerd, as before.
std::optional<AdoptedStream> continue_stream(const Config& config, bool rotate_key) {
  const fs::path dir(config.writer.dir);
  std::vector<fs::path> segments;
  try {
    segments = segment::list_segments(dir);
  } catch (const fs::filesystem_error& e) {
    throw CommandError(exit_code::kNoInput, fmt::format("writer.dir {}: cannot list segments: {}",
                                                        dir.string(), e.code().message()));
  }
  if (segments.empty()) return std::nullopt;
  std::optional<seal::PublicKey> key;
  try {
    const seal::PrivateKey secret = seal::PrivateKey::load(config.seal.key_file);
    key.emplace(seal::PublicKey::from_der(secret.public_der()));
  } catch (const std::runtime_error& e) {
    throw ConfigError(fmt::format("seal.key_file: {}", e.what()));
  }
  auto adopted = adopt_stream(dir, *key, config.seal.key_file, rotate_key);
  if (adopted && adopted->rotated_from) {
    spdlog::warn(
        "writer.dir {}: key rotation (--rotate-key): batches up to seq {} are sealed with key id "
        "{}, from seq {} on with key id {} (seal.key_file {}); the chain goes on through the "
        "change, writerd starts a new segment, `flowseal verify` needs both public keys",
        dir.string(), adopted->last_seq, seal::to_hex(*adopted->rotated_from),
        adopted->position.next_seq, seal::to_hex(key->key_id()), config.seal.key_file);
  } else if (rotate_key) {
    spdlog::info("--rotate-key: writer.dir {} holds no stream of another key; nothing rotated",
                 dir.string());
  }
  if (adopted) {
    spdlog::info(
        "writer.dir {} holds stream {} up to batch {} ({}; the newest {} batch(es) verified): "
        "this run continues it at batch {}",
        dir.string(), seal::to_hex(adopted->position.stream_id), adopted->last_seq,
        adopted->file.filename().string(), adopted->batches_checked, adopted->position.next_seq);
  }
  return adopted;
}

// The stage processes of one run, as the StageSet starts and signals them: how to start
// each (argv, stderr, user, signerd's key) and the ChildProcess that owns it. Restart counts
// and failures go to the stage's control-block slot, the drain to systemd.
class ProcessHost final : public StageHost {
 public:
  ProcessHost(const Config& config, const std::optional<Credentials>& user, ControlBlock& control,
              SystemdNotifier& notifier, const StageOutput* output)
      : config_(config), user_(user), control_(control), notifier_(notifier), output_(output) {}

  void add(const StageSpec& spec, std::vector<std::string> argv) {
    kinds_.push_back(spec.kind);
    slots_.push_back(slot_index(spec.kind, spec.shard, control_.shards));
    argv_.push_back(std::move(argv));
    processes_.emplace_back();
  }
  ChildProcess& process(std::size_t index) { return processes_[index]; }
  StageSlot& slot(std::size_t index) { return control_.slots[slots_[index]]; }

  pid_t launch(std::size_t index) override {
    SpawnOptions options;
    if (output_) options.stderr_fd = output_->stage_fd();
    if (kinds_[index] != StageKind::kCapture) options.credentials = user_;
    if (kinds_[index] == StageKind::kShipd) {
      options.nice = static_cast<int>(config_.supervisor.shipd_nice);
    }
    // Opened for each signerd on its own: the file stays root's and 0600.
    UniqueFd key;
    if (user_ && kinds_[index] == StageKind::kSignerd) {
      key = open_key_for_signerd();
      options.pass_fd = key.get();
    }
    if (ships_key_fd(index)) {
      key = tls_key_pipe();
      options.pass_fd = key.get();
    }
    processes_[index] = ChildProcess::spawn(argv_[index], options);
    return processes_[index].pid();
  }
  void signal(std::size_t index, int signo) override { processes_[index].signal(signo); }
  void published(std::size_t index, const StageRecord& record) override {
    StageSlot& s = slot(index);
    s.restarts.store(record.restarts);
    s.memory_restarts.store(record.memory_restarts);
    if (record.phase == StagePhase::kBackoff || record.phase == StagePhase::kFailed) {
      s.state.store(static_cast<std::uint32_t>(StageState::kFailed));
    }
  }
  void stopping(std::string_view why) override {
    notifier_.notify(fmt::format("STOPPING=1\nSTATUS=draining: {}", why));
  }
  // shipd under supervisor.user gets the TLS client key from the supervisor (--key-fd).
  bool ships_key_fd(std::size_t index) const {
    return user_ && kinds_[index] == StageKind::kShipd && !config_.ship.tls_key.empty();
  }

 private:
  // The TLS client key, read as the signing key is (a real file, 0600, root's or ours), in a
  // pipe whose read end shipd inherits: the key file itself stays out of the stage user's
  // reach.
  UniqueFd tls_key_pipe() const {
    const std::string pem = ship::read_private_pem(config_.ship.tls_key, "ship.tls_key");
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) {
      throw std::runtime_error(
          fmt::format("cannot make a pipe for shipd's key: {}", std::strerror(errno)));
    }
    UniqueFd read_end(fds[0]);
    UniqueFd write_end(fds[1]);
    if (pem.size() > 60000 ||
        ::write(write_end.get(), pem.data(), pem.size()) != static_cast<ssize_t>(pem.size())) {
      throw std::runtime_error("cannot hand ship.tls_key to shipd (a key over 60 KB?)");
    }
    return read_end;
  }

  UniqueFd open_key_for_signerd() const {
    UniqueFd key(::open(config_.seal.key_file.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
    if (key.get() < 0) {
      throw std::runtime_error(fmt::format("cannot open the signing key {} for signerd: {}",
                                           config_.seal.key_file, std::strerror(errno)));
    }
    // Only a key of the supervisor's own is handed on: never one someone else put there.
    struct stat st {};
    if (::fstat(key.get(), &st) != 0 || !S_ISREG(st.st_mode) || st.st_uid != geteuid() ||
        (st.st_mode & 077) != 0) {
      throw ConfigError(fmt::format(
          "seal.key_file {}: not a regular file of uid {} with mode 0600; signerd is not "
          "given it",
          config_.seal.key_file, geteuid()));
    }
    return key;
  }

  const Config& config_;
  const std::optional<Credentials>& user_;
  ControlBlock& control_;
  SystemdNotifier& notifier_;
  const StageOutput* output_;
  std::vector<StageKind> kinds_;
  std::vector<std::size_t> slots_;
  std::vector<std::vector<std::string>> argv_;
  std::vector<ChildProcess> processes_;
};

// How long shipd's outputs may drain after writerd has finished, the longest of them: NATS
// shipping and the IPFIX export wait ship.drain_timeout_s, the Kafka export
// export.kafka.drain_timeout_s. (Only ship.drain_timeout_s counted: a Kafka drain given
// longer was killed 15 s after ship.drain_timeout_s, its records left undelivered, exit 75.)
double shipd_drain_timeout_s(const Config& config) {
  double timeout = 0;
  if (!config.ship.url.empty() || !config.exports.ipfix.url.empty()) {
    timeout = config.ship.drain_timeout_s;
  }
  if (!config.exports.kafka.brokers.empty()) {
    timeout = std::max(timeout, config.exports.kafka.drain_timeout_s);
  }
  return timeout;
}

// The stages in data order (capture, flowd[0..n), dedupd, signerd, writerd: the control
// block's slot order), each with its command line.
void add_stages(const Config& config, const Instance& instance, const fs::path& config_file,
                bool with_user, std::vector<StageSpec>& specs, ProcessHost& host) {
  auto add = [&](StageKind kind, std::size_t shard) {
    StageSpec spec;
    spec.kind = kind;
    spec.shard = shard;
    spec.step = static_cast<std::uint32_t>(kind);  // StageKind is in data order
    spec.name =
        kind == StageKind::kFlowd ? fmt::format("flowd[{}]", shard) : std::string(to_string(kind));
    spec.private_limit = private_limit(config, instance.plan(), kind);
    std::vector<std::string> argv = {stage_binary(std::string(to_string(kind))).string(),
                                     "--instance", config.supervisor.instance, "--config",
                                     config_file.string()};
    if (kind == StageKind::kFlowd) {
      argv.push_back("--shard");
      argv.push_back(std::to_string(shard));
    }
    if ((kind == StageKind::kSignerd && with_user) ||
        (kind == StageKind::kShipd && with_user && !config.ship.tls_key.empty())) {
      argv.push_back("--key-fd");
      argv.push_back(std::to_string(kPassedFd));
    }
    if (kind == StageKind::kShipd) {
      // Optional: the local store is its buffer, so its failures never end the run. It
      // drains after writerd; it gives up by itself (exit 75) once the longest drain timeout
      // of its outputs has passed since writerd finished, and is killed if it has not left a
      // while after that.
      spec.essential = false;
      spec.drain_timeout = std::chrono::milliseconds(
          static_cast<std::int64_t>(shipd_drain_timeout_s(config) * 1000) + 15000);
    }
    host.add(spec, std::move(argv));
    specs.push_back(std::move(spec));
  };
  add(StageKind::kCapture, 0);
  for (std::size_t s = 0; s < static_cast<std::size_t>(config.flowd.shards); ++s)
    add(StageKind::kFlowd, s);
  add(StageKind::kDedupd, 0);
  add(StageKind::kSignerd, 0);
  add(StageKind::kWriterd, 0);
  if (runs_shipd(config)) add(StageKind::kShipd, 0);
}

StagePolicy policy_of(const Config& config) {
  StagePolicy policy;
  policy.max_restarts = static_cast<std::uint32_t>(config.supervisor.max_restarts);
  policy.restart_window = std::chrono::seconds(config.supervisor.restart_window_s);
  return policy;
}

// One run's watch over its stages: each pass of run() turns what it observes (signals,
// restart requests, exits, heartbeats, memory) into StageSet events, then sleeps until the
// next thing is due.
// Changes whenever any stage does anything: every slot's pid, restarts and counters.
std::uint64_t activity_fingerprint(const ControlBlock& control) {
  std::uint64_t h = 0;
  auto mix = [&h](std::uint64_t v) { h = (h ^ v) * 0x100000001B3ULL; };
  for (const StageSlot& slot : control.slots) {
    mix(static_cast<std::uint32_t>(slot.pid.load(std::memory_order_relaxed)));
    mix(slot.restarts.load(std::memory_order_relaxed));
    for (const auto& counter : slot.counters) mix(counter.load(std::memory_order_relaxed));
  }
  return h;
}

class Supervision {
 public:
  Supervision(Config& config, Instance& instance, SystemdNotifier& notifier,
              const std::optional<Credentials>& user, const fs::path& config_file,
              ConfigSource reread, std::vector<std::string> leftovers, LogTail* log_tail)
      : config_(config),
        instance_(instance),
        control_(instance.control()),
        notifier_(notifier),
        reread_(std::move(reread)),
        leftovers_(std::move(leftovers)),
        show_progress_(bar_.enabled() && !config.capture.files.empty()) {
    // A file run on a terminal shows the progress bar; the stages' log lines then come
    // through the supervisor so that none lands on the bar's row. They also do when the
    // status page shows the run's log (supervisor.http_listen).
    if (show_progress_ || log_tail != nullptr) stage_output_.emplace(log_tail);
    if (show_progress_) log_clears_bar_.emplace(bar_);
    host_.emplace(config_, user, control_, notifier_, stage_output_ ? &*stage_output_ : nullptr);
    std::vector<StageSpec> specs;
    add_stages(config_, instance_, config_file, user.has_value(), specs, *host_);
    usage_.resize(specs.size());
    for (std::size_t i = 0; i < specs.size(); ++i) usage_[i].name = specs[i].name;
    exit_pending_.assign(specs.size(), false);
    stages_.emplace(std::move(specs), policy_of(config_), *host_, clock_);
  }

  int run();

 private:
  void handle_signals();
  void reload();
  void handle_restart_requests();
  void wake_capture();
  void poll_exits();
  void watch_liveness();
  void report_ready();
  void sample_memory();
  std::uint64_t read_stage_memory();
  void show_progress();
  void sleep();
  void finish();

  Config& config_;
  Instance& instance_;
  ControlBlock& control_;
  SystemdNotifier& notifier_;
  ConfigSource reread_;
  std::vector<std::string> leftovers_;  // what a dead instance left: the summary says it
  int reloads_seen_ = 0;
  SteadyClock clock_;
  const Clock::time_point started_ = Clock::now();
  LoopWakeup wakeup_;
  ProgressBar bar_{STDERR_FILENO};
  const bool show_progress_;
  std::optional<StageOutput> stage_output_;
  std::optional<LogClearsBar> log_clears_bar_;
  std::optional<ProcessHost> host_;
  std::optional<StageSet> stages_;
  std::vector<StageUsage> usage_;
  std::optional<PressureMonitor> pressure_;
  // With shipping on: what retention gave up unshipped, signed for the Core (gap_signer.h).
  std::optional<GapSigner> gap_signer_;
  // What the last sleep polled: [0] the self-pipe, [1] the stage output, [2 + i] stage i's
  // pidfd; and the stages whose pidfd said they have ended (reaped by poll_exits).
  std::vector<pollfd> poll_fds_;
  std::vector<bool> exit_pending_;
  // How often the stages heartbeat: from the timeout their config had at start (a reload
  // does not reach a running stage).
  const std::chrono::milliseconds stage_beat_ =
      heartbeat_every(config_.supervisor.heartbeat_timeout_ms);
  bool ready_reported_ = false;
  Clock::time_point last_watchdog_ = Clock::now();
  Clock::time_point last_stats_ = Clock::now();
  Clock::time_point last_memory_sample_;
  // The last reading of the stages' memory (sample_memory) and what it was taken at.
  static constexpr std::chrono::seconds kQuietMemoryReading{10};
  Clock::time_point last_memory_reading_;
  std::uint64_t last_activity_ = 0;
  std::uint64_t last_private_total_ = 0;
  MemoryPeaks peaks_;
};

int Supervision::run() {
  pressure_.emplace(config_, instance_.plan(), control_);
  if (!config_.ship.url.empty()) gap_signer_.emplace(config_.writer.dir, config_.seal.key_file);
  const auto interval = std::chrono::milliseconds(config_.memory.sample_ms);
  // The first memory sample comes a moment after start, when every stage has mapped its rings.
  last_memory_sample_ =
      Clock::now() - interval + std::min<Clock::duration>(interval, std::chrono::milliseconds(200));
  stages_->start();
  spdlog::info("instance '{}' running: {} stage processes, {:.1f} MiB of shared memory",
               config_.supervisor.instance, stages_->size(), mib(instance_.plan().total()));
  for (;;) {
    handle_signals();
    if (g_reload_signals.load() != reloads_seen_) reload();
    handle_restart_requests();
    poll_exits();
    stages_->tick();
    if (stages_->done()) break;
    watch_liveness();
    report_ready();
    if (const auto watchdog = notifier_.watchdog_interval();
        watchdog && Clock::now() - last_watchdog_ >= *watchdog) {
      last_watchdog_ = Clock::now();
      notifier_.notify("WATCHDOG=1");
    }
    sample_memory();
    if (gap_signer_) gap_signer_->poll();
    if (config_.supervisor.stats_interval_s > 0 &&
        Clock::now() - last_stats_ >= std::chrono::seconds(config_.supervisor.stats_interval_s)) {
      last_stats_ = Clock::now();
      bar_.clear();
      print_stats_line(control_, instance_.rings());
    }
    show_progress();
    sleep();
  }
  finish();
  return stages_->result();
}

void Supervision::handle_signals() {
  const int signals = g_stop_signals.load();
  if (signals == 1 && control_.stop_requested.load() == 0) {
    spdlog::info("stop requested: draining (send the signal again to abort)");
    control_.stop_requested.store(1);
    wake_capture();
    stages_->drain("stop requested");
  } else if (signals >= 2 && !stages_->aborting()) {
    spdlog::warn("second stop signal: aborting without drain");
    stages_->abort(exit_code::kTempFail, SIGKILL, "aborting");
  }
}

// Bytes of /dev/shm this run's objects occupy now (they are sparse: pages touched so far).
std::uint64_t resident_shm_bytes(const std::string& instance) {
  std::uint64_t bytes = 0;
  for (const auto& name : Instance::all_names(instance)) {
    struct stat st {};
    if (::stat(ShmSegment::path_of(name).c_str(), &st) == 0) {
      bytes += static_cast<std::uint64_t>(st.st_blocks) * 512;
    }
  }
  return bytes;
}

// Why `fresh` could not start a run, as `config check` says it: empty if it could. The
// machine is measured as the next start would find it, this run's shared memory released.
std::vector<std::string> plan_refusals(const Config& fresh, const std::string& instance) {
  MachineLimits machine = machine_limits();
  const std::uint64_t ours = resident_shm_bytes(instance);
  machine.shm_free_bytes += std::min(ours, ~std::uint64_t{0} - machine.shm_free_bytes);
  return plan_problems(fresh, plan_memory(fresh), machine);
}

// SIGHUP: the configuration is read again as at start (file, --set, flags) and checked as
// `config check` checks it; the keys of kRuntimeKeys take effect now, any other change is
// logged as needing a restart. Nothing here ends the run: a file that does not load,
// validate or make a runnable memory plan is refused whole (each reason logged, naming the
// file, and counted in the control block for `flowseal status`), and the running
// configuration stays as it is. A plan is refused although its keys would only apply at the
// next start: that start would exit 78, under systemd's Restart= a loop, long after the
// operator's reload seemed to work.
void Supervision::reload() {
  reloads_seen_ = g_reload_signals.load();
  notifier_.notify("RELOADING=1");
  Config fresh;
  std::vector<std::string> refusals;
  try {
    if (!reread_.read) throw ConfigError("this run has no configuration source to read again");
    fresh = reread_.read();
    if (fresh.seal.key_file.empty()) fresh.seal.key_file = config_.seal.key_file;  // as at start
    validate(fresh);
    refusals = plan_refusals(fresh, config_.supervisor.instance);
  } catch (const std::exception& e) {
    refusals = {e.what()};
  }
  if (!refusals.empty()) {
    for (const auto& why : refusals) {
      spdlog::error("reload (SIGHUP) refused: {}: {}", reread_.origin, why);
    }
    spdlog::error("reload (SIGHUP): {} refused for {} reason(s); keeping the running configuration",
                  reread_.origin, refusals.size());
    control_.reloads_refused.fetch_add(1);
    notifier_.notify("READY=1");
    return;
  }
  const ConfigChanges changes = apply_runtime_keys(config_, fresh);
  for (const auto& line : changes.applied) spdlog::info("reload: {} (applied)", line);
  for (const auto& line : changes.need_restart) {
    spdlog::warn("reload: {} (needs a restart of the run to take effect)", line);
  }
  if (changes.applied.empty() && changes.need_restart.empty())
    spdlog::info("reload: nothing changed");
  StagePolicy policy = stages_->policy();
  policy.max_restarts = static_cast<std::uint32_t>(config_.supervisor.max_restarts);
  policy.restart_window = std::chrono::seconds(config_.supervisor.restart_window_s);
  stages_->set_policy(policy);
  for (std::size_t i = 0; i < stages_->size(); ++i) {
    stages_->set_memory_limit(i, private_limit(config_, instance_.plan(), stages_->spec(i).kind));
  }
  control_.reloads_applied.fetch_add(1);
  notifier_.notify("READY=1");
}

void Supervision::handle_restart_requests() {
  const std::uint64_t requests = control_.restart_requests.exchange(0);
  if (requests == 0 || stages_->aborting()) return;
  for (std::size_t i = 0; i < stages_->size(); ++i) {
    const StageSpec& spec = stages_->spec(i);
    if (((requests >> slot_index(spec.kind, spec.shard, control_.shards)) & 1) != 0) {
      stages_->restart_requested(i);
    }
  }
}

// capture sleeps in poll() for up to its heartbeat interval; the stop flag is for it, so it
// is woken to look (kLookAtControl: ignored by a process that has no handler yet, and only
// sent once the slot's pid says the stage installed its handlers).
void Supervision::wake_capture() {
  for (std::size_t i = 0; i < stages_->size(); ++i) {
    const ChildProcess& process = host_->process(i);
    if (stages_->spec(i).kind != StageKind::kCapture || !process.running()) continue;
    if (host_->slot(i).pid.load(std::memory_order_acquire) == process.pid()) {
      process.signal(kLookAtControl);
    }
  }
}

// Reaps the stages whose pidfd the last sleep found readable (every running one where the
// kernel gives no pidfd): no wait4 per stage per wake.
void Supervision::poll_exits() {
  for (std::size_t i = 0; i < stages_->size(); ++i) {
    ChildProcess& process = host_->process(i);
    if (process.pidfd() >= 0 && !exit_pending_[i]) continue;
    exit_pending_[i] = false;
    if (auto exit = process.poll()) {
      usage_[i].cpu_seconds += exit->cpu_seconds;
      stages_->exited(i, {exit->code, exit->describe()});
    }
  }
}

// Ready once its own loop heartbeats; hung (alive but silent past the timeout): killed, and
// its exit then restarts it. Both count only once the slot's pid is this process's.
void Supervision::watch_liveness() {
  // A reload may lower the timeout, but the stages keep beating at the interval their start
  // gave them: it is not taken below three of their beats, or an idle stage would be "hung".
  const std::int64_t timeout_ns =
      std::max<std::int64_t>(config_.supervisor.heartbeat_timeout_ms, 3 * stage_beat_.count()) *
      1'000'000;
  for (std::size_t i = 0; i < stages_->size(); ++i) {
    const ChildProcess& process = host_->process(i);
    if (!process.running()) continue;
    StageSlot& slot = host_->slot(i);
    if (slot.pid.load(std::memory_order_acquire) != process.pid()) continue;
    if (slot.ready_ns.load(std::memory_order_acquire) != 0) stages_->ready(i);
    const std::int64_t heartbeat = slot.heartbeat_ns.load();
    const std::int64_t silent = monotonic_ns() - heartbeat;
    if (heartbeat != 0 && silent > timeout_ns) {
      stages_->heartbeat_missed(i, std::chrono::milliseconds(silent / 1'000'000));
    }
  }
}

// systemd (Type=notify): ready once every stage that has not already finished runs and has
// heartbeaten from its loop (its rings and inputs are open; capture's handle too).
void Supervision::report_ready() {
  if (ready_reported_ || !stages_->all_ready()) return;
  ready_reported_ = true;
  control_.ready.store(1);
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started_);
  spdlog::info("ready: every stage is up ({} ms after start)", ms.count());
  notifier_.notify(
      fmt::format("READY=1\nSTATUS=running: {} stage processes, instance '{}'\nMAINPID={}",
                  stages_->size(), config_.supervisor.instance, getpid()));
}

// Every memory.sample_ms, and short runs get one. Each sample sets the pressure level; the
// stages' own memory is read (smaps_rollup, which walks every mapping of a stage, the rings'
// too: most of what an idle supervisor costs) and held to the private-memory limits only when
// something moved since the last reading, or kQuietMemoryReading after it: a stage's memory
// grows with its work, and every piece of work moves a counter of its slot.
void Supervision::sample_memory() {
  if (Clock::now() - last_memory_sample_ < std::chrono::milliseconds(config_.memory.sample_ms))
    return;
  last_memory_sample_ = Clock::now();
  const std::uint64_t activity = activity_fingerprint(control_);
  if (activity != last_activity_ ||
      last_memory_sample_ - last_memory_reading_ >= kQuietMemoryReading) {
    last_activity_ = activity;
    last_memory_reading_ = last_memory_sample_;
    last_private_total_ = read_stage_memory();
  }
  pressure_->sample(last_private_total_, last_memory_sample_);
}

// Reads every running stage's memory (peaks, limits); returns their private memory in all.
std::uint64_t Supervision::read_stage_memory() {
  std::uint64_t total = 0, held = 0, private_total = 0;
  for (std::size_t i = 0; i < stages_->size(); ++i) {
    const ChildProcess& process = host_->process(i);
    if (!process.running()) continue;
    const ProcessMemory memory = process_memory(process.pid());
    usage_[i].peak_pss = std::max(usage_[i].peak_pss, memory.pss);
    usage_[i].peak_private = std::max(usage_[i].peak_private, memory.pss_anon);
    total += memory.pss;
    held += memory.held();
    private_total += memory.pss_anon;
    // Over its limit: replaced the way `flowseal restart` does it (asked to leave, its
    // successor resumes from the rings); a stage already leaving is left to it.
    const StageSpec& spec = stages_->spec(i);
    if (spec.private_limit > 0 && memory.pss_anon > spec.private_limit &&
        host_->slot(i).pid.load(std::memory_order_acquire) == process.pid()) {
      stages_->memory_over_limit(
          i, fmt::format("{} (pid {}) holds {:.1f} MiB of private memory, over its limit of "
                         "{:.1f} MiB (memory.{}_limit_mb; PSS {:.1f} MiB)",
                         spec.name, process.pid(), mib(memory.pss_anon), mib(spec.private_limit),
                         to_string(spec.kind), mib(memory.pss)));
    }
  }
  peaks_.total_pss = std::max(peaks_.total_pss, total);
  peaks_.held = std::max(peaks_.held, held);
  return private_total;
}

void Supervision::show_progress() {
  if (stage_output_) stage_output_->pump(bar_);
  if (!show_progress_) return;
  namespace cc = capture_counter;
  const StageSlot& capture = control_.slots[slot_index(StageKind::kCapture, 0, control_.shards)];
  bar_.update(capture.counters[cc::kBytesRead].load(), capture.counters[cc::kBytesTotal].load(),
              capture.counters[cc::kReceived].load(), Clock::now());
}

// Sleeps until the next thing that is due; an idle run wakes about once a second (the memory
// sample and the heartbeat check fall due together).
void Supervision::sleep() {
  const auto now = Clock::now();
  auto tick = std::min(heartbeat_every(config_.supervisor.heartbeat_timeout_ms), stage_beat_);
  // A progress bar on a terminal (a file run, never idle) moves at its own redraw rate.
  if (show_progress_) tick = std::min(tick, ProgressBar::kRedrawInterval);
  auto next = now + (ready_reported_ ? std::chrono::duration_cast<Clock::duration>(tick)
                                     : std::chrono::duration_cast<Clock::duration>(kStartTick));
  next = std::min(next, last_memory_sample_ + std::chrono::milliseconds(config_.memory.sample_ms));
  if (const auto interval = notifier_.watchdog_interval())
    next = std::min(next, last_watchdog_ + *interval);
  next = std::min(next, stages_->next_deadline());
  poll_fds_.assign(2 + stages_->size(), pollfd{-1, POLLIN, 0});
  if (stage_output_) poll_fds_[1].fd = stage_output_->read_fd();
  for (std::size_t i = 0; i < stages_->size(); ++i) poll_fds_[2 + i].fd = host_->process(i).pidfd();
  wakeup_.wait(std::chrono::ceil<std::chrono::milliseconds>(next - now), poll_fds_);
  for (std::size_t i = 0; i < stages_->size(); ++i) {
    if (poll_fds_[2 + i].revents != 0) exit_pending_[i] = true;
  }
}

void Supervision::finish() {
  stages_->report_stopping("exiting");
  if (stage_output_) stage_output_->finish(bar_);
  bar_.clear();
  pressure_->finish(Clock::now());
  const double seconds = std::chrono::duration<double>(Clock::now() - started_).count();
  for (std::size_t i = 0; i < stages_->size(); ++i) {
    usage_[i].restarts = stages_->record(i).restarts;
    usage_[i].memory_restarts = stages_->record(i).memory_restarts;
  }
  print_run_summary(config_, control_, seconds, usage_, peaks_, leftovers_);
}

}  // namespace

fs::path stage_binary(const std::string& stage) {
  const fs::path self = fs::read_symlink("/proc/self/exe");
  const std::string file = "flowseal-" + stage;
  for (const fs::path& candidate :
       {self.parent_path() / file, self.parent_path().parent_path() / stage / file,
        self.parent_path().parent_path() / "libexec" / "flowseal" / file,
        fs::path(FLOWSEAL_LIBEXECDIR) / file}) {
    if (fs::exists(candidate)) return candidate;
  }
  throw std::runtime_error(fmt::format("cannot find the stage binary {} next to {} or in {}", file,
                                       self.string(), FLOWSEAL_LIBEXECDIR));
}

namespace {

// "section.key" -> value, from dump_config's "section:\n  key: value" lines.
std::map<std::string, std::string> flatten(const Config& config) {
  std::map<std::string, std::string> keys;
  std::istringstream in(dump_config(config));
  std::string line, section;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    if (line[0] != ' ') {
      section = line.substr(0, line.find(':'));
      continue;
    }
    const auto colon = line.find(": ");
    if (colon == std::string::npos) continue;
    keys[section + "." + line.substr(2, colon - 2)] = line.substr(colon + 2);
  }
  return keys;
}

}  // namespace

ConfigChanges apply_runtime_keys(Config& running, const Config& fresh) {
  ConfigChanges changes;
  const auto before = flatten(running);
  const auto after = flatten(fresh);
  for (const auto& [key, value] : after) {
    const auto old = before.find(key);
    if (old == before.end() || old->second == value) continue;
    const std::string line = fmt::format("{}: {} -> {}", key, old->second, value);
    if (std::find(std::begin(kRuntimeKeys), std::end(kRuntimeKeys), key) !=
        std::end(kRuntimeKeys)) {
      apply_override(running, fmt::format("{}={}", key, value));
      changes.applied.push_back(line);
    } else {
      changes.need_restart.push_back(line);
    }
  }
  return changes;
}

int run_pipeline(Config config, ConfigSource reread, bool rotate_key) {
  SystemdNotifier notifier = SystemdNotifier::from_environment();
  const std::optional<Credentials> user = stage_credentials(config);
  // Shipping's and the exports' static faults (plaintext URL, a missing TLS file, a key of the
  // wrong mode, a bad collector URL) end the run before anything runs (78), not shipd's first
  // start.
  if (runs_shipd(config)) static_cast<void>(shipd::output_settings(config));
  prepare_output_dir(config, user);
  // Held until the run's last process has gone (store_lock.h): taken before the store is
  // read, so what the stream's adoption sees is what writerd will find.
  const StoreLock store_lock = StoreLock::acquire(config.writer.dir, kOrphanWait);
  ensure_key(config, user);
  const std::optional<AdoptedStream> adopted = continue_stream(config, rotate_key);
  if (user || (adopted && adopted->rotated_from)) publish_public_key(config, config.seal.key_file);

  Instance instance(config, owner_of(user));
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
  // A dead instance's rings: counted, and its sealed batches that continue this directory's
  // chain placed in the new sealed ring, so that the chain goes on through them.
  std::optional<ChainPosition> position;
  if (adopted) position = adopted->position;
  const std::vector<std::string> leftovers = take_over_leftovers(
      instance.leftovers(), instance.sealed_ring(), position, config.seal.key_file);
  if (position) {
    // signerd starts from the position in its slot (common/chain_position.h), as a restarted
    // signerd does: written here once, before it first starts. A launch argument would have
    // to lose to the slot on every restart; the slot is the one place signerd already trusts.
    // With the sealed ring's head after the batches placed in it above: signerd goes on
    // after them, not back over them.
    ControlBlock& control = instance.control();
    store_chain_position(control.slots[slot_index(StageKind::kSignerd, 0, control.shards)],
                         *position, RingProducer(instance.sealed_ring()).published());
  }
  // supervisor.http_listen: /metrics, /status.json, /log.json (the newest lines of this
  // log, kept while the server is on), /
  std::optional<LogTail> log_tail;
  std::optional<LogSinkGuard> log_to_tail;
  std::optional<HttpServer> http;
  if (!config.supervisor.http_listen.empty()) {
    log_tail.emplace(kLogTailLines);
    log_to_tail.emplace(log_tail->sink());
    http.emplace(parse_listen_address(config.supervisor.http_listen), config.supervisor.instance,
                 instance.control(), std::uint64_t(config.memory.budget_mb) << 20, *log_tail);
  }
  Supervision supervision(config, instance, notifier, user, config_file, std::move(reread),
                          leftovers, log_tail ? &*log_tail : nullptr);
  return supervision.run();
}

}  // namespace flowseal::supervisor
