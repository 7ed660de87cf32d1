// Times on flowseal's command line and in its output: a time given by a person (RFC 3339 or
// epoch seconds) becomes nanoseconds since the epoch; a stored time is printed as RFC 3339
// UTC with microseconds.
//
// The parser takes exactly these forms and refuses anything else (nullopt), never throws and
// never overflows: a time outside the int64 nanosecond range (years ~1678..2262) is refused.
//   2024-05-01T12:00:00Z               (a lower-case t or z, or a space for the T, is accepted)
//   2024-05-01T12:00:00.25+02:00       (fraction of up to 9 digits, offset +HH:MM or -HH:MM)
//   1714564800 / 1714564800.25 / -5    (epoch seconds, up to 11 digits, optional fraction)
// A day is checked against its month (Feb 29 only in leap years); a leap second (:60) is
// taken as the first second of the next minute, as timegm does.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace flowseal::supervisor {

std::optional<std::int64_t> parse_time_ns(std::string_view text);

// "2024-05-01T12:00:00.250000Z": floored to the microsecond, so a time before 1970 keeps a
// fraction in 0..999999 ("1969-12-31T23:59:59.500000Z" for -0.5 s).
std::string format_utc(std::int64_t ns);

}  // namespace flowseal::supervisor
