// ChainVerifier against batches sealed here, by the rules the schema states (leaf i =
// SHA-256(0x00 || canonical(records[i])), an RFC 6962 root, the signature over the canonical
// header), not by signerd: so these tests also pin the verifier to the documented format. The
// tamper cases over real sealed chains live in signerd/batch_sealer_test.cpp; here are the
// verifier's own rules: header field sizes, the key and algorithm checks, the chain position
// after a bad batch, and what the summary reports.
#include "test_temp_dir.h"
#include "seal/chain_verifier.h"

#include <stdlib.h>

#include <array>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <capnp/message.h>
#include <catch2/catch.hpp>

#include "flowseal.capnp.h"
#include "seal/keys.h"
#include "seal/merkle.h"

namespace flowseal::seal {
namespace {

namespace fs = std::filesystem;

// Each TempDir of this file is named after it.
class TempDir : public flowseal::testing::TempDir {
 public:
  TempDir() : flowseal::testing::TempDir("chain_verifier_test") {}
};

struct Signer {
  PrivateKey key;
  std::map<Digest, PublicKey> trusted() const {
    std::map<Digest, PublicKey> keys;
    keys.emplace(key.key_id(), PublicKey::from_der(key.public_der()));
    return keys;
  }
};

Signer make_signer(const TempDir& dir, const std::string& name,
                   Algorithm algorithm = Algorithm::kEd25519) {
  generate_key_pair(algorithm, dir / (name + ".key"), dir / (name + ".pub"));
  return {PrivateKey::load(dir / (name + ".key"))};
}

using Stream = std::array<std::uint8_t, 16>;
constexpr Stream kStream = {7, 7, 7, 7, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};

capnp::Data::Reader data_of(const auto& bytes) { return {bytes.data(), bytes.size()}; }

// What a test may change in a batch before it is signed.
struct BatchSpec {
  std::uint64_t seq = 0;
  Digest prev_root{};
  unsigned records = 3;
  unsigned first_record = 0;  // records are numbered from here, so batches differ
  Stream stream = kStream;
};

// One sealed batch, in a message of its own so a test can change it after signing.
class Batch {
 public:
  Batch(const Signer& signer, const BatchSpec& spec) {
    auto batch = message_.initRoot<schema::SealedBatch>();
    auto records = batch.initRecords(spec.records);
    std::vector<Digest> leaves;
    for (unsigned i = 0; i < spec.records; ++i) {
      const unsigned n = spec.first_record + i;
      auto record = records[i];
      record.setUid(0x5000 + n);
      record.setProto(17);
      record.setFirstTsNs(1'000'000'000LL * (10 + n));
      record.setLastTsNs(1'000'000'000LL * (20 + n));
      leaves.push_back(leaf_hash(canonical_bytes(record.asReader())));
    }
    root_ = merkle_root(leaves);

    auto header = batch.initHeader();
    header.setStreamId(data_of(spec.stream));
    header.setSeq(spec.seq);
    header.setPrevRoot(data_of(spec.prev_root));
    header.setMerkleRoot(data_of(root_));
    header.setRecordCount(spec.records);
    header.setFirstTsNs(spec.records ? 1'000'000'000LL * (10 + spec.first_record) : 0);
    header.setLastTsNs(spec.records ? 1'000'000'000LL * (20 + spec.first_record + spec.records - 1)
                                    : 0);
    header.setKeyId(data_of(signer.key.key_id()));
    header.setAlgorithm(static_cast<schema::SignatureAlgorithm>(signer.key.algorithm()));
    sign(signer);
  }

  // Signs the header as it is now (after a test changed it, to make a "valid" forgery).
  void sign(const Signer& signer) {
    auto batch = message_.getRoot<schema::SealedBatch>();
    batch.setSignature(data_of(signer.key.sign(canonical_bytes(batch.getHeader().asReader()))));
  }

  schema::SealedBatch::Builder builder() { return message_.getRoot<schema::SealedBatch>(); }
  schema::SealedBatch::Reader reader() {
    return message_.getRoot<schema::SealedBatch>().asReader();
  }
  const Digest& root() const { return root_; }

 private:
  capnp::MallocMessageBuilder message_;
  Digest root_{};
};

// `count` batches of three records chained from `first_seq`.
std::vector<std::unique_ptr<Batch>> chain(const Signer& signer, unsigned count,
                                          std::uint64_t first_seq = 0) {
  std::vector<std::unique_ptr<Batch>> batches;
  Digest prev{};
  for (unsigned b = 0; b < count; ++b) {
    batches.push_back(std::make_unique<Batch>(
        signer, BatchSpec{.seq = first_seq + b, .prev_root = prev, .first_record = 3 * b}));
    prev = batches.back()->root();
  }
  return batches;
}

}  // namespace

TEST_CASE("batches sealed by the schema's rules verify and the summary counts them") {
  TempDir dir;
  const Signer signer = make_signer(dir, "k");
  ChainVerifier verifier(signer.trusted());
  for (auto& batch : chain(signer, 4)) CHECK_FALSE(verifier.check(batch->reader()));

  const ChainSummary& summary = verifier.summary();
  CHECK(summary.batches == 4);
  CHECK(summary.records == 12);
  CHECK(summary.first_seq == 0);
  CHECK(summary.last_seq == 3);
  CHECK(summary.first_ts_ns == 10'000'000'000LL);
  CHECK(summary.last_ts_ns == 1'000'000'000LL * (20 + 11));
  CHECK(summary.key_ids == std::set<std::string>{to_hex(signer.key.key_id())});
}

TEST_CASE("batches signed with ECDSA P-256 verify against their key") {
  TempDir dir;
  const Signer signer = make_signer(dir, "ec", Algorithm::kEcdsaP256);
  ChainVerifier verifier(signer.trusted());
  for (auto& batch : chain(signer, 2)) CHECK_FALSE(verifier.check(batch->reader()));
}

TEST_CASE("an empty batch verifies with the empty tree's root and adds no time range") {
  TempDir dir;
  const Signer signer = make_signer(dir, "k");
  auto batches = chain(signer, 1);
  Batch empty(signer, BatchSpec{.seq = 1, .prev_root = batches[0]->root(), .records = 0});
  ChainVerifier verifier(signer.trusted());
  CHECK_FALSE(verifier.check(batches[0]->reader()));
  CHECK_FALSE(verifier.check(empty.reader()));
  CHECK(verifier.summary().batches == 2);
  CHECK(verifier.summary().records == 3);
  CHECK(verifier.summary().last_ts_ns == 1'000'000'000LL * 22);
}

TEST_CASE("a header field of the wrong size is reported by name and size") {
  TempDir dir;
  const Signer signer = make_signer(dir, "k");
  Batch batch(signer, BatchSpec{});
  const std::array<std::uint8_t, 5> short_id{};
  batch.builder().getHeader().setStreamId(data_of(short_id));
  ChainVerifier verifier(signer.trusted());
  const auto problem = verifier.check(batch.reader());
  REQUIRE(problem);
  CHECK(problem->what == "header field streamId has 5 bytes, expected 16");
  CHECK(verifier.summary().batches == 1);
}

TEST_CASE("a changed record fails the Merkle root even when the header is re-signed") {
  TempDir dir;
  const Signer signer = make_signer(dir, "k");
  Batch batch(signer, BatchSpec{});
  batch.builder().getRecords()[1].setProto(6);
  batch.sign(signer);
  const auto problem = ChainVerifier(signer.trusted()).check(batch.reader());
  REQUIRE(problem);
  CHECK_THAT(problem->what, Catch::Contains("Merkle root does not match the records"));
  CHECK_THAT(problem->what, !Catch::Contains("signature"));
}

TEST_CASE("a header changed after signing fails its signature") {
  TempDir dir;
  const Signer signer = make_signer(dir, "k");
  Batch batch(signer, BatchSpec{});
  batch.builder().getHeader().setRecordCount(2);
  const auto problem = ChainVerifier(signer.trusted()).check(batch.reader());
  REQUIRE(problem);
  CHECK_THAT(problem->what, Catch::Contains("recordCount is 2 but the batch holds 3 records"));
  CHECK_THAT(problem->what,
             Catch::Contains("signature does not verify with key " + to_hex(signer.key.key_id())));
}

TEST_CASE("a batch signed with a key that is not trusted is refused, naming the key") {
  TempDir dir;
  const Signer trusted = make_signer(dir, "trusted");
  const Signer other = make_signer(dir, "other");
  Batch batch(other, BatchSpec{});
  const auto problem = ChainVerifier(trusted.trusted()).check(batch.reader());
  REQUIRE(problem);
  CHECK(problem->what ==
        "signed with key " + to_hex(other.key.key_id()) + ", which is not a trusted key");
}

TEST_CASE("a header naming another algorithm than its key's is refused") {
  TempDir dir;
  const Signer signer = make_signer(dir, "k");
  Batch batch(signer, BatchSpec{});
  batch.builder().getHeader().setAlgorithm(schema::SignatureAlgorithm::ECDSA_P256);
  batch.sign(signer);
  const auto problem = ChainVerifier(signer.trusted()).check(batch.reader());
  REQUIRE(problem);
  CHECK_THAT(problem->what, Catch::Contains("header names algorithm 1 but key"));
  CHECK_THAT(problem->what, Catch::Contains("ed25519"));
}

TEST_CASE("a gap names the first missing seq and the chain goes on after the batch found") {
  TempDir dir;
  const Signer signer = make_signer(dir, "k");
  auto batches = chain(signer, 5);
  ChainVerifier verifier(signer.trusted());
  CHECK_FALSE(verifier.check(batches[0]->reader()));
  const auto problem = verifier.check(batches[3]->reader());
  REQUIRE(problem);
  CHECK(problem->seq == 1);
  CHECK(problem->what == "batches seq 1..2 missing (expected 1, found 3)");
  CHECK_FALSE(verifier.check(batches[4]->reader()));
  CHECK(verifier.summary().last_seq == 4);
}

TEST_CASE("a gap wholly covered by signed gap markers is passed over and summed, not a problem") {
  TempDir dir;
  const Signer signer = make_signer(dir, "k");
  auto batches = chain(signer, 9);
  const auto marker = [&](std::uint64_t first, std::uint64_t last, std::uint64_t records,
                          Stream stream = kStream) {
    GapMarker m;
    m.claim.stream_id = stream;
    m.claim.first_seq = first;
    m.claim.last_seq = last;
    m.claim.records = records;
    m.key_id = signer.key.key_id();
    return m;
  };
  Stream other = kStream;
  other[0] = 9;
  ChainVerifier verifier(signer.trusted());
  // 1..2 by one marker; 4..6 by two that overlap (out of order); another stream's marker for
  // 8 does not count.
  verifier.allow_gaps(
      {marker(5, 6, 40), marker(1, 2, 10), marker(4, 5, 20), marker(8, 8, 1, other)});
  CHECK_FALSE(verifier.check(batches[0]->reader()));
  CHECK_FALSE(verifier.check(batches[3]->reader()));  // its prevRoot links to batch 2: not seen
  CHECK_FALSE(verifier.check(batches[7]->reader()));
  CHECK_FALSE(verifier.check(batches[8]->reader()));  // 8 follows 7: no marker needed
  const ChainSummary& summary = verifier.summary();
  REQUIRE(summary.gaps.size() == 2);
  CHECK(summary.gaps[0].first_seq == 1);
  CHECK(summary.gaps[0].last_seq == 2);
  CHECK(summary.gaps[0].records == 10);
  CHECK(summary.gaps[1].first_seq == 4);
  CHECK(summary.gaps[1].last_seq == 6);
  CHECK(summary.gaps[1].records == 60);
  CHECK(summary.batches == 4);
}

TEST_CASE("a gap only partly covered by markers, or by another stream's, is still missing") {
  TempDir dir;
  const Signer signer = make_signer(dir, "k");
  auto batches = chain(signer, 6);
  GapMarker part;
  part.claim.stream_id = kStream;
  part.claim.first_seq = 1;
  part.claim.last_seq = 2;  // 3 and 4 are not covered
  GapMarker foreign = part;
  foreign.claim.stream_id[0] ^= 1;
  foreign.claim.last_seq = 4;
  ChainVerifier verifier(signer.trusted());
  verifier.allow_gaps({part, foreign});
  CHECK_FALSE(verifier.check(batches[0]->reader()));
  const auto problem = verifier.check(batches[5]->reader());
  REQUIRE(problem);
  CHECK(problem->what == "batches seq 1..4 missing (expected 1, found 5)");
  CHECK(verifier.summary().gaps.empty());
}

TEST_CASE("a late batch is out of order and does not move the chain back") {
  TempDir dir;
  const Signer signer = make_signer(dir, "k");
  auto batches = chain(signer, 4);
  ChainVerifier verifier(signer.trusted());
  CHECK_FALSE(verifier.check(batches[0]->reader()));
  CHECK_FALSE(verifier.check(batches[1]->reader()));
  CHECK_FALSE(verifier.check(batches[2]->reader()));
  const auto late = verifier.check(batches[0]->reader());
  REQUIRE(late);
  CHECK(late->what == "batch seq 0 out of order (expected 3)");
  const auto repeated = verifier.check(batches[2]->reader());
  REQUIRE(repeated);
  CHECK(repeated->what == "batch seq 2 repeated");
  CHECK_FALSE(verifier.check(batches[3]->reader()));
}

TEST_CASE("a prevRoot that is not the previous batch's root breaks the chain at that seq") {
  TempDir dir;
  const Signer signer = make_signer(dir, "k");
  auto batches = chain(signer, 1);
  Batch wrong(signer, BatchSpec{.seq = 1, .prev_root = Digest{}, .first_record = 3});
  ChainVerifier verifier(signer.trusted());
  CHECK_FALSE(verifier.check(batches[0]->reader()));
  const auto problem = verifier.check(wrong.reader());
  REQUIRE(problem);
  CHECK(problem->seq == 1);
  CHECK_THAT(problem->what, Catch::StartsWith("prevRoot ") && Catch::Contains("of batch seq 0"));
}

TEST_CASE("after a batch that is not authentic, the next batch's prevRoot is not reported again") {
  TempDir dir;
  const Signer signer = make_signer(dir, "k");
  auto batches = chain(signer, 3);
  // Batch 1's header is forged (its root replaced) without the key: its signature fails, and
  // batch 2's prevRoot, which names the real root, is then not a second problem.
  Digest forged{};
  forged.fill(0xAB);
  batches[1]->builder().getHeader().setMerkleRoot(data_of(forged));
  ChainVerifier verifier(signer.trusted());
  CHECK_FALSE(verifier.check(batches[0]->reader()));
  const auto problem = verifier.check(batches[1]->reader());
  REQUIRE(problem);
  CHECK_THAT(problem->what, Catch::Contains("signature does not verify"));
  CHECK_FALSE(verifier.check(batches[2]->reader()));
}

TEST_CASE("a batch of another stream is refused and does not move the chain") {
  TempDir dir;
  const Signer signer = make_signer(dir, "k");
  auto batches = chain(signer, 2);
  Stream other = kStream;
  other[0] ^= 1;
  Batch foreign(signer, BatchSpec{.seq = 1, .prev_root = batches[0]->root(), .stream = other});
  ChainVerifier verifier(signer.trusted());
  CHECK_FALSE(verifier.check(batches[0]->reader()));
  const auto problem = verifier.check(foreign.reader());
  REQUIRE(problem);
  CHECK_THAT(problem->what, Catch::StartsWith("stream id " + to_hex(other) + " differs"));
  CHECK_FALSE(verifier.check(batches[1]->reader()));
}

TEST_CASE("a chain that starts at a later seq verifies and the summary says where it starts") {
  TempDir dir;
  const Signer signer = make_signer(dir, "k");
  ChainVerifier verifier(signer.trusted());
  for (auto& batch : chain(signer, 3, 40)) CHECK_FALSE(verifier.check(batch->reader()));
  CHECK(verifier.summary().first_seq == 40);
  CHECK(verifier.summary().last_seq == 42);
}

TEST_CASE("with two trusted keys a chain may change key and the summary lists both") {
  TempDir dir;
  const Signer first = make_signer(dir, "first");
  const Signer second = make_signer(dir, "second");
  auto keys = first.trusted();
  keys.merge(second.trusted());
  auto batches = chain(first, 1);
  Batch next(second, BatchSpec{.seq = 1, .prev_root = batches[0]->root(), .first_record = 3});
  ChainVerifier verifier(std::move(keys));
  CHECK_FALSE(verifier.check(batches[0]->reader()));
  CHECK_FALSE(verifier.check(next.reader()));
  CHECK(verifier.summary().key_ids.size() == 2);
}

}  // namespace flowseal::seal
