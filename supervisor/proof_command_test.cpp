#include "proof_command.h"

#include <catch2/catch.hpp>

#include "record/record_json.h"

using namespace flowseal;
using namespace flowseal::supervisor;
using flowseal::record::uid_text;

namespace {

Proof sample() {
  Proof p;
  p.event_id = "C1:end:1";
  p.segment = "seg-00000000000000000000.fsg";
  p.record = nlohmann::ordered_json::parse(R"({"uid":"C1","note":"a \"quoted\"\nline"})");
  p.record_canonical.assign(16, 0xab);
  p.leaf_hash.fill(1);
  p.leaf_index = 3;
  p.leaf_count = 7;
  p.path.resize(2);
  p.path[0].fill(2);
  p.path[1].fill(3);
  p.merkle_root.fill(4);
  p.header = nlohmann::ordered_json{{"seq", 5}};
  p.header_canonical.assign(8, 0xcd);
  p.signature.assign(64, 0xef);
  p.public_key_der.assign(44, 0x30);
  return p;
}

std::optional<std::string> parse_error(const std::string& text) {
  std::string error;
  if (parse_proof(text, error)) return std::nullopt;
  return error;
}

}  // namespace

TEST_CASE("an event id is UID:KIND:NUMBER") {
  const auto id = parse_event_id(uid_text(12345) + ":summary:7");
  REQUIRE(id);
  CHECK(id->uid == 12345);
  CHECK(id->kind == schema::EventKind::SUMMARY);
  CHECK(id->number == 7);
  for (const std::string& bad : std::vector<std::string>{
           "garbage", "C1:end", ":end:1", uid_text(1) + ":ending:1",
           uid_text(1) + ":end:", uid_text(1) + ":end:4294967296", uid_text(1) + ":end:-1"}) {
    INFO(bad);
    CHECK_FALSE(parse_event_id(bad).has_value());
  }
}

TEST_CASE("a proof's text reads back to the same proof, one member per line, escaped") {
  const Proof p = sample();
  const std::string text = proof_text(p);
  CHECK(text.find("\n  \"leaf_index\": 3,\n") != std::string::npos);
  CHECK(text.find(R"(\"quoted\"\nline)") != std::string::npos);  // JSON escapes, not raw
  std::string error;
  const auto back = parse_proof(text, error);
  REQUIRE(back);
  CHECK(back->event_id == p.event_id);
  CHECK(back->record == p.record);
  CHECK(back->record_canonical == p.record_canonical);
  CHECK(back->leaf_hash == p.leaf_hash);
  CHECK(back->leaf_index == 3);
  CHECK(back->leaf_count == 7);
  CHECK(back->path == p.path);
  CHECK(back->merkle_root == p.merkle_root);
  CHECK(back->signature == p.signature);
  // Any JSON writer's layout reads the same.
  CHECK(parse_proof(nlohmann::json::parse(text).dump(), error));
}

TEST_CASE("bad proof input is named by member, or by line and column") {
  auto with = [](const char* name, nlohmann::ordered_json value) {
    auto j = nlohmann::ordered_json::parse(proof_text(sample()));
    if (value.is_discarded()) {
      j.erase(name);
    } else {
      j[name] = value;
    }
    return j.dump();
  };
  const auto gone = nlohmann::ordered_json(nlohmann::ordered_json::value_t::discarded);
  CHECK(parse_error(with("leaf_hash", gone)) == "member \"leaf_hash\" is missing");
  CHECK(parse_error(with("leaf_hash", "abcd")) == "member \"leaf_hash\": not 32 bytes of hex");
  CHECK(parse_error(with("leaf_index", -1)) == "member \"leaf_index\": not a whole number >= 0");
  CHECK(parse_error(with("leaf_count", "7")) == "member \"leaf_count\": not a whole number >= 0");
  CHECK(parse_error(with("record", "text")) == "member \"record\": not an object");
  CHECK(parse_error(with("proof", "x")) == "member \"proof\": not a list");
  CHECK(parse_error(with("proof", {std::string(64, 'a'), "zz"})) ==
        "member \"proof[1]\": not 32 bytes of hex");
  CHECK(parse_error(with("record_canonical", "abcdef")) ==
        "member \"record_canonical\": 3 bytes, not whole 8-byte words");
  CHECK(parse_error(with("signature", "xyz")) == "member \"signature\": not hex bytes");
  CHECK(parse_error("[1, 2]") == "not a JSON object");
  const auto syntax = parse_error("{\n  \"event_id\": \"C1:end:1\",\n  oops\n}");
  REQUIRE(syntax);
  CHECK(syntax->find("not JSON: parse error at line 3, column") == 0);
  // Found by tests/fuzz/fuzz_proof.cpp: a number no double can hold threw nlohmann's
  // out_of_range out of parse_proof (exit 70) instead of being named as bad input (exit 65).
  const auto huge = parse_error("{\"leaf_index\": 15000001203e11104000}");
  REQUIRE(huge);
  CHECK(huge->find("not JSON: number overflow") == 0);
}

TEST_CASE("a proof whose record bytes do not hash to its leaf fails, naming that") {
  std::string summary;
  const auto failure = check_proof(sample(), nullptr, summary);
  REQUIRE(failure);
  CHECK(*failure == "leaf_hash is not SHA-256(0x00 || record_canonical)");
}
