#include "log_tail.h"

#include <catch2/catch.hpp>
#include <spdlog/logger.h>

#include <string>

using flowseal::supervisor::LogTail;

TEST_CASE("the log tail keeps the newest lines, oldest first, each cut to its limit") {
  LogTail tail(3);
  for (int i = 1; i <= 5; ++i) tail.add("line " + std::to_string(i) + "\n");
  CHECK(tail.lines() == std::vector<std::string>{"line 3", "line 4", "line 5"});
  CHECK(tail.added() == 5);
  tail.add(std::string(LogTail::kMaxLineBytes + 10, 'x'));
  CHECK(tail.lines().back().size() == LogTail::kMaxLineBytes);
}

TEST_CASE("the log tail's sink takes a logger's messages as flowseal formats them") {
  LogTail tail(10);
  spdlog::logger logger("writerd", tail.sink());
  logger.error("{}: cannot cut back", "seg.fsg.part");
  const auto lines = tail.lines();
  REQUIRE(lines.size() == 1);
  // "2026-12-07T01:07:43.133 error writerd: seg.fsg.part: cannot cut back"
  INFO(lines[0]);
  CHECK(lines[0].size() ==
        23 + std::string(" error writerd: seg.fsg.part: cannot cut back").size());
  CHECK(lines[0].substr(23) == " error writerd: seg.fsg.part: cannot cut back");
  CHECK(lines[0][10] == 'T');
}
