// RFC 6962 Merkle tree hashes (SHA-256): leaf = H(0x00 || data), node = H(0x01 || left ||
// right), the tree over n leaves splits at the largest power of two below n. The root of an
// empty tree is H(""). Inclusion proofs follow RFC 6962 section 2.1.1 so a record's proof can
// be checked on its own, with nothing but the record, its index, the count and the root.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "seal/keys.h"

namespace flowseal::seal {

Digest leaf_hash(std::span<const std::uint8_t> data);
Digest node_hash(const Digest& left, const Digest& right);
Digest merkle_root(std::span<const Digest> leaves);

// Audit path of leaf `index` among `leaves` (RFC 6962 PATH(m, D[n])).
std::vector<Digest> inclusion_proof(std::span<const Digest> leaves, std::size_t index);
// True if `leaf` at `index` of a tree of `count` leaves hashes up to `root` along `proof`.
bool verify_inclusion(const Digest& leaf, std::size_t index, std::size_t count,
                      std::span<const Digest> proof, const Digest& root);

// The same hashes for hot paths (signerd per record, verify per batch): SHA-256 is fetched
// once and one digest context is reused, where the free functions above set up their own
// per call (or per tree, for merkle_root). Not thread-safe: one per thread.
class MerkleHasher {
 public:
  MerkleHasher();  // throws std::runtime_error if OpenSSL has no SHA-256
  MerkleHasher(MerkleHasher&&) noexcept;
  MerkleHasher& operator=(MerkleHasher&&) noexcept;
  ~MerkleHasher();

  Digest leaf(std::span<const std::uint8_t> data);
  Digest node(const Digest& left, const Digest& right);
  Digest root(std::span<const Digest> leaves);  // reuses one scratch buffer across calls

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace flowseal::seal
