// cat's record formatting at the edges of what a stored (and signed) record can hold: times
// before 1970 and at both ends of int64, durations wider than int64, non-finite floats. Each
// line must stay valid JSON (a loop-mode overflow once printed "ts":-9223372036.-854775).
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <random>
#include <string>

#include <capnp/message.h>
#include <nlohmann/json.hpp>

#include "flowseal.capnp.h"
#include "record/direction.h"
#include "record/record_json.h"

namespace schema = flowseal::schema;
using flowseal::record::json_string;
using flowseal::record::to_json_line;
using flowseal::record::to_tsv_line;

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
  r.e.getOrig().setPkts(3);
  r.e.getOrig().setIatSumSqUs(std::numeric_limits<double>::infinity());
  const std::string line = to_json_line(r.e.asReader());
  CHECK(member(line, "sampling_rate") == "null");
  CHECK(line.find("nan") == std::string::npos);
  CHECK(line.find("inf") == std::string::npos);
  const std::string tsv = to_tsv_line(r.e.asReader());
  CHECK(tsv.find("\t-\t") != std::string::npos);
  r.e.setSamplingRate(0.5f);
  CHECK(member(to_json_line(r.e.asReader()), "sampling_rate") == "0.5");
}

namespace {

// No raw control byte (C0, DEL) and no raw C1 control (UTF-8 C2 80..C2 9F) in `text`.
bool no_raw_control(const std::string& text) {
  for (std::size_t i = 0; i < text.size(); ++i) {
    const auto b = static_cast<unsigned char>(text[i]);
    if (b < 0x20 || b == 0x7F) return false;
    if (b == 0xC2 && i + 1 < text.size() && static_cast<unsigned char>(text[i + 1]) < 0xA0) {
      return false;
    }
  }
  return true;
}

// What the JSON string literal `literal` says, as a strict parser reads it (it refuses
// invalid UTF-8 and raw control bytes).
std::string parsed(const std::string& literal) {
  return nlohmann::json::parse(literal).get<std::string>();
}

}  // namespace

TEST_CASE("a JSON string is valid UTF-8 with every control byte escaped, whatever the bytes") {
  for (int b = 0; b < 256; ++b) {
    const std::string bytes = "a" + std::string(1, static_cast<char>(b)) + "z";
    const std::string literal = json_string(bytes);
    INFO("byte " << b << ": " << literal);
    CHECK(no_raw_control(literal));
    REQUIRE_NOTHROW(parsed(literal));
    if (b < 0x80) {
      CHECK(parsed(literal) == bytes);  // ASCII, controls included, says what it held
    } else {
      // A lone byte >= 0x80 is never UTF-8: written as the text \xNN.
      char hex[8];
      std::snprintf(hex, sizeof hex, "\\x%02x", static_cast<unsigned>(b));
      CHECK(parsed(literal) == "a" + std::string(hex) + "z");
    }
  }
  // Random bytes, weighted to the high half where UTF-8 goes wrong.
  std::mt19937 random(20261205);
  for (int i = 0; i < 50000; ++i) {
    std::string bytes(random() % 12, '\0');
    for (auto& c : bytes)
      c = static_cast<char>(random() % 2 ? random() % 256 : 0x80 + random() % 64);
    const std::string literal = json_string(bytes);
    INFO("input of " << bytes.size() << " bytes: " << literal);
    REQUIRE(no_raw_control(literal));
    REQUIRE_NOTHROW(parsed(literal));
  }
}

