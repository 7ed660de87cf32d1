// BatchSealer: turns flow records into one signed, hash-chained SealedBatch at a time.
//
// Each record is canonicalised and hashed as it is added (RFC 6962 leaf of its canonical
// Cap'n Proto encoding), so seal() only folds the leaves into the Merkle root, copies the
// records into the output message and signs the header. The chain position (stream id, next
// seq, previous root) is the caller's to persist: after seal() it reads next_seq() and
// prev_root() and stores them, so a restarted signerd continues the chain without a gap.
//
// Guarantees: sealing the same records at the same position gives byte-identical output with
// Ed25519 (deterministic signatures), so a batch re-sealed after a crash is recognisably the
// same batch. The leaf of a record is the hash of the record exactly as it is stored. The key
// is borrowed and must outlive the sealer. Not thread-safe.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <vector>

#include <capnp/message.h>
#include <kj/array.h>

#include "capnp_frame.h"
#include "flowseal.capnp.h"
#include "seal/keys.h"
#include "seal/leaf_hints.h"
#include "seal/merkle.h"

namespace flowseal::signerd {

class BatchSealer {
 public:
  // `leaf_hint_bytes`: width of the unsigned leaf hints put beside each batch
  // (seal/leaf_hints.h, seal.leaf_hint_bytes); 0 puts none.
  BatchSealer(const seal::PrivateKey& key, std::array<std::uint8_t, 16> stream_id,
              std::uint64_t next_seq, seal::Digest prev_root,
              unsigned leaf_hint_bytes = seal::kDefaultLeafHintBytes);

  // Copies and hashes one record into the open batch. Throws kj::Exception on a malformed
  // record (every pointer it follows is checked), having added nothing.
  void add(schema::FlowEvent::Reader record);
  // add() for each of `records`, or for none of them: a malformed record throws and leaves
  // the open batch as it was (a frame is sealed whole or skipped whole).
  void add_all(capnp::List<schema::FlowEvent>::Reader records);
  std::size_t size() const { return offsets_.size(); }
  // Bytes of the open batch's records in canonical form: about what they take in the sealed
  // message, so the caller can seal before a batch outgrows its ring's frame limit.
  std::size_t bytes() const { return canonical_.size() * sizeof(capnp::word); }
  // Words seal() needs as one segment: the records at their exact size (list elements plus
  // seal::copied_words(); a record capnp's general path copies counts its canonical size),
  // their leaf hints, and 1024 words for the header and signature. What RingMessageBuilder
  // reserves and zeroes for seal().
  std::size_t words() const;

  // Builds the SealedBatch root of `message` from the open batch (possibly empty), then
  // advances the position and starts an empty batch.
  void seal(capnp::MessageBuilder& message);

  std::uint64_t next_seq() const { return next_seq_; }
  seal::Digest prev_root() const { return prev_root_; }

 private:
  const seal::PrivateKey* key_;
  std::array<std::uint8_t, 16> stream_id_;
  std::uint64_t next_seq_;
  seal::Digest prev_root_;
  unsigned leaf_hint_bytes_;
  seal::MerkleHasher hasher_;
  // Each record kept in its canonical form, one after another in one reused buffer (no
  // allocation per record): it is what the leaf hashes, and a single-segment message seal()
  // can read in place to copy the record into the batch. offsets_[i]: where record i starts.
  std::vector<capnp::word> canonical_;
  std::vector<std::size_t> offsets_;
  // Per record: 1 if seal::append_canonical() wrote its canonical form (a shape seal()
  // may copy field by field), 0 if capnp's general path did.
  std::vector<std::uint8_t> direct_;
  std::size_t copied_words_ = 0;  // words the records' copies take beyond their list elements
  std::vector<seal::Digest> leaves_;
  std::int64_t first_ts_ns_ = 0;
  std::int64_t last_ts_ns_ = 0;
};

}  // namespace flowseal::signerd
