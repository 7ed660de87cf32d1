#include "progress.h"

#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>

#include <fmt/format.h>

namespace flowseal::supervisor {
namespace {

// Weight of the newest 250 ms interval in the smoothed rates: the time left settles within
// a couple of seconds but does not jump with every batch.
constexpr double kSmoothing = 0.3;

std::string human_rate(double per_s) {
  if (per_s >= 1e6) return fmt::format("{:.2f} M", per_s / 1e6);
  if (per_s >= 1e3) return fmt::format("{:.1f} k", per_s / 1e3);
  return fmt::format("{:.0f}", per_s);
}

std::string human_duration(double seconds) {
  const auto s = static_cast<std::uint64_t>(std::llround(std::max(seconds, 0.0)));
  if (s >= 3600) return fmt::format("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60);
  return fmt::format("{}:{:02}", s / 60, s % 60);
}

int terminal_width(int fd) {
  winsize ws{};
  if (ioctl(fd, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) return ws.ws_col;
  return 80;
}

void write_all(int fd, std::string_view text) {
  std::size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;  // a display line is not worth failing the run for
    done += static_cast<std::size_t>(n);
  }
}

}  // namespace

std::string format_progress(const ProgressView& view, int width) {
  const double fraction = view.bytes_total == 0
                              ? 0.0
                              : std::min(1.0, double(view.bytes_read) / double(view.bytes_total));
  const std::string percent = fmt::format("{:5.1f}%", 100.0 * fraction);
  const std::string rate = fmt::format("{} packets/s", human_rate(view.packets_per_s));
  const std::string left = fraction >= 1.0 ? std::string("draining")
                           : view.seconds_left
                               ? fmt::format("{} left", human_duration(*view.seconds_left))
                               : std::string("--:-- left");
  const std::string text = fmt::format("{}  {}  {}", percent, rate, left);
  // One column stays free: writing the last column makes some terminals wrap.
  const int room = width - 1 - static_cast<int>(text.size()) - 4;
  if (room < 10) return text.substr(0, static_cast<std::size_t>(std::max(width - 1, 0)));
  const int bar = std::min(room, 40);
  const int filled = static_cast<int>(std::floor(fraction * bar));
  return fmt::format("{} [{}{}]  {}  {}", percent, std::string(filled, '#'),
                     std::string(bar - filled, '.'), rate, left);
}

ProgressBar::ProgressBar(int fd) : fd_(fd), enabled_(isatty(fd) == 1) {}

void ProgressBar::update(std::uint64_t bytes_read, std::uint64_t bytes_total, std::uint64_t packets,
                         ProgressClock::time_point now) {
  if (!enabled_ || bytes_total == 0) return;
  // The end of the input is drawn at once: the drain after it may take less than an interval.
  const bool input_done = bytes_read >= bytes_total && !drew_done_;
  if (last_draw_ && now - *last_draw_ < kRedrawInterval && !input_done) return;
  drew_done_ = drew_done_ || bytes_read >= bytes_total;
  if (last_draw_ && bytes_read >= last_bytes_ && packets >= last_packets_) {
    const double dt = std::chrono::duration<double>(now - *last_draw_).count();
    const double bytes_now = double(bytes_read - last_bytes_) / dt;
    const double packets_now = double(packets - last_packets_) / dt;
    const bool first = byte_rate_ == 0;
    byte_rate_ = first ? bytes_now : kSmoothing * bytes_now + (1 - kSmoothing) * byte_rate_;
    packet_rate_ = first ? packets_now : kSmoothing * packets_now + (1 - kSmoothing) * packet_rate_;
  }
  // A restarted capture re-reads its input from the start (skipping what it had published):
  // the counters go back, and the rates are measured afresh from there.
  last_draw_ = now;
  last_bytes_ = bytes_read;
  last_packets_ = packets;

  ProgressView view{bytes_read, bytes_total, packet_rate_, std::nullopt};
  if (byte_rate_ > 0)
    view.seconds_left = double(bytes_total - std::min(bytes_read, bytes_total)) / byte_rate_;
  draw(format_progress(view, terminal_width(fd_)));
}

void ProgressBar::draw(const std::string& line) {
  // \r back to the start, the line, then erase what a longer previous line left.
  write_all(fd_, "\r" + line + "\x1b[K");
  shown_ = true;
}

void ProgressBar::clear() {
  if (!shown_) return;
  write_all(fd_, "\r\x1b[K");
  shown_ = false;
}

}  // namespace flowseal::supervisor

namespace flowseal::supervisor {

void ProgressBar::print(std::string_view text) {
  clear();
  write_all(fd_, text);
}

}  // namespace flowseal::supervisor
