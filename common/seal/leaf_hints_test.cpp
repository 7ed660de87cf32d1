// locate_damage() on leaf sequences damaged in every way verify meets: a record changed,
// removed, inserted, several at once, the hints rewritten to match, hints of the wrong shape.
#include <catch2/catch.hpp>

#include <vector>

#include <fmt/format.h>

#include "seal/leaf_hints.h"
#include "seal/merkle.h"

namespace seal = flowseal::seal;
using Kind = seal::DamageLocation::Kind;

namespace {

std::vector<seal::Digest> leaves(std::size_t n, std::uint8_t salt = 0) {
  std::vector<seal::Digest> out;
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint8_t bytes[] = {static_cast<std::uint8_t>(i), static_cast<std::uint8_t>(i >> 8),
                                  salt};
    out.push_back(seal::leaf_hash(bytes));
  }
  return out;
}

// A leaf whose first `width` bytes equal `like`'s: a prefix collision made on purpose.
seal::Digest colliding(const seal::Digest& like, unsigned width) {
  seal::Digest d = seal::leaf_hash(std::vector<std::uint8_t>{0xEE});
  std::copy(like.begin(), like.begin() + width, d.begin());
  return d;
}

}  // namespace

TEST_CASE("hints are the width byte then that many leading bytes of each leaf") {
  const auto l = leaves(3);
  const auto hints = seal::make_leaf_hints(l, 2);
  REQUIRE(hints.size() == 1 + 3 * 2);
  CHECK(hints[0] == 2);
  CHECK(hints[3] == l[1][0]);
  CHECK(hints[4] == l[1][1]);
}

TEST_CASE("intact leaves leave nothing to locate") {
  const auto l = leaves(64);
  CHECK(seal::locate_damage(seal::make_leaf_hints(l, 2), 64, l).kind == Kind::kNotLocated);
}

TEST_CASE("a changed record is named by its index, wherever it is") {
  for (const std::size_t k : {0u, 1u, 31u, 63u}) {
    const auto sealed = leaves(64);
    auto stored = sealed;
    stored[k] = leaves(1, 9)[0];
    const auto where = seal::locate_damage(seal::make_leaf_hints(sealed, 2), 64, stored);
    CHECK(where.kind == Kind::kChanged);
    CHECK(where.first == k);
    CHECK(where.last == k);
    CHECK(where.describe() == fmt::format("record {} differs from the record that was sealed", k));
  }
}

TEST_CASE("two changed records: the first is named, the span reaches the last") {
  const auto sealed = leaves(20);
  auto stored = sealed;
  stored[4] = leaves(1, 9)[0];
  stored[11] = leaves(1, 8)[0];
  const auto where = seal::locate_damage(seal::make_leaf_hints(sealed, 2), 20, stored);
  CHECK(where.kind == Kind::kChanged);
  CHECK(where.first == 4);
  CHECK(where.last == 11);
}

TEST_CASE("a removed record is named by the index it had, at the front, middle and end") {
  for (const std::size_t k : {0u, 7u, 63u}) {
    const auto sealed = leaves(64);
    auto stored = sealed;
    stored.erase(stored.begin() + static_cast<std::ptrdiff_t>(k));
    const auto where = seal::locate_damage(seal::make_leaf_hints(sealed, 2), 64, stored);
    CHECK(where.kind == Kind::kRemoved);
    CHECK(where.first == k);
    CHECK(where.last == k);
    CHECK(where.count == 1);
  }
}

TEST_CASE("a removed block of three records is named by its first index") {
  const auto sealed = leaves(30);
  auto stored = sealed;
  stored.erase(stored.begin() + 10, stored.begin() + 13);
  const auto where = seal::locate_damage(seal::make_leaf_hints(sealed, 2), 30, stored);
  CHECK(where.kind == Kind::kRemoved);
  CHECK(where.first == 10);
  CHECK(where.count == 3);
}

TEST_CASE("an inserted record is named by its stored index") {
  const auto sealed = leaves(16);
  auto stored = sealed;
  stored.insert(stored.begin() + 5, leaves(1, 7)[0]);
  const auto where = seal::locate_damage(seal::make_leaf_hints(sealed, 2), 16, stored);
  CHECK(where.kind == Kind::kInserted);
  CHECK(where.first == 5);
  CHECK(where.count == 1);
}

TEST_CASE("a removal whose hint equals its neighbour's is reported as the range it could be") {
  // Sealed leaf 5's prefix equals leaf 6's: removing 5 or 6 leaves the same hint sequence.
  auto sealed = leaves(12);
  sealed[5] = colliding(sealed[6], 2);
  auto stored = sealed;
  stored.erase(stored.begin() + 5);
  const auto where = seal::locate_damage(seal::make_leaf_hints(sealed, 2), 12, stored);
  CHECK(where.kind == Kind::kRemoved);
  CHECK(where.first == 5);
  CHECK(where.last == 6);
  CHECK(where.describe().find("one of record indexes 5..6") != std::string::npos);
}

TEST_CASE("a removal and a change together are reported from the first difference") {
  const auto sealed = leaves(20);
  auto stored = sealed;
  stored[3] = leaves(1, 9)[0];
  stored.erase(stored.begin() + 12);
  const auto where = seal::locate_damage(seal::make_leaf_hints(sealed, 2), 20, stored);
  CHECK(where.kind == Kind::kReordered);
  CHECK(where.first == 3);
}

TEST_CASE("hints rewritten to match the tampered records locate nothing") {
  const auto sealed = leaves(10);
  auto stored = sealed;
  stored[4] = leaves(1, 9)[0];
  CHECK(seal::locate_damage(seal::make_leaf_hints(stored, 2), 10, stored).kind ==
        Kind::kNotLocated);
}

TEST_CASE("missing or misshapen hints are said to be so, never trusted") {
  const auto l = leaves(8);
  CHECK(seal::locate_damage({}, 8, l).kind == Kind::kNoHints);
  auto hints = seal::make_leaf_hints(l, 2);
  const auto short_hints =
      std::span(hints).first(hints.size() - 2);  // a hint dropped with its record
  const auto where = seal::locate_damage(short_hints, 8, l);
  CHECK(where.kind == Kind::kBadHints);
  CHECK(where.describe().find("14 bytes of 2-byte leaf hints for 8 sealed records") !=
        std::string::npos);
  hints[0] = 0;
  CHECK(seal::locate_damage(hints, 8, l).kind == Kind::kBadHints);
  hints[0] = 33;
  CHECK(seal::locate_damage(hints, 8, l).kind == Kind::kBadHints);
}

TEST_CASE("one-byte and full-width hints locate as two-byte ones do") {
  for (const unsigned width : {1u, 4u, 32u}) {
    const auto sealed = leaves(40);
    auto stored = sealed;
    stored.erase(stored.begin() + 17);
    const auto where = seal::locate_damage(seal::make_leaf_hints(sealed, width), 40, stored);
    CHECK(where.kind == Kind::kRemoved);
    CHECK(where.first <= 17);
    CHECK(where.last >= 17);
  }
}
