// cat's record formatting at the edges of what a stored (and signed) record can hold: times
// before 1970 and at both ends of int64, durations wider than int64, non-finite floats. Each
// line must stay valid JSON (a loop-mode overflow once printed "ts":-9223372036.-854775).
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <string>

#include <capnp/message.h>

#include "flowseal.capnp.h"
#include "record_json.h"

namespace schema = flowseal::schema;
using flowseal::supervisor::to_json_line;
using flowseal::supervisor::to_tsv_line;

namespace {

// The value of `"name":` in a JSON line, as printed.
std::string member(const std::string& line, const std::string& name) {
  const auto at = line.find("\"" + name + "\":");
  if (at == std::string::npos) return "<missing>";
  const auto from = at + name.size() + 3;
  return line.substr(from, line.find_first_of(",}", from) - from);
}

struct Record {
  capnp::MallocMessageBuilder message;
  schema::FlowEvent::Builder e = message.initRoot<schema::FlowEvent>();
  Record(std::int64_t first, std::int64_t last) {
    e.setFirstTsNs(first);
    e.setLastTsNs(last);
  }
};

}  // namespace

TEST_CASE("a time before 1970 prints as a negative number of seconds") {
  Record r(-1'500'000'000, -500'000'000);
  const std::string line = to_json_line(r.e.asReader());
  CHECK(member(line, "ts") == "-1.500000");
  CHECK(member(line, "duration") == "1.000000");
  Record half(-500'000, 0);
  CHECK(member(to_json_line(half.e.asReader()), "ts") == "-0.000500");
}

TEST_CASE("the ends of int64 and a duration between them print as plain numbers") {
  constexpr auto kMin = std::numeric_limits<std::int64_t>::min();
  constexpr auto kMax = std::numeric_limits<std::int64_t>::max();
  Record r(kMin, kMax);
  const std::string line = to_json_line(r.e.asReader());
  CHECK(member(line, "ts") == "-9223372036.854775");
  CHECK(member(line, "duration") == "18446744073.709551");
  Record back(kMax, kMin);
  CHECK(member(to_json_line(back.e.asReader()), "duration") == "-18446744073.709551");
  CHECK(to_tsv_line(back.e.asReader()).find("\t-18446744073.709551\t") != std::string::npos);
}

TEST_CASE("a sampling rate that is not a number prints as null, or unset in TSV") {
  Record r(0, 0);
  r.e.setSamplingRate(std::numeric_limits<float>::quiet_NaN());
  r.e.setOrigPkts(3);
  r.e.setOrigIatSumSqUs(std::numeric_limits<double>::infinity());
  const std::string line = to_json_line(r.e.asReader());
  CHECK(member(line, "sampling_rate") == "null");
  CHECK(line.find("nan") == std::string::npos);
  CHECK(line.find("inf") == std::string::npos);
  const std::string tsv = to_tsv_line(r.e.asReader());
  CHECK(tsv.find("\t-\t") != std::string::npos);
  r.e.setSamplingRate(0.5f);
  CHECK(member(to_json_line(r.e.asReader()), "sampling_rate") == "0.5");
}
