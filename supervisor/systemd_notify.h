// SystemdNotifier: the sd_notify(3) datagram protocol, for `Type=notify` units
// (deploy/flowseal.service), without libsystemd.
//
// systemd passes NOTIFY_SOCKET (a filesystem path, or '@' + an abstract-namespace name) and,
// with WatchdogSec=, WATCHDOG_USEC (and WATCHDOG_PID, the process it is meant for). The
// supervisor sends READY=1 once every stage is up, WATCHDOG=1 at half the watchdog period
// while its loop runs, and STOPPING=1 when it starts to drain. Without NOTIFY_SOCKET every
// call does nothing. A failed send is logged (rate-limited) and otherwise ignored: systemd's view
// of the service is not worth stopping the probe for. The variables are removed from the
// environment so that the stages never talk to systemd themselves.
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <string_view>

#include "rate_limited_log.h"
#include "unique_fd.h"

namespace flowseal::supervisor {

class SystemdNotifier {
 public:
  // Reads (and unsets) NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID. Throws
  // std::runtime_error naming NOTIFY_SOCKET if it is set to something that is not a unix
  // socket address.
  static SystemdNotifier from_environment();

  bool enabled() const { return socket_.get() >= 0; }
  // Half the watchdog period, if systemd asked for keep-alives from this process.
  std::optional<std::chrono::microseconds> watchdog_interval() const { return watchdog_interval_; }

  // One datagram of newline-separated assignments, e.g. "READY=1\nSTATUS=running".
  void notify(std::string_view state);

 private:
  SystemdNotifier() = default;

  UniqueFd socket_;
  std::string address_;  // sockaddr_un bytes (sun_family + path), as sendto needs them
  std::string shown_;    // NOTIFY_SOCKET as given, for messages
  std::optional<std::chrono::microseconds> watchdog_interval_;
  RateLimitedLog failure_log_;
};

}  // namespace flowseal::supervisor
