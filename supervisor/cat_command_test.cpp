#include "cat_command.h"

#include <catch2/catch.hpp>
#include <capnp/message.h>

#include "store_commands.h"

using namespace flowseal;
using namespace flowseal::supervisor;

namespace {
// Kept alive for the test: a Data::Reader only points at its bytes.
capnp::Data::Reader data(std::vector<std::uint8_t> bytes) {
  static std::vector<std::vector<std::uint8_t>> kept;
  kept.push_back(std::move(bytes));
  return capnp::Data::Reader(kept.back().data(), kept.back().size());
}
}  // namespace

TEST_CASE("a host filter matches an address or a CIDR prefix of either family") {
  const auto exact = parse_host("10.1.2.3");
  REQUIRE(exact);
  CHECK(exact->matches(data({10, 1, 2, 3})));
  CHECK_FALSE(exact->matches(data({10, 1, 2, 4})));
  const auto net = parse_host("10.1.0.0/15");
  REQUIRE(net);
  CHECK(net->matches(data({10, 0, 9, 9})));
  CHECK_FALSE(net->matches(data({10, 2, 0, 0})));
  const auto v6 = parse_host("2001:db8::/32");
  REQUIRE(v6);
  std::vector<std::uint8_t> inside(16, 0);
  inside[0] = 0x20, inside[1] = 0x01, inside[2] = 0x0d, inside[3] = 0xb8, inside[15] = 1;
  CHECK(v6->matches(data(inside)));
  CHECK_FALSE(v6->matches(data({10, 1, 2, 3})));  // another family never matches
  CHECK(parse_host("0.0.0.0/0")->matches(data({1, 2, 3, 4})));
}

TEST_CASE("a host that is not an address or prefix is refused") {
  for (const char* bad : {"", "10.0.0.0/33", "10.0.0.0/", "10.0.0.0/x", "host.example",
                          "2001:db8::/129", "10.0.0.1/0008"}) {
    INFO(bad);
    CHECK_FALSE(parse_host(bad).has_value());
  }
}

TEST_CASE("cat's options are checked before anything is read, naming the option") {
  auto refused = [](CatOptions options, const std::string& what) {
    try {
      RecordFilter::from(options);
      FAIL("accepted");
    } catch (const StoreInputError& e) {
      CHECK(e.exit_code() == 64);
      CHECK(std::string(e.what()).find(what) != std::string::npos);
    }
  };
  CatOptions o;
  o.since = "yesterday";
  refused(o, "--since yesterday");
  o = {};
  o.until = "2024-02-30T00:00:00Z";
  refused(o, "--until");
  o = {};
  o.hosts = {"10.0.0.0/99"};
  refused(o, "--host 10.0.0.0/99");
  o = {};
  o.ports = {70000};
  refused(o, "out of range");
  o = {};
  o.format = "xml";
  refused(o, "--format xml");
}

TEST_CASE("the filter compares the record's own times, ports and addresses") {
  capnp::MallocMessageBuilder message;
  auto record = message.initRoot<schema::FlowEvent>();
  record.setKind(schema::EventKind::END);
  record.setFirstTsNs(100'000'000'000);
  record.setLastTsNs(200'000'000'000);
  const std::uint8_t orig[] = {10, 0, 0, 1}, resp[] = {10, 0, 0, 2};
  record.setOrigAddr({orig, 4});
  record.setRespAddr({resp, 4});
  record.setOrigPort(40000);
  record.setRespPort(443);
  const auto r = record.asReader();
  auto wanted = [&](CatOptions o) { return RecordFilter::from(o).wanted(r); };
  CatOptions o;
  CHECK(wanted(o));
  o.since = "200";
  CHECK(wanted(o));
  o.since = "200.000000001";
  CHECK_FALSE(wanted(o));
  o = {};
  o.until = "100";
  CHECK_FALSE(wanted(o));
  o.until = "100.5";
  CHECK(wanted(o));
  o = {};
  o.ports = {443};
  CHECK(wanted(o));
  o.ports = {80};
  CHECK_FALSE(wanted(o));
  o = {};
  o.hosts = {"10.0.0.2"};
  CHECK(wanted(o));
  o.hosts = {"10.0.0.3"};
  CHECK_FALSE(wanted(o));
  record.setKind(schema::EventKind::START);
  o = {};
  CHECK_FALSE(wanted(o));
  o.all_events = true;
  CHECK(wanted(o));
}
