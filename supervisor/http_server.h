// The supervisor's read-only HTTP endpoint (supervisor.http_listen): libmicrohttpd serves,
// on its own thread,
//   GET /metrics      the Prometheus text exposition (metrics.h)
//   GET /status.json  what `flowseal status --json` prints (status_snapshot.h), plus
//                     memory_budget_bytes
//   GET /log.json     {"lines": [...], "added": N}: the newest lines of the run's log
//                     (log_tail.h), the stages' where they pass through the supervisor
//   GET /             a static status page (http_page.cpp) that polls both
// It only reads the control block's atomics, /proc and the ring headers: a slow or stuck
// client can never hold up the supervisor's loop or a stage. Anything but GET/HEAD is 405.
#pragma once

#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "config.h"
#include "control_block.h"
#include "log_tail.h"
#include "status_snapshot.h"
#include "unique_fd.h"

struct MHD_Daemon;

namespace flowseal::supervisor {

// The status page's HTML (no external resources).
std::string_view status_page_html();

class HttpServer {
 public:
  // Binds `address` (ConfigError naming it if that fails, e.g. the port is in use)
  // and starts serving at once.
  HttpServer(const ListenAddress& address, std::string instance, const ControlBlock& control,
             std::uint64_t memory_budget_bytes, const LogTail& log);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // The bound port (the one asked for, or the kernel's choice for port 0).
  std::uint16_t port() const { return port_; }

  // What a request for `url` answers: status code, content type, body.
  struct Reply {
    unsigned status = 200;
    std::string content_type;
    std::string body;
  };
  Reply answer(std::string_view url);

 private:
  std::string status_document();
  std::string log_document() const;

  std::string instance_;
  const ControlBlock& control_;
  std::uint64_t memory_budget_bytes_;
  const LogTail& log_;
  std::uint16_t port_ = 0;
  UniqueFd socket_;
  // Rates in /status.json are measured against an earlier sample at least kMinRateWindow
  // old: `base_` is the newest such sample, `prev_` the one before (for a request that comes
  // sooner than that after the base moved).
  struct Sample {
    std::chrono::steady_clock::time_point at;
    std::vector<SlotSample> slots;
  };
  std::mutex samples_mutex_;
  Sample prev_, base_;
  struct DaemonDeleter {
    void operator()(MHD_Daemon* daemon) const;
  };
  std::unique_ptr<MHD_Daemon, DaemonDeleter> daemon_;
};

}  // namespace flowseal::supervisor