TEST_CASE("well-formed UTF-8 passes unchanged, malformed sequences are escaped byte by byte") {
  CHECK(parsed(json_string("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80")) ==
        "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80");
  CHECK(json_string("\"\\/") == R"("\"\\/")");
  CHECK(json_string("\x7f\xc2\x85\xc2\xa0") ==
        "\"\\u007f\\u0085\xc2\xa0\"");  // DEL, NEL; NBSP passes
  CHECK(json_string(std::string("\0\n", 2)) == R"("\u0000\u000a")");
  CHECK(parsed(json_string("\xc0\x80")) == R"(\xc0\x80)");                  // overlong NUL
  CHECK(parsed(json_string("\xe0\x80\x80")) == R"(\xe0\x80\x80)");          // overlong
  CHECK(parsed(json_string("\xed\xa0\x80")) == R"(\xed\xa0\x80)");          // a surrogate
  CHECK(parsed(json_string("\xf4\x90\x80\x80")) == R"(\xf4\x90\x80\x80)");  // > U+10FFFF
  CHECK(parsed(json_string("\xe2\x82")) == R"(\xe2\x82)");                  // cut short
  CHECK(parsed(json_string("\xe2\x82z")) == R"(\xe2\x82z)");
}

TEST_CASE("a record whose texts hold any bytes still prints as one valid JSON line") {
  Record r(0, 0);
  const std::string state("S\x01\n\xff\"", 5);
  r.e.setConnState(capnp::Text::Reader(state.data(), state.size()));
  r.e.setHistory(capnp::Text::Reader("\xc3\xa9\x7f", 3));
  r.e.setCommunityId(capnp::Text::Reader("1:\0x", 4));
  const std::string line = to_json_line(r.e.asReader());
  CHECK(line.find('\n') == std::string::npos);
  CHECK(no_raw_control(line));
  const auto json = nlohmann::json::parse(line);
  CHECK(json["conn_state"] == "S\x01\n\\xff\"");
  CHECK(json["history"] == "\xc3\xa9\x7f");
  CHECK(json["community_id"] == std::string("1:\0x", 4));
}

TEST_CASE("an exported line is cat's line plus its event id and where it is sealed") {
  Record r(1'000'000'000, 2'000'000'000);
  r.e.setUid(12345);
  r.e.setKind(schema::EventKind::END);
  r.e.setEventNumber(2);
  const std::uint8_t stream[16] = {0x00, 0x01, 0xab, 0xff, 4,  5,  6,  7,
                                   8,    9,    10,   11,   12, 13, 14, 15};
  const std::string cat = to_json_line(r.e.asReader());
  const std::string exported = to_json_line(r.e.asReader(), {stream, 77, 5});
  REQUIRE(exported.size() > cat.size());
  CHECK(exported.substr(0, cat.size() - 1) == cat.substr(0, cat.size() - 1));
  const auto json = nlohmann::json::parse(exported);
  CHECK(json["event_id"] == flowseal::record::event_id_text(r.e.asReader()));
  CHECK(json["event_id"] == flowseal::record::uid_text(12345) + ":end:2");
  CHECK(json["stream_id"] == "0001abff0405060708090a0b0c0d0e0f");
  CHECK(json["batch_seq"] == 77);
  CHECK(json["leaf_index"] == 5);
  // Every member of cat's line is there, unchanged, in cat's order.
  auto without = json;
  for (const char* name : {"event_id", "stream_id", "batch_seq", "leaf_index"}) without.erase(name);
  CHECK(without == nlohmann::json::parse(cat));
}

