// The progress bar without a run: what a line says, and that only a terminal gets one.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <string>

#include "progress.h"

namespace {

using flowseal::supervisor::format_progress;
using flowseal::supervisor::ProgressBar;
using flowseal::supervisor::ProgressClock;
using flowseal::supervisor::ProgressView;

// Everything waiting on a non-blocking fd.
std::string drain(int fd) {
  std::string out;
  char buf[4096];
  for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) > 0;)
    out.append(buf, static_cast<std::size_t>(n));
  return out;
}

}  // namespace

TEST_CASE("a progress line shows the percent read, the packet rate and the time left") {
  const std::string line = format_progress({250, 1000, 1'250'000, 12.4}, 80);
  CHECK_THAT(line, Catch::StartsWith(" 25.0% ["));
  CHECK_THAT(line, Catch::Contains("1.25 M packets/s"));
  CHECK_THAT(line, Catch::EndsWith("0:12 left"));
  CHECK(line.size() < 80);  // the last column stays free
  // A quarter of the bar is filled.
  const auto open = line.find('['), close = line.find(']');
  const std::string bar = line.substr(open + 1, close - open - 1);
  CHECK(std::count(bar.begin(), bar.end(), '#') == static_cast<long>(bar.size() / 4));
}

TEST_CASE("before a rate is known the time left is a placeholder, at the end it says draining") {
  CHECK_THAT(format_progress({0, 1000, 0, std::nullopt}, 80), Catch::EndsWith("--:-- left"));
  const std::string done = format_progress({1000, 1000, 10, 0.0}, 80);
  CHECK_THAT(done, Catch::StartsWith("100.0% [####"));
  CHECK_THAT(done, Catch::EndsWith("draining"));
  CHECK_THAT(format_progress({1, 2, 5, 3725.0}, 80), Catch::EndsWith("1:02:05 left"));
}

TEST_CASE("a narrow terminal gets the figures without the bar, never a wrapped line") {
  const std::string line = format_progress({500, 1000, 2000, 5.0}, 36);
  CHECK(line.find('[') == std::string::npos);
  CHECK(line.size() <= 35);
  CHECK_THAT(line, Catch::StartsWith(" 50.0%"));
}

TEST_CASE("a pipe gets no progress bar at all") {
  int fds[2];
  REQUIRE(pipe2(fds, O_NONBLOCK) == 0);
  {
    ProgressBar bar(fds[1]);
    CHECK_FALSE(bar.enabled());
    const auto t0 = ProgressClock::now();
    bar.update(10, 100, 5, t0);
    bar.update(50, 100, 25, t0 + std::chrono::seconds(1));
    bar.clear();
  }
  CHECK(drain(fds[0]).empty());
  ::close(fds[0]);
  ::close(fds[1]);
}

TEST_CASE("a terminal gets the bar redrawn in place, at most every 250 ms, and erased by clear") {
  const int master = posix_openpt(O_RDWR | O_NOCTTY);
  REQUIRE(master >= 0);
  REQUIRE(grantpt(master) == 0);
  REQUIRE(unlockpt(master) == 0);
  const int slave = ::open(ptsname(master), O_RDWR | O_NOCTTY);
  REQUIRE(slave >= 0);
  fcntl(master, F_SETFL, O_NONBLOCK);
  {
    ProgressBar bar(slave);
    REQUIRE(bar.enabled());
    const auto t0 = ProgressClock::now();
    bar.update(0, 1000, 0, t0);
    bar.update(100, 1000, 50, t0 + std::chrono::milliseconds(100));  // too soon: not drawn
    bar.update(500, 1000, 250, t0 + std::chrono::milliseconds(500));
    const std::string drawn = drain(master);
    CHECK(std::count(drawn.begin(), drawn.end(), '\r') == 2);
    CHECK_THAT(drawn, Catch::Contains("  0.0%") && Catch::Contains(" 50.0%"));
    CHECK_THAT(drawn, Catch::Contains("500 packets/s") && Catch::Contains("0:01 left"));
    CHECK(drawn.find('\n') == std::string::npos);
    bar.print("a log line\n");
    CHECK(drain(master) == "\r\x1b[Ka log line\r\n");  // the tty turns \n into \r\n
    bar.clear();                                       // nothing on screen: nothing to erase
    CHECK(drain(master).empty());
  }
  ::close(slave);
  ::close(master);
}
