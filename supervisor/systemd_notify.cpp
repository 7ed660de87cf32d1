#include "systemd_notify.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

namespace flowseal::supervisor {

SystemdNotifier SystemdNotifier::from_environment() {
  SystemdNotifier notifier;
  const char* socket_env = std::getenv("NOTIFY_SOCKET");
  const char* usec_env = std::getenv("WATCHDOG_USEC");
  const char* pid_env = std::getenv("WATCHDOG_PID");
  const std::string path = socket_env != nullptr ? socket_env : "";
  // WATCHDOG_PID says which process the keep-alives are expected from; without it, us.
  const bool watchdog_is_ours = pid_env == nullptr || std::atol(pid_env) == getpid();
  const long long usec = usec_env != nullptr ? std::atoll(usec_env) : 0;
  unsetenv("NOTIFY_SOCKET");
  unsetenv("WATCHDOG_USEC");
  unsetenv("WATCHDOG_PID");
  if (path.empty()) return notifier;

  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if ((path[0] != '/' && path[0] != '@') || path.size() >= sizeof addr.sun_path) {
    throw std::runtime_error(fmt::format(
        "NOTIFY_SOCKET '{}': not a unix socket path or '@' abstract name of at most {} bytes", path,
        sizeof addr.sun_path - 1));
  }
  std::memcpy(addr.sun_path, path.data(), path.size());
  if (path[0] == '@') addr.sun_path[0] = '\0';  // abstract namespace: no trailing NUL counted
  const std::size_t length =
      offsetof(sockaddr_un, sun_path) + path.size() + (path[0] == '@' ? 0 : 1);
  notifier.address_.assign(reinterpret_cast<const char*>(&addr), length);
  notifier.shown_ = path;
  notifier.socket_.reset(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (notifier.socket_.get() < 0) {
    throw std::runtime_error(
        fmt::format("NOTIFY_SOCKET {}: cannot create a socket: {}", path, std::strerror(errno)));
  }
  if (usec > 0 && watchdog_is_ours)
    notifier.watchdog_interval_ = std::chrono::microseconds(usec / 2);
  return notifier;
}

void SystemdNotifier::notify(std::string_view state) {
  if (!enabled()) return;
  const ssize_t sent = ::sendto(socket_.get(), state.data(), state.size(), MSG_NOSIGNAL,
                                reinterpret_cast<const sockaddr*>(address_.data()),
                                static_cast<socklen_t>(address_.size()));
  if (sent < 0) {
    failure_log_.warn("notify failed", "systemd notification to NOTIFY_SOCKET {} failed: {}",
                      shown_, std::strerror(errno));
  }
}

}  // namespace flowseal::supervisor
