// The progress bar of a file run, for a person watching a terminal: percent of the input
// read, packets per second and time left, redrawn in place on one line.
//
// Guarantees: nothing is written unless the output is a terminal (a log file or a pipe
// stays clean); the line is redrawn at most every kRedrawInterval; clear() erases it, and
// every log line and the run summary are written only after a clear(), so no line of them
// shares the terminal row with the bar. Percent is bytes read over the bytes of all input
// files times the loop passes, as capture publishes them (capture_counter::kBytesRead,
// kBytesTotal). Single-threaded: the supervisor's loop and its log sink (same thread) use it.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace flowseal::supervisor {

using ProgressClock = std::chrono::steady_clock;

// What one redraw shows; the rates are smoothed by ProgressBar.
struct ProgressView {
  std::uint64_t bytes_read = 0;
  std::uint64_t bytes_total = 0;  // 0: unknown (no bar)
  double packets_per_s = 0;
  std::optional<double> seconds_left;  // unknown until a rate was measured
};

// "  42.3% [##########..............]  1.25 M packets/s  0:12 left", fitted to `width`
// columns (the bar shrinks; below ~40 columns it is left out).
std::string format_progress(const ProgressView& view, int width);

class ProgressBar {
 public:
  static constexpr auto kRedrawInterval = std::chrono::milliseconds(250);

  // Draws on `fd` only if it is a terminal.
  explicit ProgressBar(int fd);
  ~ProgressBar() { clear(); }  // an error message after an unwind starts on a clean row
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;

  bool enabled() const { return enabled_; }
  // Takes the capture counters; redraws if kRedrawInterval has passed since the last draw,
  // and at once when the input has been read to its end.
  void update(std::uint64_t bytes_read, std::uint64_t bytes_total, std::uint64_t packets,
              ProgressClock::time_point now);
  // Erases the bar if it is on screen (the next update() draws it again).
  void clear();
  // Writes `text` (whole lines) on the bar's fd, the bar erased first.
  void print(std::string_view text);

 private:
  void draw(const std::string& line);

  int fd_;
  bool enabled_;
  bool shown_ = false;
  bool drew_done_ = false;  // the 100 % line was drawn
  std::optional<ProgressClock::time_point> last_draw_;
  std::uint64_t last_bytes_ = 0;
  std::uint64_t last_packets_ = 0;
  double byte_rate_ = 0;  // smoothed, per second
  double packet_rate_ = 0;
};

}  // namespace flowseal::supervisor
