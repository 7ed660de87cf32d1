// RFC 6962 Merkle hashes against the test vectors of RFC 6962's reference implementation
// (certificate-transparency, also in Go's transparency-dev/merkle). Cross-checked with an
// independent python3 hashlib model of MTH and PATH:
//   H = sha256; MTH([]) = H(b''); MTH([d]) = H(b'\x00'+d);
//   MTH(D) = H(b'\x01' + MTH(D[:k]) + MTH(D[k:])), k the largest power of two < len(D).
#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include "seal/keys.h"
#include "seal/merkle.h"

namespace seal = flowseal::seal;

namespace {

std::vector<std::uint8_t> from_hex(const std::string& hex) {
  std::vector<std::uint8_t> out;
  for (std::size_t i = 0; i + 1 < hex.size(); i += 2) {
    out.push_back(static_cast<std::uint8_t>(std::stoul(hex.substr(i, 2), nullptr, 16)));
  }
  return out;
}

std::string hex(const seal::Digest& d) { return seal::to_hex(d); }

// The eight leaf inputs of the RFC 6962 test vectors.
const std::vector<std::string> kLeafInputs = {"",
                                              "00",
                                              "10",
                                              "2021",
                                              "3031",
                                              "40414243",
                                              "5051525354555657",
                                              "606162636465666768696a6b6c6d6e6f"};

std::vector<seal::Digest> vector_leaves(std::size_t n) {
  std::vector<seal::Digest> leaves;
  for (std::size_t i = 0; i < n; ++i) leaves.push_back(seal::leaf_hash(from_hex(kLeafInputs[i])));
  return leaves;
}

// MTH straight from the RFC's recursive definition, to check the iterative implementation.
seal::Digest reference_root(std::span<const seal::Digest> leaves) {
  if (leaves.empty()) return seal::sha256({});
  if (leaves.size() == 1) return leaves[0];
  std::size_t k = 1;
  while (k * 2 < leaves.size()) k *= 2;
  return seal::node_hash(reference_root(leaves.subspan(0, k)), reference_root(leaves.subspan(k)));
}

std::vector<seal::Digest> numbered_leaves(std::size_t n) {
  std::vector<seal::Digest> leaves;
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint8_t bytes[] = {static_cast<std::uint8_t>(i), static_cast<std::uint8_t>(i >> 8)};
    leaves.push_back(seal::leaf_hash(bytes));
  }
  return leaves;
}

}  // namespace

TEST_CASE("the root of an empty tree is the SHA-256 of nothing") {
  CHECK(hex(seal::merkle_root({})) ==
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

TEST_CASE("roots of the first 1 to 8 leaves match the RFC 6962 test vectors") {
  const std::vector<std::string> expected = {
      "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
      "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
      "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
      "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
      "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
      "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
      "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
      "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
  };
  for (std::size_t n = 1; n <= 8; ++n) {
    INFO("n = " << n);
    CHECK(hex(seal::merkle_root(vector_leaves(n))) == expected[n - 1]);
  }
}

TEST_CASE("a leaf hash prefixes 0x00 and a node hash prefixes 0x01") {
  const std::uint8_t data[] = {0x20, 0x21};
  std::vector<std::uint8_t> prefixed = {0x00, 0x20, 0x21};
  CHECK(seal::leaf_hash(data) == seal::sha256(prefixed));
  const auto a = seal::leaf_hash({});
  const auto b = seal::leaf_hash(data);
  std::vector<std::uint8_t> node = {0x01};
  node.insert(node.end(), a.begin(), a.end());
  node.insert(node.end(), b.begin(), b.end());
  CHECK(seal::node_hash(a, b) == seal::sha256(node));
}

TEST_CASE("inclusion proofs of the 8-leaf tree match the RFC 6962 test vectors") {
  const auto leaves = vector_leaves(8);
  SECTION("leaf 0") {
    const auto proof = seal::inclusion_proof(leaves, 0);
    REQUIRE(proof.size() == 3);
    CHECK(hex(proof[0]) == "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7");
    CHECK(hex(proof[1]) == "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e");
    CHECK(hex(proof[2]) == "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4");
  }
  SECTION("leaf 5") {
    const auto proof = seal::inclusion_proof(leaves, 5);
    REQUIRE(proof.size() == 3);
    CHECK(hex(proof[0]) == "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b");
    CHECK(hex(proof[1]) == "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0");
    CHECK(hex(proof[2]) == "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7");
  }
}

TEST_CASE("the iterative root equals the recursive RFC definition for 1 to 70 leaves") {
  seal::MerkleHasher hasher;
  for (std::size_t n = 1; n <= 70; ++n) {
    const auto leaves = numbered_leaves(n);
    INFO("n = " << n);
    CHECK(hasher.root(leaves) == reference_root(leaves));
    CHECK(seal::merkle_root(leaves) == reference_root(leaves));
  }
}

TEST_CASE("every leaf's proof verifies for trees of 1 to 33 leaves, and a changed one does not") {
  for (std::size_t n = 1; n <= 33; ++n) {
    const auto leaves = numbered_leaves(n);
    const auto root = seal::merkle_root(leaves);
    for (std::size_t i = 0; i < n; ++i) {
      INFO("n = " << n << ", index = " << i);
      auto proof = seal::inclusion_proof(leaves, i);
      REQUIRE(seal::verify_inclusion(leaves[i], i, n, proof, root));
      // The same proof must fail for another leaf, another index or another root.
      if (n > 1) {
        CHECK_FALSE(seal::verify_inclusion(leaves[(i + 1) % n], i, n, proof, root));
        CHECK_FALSE(seal::verify_inclusion(leaves[i], (i + 1) % n, n, proof, root));
      }
      CHECK_FALSE(seal::verify_inclusion(leaves[i], n, n, proof, root));
      auto wrong_root = root;
      wrong_root[7] ^= 0x40;
      CHECK_FALSE(seal::verify_inclusion(leaves[i], i, n, proof, wrong_root));
      if (!proof.empty()) {
        proof.back()[0] ^= 1;
        CHECK_FALSE(seal::verify_inclusion(leaves[i], i, n, proof, root));
        proof.pop_back();
        CHECK_FALSE(seal::verify_inclusion(leaves[i], i, n, proof, root));
      }
    }
  }
}

TEST_CASE("a proof for an index outside the tree is empty and verifies nothing") {
  const auto leaves = numbered_leaves(5);
  CHECK(seal::inclusion_proof(leaves, 5).empty());
  CHECK_FALSE(seal::verify_inclusion(leaves[0], 0, 0, {}, seal::merkle_root({})));
}
