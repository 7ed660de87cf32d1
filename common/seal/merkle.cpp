#include "seal/merkle.h"

#include <stdexcept>
#include <string>

#include <openssl/err.h>
#include <openssl/evp.h>

namespace flowseal::seal {
namespace {

constexpr std::uint8_t kLeafPrefix[] = {0x00};
constexpr std::uint8_t kNodePrefix[] = {0x01};

struct EvpMdFree {
  void operator()(EVP_MD* p) const { EVP_MD_free(p); }
};
struct EvpMdCtxFree {
  void operator()(EVP_MD_CTX* p) const { EVP_MD_CTX_free(p); }
};

[[noreturn]] void hash_failed() {
  char buf[256];
  ERR_error_string_n(ERR_get_error(), buf, sizeof buf);
  ERR_clear_error();
  throw std::runtime_error(std::string("OpenSSL: SHA-256 failed: ") + buf);
}

// Replaces `level` by the level above it. RFC 6962 splits at the largest power of two below
// n; building bottom-up by pairs and carrying an odd last node up unchanged gives the same
// tree, without recursion.
template <typename Node>
void fold_level(std::vector<Digest>& level, Node&& node) {
  const std::size_t n = level.size();
  std::size_t out = 0;
  for (std::size_t i = 0; i + 1 < n; i += 2) level[out++] = node(level[i], level[i + 1]);
  if (n % 2 == 1) level[out++] = level[n - 1];
  level.resize(out);
}

}  // namespace

struct MerkleHasher::State {
  std::unique_ptr<EVP_MD, EvpMdFree> md;
  std::unique_ptr<EVP_MD_CTX, EvpMdCtxFree> ctx;
  std::vector<Digest> scratch;

  // SHA-256(prefix || a || b); no prefix byte when `prefix` is empty.
  Digest hash(std::span<const std::uint8_t> prefix, std::span<const std::uint8_t> a,
              std::span<const std::uint8_t> b) {
    Digest out{};
    unsigned int len = 0;
    if (EVP_DigestInit_ex(ctx.get(), md.get(), nullptr) != 1 ||
        EVP_DigestUpdate(ctx.get(), prefix.data(), prefix.size()) != 1 ||
        EVP_DigestUpdate(ctx.get(), a.data(), a.size()) != 1 ||
        EVP_DigestUpdate(ctx.get(), b.data(), b.size()) != 1 ||
        EVP_DigestFinal_ex(ctx.get(), out.data(), &len) != 1) {
      hash_failed();  // only on an OpenSSL internal failure, never on any input
    }
    return out;
  }
};

MerkleHasher::MerkleHasher() : state_(std::make_unique<State>()) {
  state_->md.reset(EVP_MD_fetch(nullptr, "SHA256", nullptr));
  state_->ctx.reset(EVP_MD_CTX_new());
  if (!state_->md || !state_->ctx) hash_failed();
}
MerkleHasher::MerkleHasher(MerkleHasher&&) noexcept = default;
MerkleHasher& MerkleHasher::operator=(MerkleHasher&&) noexcept = default;
MerkleHasher::~MerkleHasher() = default;

Digest MerkleHasher::leaf(std::span<const std::uint8_t> data) {
  return state_->hash(kLeafPrefix, data, {});
}

Digest MerkleHasher::node(const Digest& left, const Digest& right) {
  return state_->hash(kNodePrefix, left, right);
}

Digest MerkleHasher::root(std::span<const Digest> leaves) {
  if (leaves.empty()) return state_->hash({}, {}, {});  // RFC 6962: MTH({}) = SHA-256()
  std::vector<Digest>& level = state_->scratch;
  level.assign(leaves.begin(), leaves.end());
  while (level.size() > 1) {
    fold_level(level, [this](const Digest& l, const Digest& r) { return node(l, r); });
  }
  return level[0];
}

Digest leaf_hash(std::span<const std::uint8_t> data) { return MerkleHasher().leaf(data); }

Digest node_hash(const Digest& left, const Digest& right) {
  return MerkleHasher().node(left, right);
}

Digest merkle_root(std::span<const Digest> leaves) { return MerkleHasher().root(leaves); }

std::vector<Digest> inclusion_proof(std::span<const Digest> leaves, std::size_t index) {
  std::vector<Digest> proof;
  if (index >= leaves.size()) return proof;
  MerkleHasher hasher;
  std::vector<Digest> level(leaves.begin(), leaves.end());
  // At each level the sibling is index^1; a node without one is carried up and adds nothing
  // to the path, exactly as RFC 6962's PATH(m, D[n]) omits it.
  while (level.size() > 1) {
    const std::size_t sibling = index ^ 1;
    if (sibling < level.size()) proof.push_back(level[sibling]);
    fold_level(level, [&hasher](const Digest& l, const Digest& r) { return hasher.node(l, r); });
    index /= 2;
  }
  return proof;
}

bool verify_inclusion(const Digest& leaf, std::size_t index, std::size_t count,
                      std::span<const Digest> proof, const Digest& root) {
  // RFC 9162 section 2.1.3.2.
  if (index >= count) return false;
  MerkleHasher hasher;
  std::size_t fn = index;
  std::size_t sn = count - 1;
  Digest r = leaf;
  for (const Digest& p : proof) {
    if (sn == 0) return false;
    if ((fn & 1) != 0 || fn == sn) {
      r = hasher.node(p, r);
      if ((fn & 1) == 0) {
        while ((fn & 1) == 0 && fn != 0) {
          fn >>= 1;
          sn >>= 1;
        }
      }
    } else {
      r = hasher.node(r, p);
    }
    fn >>= 1;
    sn >>= 1;
  }
  return sn == 0 && r == root;
}

}  // namespace flowseal::seal
