#include "seal/leaf_hints.h"

#include <algorithm>
#include <cstring>

#include <fmt/format.h>

namespace flowseal::seal {

std::vector<std::uint8_t> make_leaf_hints(std::span<const Digest> leaves, unsigned width) {
  width = std::clamp(width, 1u, kMaxLeafHintBytes);
  std::vector<std::uint8_t> hints;
  hints.reserve(1 + leaves.size() * width);
  hints.push_back(static_cast<std::uint8_t>(width));
  for (const Digest& leaf : leaves) hints.insert(hints.end(), leaf.begin(), leaf.begin() + width);
  return hints;
}

std::string DamageLocation::describe() const {
  const auto range = [&](const char* one, const char* many) {
    return count == 1 ? fmt::format("{}", one) : fmt::format("{} {}", count, many);
  };
  switch (kind) {
    case Kind::kChanged:
      return first == last ? fmt::format("record {} differs from the record that was sealed", first)
                           : fmt::format("records {}..{} differ from the records that were sealed",
                                         first, last);
    case Kind::kRemoved:
      return first == last ? fmt::format("{} removed at record index {}",
                                         range("a record was", "records were"), first)
                           : fmt::format(
                                 "{} removed at one of record indexes {}..{} (their leaf hints "
                                 "are equal, so which cannot be told)",
                                 range("a record was", "records were"), first, last);
    case Kind::kInserted:
      return first == last
                 ? fmt::format(
                       "{} inserted at record index {}",
                       range("a record that was not sealed is", "records that were not sealed are"),
                       first)
                 : fmt::format(
                       "{} inserted at one of record indexes {}..{}",
                       range("a record that was not sealed is", "records that were not sealed are"),
                       first, last);
    case Kind::kReordered:
      return fmt::format("the records from index {} on differ from the sealed ones", first);
    case Kind::kNotLocated:
      return "the damaged record could not be located: every stored record matches its leaf "
             "hint, so the hints were changed too";
    case Kind::kNoHints:
      return "the damaged record could not be located: the batch carries no leaf hints";
    case Kind::kBadHints: return fmt::format("the damaged record could not be located: {}", why);
  }
  return "unknown";
}

DamageLocation locate_damage(std::span<const std::uint8_t> hints, std::uint64_t sealed_count,
                             std::span<const Digest> stored_leaves) {
  DamageLocation where;
  if (hints.empty()) return where;  // kNoHints
  where.kind = DamageLocation::Kind::kBadHints;
  const unsigned width = hints[0];
  if (width < 1 || width > kMaxLeafHintBytes) {
    where.why =
        fmt::format("the leaf hints name a width of {} bytes (1..{})", width, kMaxLeafHintBytes);
    return where;
  }
  const auto prefixes = hints.subspan(1);
  if (prefixes.size() != sealed_count * width) {
    where.why = fmt::format("{} bytes of {}-byte leaf hints for {} sealed records", prefixes.size(),
                            width, sealed_count);
    return where;
  }
  const std::size_t n_sealed = static_cast<std::size_t>(sealed_count);
  const std::size_t n_stored = stored_leaves.size();
  const auto same = [&](std::size_t sealed, std::size_t stored) {
    return std::memcmp(prefixes.data() + sealed * width, stored_leaves[stored].data(), width) == 0;
  };
  // The longest run that matches from the front, and from the back (each on its own: where
  // both overlap, the records there fit either alignment).
  const std::size_t shorter = std::min(n_sealed, n_stored);
  std::size_t front = 0;
  while (front < shorter && same(front, front)) ++front;
  std::size_t back = 0;
  while (back < shorter && same(n_sealed - 1 - back, n_stored - 1 - back)) ++back;

  const auto index = [](std::size_t i) { return static_cast<std::uint32_t>(i); };
  if (n_sealed == n_stored) {
    if (front == n_sealed) {
      where.kind = DamageLocation::Kind::kNotLocated;
      return where;
    }
    where.kind = DamageLocation::Kind::kChanged;
    where.first = index(front);
    where.last = index(n_sealed - 1 - std::min(back, n_sealed - 1 - front));
    return where;
  }
  // Counts differ. One block of d removed (or inserted) records starting at r leaves the
  // records before r matching from the front and those after it matching from the back, so
  // r lies in [shorter - back, front]; if that range is empty, no single block explains it.
  const std::size_t lo = shorter - back;
  if (lo <= front) {
    where.kind =
        n_sealed > n_stored ? DamageLocation::Kind::kRemoved : DamageLocation::Kind::kInserted;
    where.first = index(lo);
    where.last = index(front);
    where.count = index(n_sealed > n_stored ? n_sealed - n_stored : n_stored - n_sealed);
    return where;
  }
  where.kind = DamageLocation::Kind::kReordered;
  where.first = index(front);
  return where;
}

}  // namespace flowseal::seal
