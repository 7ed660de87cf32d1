// The stored form of one sealed batch: its records as columns, before zstd.
//
// SegmentWriter hands BatchCodec::encode() the SealedBatch message signerd put on the ring;
// SegmentReader turns the stored bytes back into a SealedBatch message with decode(). What is
// stored is not the Cap'n Proto message but its content, one column per FlowEvent field:
// timestamps delta-coded, addresses and texts dictionary-coded within the batch, counters as
// LEB128 varints, and the uid and Community ID left out where they can be recomputed from the
// record (common/packet/flow_id.h). docs/FORMAT.md describes every byte.
//
// Guarantees:
// - Lossless: every record decodes to a FlowEvent with exactly the canonical Cap'n Proto
//   encoding it had, so its Merkle leaf, the batch root and the signature verify unchanged.
//   The signed header is kept as its canonical bytes and the signature as it is. A batch
//   whose records the columns cannot carry exactly (fields this build does not know, bits
//   outside any field, a pointer of the wrong kind) is stored as its Cap'n Proto message
//   instead ("capnp" encoding), so nothing is ever changed on the way to disk.
// - Identifiers are only left out after the encoder recomputed them and got the stored value.
// - decode() never throws, never reads outside its input and allocates only in
//   proportion to it: damage (a length, index or value out of range, bytes left over, a
//   derivation that cannot be made) is returned as a message naming the column and record.
//
// One codec per thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "segment/format.h"

namespace flowseal::segment {

// The first byte of a stored batch.
// Encodings 1, 3 and 4 are segment format 2's (records with the flat legacy fields), read
// only in format-2 segments; 5 and 6 are format 3's; 2 is either's.
enum class BatchEncoding : std::uint8_t {
  kFormat2ColumnsNoParents = 1,  // format 2's columns but tunnelParents (its last column)
  kCapnp = 2,  // 7 zero bytes, then the SealedBatch flat-array message as signerd made it
  kFormat2ColumnsWithHints = 3,  // varint L, L bytes of leafHints, then as kFormat2Columns
  kFormat2Columns = 4,           // format 2's 48 columns
  kColumns = 5,  // format 3's columns (Direction structs, conn.log columns): what is written
  kColumnsWithHints = 6,  // varint L, L bytes of SealedBatch.leafHints, then as kColumns
};

struct ColumnOptions {
  // flowd.community_id_seed: the seed records' Community IDs were made with. With another
  // seed they are simply stored in full.
  std::uint16_t community_id_seed = 0;
  // Decoding: false leaves out the Community IDs the store derives from the 5-tuple rather than
  // stores (most of them), and the SHA-1 that rebuilding each costs. For a reader that does not
  // use them (the IPFIX export); its records are then not the sealed ones: never verify them.
  bool decode_derived_community_ids = true;
};

// Encodes and decodes batches; owns the SHA-1 that Community IDs need (fetched once) and the
// scratch columns, so a codec reused batch after batch does not allocate in steady state.
class BatchCodec {
 public:
  explicit BatchCodec(ColumnOptions options = {});  // never throws for a missing SHA-1
  void set_options(const ColumnOptions& options);
  BatchCodec(BatchCodec&&) noexcept;
  BatchCodec& operator=(BatchCodec&&) noexcept;
  ~BatchCodec();

  // `message`: one SealedBatch in flat-array form, 8-byte aligned. Replaces `out` with its
  // stored form and returns the encoding chosen. Never fails: a message the columns cannot
  // carry, or that cannot be read at all, is kept as it is (kCapnp).
  BatchEncoding encode(std::span<const std::byte> message, std::vector<std::uint8_t>& out);

  // Decodes a stored batch into a SealedBatch flat-array message in `out` (words, so Cap'n
  // Proto can read it in place), of `bytes` bytes. nullopt on success, else what is wrong.
  // `expected_records`: the frame header's record count, which the batch must match.
  // `format_version`: the segment's (format.h); each version has its own column encodings.
  std::optional<std::string> decode(std::span<const std::uint8_t> stored,
                                    std::uint32_t expected_records, std::vector<std::uint64_t>& out,
                                    std::size_t& bytes,
                                    std::uint16_t format_version = kFormatVersion);

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace flowseal::segment
