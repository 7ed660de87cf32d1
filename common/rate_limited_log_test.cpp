// RateLimitedLog with a clock the test moves by hand: what gets through, what is held back,
// and what the next line says about it.
#include "rate_limited_log.h"

#include <algorithm>
#include <ctime>
#include <sstream>

#include <catch2/catch.hpp>
#include <spdlog/sinks/ostream_sink.h>

namespace flowseal {
namespace {

using namespace std::chrono_literals;
using TimePoint = std::chrono::system_clock::time_point;

// A log whose lines land in `lines` (one per line, message only) and whose time is `now`.
struct CapturedLog {
  CapturedLog()
      : sink(std::make_shared<spdlog::sinks::ostream_sink_st>(lines)),
        logger(std::make_shared<spdlog::logger>("test", sink)),
        log(
            10s, [this] { return now; }, logger) {
    logger->set_pattern("%v");
  }
  std::string text() const { return lines.str(); }
  int count() const {
    const std::string t = text();
    return static_cast<int>(std::count(t.begin(), t.end(), '\n'));
  }

  std::ostringstream lines;
  TimePoint now = TimePoint(std::chrono::seconds(1'700'000'000));
  std::shared_ptr<spdlog::sinks::ostream_sink_st> sink;
  std::shared_ptr<spdlog::logger> logger;
  RateLimitedLog log;
};

std::string clock_time(TimePoint at) {
  const std::time_t t = std::chrono::system_clock::to_time_t(at);
  std::tm local{};
  localtime_r(&t, &local);
  char text[16];
  std::strftime(text, sizeof text, "%H:%M:%S", &local);
  return text;
}

TEST_CASE("the first line of a key is logged and repeats within the interval are only counted") {
  CapturedLog c;
  c.log.warn("bad frame", "skipped frame {}", 1);
  c.now += 1s;
  c.log.warn("bad frame", "skipped frame {}", 2);
  c.now += 8s;
  c.log.warn("bad frame", "skipped frame {}", 3);
  CHECK(c.text() == "skipped frame 1\n");
  CHECK(c.log.held_back("bad frame") == 2);
}

TEST_CASE("the first line after the interval says how many were held back and since when") {
  CapturedLog c;
  const TimePoint first = c.now;
  c.log.warn("bad frame", "skipped frame {}", 1);
  c.now += 3s;
  c.log.warn("bad frame", "skipped frame {}", 2);
  c.log.warn("bad frame", "skipped frame {}", 3);
  c.now = first + 10s;
  c.log.warn("bad frame", "skipped frame {}", 4);
  CHECK(c.text() == "skipped frame 1\nskipped frame 4 (2 more since " + clock_time(first) + ")\n");
  CHECK(c.log.held_back("bad frame") == 0);
  // The interval starts again at the line just logged.
  c.now += 9s;
  c.log.warn("bad frame", "skipped frame {}", 5);
  CHECK(c.count() == 2);
  CHECK(c.log.held_back("bad frame") == 1);
}

TEST_CASE("a line after a quiet interval carries no count") {
  CapturedLog c;
  c.log.error("write error", "disk full");
  c.now += 60s;
  c.log.error("write error", "disk full");
  CHECK(c.text() == "disk full\ndisk full\n");
}

TEST_CASE("keys are limited independently of each other") {
  CapturedLog c;
  c.log.warn("bad frame", "a");
  c.log.warn("bad record", "b");
  c.log.warn("bad frame", "c");
  c.log.warn("bad record", "d");
  CHECK(c.text() == "a\nb\n");
  CHECK(c.log.held_back("bad frame") == 1);
  CHECK(c.log.held_back("bad record") == 1);
  CHECK(c.log.held_back("never seen") == 0);
}

TEST_CASE("a rearmed key lets its next line through at once, with the count held back before") {
  CapturedLog c;
  const TimePoint first = c.now;
  c.log.warn("stall", "stalled");
  c.now += 1s;
  c.log.warn("stall", "stalled");
  c.log.rearm("stall");  // the fault ended
  c.now += 1s;
  c.log.warn("stall", "stalled");  // and came back: a new episode
  c.log.warn("stall", "stalled");
  CHECK(c.text() == "stalled\nstalled (1 more since " + clock_time(first) + ")\n");
  c.log.rearm("unknown key");  // nothing to rearm: harmless
}

TEST_CASE("a clock set back starts a new interval instead of holding lines back") {
  CapturedLog c;
  c.log.warn("bad frame", "one");
  c.now -= 3600s;
  c.log.warn("bad frame", "two");
  CHECK(c.text() == "one\ntwo\n");
}

}  // namespace
}  // namespace flowseal
