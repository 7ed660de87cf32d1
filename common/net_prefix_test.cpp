// net.local_nets: prefixes parse strictly (a typo is a config error naming the key), and a
// side's locality follows them (unknown when none is configured, as Zeek leaves the columns).
#include <catch2/catch.hpp>

#include <array>
#include <string>

#include "config.h"
#include "net_prefix.h"

using flowseal::Config;
using flowseal::ConfigError;
using flowseal::LocalNets;
using flowseal::NetPrefix;
namespace schema = flowseal::schema;

namespace {

std::string why_not(const std::string& text) {
  std::string why;
  return NetPrefix::parse(text, why) ? "parsed" : why;
}

}  // namespace

TEST_CASE("a prefix parses only when it is an address, a length in range and no host bits") {
  std::string why;
  const auto p = NetPrefix::parse("10.1.0.0/16", why);
  REQUIRE(p);
  CHECK(p->ip_version == 4);
  CHECK(p->length == 16);
  CHECK(NetPrefix::parse("2001:db8::/32", why)->ip_version == 6);
  CHECK(NetPrefix::parse("192.0.2.7", why)->length == 32);  // one host
  CHECK(NetPrefix::parse("0.0.0.0/0", why)->length == 0);
  CHECK(why_not("10.1.2.3/8").find("the network is 10.0.0.0/8") != std::string::npos);
  CHECK(why_not("10.0.0.0/33").find("0 to 32") != std::string::npos);
  CHECK(why_not("10.0.0.0/").find("not a number") != std::string::npos);
  CHECK(why_not("10.0.0.0/8x").find("not a number") != std::string::npos);
  CHECK(why_not("2001:db8::/129").find("0 to 128") != std::string::npos);
  CHECK(why_not("10.0.0/8").find("not an IPv4 or IPv6 address") != std::string::npos);
  CHECK(why_not("").find("not an IPv4 or IPv6 address") != std::string::npos);
}

TEST_CASE("a side is local when its address lies in a prefix of its own family") {
  const LocalNets nets({"10.0.0.0/8", "192.168.1.128/25", "2001:db8::/32"});
  const std::array<std::uint8_t, 4> in{10, 200, 3, 4}, out{11, 0, 0, 1};
  const std::array<std::uint8_t, 4> half_in{192, 168, 1, 200}, half_out{192, 168, 1, 127};
  std::array<std::uint8_t, 16> v6{0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
  CHECK(nets.locality(in) == schema::Locality::LOCAL);
  CHECK(nets.locality(out) == schema::Locality::REMOTE);
  CHECK(nets.locality(half_in) == schema::Locality::LOCAL);
  CHECK(nets.locality(half_out) == schema::Locality::REMOTE);
  CHECK(nets.locality(v6) == schema::Locality::LOCAL);
  v6[3] = 0xb9;
  CHECK(nets.locality(v6) == schema::Locality::REMOTE);
  // 10.0.0.0/8 as the first four bytes of an IPv6 address is not inside.
  const std::array<std::uint8_t, 16> v6_ten{10, 1, 2, 3};
  CHECK(nets.locality(v6_ten) == schema::Locality::REMOTE);
  CHECK(LocalNets().locality(in) == schema::Locality::UNKNOWN);
}

TEST_CASE("net.local_nets is checked where it is set and the message names the key") {
  Config config;
  flowseal::apply_override(config, "net.local_nets=[10.0.0.0/8, \"fd00::/8\"]");
  CHECK(config.net.local_nets == std::vector<std::string>{"10.0.0.0/8", "fd00::/8"});
  try {
    flowseal::apply_override(config, "net.local_nets=[10.0.0.0/8, 172.16.0.1/12]");
    FAIL("a prefix with host bits was accepted");
  } catch (const ConfigError& e) {
    const std::string what = e.what();
    CHECK(what.find("net.local_nets") != std::string::npos);
    CHECK(what.find("172.16.0.1/12") != std::string::npos);
    CHECK(what.find("172.16.0.0/12") != std::string::npos);
  }
  CHECK_THROWS_AS(flowseal::apply_override(config, "net.local_nets=not-a-net"), ConfigError);
}
