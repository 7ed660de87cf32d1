#include "rfc3339.h"

#include <catch2/catch.hpp>

using flowseal::supervisor::format_utc;
using flowseal::supervisor::parse_time_ns;

namespace {
constexpr std::int64_t kS = 1'000'000'000;
}

TEST_CASE("an RFC 3339 UTC time is read to the nanosecond") {
  CHECK(parse_time_ns("2024-05-01T12:00:00Z") == 1714564800 * kS);
  CHECK(parse_time_ns("2024-05-01t12:00:00z") == 1714564800 * kS);
  CHECK(parse_time_ns("2024-05-01 12:00:00Z") == 1714564800 * kS);
  CHECK(parse_time_ns("2024-05-01T12:00:00.5Z") == 1714564800 * kS + 500'000'000);
  CHECK(parse_time_ns("2024-05-01T12:00:00.000000001Z") == 1714564800 * kS + 1);
  CHECK(parse_time_ns("1970-01-01T00:00:00Z") == 0);
}

TEST_CASE("an offset moves the time to UTC") {
  CHECK(parse_time_ns("2024-05-01T14:00:00+02:00") == 1714564800 * kS);
  CHECK(parse_time_ns("2024-05-01T07:30:00-04:30") == 1714564800 * kS);
  CHECK(parse_time_ns("2024-05-01T12:00:00+00:00") == 1714564800 * kS);
}

TEST_CASE("dates before 1970 and around leap days are exact") {
  CHECK(parse_time_ns("1969-12-31T23:59:59Z") == -kS);
  CHECK(parse_time_ns("1969-12-31T23:59:59.5Z") == -kS + 500'000'000);
  CHECK(parse_time_ns("2000-02-29T00:00:00Z") == 951782400 * kS);
  CHECK(parse_time_ns("2024-03-01T00:00:00Z") == 1709251200 * kS);
  CHECK(parse_time_ns("1900-01-01T00:00:00Z") == -2208988800 * kS);
}

TEST_CASE("epoch seconds are read with an optional fraction and sign") {
  CHECK(parse_time_ns("1714564800") == 1714564800 * kS);
  CHECK(parse_time_ns("1714564800.25") == 1714564800 * kS + 250'000'000);
  CHECK(parse_time_ns("0") == 0);
  CHECK(parse_time_ns("-5") == -5 * kS);
  CHECK(parse_time_ns("-0.5") == -500'000'000);
}

TEST_CASE("anything else is refused, never thrown or wrapped") {
  for (const char* bad : {"",
                          "yesterday",
                          "-",
                          "5.",
                          ".5",
                          "1.1234567890",
                          "123456789012",
                          "2024-05-01T12:00:00",
                          "2024-05-01T12:00:00.Z",
                          "2024-05-01T12:00:00+2:00",
                          "2024-05-01T12:00:00+24:00",
                          "2024-05-01T12:00:00+02:60",
                          "2024-13-01T00:00:00Z",
                          "2024-00-01T00:00:00Z",
                          "2023-02-29T00:00:00Z",
                          "2024-04-31T00:00:00Z",
                          "2024-05-01T24:00:00Z",
                          "2024-05-01T12:60:00Z",
                          "2024-05-01T12:00:61Z",
                          "2024-05-01X12:00:00Z",
                          "2024/05/01T12:00:00Z",
                          "2024-05-01T12:00:00Zjunk",
                          "20x4-05-01T12:00:00Z",
                          "2024-05-01T12:00:00.5.5Z"}) {
    INFO(bad);
    CHECK_FALSE(parse_time_ns(bad).has_value());
  }
}

TEST_CASE("a time past the int64 nanosecond range is refused, not overflowed") {
  CHECK_FALSE(parse_time_ns("99999999999").has_value());  // year ~5138
  CHECK_FALSE(parse_time_ns("-99999999999").has_value());
  CHECK_FALSE(parse_time_ns("2263-01-01T00:00:00Z").has_value());
  CHECK_FALSE(parse_time_ns("1677-01-01T00:00:00Z").has_value());
  CHECK(parse_time_ns("2262-04-11T00:00:00Z").has_value());
  CHECK(parse_time_ns("9223372036").has_value());
}

TEST_CASE("stored times print as RFC 3339 UTC with microseconds, floored") {
  CHECK(format_utc(1714564800 * kS + 250'000'999) == "2024-05-01T12:00:00.250000Z");
  CHECK(format_utc(0) == "1970-01-01T00:00:00.000000Z");
  CHECK(format_utc(-500'000'000) == "1969-12-31T23:59:59.500000Z");
  CHECK(parse_time_ns(format_utc(1714564800 * kS + 123'456'000)) == 1714564800 * kS + 123'456'000);
}
