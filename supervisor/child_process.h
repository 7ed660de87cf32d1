// ChildProcess: one stage process started by the supervisor, owned by RAII.
//
// The object that starts a process is the only one that signals and reaps it, by the PID it
// got from fork() — never by name. Destroying a still-running child kills it (SIGKILL) and
// reaps it, so no stage outlives a supervisor that unwinds on an error.
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>
#include <vector>

#include "unique_fd.h"

namespace flowseal::supervisor {

struct ExitInfo {
  int code = 0;                  // exit status, or 128 + signal
  int signal = 0;                // non-zero if killed by a signal
  double cpu_seconds = 0;        // user + system CPU of the process over its life (wait4)
  std::string describe() const;  // "exit 0", "killed by SIGKILL"
};

// An unprivileged user a stage runs as (supervisor.user), resolved once at start.
struct Credentials {
  std::string user;
  uid_t uid = 0;
  gid_t gid = 0;
};
// Looks `user` up in the user database; throws ConfigError naming `key` if there is none.
Credentials resolve_user(const std::string& user, const std::string& key);

// The fd a stage finds the descriptor of SpawnOptions::pass_fd on.
inline constexpr int kPassedFd = 3;

struct SpawnOptions {
  int stderr_fd = -1;  // >= 0: the child's stderr (the supervisor's stage-output pipe)
  int pass_fd = -1;    // >= 0: inherited by the child as kPassedFd (signerd's key)
  // Set: the child switches to this user before exec: no supplementary groups, the user's
  // gid and uid, no capabilities left in any set, PR_SET_NO_NEW_PRIVS.
  std::optional<Credentials> credentials;
  int nice = 0;  // > 0: added to the child's nice value (nice(2)) before exec
};

class ChildProcess {
 public:
  ChildProcess() = default;
  // fork + exec argv[0] (a path) with argv; throws std::runtime_error if fork fails. An exec
  // failure shows up as exit code 127, a failure to switch users as 78 (permanent: the same
  // start would fail again), each with a line on the child's stderr.
  static ChildProcess spawn(const std::vector<std::string>& argv, const SpawnOptions& options = {});

  ChildProcess(ChildProcess&&) noexcept;
  ChildProcess& operator=(ChildProcess&&) noexcept;
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;
  ~ChildProcess();

  pid_t pid() const { return pid_; }
  bool running() const { return pid_ > 0; }
  // A pidfd of the process (pidfd_open(2)): readable once it has ended, so the supervisor
  // sleeps in poll() until a stage exits instead of calling wait4 on every wake. -1 if the
  // kernel has none (before 5.3): then poll() is the only way to tell.
  int pidfd() const { return pidfd_.get(); }
  // Non-blocking reap; the exit once the process has ended (then running() is false).
  std::optional<ExitInfo> poll();
  void signal(int signo) const;

 private:
  ChildProcess(pid_t pid, int pidfd) : pid_(pid), pidfd_(pidfd) {}
  pid_t pid_ = -1;
  UniqueFd pidfd_;
};

// Whether `credentials` may access `path` with `mode` (access(2) R_OK/W_OK/X_OK), checked
// in a short-lived child that switches to the user first (the kernel's answer, parents'
// search permission included). 0 if so, else the errno.
int access_as(const Credentials& credentials, const std::string& path, int mode);

}  // namespace flowseal::supervisor