TEST_CASE(
    "a record with every member set prints byte for byte as before the writer was rewritten") {
  // The expected lines are what the fmt-based writer printed (kept as the reference when the
  // line was rewritten for the Kafka export's speed): IPv6 and IPv4, a service with UTF-8 and
  // a control byte, tunnel parents, both locality flags, every spread figure.
  using namespace flowseal;
  capnp::MallocMessageBuilder message;
  auto e = message.initRoot<schema::FlowEvent>();
  e.setUid(0x0123456789abcdefull);
  e.setKind(schema::EventKind::END);
  e.setEventNumber(3);
  e.setEndReason(schema::EndReason::IDLE);
  e.setProto(17);
  const std::uint8_t orig[16] = {0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
  const std::uint8_t resp[4] = {198, 51, 100, 7};
  e.setOrigAddr({orig, 16});
  e.setRespAddr({resp, 4});
  e.setOrigPort(5353);
  e.setRespPort(53);
  e.setVlan(42);
  e.setFirstTsNs(1'700'000'123'456'789'012);
  e.setLastTsNs(1'700'000'125'000'000'000);
  e.setService("dns,caf\xc3\xa9\x01");
  e.setConnState("SF");
  e.setHistory("Dd");
  e.setCommunityId("1:abc=");
  e.setMissedBytes(7);
  e.setSamplingRate(0.5f);
  e.setFlowCount(2);
  auto parents = e.initTunnelParents(2);
  parents.set(0, 1);
  parents.set(1, 987654321);
  record::DirectionStats o;
  o.pkts = 9;
  o.ip_bytes = 1234;
  o.bytes = 800;
  o.size_min = 60;
  o.size_max = 300;
  o.size_sumsq = 250000;
  o.iat_min_us = 3;
  o.iat_max_us = 1'500'000;
  o.iat_sum_us = 2'000'001;
  o.iat_sumsq_us = 2.5e12;
  o.rexmits = 1;
  o.local = schema::Locality::LOCAL;
  record::DirectionStats r = o;
  r.pkts = 4;
  r.ip_bytes = 4000;
  r.size_min = 1000;
  r.size_max = 1000;
  r.size_sumsq = 4'000'000;
  r.local = schema::Locality::REMOTE;
  record::set_direction(e, record::Side::kOrig, o);
  record::set_direction(e, record::Side::kResp, r);
  const std::uint8_t stream[16] = {0xde, 0xad, 0xbe, 0xef};
  const std::string expected(
      "{\"ts\":1700000123.456789,\"uid\":\"CzBKRVDfU36\",\"id.orig_h\":\"2001:db8::1\",\"id"
      ".orig_p\":5353,\"id.resp_h\":\"198.51.100.7\",\"id.resp_p\":53,\"proto\":\"udp\",\"s"
      "ervice\":\"dns,caf\xc3\xa9"
      "\\u0001\",\"duration\":1.543210,\"orig_bytes\":800,\"res"
      "p_bytes\":800,\"conn_state\":\"SF\",\"local_orig\":true,\"local_resp\":false,\"misse"
      "d_bytes\":7,\"history\":\"Dd\",\"orig_pkts\":9,\"orig_ip_bytes\":1234,\"resp_pkts\":"
      "4,\"resp_ip_bytes\":4000,\"community_id\":\"1:abc=\",\"vlan\":42,\"event\":\"end\","
      "\"event_number\":3,\"end_reason\":\"idle\",\"sampling_rate\":0.5,\"flow_count\":2,\""
      "orig_size_min\":60,\"orig_size_max\":300,\"orig_size_mean\":137.1,\"orig_size_stddev"
      "\":94.8,\"orig_iat_min\":0.000003,\"orig_iat_max\":1.500000,\"orig_iat_mean\":0.2857"
      "14,\"orig_iat_stddev\":0.524891,\"orig_rexmits\":1,\"resp_size_min\":1000,\"resp_siz"
      "e_max\":1000,\"resp_size_mean\":1000.0,\"resp_size_stddev\":0.0,\"resp_iat_min\":0.0"
      "00003,\"resp_iat_max\":1.500000,\"resp_iat_mean\":1.000001,\"resp_iat_stddev\":0.499"
      "999,\"resp_rexmits\":1,\"tunnel_parents\":[\"C1\",\"CP06q41\"],\"ip_proto\":17}");
  CHECK(to_json_line(e.asReader()) == expected);
  // The exported line: the same with four members before its closing brace.
  CHECK(to_json_line(e.asReader(), {stream, 9, 4}) ==
        expected.substr(0, expected.size() - 1) +
            R"(,"event_id":"CzBKRVDfU36:end:3","stream_id":"deadbeef000000000000000000000000",)"
            R"("batch_seq":9,"leaf_index":4})");
}
