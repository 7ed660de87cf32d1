#include "rate_limited_log.h"

#include <ctime>

namespace flowseal {
namespace {

std::string clock_time(std::chrono::system_clock::time_point at) {
  const std::time_t t = std::chrono::system_clock::to_time_t(at);
  std::tm local{};
  localtime_r(&t, &local);
  char text[16];
  const std::size_t n = std::strftime(text, sizeof text, "%H:%M:%S", &local);
  return std::string(text, n);
}

}  // namespace

RateLimitedLog::RateLimitedLog(std::chrono::milliseconds interval, Clock clock,
                               std::shared_ptr<spdlog::logger> logger)
    : interval_(interval), clock_(std::move(clock)), logger_(std::move(logger)) {}

std::optional<std::string> RateLimitedLog::admit(std::string_view key) {
  const auto now = clock_();
  auto it = entries_.find(key);
  if (it == entries_.end()) {
    entries_.emplace(std::string(key), Entry{now, 0, false});
    return std::string();
  }
  Entry& entry = it->second;
  // A clock set back starts a new interval rather than holding lines back for that long.
  if (!entry.rearmed && now >= entry.logged_at && now - entry.logged_at < interval_) {
    ++entry.held_back;
    return std::nullopt;
  }
  std::string suffix;
  if (entry.held_back > 0) {
    suffix = fmt::format(" ({} more since {})", entry.held_back, clock_time(entry.logged_at));
  }
  entry = Entry{now, 0, false};
  return suffix;
}

void RateLimitedLog::rearm(std::string_view key) {
  if (const auto it = entries_.find(key); it != entries_.end()) it->second.rearmed = true;
}

std::uint64_t RateLimitedLog::held_back(std::string_view key) const {
  const auto it = entries_.find(key);
  return it == entries_.end() ? 0 : it->second.held_back;
}

}  // namespace flowseal
