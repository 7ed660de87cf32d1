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

namespace flowseal::supervisor {

struct ExitInfo {
  int code = 0;     // exit status, or 128 + signal
  int signal = 0;   // non-zero if killed by a signal
  double cpu_seconds = 0;  // user + system CPU of the process over its life (wait4)
  std::string describe() const;  // "exit 0", "killed by SIGKILL"
};

class ChildProcess {
 public:
  ChildProcess() = default;
  // fork + exec argv[0] (a path) with argv; throws std::runtime_error if fork fails. An exec
  // failure shows up as exit code 127.
  static ChildProcess spawn(const std::vector<std::string>& argv);

  ChildProcess(ChildProcess&&) noexcept;
  ChildProcess& operator=(ChildProcess&&) noexcept;
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;
  ~ChildProcess();

  pid_t pid() const { return pid_; }
  bool running() const { return pid_ > 0; }
  // Non-blocking reap; the exit once the process has ended (then running() is false).
  std::optional<ExitInfo> poll();
  void signal(int signo) const;

 private:
  explicit ChildProcess(pid_t pid) : pid_(pid) {}
  pid_t pid_ = -1;
};

}  // namespace flowseal::supervisor
