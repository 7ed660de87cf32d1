#include "hex.h"

#include <catch2/catch.hpp>

#include "seal/keys.h"

using flowseal::supervisor::from_hex;

TEST_CASE("hex text is read back to the bytes seal::to_hex wrote") {
  const std::vector<std::uint8_t> bytes{0x00, 0x01, 0x7f, 0x80, 0xab, 0xff};
  CHECK(flowseal::seal::to_hex(bytes) == "00017f80abff");
  CHECK(from_hex("00017f80abff") == bytes);
  CHECK(from_hex("00017F80ABFF") == bytes);
  CHECK(from_hex("") == std::vector<std::uint8_t>{});
}

TEST_CASE("hex with an odd length or a non-hex character is refused") {
  for (const char* bad : {"0", "abc", "0g", "g0", " 00", "00 ", "0x00", "-1", "zz"}) {
    INFO(bad);
    CHECK_FALSE(from_hex(bad).has_value());
  }
}
