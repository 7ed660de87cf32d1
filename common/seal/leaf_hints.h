// Leaf hints: a short prefix of every record's RFC 6962 leaf hash, kept beside a sealed batch
// so that `flowseal verify` can name the record a Merkle root mismatch comes from.
//
// Why: the signed header carries only the Merkle root and the record count. A root that does
// not match the stored records proves that the batch was changed, not where. The hints say
// what each leaf was when signerd sealed it, so verify recomputes the leaves and compares:
// the first record whose prefix differs is the changed one, and when records were removed or
// inserted the two sequences are aligned to find where.
//
// The hints are NOT covered by the signature. They are untrusted: a tamperer can rewrite them
// along with the records. They can therefore only ever locate damage, never clear a batch —
// the verdict comes from the root and signature alone. A tamperer who recomputes the hints
// gets "could not be located" (and the batch still fails); one who forges them can make the
// location wrong, never the verdict.
//
// Layout (SealedBatch.leafHints, and docs/FORMAT.md): byte 0 is the prefix width w (1..32),
// then w bytes per record in record order: bytes 0..w-1 of SHA-256(0x00 || canonical(record)).
//
// Width: two bytes. A damaged record goes unlocated, or a removal is reported as a range of two
// candidate positions, only when its prefix collides by chance: 1 in 65536 per damaged record.
// Records never damaged always match their own hints, so a collision cannot name an intact
// record. Each byte costs 1 B per record after zstd (hash bytes do not compress): two bytes
// took the benchmark capture from 38.2 to 42.2 stored bytes per flow (a flow is ~2 records),
// four would take it to 46.8 (docs/FORMAT.md, "Leaf hints").
//
// Pure functions, thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "seal/keys.h"

namespace flowseal::seal {

inline constexpr unsigned kDefaultLeafHintBytes = 2;
inline constexpr unsigned kMaxLeafHintBytes = 32;

// The hints of `leaves` with `width` bytes each (1..32).
std::vector<std::uint8_t> make_leaf_hints(std::span<const Digest> leaves, unsigned width);

// Where the stored records depart from the sealed ones, as the hints tell it.
struct DamageLocation {
  enum class Kind {
    kChanged,     // same count; records [first, last] differ from what was sealed
    kRemoved,     // `count` sealed records missing, starting at index `first` (see below)
    kInserted,    // `count` records that were not sealed, starting at stored index `first`
    kReordered,   // counts differ and no single removal or insertion explains it: from `first`
    kNotLocated,  // every stored record matches its hint: the hints were changed too
    kNoHints,     // the batch carries no hints (stored before they existed)
    kBadHints,    // the hints' shape does not fit the batch
  };
  Kind kind = Kind::kNoHints;
  std::uint32_t first = 0;  // the first index named (the one verify reports)
  std::uint32_t last = 0;   // kChanged: last index that differs. kRemoved/kInserted: the
                            // block may start anywhere in [first, last] (equal hints cannot
                            // tell those positions apart), usually first == last.
  std::uint32_t count = 0;  // records removed / inserted
  std::string why;          // kBadHints: what is wrong
  // "record 7 was removed", "record 5 differs from the record that was sealed", ...
  std::string describe() const;
  bool located() const {
    return kind == Kind::kChanged || kind == Kind::kRemoved || kind == Kind::kInserted ||
           kind == Kind::kReordered;
  }
};

// Compares `hints` (as stored: width byte, then one prefix per sealed record; empty if the
// batch has none) with the leaves recomputed from the stored records. `sealed_count` is the
// signed header's record count, which the hints must cover.
DamageLocation locate_damage(std::span<const std::uint8_t> hints, std::uint64_t sealed_count,
                             std::span<const Digest> stored_leaves);

}  // namespace flowseal::seal
