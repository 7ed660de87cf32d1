// LogTail: the last lines of the run's log, for the status page (GET /log.json): the
// supervisor's own lines (an spdlog sink, formatted as on stderr) and the stages' lines that
// pass through it (stage_output.h). Bounded: the oldest line goes when a new one comes past
// the capacity, and a line is cut at kMaxLineBytes. Thread-safe: the supervisor's loop adds,
// the HTTP thread reads.
#pragma once

#include <cstddef>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include <spdlog/sinks/sink.h>

namespace flowseal::supervisor {

class LogTail {
 public:
  static constexpr std::size_t kMaxLineBytes = 1024;

  explicit LogTail(std::size_t capacity) : capacity_(capacity) {}

  // Adds one line (a trailing newline is dropped).
  void add(std::string_view line);
  // The lines held, oldest first, and how many were added in all (so a reader can tell
  // whether lines were dropped in between).
  std::vector<std::string> lines() const;
  std::size_t added() const;

  // An spdlog sink that adds every message of the logger it is put in, formatted as every
  // flowseal log line is (kLogPattern: "2026-12-07T01:07:43.133 error writerd: ...").
  std::shared_ptr<spdlog::sinks::sink> sink();

 private:
  const std::size_t capacity_;
  mutable std::mutex mutex_;
  std::deque<std::string> lines_;
  std::size_t added_ = 0;
};

}  // namespace flowseal::supervisor
