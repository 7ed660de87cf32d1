#include "rfc3339.h"

#include <algorithm>
#include <ctime>
#include <utility>

#include <fmt/format.h>

namespace flowseal::supervisor {
namespace {

constexpr std::int64_t kNsPerSecond = 1'000'000'000;

bool all_digits(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// `s` holds digits only, at most 18 of them: no overflow.
std::int64_t to_int(std::string_view s) {
  std::int64_t value = 0;
  for (const char c : s) value = value * 10 + (c - '0');
  return value;
}

// The digits after a decimal point (1..9 of them) as nanoseconds.
std::optional<std::int64_t> fraction_ns(std::string_view digits) {
  if (!all_digits(digits) || digits.size() > 9) return std::nullopt;
  std::int64_t ns = to_int(digits);
  for (std::size_t i = digits.size(); i < 9; ++i) ns *= 10;
  return ns;
}

std::optional<std::int64_t> to_ns(std::int64_t seconds, std::int64_t fraction) {
  std::int64_t ns = 0;
  if (__builtin_mul_overflow(seconds, kNsPerSecond, &ns) ||
      __builtin_add_overflow(ns, fraction, &ns)) {
    return std::nullopt;
  }
  return ns;
}

// Days from 1970-01-01 to a date of the proleptic Gregorian calendar (H. Hinnant's
// days_from_civil): no libc, no time_t, any year.
std::int64_t days_from_civil(std::int64_t y, unsigned m, unsigned d) {
  y -= m <= 2 ? 1 : 0;
  const std::int64_t era = (y >= 0 ? y : y - 399) / 400;
  const auto yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<std::int64_t>(doe) - 719468;
}

unsigned days_in_month(std::int64_t year, unsigned month) {
  static constexpr unsigned kDays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  const bool leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
  return month == 2 && leap ? 29 : kDays[month - 1];
}

// "[-]SECONDS[.FRACTION]"; nullopt if `text` is not in that form.
std::optional<std::int64_t> parse_epoch(std::string_view text) {
  const bool negative = !text.empty() && text.front() == '-';
  if (negative) text.remove_prefix(1);
  const auto dot = text.find('.');
  const std::string_view whole = text.substr(0, dot);
  if (!all_digits(whole) || whole.size() > 11) return std::nullopt;
  std::int64_t fraction = 0;
  if (dot != std::string_view::npos) {
    const auto f = fraction_ns(text.substr(dot + 1));
    if (!f) return std::nullopt;
    fraction = *f;
  }
  const auto ns = to_ns(to_int(whole), fraction);
  if (!ns) return std::nullopt;
  return negative ? -*ns : *ns;
}

// "Z", "+HH:MM" or "-HH:MM" as seconds east of UTC.
std::optional<std::int64_t> parse_offset(std::string_view zone) {
  if (zone == "Z" || zone == "z") return 0;
  if (zone.size() != 6 || (zone[0] != '+' && zone[0] != '-') || zone[3] != ':' ||
      !all_digits(zone.substr(1, 2)) || !all_digits(zone.substr(4, 2))) {
    return std::nullopt;
  }
  const std::int64_t hours = to_int(zone.substr(1, 2));
  const std::int64_t minutes = to_int(zone.substr(4, 2));
  if (hours > 23 || minutes > 59) return std::nullopt;
  return (hours * 3600 + minutes * 60) * (zone[0] == '+' ? 1 : -1);
}

std::optional<std::int64_t> parse_rfc3339(std::string_view t) {
  if (t.size() < 20 || t[4] != '-' || t[7] != '-' ||
      (t[10] != 'T' && t[10] != 't' && t[10] != ' ') || t[13] != ':' || t[16] != ':') {
    return std::nullopt;
  }
  static constexpr std::pair<std::size_t, std::size_t> kFields[] = {{0, 4},  {5, 2},  {8, 2},
                                                                    {11, 2}, {14, 2}, {17, 2}};
  for (const auto& [pos, len] : kFields) {
    if (!all_digits(t.substr(pos, len))) return std::nullopt;
  }
  const std::int64_t year = to_int(t.substr(0, 4));
  const auto month = static_cast<unsigned>(to_int(t.substr(5, 2)));
  const auto day = static_cast<unsigned>(to_int(t.substr(8, 2)));
  const std::int64_t hour = to_int(t.substr(11, 2));
  const std::int64_t minute = to_int(t.substr(14, 2));
  const std::int64_t second = to_int(t.substr(17, 2));
  if (month < 1 || month > 12 || day < 1 || day > days_in_month(year, month) || hour > 23 ||
      minute > 59 || second > 60) {
    return std::nullopt;
  }
  std::string_view rest = t.substr(19);
  std::int64_t fraction = 0;
  if (!rest.empty() && rest.front() == '.') {
    const auto end = std::min(rest.find_first_not_of("0123456789", 1), rest.size());
    const auto f = fraction_ns(rest.substr(1, end - 1));
    if (!f) return std::nullopt;
    fraction = *f;
    rest.remove_prefix(end);
  }
  const auto offset = parse_offset(rest);
  if (!offset) return std::nullopt;
  const std::int64_t seconds =
      days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second - *offset;
  return to_ns(seconds, fraction);
}

}  // namespace

std::optional<std::int64_t> parse_time_ns(std::string_view text) {
  if (auto ns = parse_epoch(text)) return ns;
  return parse_rfc3339(text);
}

std::string format_utc(std::int64_t ns) {
  std::int64_t whole = ns / kNsPerSecond;
  std::int64_t fraction = ns % kNsPerSecond;
  if (fraction < 0) {
    fraction += kNsPerSecond;
    --whole;
  }
  const auto seconds = static_cast<std::time_t>(whole);
  std::tm tm{};
  gmtime_r(&seconds, &tm);
  char text[32];
  std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%S", &tm);
  return fmt::format("{}.{:06}Z", text, fraction / 1000);
}

}  // namespace flowseal::supervisor
