#include "child_process.h"

#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <stdexcept>
#include <utility>

#include <fmt/format.h>

#include "config.h"
#include "stage_runtime.h"

namespace flowseal::supervisor {
namespace {

// Runs in the forked child, so only async-signal-safe calls: the supervisor may have other
// threads (spdlog's) whose locks a fork leaves held. Returns 0 or the errno of the failure.
int switch_user(const Credentials& c) {
  // The bounding set first, while CAP_SETPCAP is still there: no later exec can gain a
  // capability from a file either.
  for (int cap = 0; prctl(PR_CAPBSET_READ, cap, 0, 0, 0) >= 0; ++cap) {
    prctl(PR_CAPBSET_DROP, cap, 0, 0, 0);
  }
  // From root to another uid the kernel clears the permitted, effective and ambient sets
  // (no SECBIT_KEEP_CAPS here).
  if (setgroups(0, nullptr) != 0 || setgid(c.gid) != 0 || setuid(c.uid) != 0) return errno;
  if (c.uid != 0 && setuid(0) == 0) return EPERM;  // must be impossible now
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return errno;
  return 0;
}

void write_stderr(const std::string& text) {
  [[maybe_unused]] const ssize_t n = ::write(STDERR_FILENO, text.data(), text.size());
}

}  // namespace

std::string ExitInfo::describe() const {
  if (signal != 0) {
    const char* abbrev = sigabbrev_np(signal);
    return abbrev != nullptr ? fmt::format("killed by SIG{}", abbrev)
                             : fmt::format("killed by signal {}", signal);
  }
  return fmt::format("exit {}", code);
}

Credentials resolve_user(const std::string& user, const std::string& key) {
  passwd entry{};
  passwd* found = nullptr;
  std::vector<char> buf(16384);
  const int err = getpwnam_r(user.c_str(), &entry, buf.data(), buf.size(), &found);
  if (found == nullptr) {
    throw ConfigError(fmt::format("{} '{}': no such user{}", key, user,
                                  err != 0 ? fmt::format(" ({})", strerror(err)) : ""));
  }
  return {user, entry.pw_uid, entry.pw_gid};
}

ChildProcess ChildProcess::spawn(const std::vector<std::string>& argv,
                                 const SpawnOptions& options) {
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  // Formatted before fork: the child may not allocate.
  const std::string user_failed =
      options.credentials
          ? fmt::format(
                "flowseal: {}: cannot switch to supervisor.user '{}' (uid {}, gid {}): ", argv[0],
                options.credentials->user, options.credentials->uid, options.credentials->gid)
          : std::string();
  const pid_t pid = fork();
  if (pid < 0) {
    throw std::runtime_error(fmt::format("cannot start {}: fork: {}", argv[0], strerror(errno)));
  }
  if (pid == 0) {
    // A stage gets default signal dispositions; it installs its own handlers.
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    if (options.stderr_fd >= 0) dup2(options.stderr_fd, STDERR_FILENO);
    if (options.pass_fd == kPassedFd) {
      fcntl(kPassedFd, F_SETFD, 0);  // dup2 onto itself would keep close-on-exec
    } else if (options.pass_fd >= 0) {
      dup2(options.pass_fd, kPassedFd);
    }
    // Lowering one's own priority needs no privilege; a failure leaves it as it was.
    if (options.nice > 0) {
      [[maybe_unused]] const int niced = ::nice(options.nice);
    }
    if (options.credentials) {
      if (const int err = switch_user(*options.credentials); err != 0) {
        write_stderr(user_failed);
        write_stderr(strerrorname_np(err) != nullptr ? strerrorname_np(err) : "error");
        write_stderr("\n");
        _exit(exit_code::kConfig);
      }
    }
    execv(args[0], args.data());
    _exit(127);
  }
  // The child is ours and not reaped, so the pid cannot be reused before this: the pidfd
  // is of this process. Close-on-exec by default, so no stage inherits another's.
  const int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  return ChildProcess(pid, pidfd);
}

ChildProcess::ChildProcess(ChildProcess&& other) noexcept
    : pid_(std::exchange(other.pid_, -1)), pidfd_(std::move(other.pidfd_)) {}

ChildProcess& ChildProcess::operator=(ChildProcess&& other) noexcept {
  if (this != &other) {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    pid_ = std::exchange(other.pid_, -1);
    pidfd_ = std::move(other.pidfd_);
  }
  return *this;
}

ChildProcess::~ChildProcess() {
  if (pid_ > 0) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
}

std::optional<ExitInfo> ChildProcess::poll() {
  if (pid_ <= 0) return std::nullopt;
  int status = 0;
  rusage usage{};
  const pid_t r = wait4(pid_, &status, WNOHANG, &usage);
  if (r != pid_) return std::nullopt;
  pid_ = -1;
  pidfd_.reset();
  ExitInfo info;
  info.cpu_seconds = double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) +
                     double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6;
  if (WIFSIGNALED(status)) {
    info.signal = WTERMSIG(status);
    info.code = 128 + info.signal;
  } else {
    info.code = WEXITSTATUS(status);
  }
  return info;
}

void ChildProcess::signal(int signo) const {
  if (pid_ > 0) kill(pid_, signo);
}

int access_as(const Credentials& credentials, const std::string& path, int mode) {
  const pid_t pid = fork();
  if (pid < 0) return errno;
  if (pid == 0) {
    if (const int err = switch_user(credentials); err != 0) _exit(err & 0xff);
    _exit(access(path.c_str(), mode) == 0 ? 0 : (errno & 0xff));
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : EINVAL;
}

}  // namespace flowseal::supervisor
