#include "log_tail.h"

#include <spdlog/sinks/base_sink.h>

#include "stage_runtime.h"

namespace flowseal::supervisor {
namespace {

class TailSink final : public spdlog::sinks::base_sink<std::mutex> {
 public:
  explicit TailSink(LogTail& tail) : tail_(tail) {}

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    spdlog::memory_buf_t formatted;
    formatter_->format(msg, formatted);
    tail_.add(std::string_view(formatted.data(), formatted.size()));
  }
  void flush_() override {}

 private:
  LogTail& tail_;
};

}  // namespace

void LogTail::add(std::string_view line) {
  while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.remove_suffix(1);
  if (line.size() > kMaxLineBytes) line = line.substr(0, kMaxLineBytes);
  std::lock_guard lock(mutex_);
  if (capacity_ == 0) return;
  if (lines_.size() == capacity_) lines_.pop_front();
  lines_.emplace_back(line);
  ++added_;
}

std::vector<std::string> LogTail::lines() const {
  std::lock_guard lock(mutex_);
  return {lines_.begin(), lines_.end()};
}

std::size_t LogTail::added() const {
  std::lock_guard lock(mutex_);
  return added_;
}

std::shared_ptr<spdlog::sinks::sink> LogTail::sink() {
  auto sink = std::make_shared<TailSink>(*this);
  sink->set_pattern(kLogPattern);
  return sink;
}

}  // namespace flowseal::supervisor
