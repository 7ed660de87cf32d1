// RateLimitedLog: log lines that may repeat (a malformed frame, a failing write, a full ring)
// reach the log at most once per interval per key, and the next line that gets through says
// how many were held back and since when (Seastar's logger::rate_limit idea):
//
//   skipped a malformed PacketBatch frame from packets.0: <why> (41 more since 09:12:03)
//
// Counters are the record of every occurrence; this is for people, so a bad input never
// floods the log and a long fault is still seen once per interval rather than once per
// process life.
//
// A key is any string naming the kind of line ("malformed frame", "write error"); keys are
// independent. The first line of a key always gets through. Formatting costs nothing for a
// line held back. The clock is passed in, so tests drive time by hand; "since" is the time of
// the last line of that key that was logged, in local time like the log's own stamps.
// Not thread-safe: one per thread (every stage is single-threaded).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

namespace flowseal {

class RateLimitedLog {
 public:
  using Clock = std::function<std::chrono::system_clock::time_point()>;
  static constexpr std::chrono::seconds kDefaultInterval{10};

  // `logger` null: spdlog's default logger at the time of each line (a stage's, once
  // init_logging ran).
  explicit RateLimitedLog(std::chrono::milliseconds interval = kDefaultInterval,
                          Clock clock = &std::chrono::system_clock::now,
                          std::shared_ptr<spdlog::logger> logger = nullptr);

  template <typename... Args>
  void log(spdlog::level::level_enum level, std::string_view key,
           fmt::format_string<Args...> format, Args&&... args) {
    const std::optional<std::string> suffix = admit(key);
    if (!suffix) return;
    spdlog::logger* out = logger_ ? logger_.get() : spdlog::default_logger_raw();
    out->log(level, "{}{}", fmt::format(format, std::forward<Args>(args)...), *suffix);
  }
  template <typename... Args>
  void info(std::string_view key, fmt::format_string<Args...> format, Args&&... args) {
    log(spdlog::level::info, key, format, std::forward<Args>(args)...);
  }
  template <typename... Args>
  void warn(std::string_view key, fmt::format_string<Args...> format, Args&&... args) {
    log(spdlog::level::warn, key, format, std::forward<Args>(args)...);
  }
  template <typename... Args>
  void error(std::string_view key, fmt::format_string<Args...> format, Args&&... args) {
    log(spdlog::level::err, key, format, std::forward<Args>(args)...);
  }

  // Lets the next line of `key` through at once (a new episode: the fault ended and came
  // back); it still says how many were held back before.
  void rearm(std::string_view key);
  // Lines of `key` held back since its last logged line.
  std::uint64_t held_back(std::string_view key) const;

 private:
  struct Entry {
    std::chrono::system_clock::time_point logged_at;
    std::uint64_t held_back = 0;
    bool rearmed = false;
  };
  // The suffix for a line of `key` that may be logged now ("" or " (N more since T)"), or
  // nullopt if it is held back (and counted).
  std::optional<std::string> admit(std::string_view key);

  std::chrono::milliseconds interval_;
  Clock clock_;
  std::shared_ptr<spdlog::logger> logger_;
  std::map<std::string, Entry, std::less<>> entries_;
};

}  // namespace flowseal
