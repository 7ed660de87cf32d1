// BatchSealer and, through the batches it makes, seal::ChainVerifier: the verifier's tests
// live here because real SealedBatch messages come from the sealer, and common/ must not
// depend on a stage.
#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <stdlib.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include <capnp/message.h>
#include <capnp/serialize.h>

#include "test_temp_dir.h"
#include "batch_sealer.h"
#include "flowseal.capnp.h"
#include "seal/chain_verifier.h"
#include "seal/keys.h"
#include "seal/leaf_hints.h"
#include "seal/merkle.h"

namespace seal = flowseal::seal;
namespace schema = flowseal::schema;
using flowseal::signerd::BatchSealer;
namespace fs = std::filesystem;

namespace {

// Each TempDir of this file is named after it.
class TempDir : public flowseal::testing::TempDir {
 public:
  TempDir() : flowseal::testing::TempDir("batch_sealer_test") {}
};

struct KeyPair {
  seal::PrivateKey priv;
  seal::PublicKey pub;
};

KeyPair make_key(const TempDir& dir, const std::string& name,
                 seal::Algorithm algorithm = seal::Algorithm::kEd25519) {
  seal::generate_key_pair(algorithm, dir / (name + ".key"), dir / (name + ".pub"));
  return {seal::PrivateKey::load(dir / (name + ".key")),
          seal::PublicKey::load(dir / (name + ".pub"))};
}

constexpr std::array<std::uint8_t, 16> kStream = {1, 2,  3,  4,  5,  6,  7,  8,
                                                  9, 10, 11, 12, 13, 14, 15, 16};

// `count` distinct flow records, numbered from `first`, in one FlowEventBatch message.
struct Records {
  capnp::MallocMessageBuilder message;
  capnp::List<schema::FlowEvent>::Reader events;

  Records(unsigned first, unsigned count) {
    auto list = message.initRoot<schema::FlowEventBatch>().initEvents(count);
    for (unsigned i = 0; i < count; ++i) {
      const unsigned n = first + i;
      auto e = list[i];
      e.setUid(0x1000 + n);
      e.setKind(n % 3 == 0 ? schema::EventKind::START : schema::EventKind::END);
      e.setEndReason(n % 3 == 0 ? schema::EndReason::NONE : schema::EndReason::FIN);
      e.setProto(6);
      const std::uint8_t orig[] = {10, 0, 0, static_cast<std::uint8_t>(n)};
      const std::uint8_t resp[] = {192, 168, 1, static_cast<std::uint8_t>(n * 7)};
      e.setOrigAddr(capnp::Data::Reader(orig, 4));
      e.setRespAddr(capnp::Data::Reader(resp, 4));
      e.setOrigPort(static_cast<std::uint16_t>(40000 + n));
      e.setRespPort(443);
      // Out of order on purpose: the header takes the min first and max last time.
      e.setFirstTsNs(1'000'000'000LL * (100 + (n * 37) % 50));
      e.setLastTsNs(1'000'000'000LL * (200 + (n * 11) % 50));
      e.getOrig().setPkts(n + 3);
      e.getResp().setBytes(1000ULL * n);
      e.setConnState("SF");
      e.setHistory("ShADadFf");
      e.setCommunityId("1:LQU9qZlK+B5F3KDmev6m5PMibrg=");
    }
    events = list.asReader();
  }
};

// A sealed batch kept as a message of its own, so a test can tamper with it.
using Batch = std::unique_ptr<capnp::MallocMessageBuilder>;

Batch seal_records(BatchSealer& sealer, const Records& records) {
  for (auto e : records.events) sealer.add(e);
  auto batch = std::make_unique<capnp::MallocMessageBuilder>();
  sealer.seal(*batch);
  return batch;
}

// `batches` batches of 5 records each, chained from seq 0.
std::vector<Batch> make_chain(const seal::PrivateKey& key, unsigned batches) {
  BatchSealer sealer(key, kStream, 0, seal::Digest{});
  std::vector<Batch> chain;
  for (unsigned b = 0; b < batches; ++b) chain.push_back(seal_records(sealer, Records(b * 5, 5)));
  return chain;
}

schema::SealedBatch::Reader reader_of(const Batch& batch) {
  return batch->getRoot<schema::SealedBatch>().asReader();
}

std::map<seal::Digest, seal::PublicKey> trusting(const KeyPair& key) {
  std::map<seal::Digest, seal::PublicKey> keys;
  keys.emplace(key.pub.key_id(), seal::PublicKey::from_der(key.priv.public_der()));
  return keys;
}

// Every problem the verifier reports over `order` (indices into `chain`).
std::vector<seal::BatchProblem> verify(const KeyPair& key, const std::vector<Batch>& chain,
                                       const std::vector<std::size_t>& order) {
  seal::ChainVerifier verifier(trusting(key));
  std::vector<seal::BatchProblem> problems;
  for (std::size_t i : order) {
    if (auto problem = verifier.check(reader_of(chain[i]))) problems.push_back(*problem);
  }
  return problems;
}

std::vector<std::size_t> in_order(std::size_t n) {
  std::vector<std::size_t> order;
  for (std::size_t i = 0; i < n; ++i) order.push_back(i);
  return order;
}

kj::Array<capnp::word> flat(capnp::MessageBuilder& message) {
  return capnp::messageToFlatArray(message);
}

bool same_bytes(capnp::MessageBuilder& a, capnp::MessageBuilder& b) {
  return flat(a).asBytes() == flat(b).asBytes();
}

// The batch with record `index` taken out, header and signature as they were.
Batch without_record(const Batch& batch, unsigned index) {
  const auto in = reader_of(batch);
  auto out = std::make_unique<capnp::MallocMessageBuilder>();
  auto root = out->initRoot<schema::SealedBatch>();
  root.setHeader(in.getHeader());
  auto records = root.initRecords(in.getRecords().size() - 1);
  for (unsigned i = 0, j = 0; i < in.getRecords().size(); ++i) {
    if (i != index) records.setWithCaveats(j++, in.getRecords()[i]);
  }
  root.setSignature(in.getSignature());
  root.setLeafHints(in.getLeafHints());  // as a tamperer who leaves them alone would
  return out;
}

std::string describe(const std::vector<seal::BatchProblem>& problems) {
  std::string out;
  for (const auto& p : problems) {
    out += "seq " + std::to_string(p.seq) +
           (p.record ? " record " + std::to_string(*p.record) : std::string()) + ": " + p.what +
           "\n";
  }
  return out;
}

}  // namespace

// ------------------------------------------------------------------------------- sealing

TEST_CASE("a sealed batch's header describes its records and chains to the position given") {
  TempDir dir;
  const auto key = make_key(dir, "k");
  seal::Digest prev{};
  prev.fill(0xab);
  BatchSealer sealer(key.priv, kStream, 7, prev);
  const Records records(0, 6);
  for (auto e : records.events) sealer.add(e);
  CHECK(sealer.size() == 6);
  capnp::MallocMessageBuilder message;
  sealer.seal(message);
  const auto batch = message.getRoot<schema::SealedBatch>().asReader();
  const auto header = batch.getHeader();

  CHECK(header.getSeq() == 7);
  CHECK(header.getStreamId() == capnp::Data::Reader(kStream.data(), kStream.size()));
  CHECK(header.getPrevRoot() == capnp::Data::Reader(prev.data(), prev.size()));
  CHECK(header.getRecordCount() == 6);
  CHECK(header.getKeyId() == capnp::Data::Reader(key.priv.key_id().data(), 32));
  CHECK(header.getAlgorithm() == schema::SignatureAlgorithm::ED25519);
  std::int64_t first = INT64_MAX, last = INT64_MIN;
  std::vector<seal::Digest> leaves;
  for (auto e : records.events) {
    first = std::min(first, e.getFirstTsNs());
    last = std::max(last, e.getLastTsNs());
    leaves.push_back(seal::leaf_hash(seal::canonical_bytes(e)));
  }
  CHECK(header.getFirstTsNs() == first);
  CHECK(header.getLastTsNs() == last);
  const auto root = seal::merkle_root(leaves);
  CHECK(header.getMerkleRoot() == capnp::Data::Reader(root.data(), root.size()));
  REQUIRE(batch.getRecords().size() == 6);
  CHECK(batch.getRecords()[4].getUid() == 0x1004);
  CHECK(batch.getRecords()[4].getHistory() == "ShADadFf");
  CHECK(key.pub.verify(seal::canonical_bytes(header),
                       {batch.getSignature().begin(), batch.getSignature().size()}));

  // The sealer moved on: next seq, this root, an empty batch.
  CHECK(sealer.size() == 0);
  CHECK(sealer.next_seq() == 8);
  CHECK(sealer.prev_root() == root);
}

TEST_CASE("each record is stored as given: both directions, service and tunnel parents") {
  TempDir dir;
  const auto key = make_key(dir, "k");
  capnp::MallocMessageBuilder input;
  auto list = input.initRoot<schema::FlowEventBatch>().initEvents(4);
  for (unsigned i = 0; i < 4; ++i) {
    auto e = list[i];
    e.setUid(0x2000 + i);
    e.setKind(schema::EventKind::END);
    e.setProto(i == 3 ? 47 : 6);
    const std::uint8_t addr[] = {10, 0, 0, static_cast<std::uint8_t>(i)};
    e.setOrigAddr(capnp::Data::Reader(addr, 4));
    e.setFirstTsNs(1'000'000'000LL * (i + 1));
    for (auto side : {e.getOrig(), e.getResp()}) {
      side.setPkts(7 + i);
      side.setIpBytes(900 + i);
      side.setBytes(500 + i);
      side.setTcpFlags(0x1b);
      side.setSizeMin(40);
      side.setSizeMax(1500);
      side.setSizeSumSq(123456789);
      side.setIatMinUs(3);
      side.setIatMaxUs(4000);
      side.setIatSumUs(9000);
      side.setIatSumSqUs(1.5e7);
      side.setRexmits(i);
      side.setLocal(i % 2 ? schema::Locality::LOCAL : schema::Locality::REMOTE);
    }
    e.getResp().setPkts(0);  // a side with a zero first word
    e.setMissedBytes(i);
    if (i != 1) e.setService(i == 2 ? "dns" : "ssl,http");
    if (i == 2) e.initTunnelParents(2).set(1, 0xfeed);
  }
  BatchSealer sealer(key.priv, kStream, 0, seal::Digest{});
  for (auto e : list.asReader()) sealer.add(e);
  capnp::MallocMessageBuilder message;
  sealer.seal(message);
  const auto stored = message.getRoot<schema::SealedBatch>().asReader().getRecords();
  REQUIRE(stored.size() == 4);
  for (unsigned i = 0; i < 4; ++i) {
    INFO("record " << i);
    CHECK(seal::canonical_bytes(stored[i]) == seal::canonical_bytes(list.asReader()[i]));
    CHECK(stored[i].getOrig().getIatSumSqUs() == 1.5e7);
    CHECK(stored[i].getResp().getRexmits() == i);
  }
  CHECK(stored[2].getService() == "dns");
  CHECK_FALSE(stored[1].hasService());
}

TEST_CASE("re-sealing the same records at the same position gives byte-identical batches") {
  TempDir dir;
  const auto key = make_key(dir, "k");
  seal::Digest prev{};
  prev[0] = 1;
  const Records records(3, 40);
  BatchSealer first(key.priv, kStream, 12, prev);
  BatchSealer again(key.priv, kStream, 12, prev);
  const auto a = seal_records(first, records);
  const auto b = seal_records(again, records);
  CHECK(same_bytes(*a, *b));
  // And the next batch after it too: the position advanced identically.
  const Records more(50, 3);
  CHECK(same_bytes(*seal_records(first, more), *seal_records(again, more)));
  // A different position is a different batch.
  BatchSealer elsewhere(key.priv, kStream, 13, prev);
  CHECK_FALSE(same_bytes(*a, *seal_records(elsewhere, records)));
}

TEST_CASE("an empty batch seals with the empty-tree root and zero times") {
  TempDir dir;
  const auto key = make_key(dir, "k");
  BatchSealer sealer(key.priv, kStream, 0, seal::Digest{});
  capnp::MallocMessageBuilder message;
  sealer.seal(message);
  const auto header = message.getRoot<schema::SealedBatch>().getHeader().asReader();
  const auto empty = seal::sha256({});
  CHECK(header.getMerkleRoot() == capnp::Data::Reader(empty.data(), 32));
  CHECK(header.getRecordCount() == 0);
  CHECK(header.getFirstTsNs() == 0);
  CHECK(header.getLastTsNs() == 0);
  seal::ChainVerifier verifier(trusting(key));
  CHECK_FALSE(verifier.check(message.getRoot<schema::SealedBatch>().asReader()));
}

TEST_CASE("batches sealed with ECDSA P-256 verify") {
  TempDir dir;
  const auto key = make_key(dir, "ec", seal::Algorithm::kEcdsaP256);
  const auto chain = make_chain(key.priv, 3);
  CHECK(reader_of(chain[0]).getHeader().getAlgorithm() == schema::SignatureAlgorithm::ECDSA_P256);
  CHECK(verify(key, chain, in_order(3)).empty());
}

// ------------------------------------------------------------------------------ verifying

TEST_CASE("an untouched chain verifies and the summary counts it") {
  TempDir dir;
  const auto key = make_key(dir, "k");
  const auto chain = make_chain(key.priv, 6);
  seal::ChainVerifier verifier(trusting(key));
  for (const auto& batch : chain) {
    const auto problem = verifier.check(reader_of(batch));
    CHECK_FALSE(problem);
    if (problem) INFO(problem->what);
  }
  const auto& summary = verifier.summary();
  CHECK(summary.batches == 6);
  CHECK(summary.records == 30);
  CHECK(summary.first_seq == 0);
  CHECK(summary.last_seq == 5);
  CHECK(summary.key_ids == std::set<std::string>{seal::to_hex(key.priv.key_id())});
  CHECK(summary.first_ts_ns == 100'000'000'000LL);
}

TEST_CASE("a chain read back from its stored bytes verifies") {
  TempDir dir;
  const auto key = make_key(dir, "k");
  const auto chain = make_chain(key.priv, 3);
  seal::ChainVerifier verifier(trusting(key));
  for (const auto& batch : chain) {
    const kj::Array<capnp::word> stored = flat(*batch);
    capnp::FlatArrayMessageReader message(stored);
    CHECK_FALSE(verifier.check(message.getRoot<schema::SealedBatch>()));
  }
}

TEST_CASE("a chain may start at any seq, which the summary records") {
  TempDir dir;
  const auto key = make_key(dir, "k");
  const auto chain = make_chain(key.priv, 6);
  const auto problems = verify(key, chain, {3, 4, 5});
  CHECK(problems.empty());
  seal::ChainVerifier verifier(trusting(key));
  for (std::size_t i = 3; i < 6; ++i) verifier.check(reader_of(chain[i]));
  CHECK(verifier.summary().first_seq == 3);
}

TEST_CASE("one byte changed in a record is found in that batch") {
  TempDir dir;
  const auto key = make_key(dir, "k");
  auto chain = make_chain(key.priv, 5);
  std::uint32_t changed = 0;
  SECTION("a number") {
    auto record = chain[2]->getRoot<schema::SealedBatch>().getRecords()[3];
    record.setRespPort(static_cast<std::uint16_t>(record.getRespPort() ^ 0x01));
    changed = 3;
  }
  SECTION("a byte of text") {
    auto history = chain[2]->getRoot<schema::SealedBatch>().getRecords()[1].getHistory();
    history[2] = 'X';
    changed = 1;
  }
  SECTION("a byte of an address") {
    chain[2]->getRoot<schema::SealedBatch>().getRecords()[0].getOrigAddr()[3] ^= 0x80;
    changed = 0;
  }
  const auto problems = verify(key, chain, in_order(5));
  INFO(describe(problems));
  REQUIRE(problems.size() == 1);
  CHECK(problems[0].seq == 2);
  CHECK(problems[0].record == std::optional<std::uint32_t>(changed));
  CHECK(problems[0].what ==
        fmt::format("Merkle root does not match the records: record {} differs from the record "
                    "that was sealed (located by the batch's unsigned leaf hints)",
                    changed));
}

TEST_CASE("a changed record is still found when its leaf hints were rewritten or are absent") {
  TempDir dir;
  const auto key = make_key(dir, "k");
  auto chain = make_chain(key.priv, 3);
  auto batch = chain[1]->getRoot<schema::SealedBatch>();
  batch.getRecords()[2].getOrig().setPkts(999);
  std::string expected;
  SECTION("hints recomputed by the tamperer") {
    std::vector<seal::Digest> leaves;
    for (auto e : batch.asReader().getRecords())
      leaves.push_back(seal::leaf_hash(seal::canonical_bytes(e)));
    const auto hints = seal::make_leaf_hints(leaves, 2);
    batch.setLeafHints(capnp::Data::Reader(hints.data(), hints.size()));
    expected = "every stored record matches its leaf hint, so the hints were changed too";
  }
  SECTION("no hints (a batch stored before they existed)") {
    batch.disownLeafHints();
    expected = "the batch carries no leaf hints";
  }
  SECTION("hints of the wrong length") {
    const std::uint8_t hints[] = {2, 0, 0, 0};
    batch.setLeafHints(capnp::Data::Reader(hints, sizeof hints));
    expected = "3 bytes of 2-byte leaf hints for 5 sealed records";
  }
  const auto problems = verify(key, chain, in_order(3));
  INFO(describe(problems));
  REQUIRE(problems.size() == 1);
  CHECK(problems[0].seq == 1);
  CHECK(!problems[0].record);
  CHECK_THAT(problems[0].what, Catch::StartsWith("Merkle root does not match the records: the "
                                                 "damaged record could not be located") &&
                                   Catch::Contains(expected));
}

TEST_CASE("a sealed batch carries two-byte leaf hints of its records, or none if asked") {
  TempDir dir;
  const auto key = make_key(dir, "k");
  Records records(0, 7);
  std::vector<seal::Digest> leaves;
  for (auto e : records.events) leaves.push_back(seal::leaf_hash(seal::canonical_bytes(e)));
  BatchSealer hinted(key.priv, kStream, 0, seal::Digest{});
  const auto batch = seal_records(hinted, records);
  const auto hints = reader_of(batch).getLeafHints();
  CHECK(std::vector<std::uint8_t>(hints.begin(), hints.end()) == seal::make_leaf_hints(leaves, 2));
  BatchSealer bare(key.priv, kStream, 0, seal::Digest{}, 0);
  CHECK(!reader_of(seal_records(bare, records)).hasLeafHints());
}

TEST_CASE("a record removed from a batch is found in that batch") {
  TempDir dir;
  const auto key = make_key(dir, "k");
  auto chain = make_chain(key.priv, 4);
  chain[1] = without_record(chain[1], 2);
  const auto problems = verify(key, chain, in_order(4));
  INFO(describe(problems));
  REQUIRE(problems.size() == 1);
  CHECK(problems[0].seq == 1);
  CHECK(problems[0].record == std::optional<std::uint32_t>(2));
  CHECK_THAT(problems[0].what, Catch::Contains("recordCount is 5 but the batch holds 4 records") &&
                                   Catch::Contains("Merkle root does not match") &&
                                   Catch::Contains("a record was removed at record index 2"));
}

TEST_CASE("a batch removed from the chain is named as missing") {
  TempDir dir;
  const auto key = make_key(dir, "k");
  const auto chain = make_chain(key.priv, 6);
  SECTION("one batch") {
    const auto problems = verify(key, chain, {0, 1, 3, 4, 5});
    INFO(describe(problems));
    REQUIRE(problems.size() == 1);
    CHECK(problems[0].seq == 2);
    CHECK(problems[0].what == "batch seq 2 missing (expected 2, found 3)");
  }
  SECTION("several batches") {
    const auto problems = verify(key, chain, {0, 4, 5});
    REQUIRE(problems.size() == 1);
    CHECK(problems[0].seq == 1);
    CHECK(problems[0].what == "batches seq 1..3 missing (expected 1, found 4)");
  }
}

TEST_CASE("two batches swapped are found, each named by its seq") {
  TempDir dir;
  const auto key = make_key(dir, "k");
  const auto chain = make_chain(key.priv, 6);
  const auto problems = verify(key, chain, {0, 1, 3, 2, 4, 5});
  INFO(describe(problems));
  REQUIRE(problems.size() == 2);
  CHECK(problems[0].seq == 2);
  CHECK(problems[0].what == "batch seq 2 missing (expected 2, found 3)");
  CHECK(problems[1].seq == 2);
  CHECK(problems[1].what == "batch seq 2 out of order (expected 4)");
}

TEST_CASE("a batch stored twice is reported as repeated") {
  TempDir dir;
  const auto key = make_key(dir, "k");
  const auto chain = make_chain(key.priv, 3);
  const auto problems = verify(key, chain, {0, 1, 1, 2});
  REQUIRE(problems.size() == 1);
  CHECK(problems[0].seq == 1);
  CHECK(problems[0].what == "batch seq 1 repeated");
}

TEST_CASE("a batch signed with another key is refused unless that key is trusted") {
  TempDir dir;
  const auto key = make_key(dir, "k");
  const auto intruder = make_key(dir, "intruder");
  auto chain = make_chain(key.priv, 5);
  // The intruder re-seals batch 3 at its true position, with the same records.
  const auto batch2 = reader_of(chain[2]);
  seal::Digest prev{};
  std::memcpy(prev.data(), batch2.getHeader().getMerkleRoot().begin(), 32);
  BatchSealer forger(intruder.priv, kStream, 3, prev);
  chain[3] = seal_records(forger, Records(15, 5));

  const auto problems = verify(key, chain, in_order(5));
  INFO(describe(problems));
  REQUIRE(problems.size() == 1);
  CHECK(problems[0].seq == 3);
  CHECK_THAT(problems[0].what,
             Catch::Contains("signed with key " + seal::to_hex(intruder.priv.key_id()) +
                             ", which is not a trusted key"));

  auto both = trusting(key);
  both.emplace(intruder.pub.key_id(), seal::PublicKey::from_der(intruder.priv.public_der()));
  seal::ChainVerifier lenient(std::move(both));
  for (const auto& batch : chain) CHECK_FALSE(lenient.check(reader_of(batch)));
  CHECK(lenient.summary().key_ids.size() == 2);
}

TEST_CASE("a signature that does not match its header is found") {
  TempDir dir;
  const auto key = make_key(dir, "k");
  auto chain = make_chain(key.priv, 3);
  SECTION("a flipped signature bit") {
    chain[1]->getRoot<schema::SealedBatch>().getSignature()[5] ^= 0x10;
  }
  SECTION("a record changed and the header's Merkle root rewritten to fit it") {
    auto batch = chain[1]->getRoot<schema::SealedBatch>();
    batch.getRecords()[0].getOrig().setPkts(999);
    std::vector<seal::Digest> leaves;
    for (auto e : batch.asReader().getRecords()) {
      leaves.push_back(seal::leaf_hash(seal::canonical_bytes(e)));
    }
    const auto root = seal::merkle_root(leaves);
    batch.getHeader().setMerkleRoot(capnp::Data::Reader(root.data(), root.size()));
  }
  const auto problems = verify(key, chain, in_order(3));
  INFO(describe(problems));
  REQUIRE(problems.size() == 1);
  CHECK(problems[0].seq == 1);
  CHECK_THAT(problems[0].what, Catch::StartsWith("signature does not verify with key "));
}

TEST_CASE("a batch sealed with the wrong previous root breaks the chain at its seq") {
  TempDir dir;
  const auto key = make_key(dir, "k");
  auto chain = make_chain(key.priv, 5);
  seal::Digest wrong{};
  wrong.fill(0x5a);
  BatchSealer forked(key.priv, kStream, 3, wrong);
  chain[3] = seal_records(forked, Records(15, 5));
  const auto problems = verify(key, chain, in_order(5));
  INFO(describe(problems));
  REQUIRE(problems.size() == 1);
  CHECK(problems[0].seq == 3);
  CHECK_THAT(problems[0].what,
             Catch::StartsWith("prevRoot 5a5a") && Catch::Contains("of batch seq 2"));
}

TEST_CASE("a batch of another stream is refused and does not move the chain") {
  TempDir dir;
  const auto key = make_key(dir, "k");
  auto chain = make_chain(key.priv, 4);
  auto other_stream = kStream;
  other_stream[0] ^= 0xff;
  BatchSealer other(key.priv, other_stream, 0, seal::Digest{});
  chain.push_back(seal_records(other, Records(0, 2)));
  const auto problems = verify(key, chain, {0, 1, 4, 2, 3});
  INFO(describe(problems));
  REQUIRE(problems.size() == 1);
  CHECK(problems[0].seq == 0);
  CHECK_THAT(problems[0].what, Catch::StartsWith("stream id fe02"));
}

TEST_CASE("a header whose times or count disagree with its records is found") {
  TempDir dir;
  const auto key = make_key(dir, "k");
  auto chain = make_chain(key.priv, 2);
  auto header = chain[1]->getRoot<schema::SealedBatch>().getHeader();
  header.setFirstTsNs(header.getFirstTsNs() - 1);
  const auto problems = verify(key, chain, in_order(2));
  REQUIRE(problems.size() == 1);
  CHECK(problems[0].seq == 1);
  CHECK_THAT(problems[0].what,
             Catch::Contains("firstTsNs is") && Catch::Contains("signature does not verify"));
}

TEST_CASE("a record whose time was moved outside the signed range is named by its index") {
  TempDir dir;
  const auto key = make_key(dir, "k");
  auto chain = make_chain(key.priv, 3);
  auto batch = chain[2]->getRoot<schema::SealedBatch>();
  batch.getRecords()[3].setLastTsNs(batch.getHeader().getLastTsNs() + 1);
  const auto problems = verify(key, chain, in_order(3));
  INFO(describe(problems));
  REQUIRE(problems.size() == 1);
  CHECK(problems[0].seq == 2);
  CHECK(problems[0].record == std::optional<std::uint32_t>(3));
  CHECK_THAT(problems[0].what, Catch::Contains("Merkle root does not match") &&
                                   Catch::Contains("but the latest record ends at"));
}

TEST_CASE("a flipped byte anywhere in a stored batch is found unless it changes nothing") {
  TempDir dir;
  const auto key = make_key(dir, "k");
  const auto chain = make_chain(key.priv, 1);
  const kj::Array<capnp::word> original = flat(*chain[0]);
  // What the seal covers: everything but the unsigned leaf hints, which a flip may change
  // harmlessly (they only locate damage the root proves).
  const auto sealed_part = [](schema::SealedBatch::Reader batch) {
    capnp::MallocMessageBuilder copy;
    copy.setRoot(batch);
    copy.getRoot<schema::SealedBatch>().disownLeafHints();
    return capnp::canonicalize(copy.getRoot<schema::SealedBatch>().asReader());
  };
  const auto original_canonical = sealed_part(reader_of(chain[0]));
  std::size_t detected = 0, harmless = 0;
  for (std::size_t i = 0; i < original.asBytes().size(); ++i) {
    auto copy = kj::heapArray<capnp::word>(original.asPtr());
    copy.asBytes()[i] ^= 0x04;
    bool found = true;
    bool same = false;
    try {
      capnp::FlatArrayMessageReader message(copy);
      const auto batch = message.getRoot<schema::SealedBatch>();
      seal::ChainVerifier verifier(trusting(key));
      found = verifier.check(batch).has_value();
      if (!found) same = sealed_part(batch).asBytes() == original_canonical.asBytes();
    } catch (const kj::Exception&) {
      found = true;  // the message itself is unreadable: nothing can be accepted
    }
    INFO("byte " << i);
    CHECK((found || same));
    (found ? detected : harmless) += 1;
  }
  CHECK(detected > 0);
}

// signerd reads each frame once: add_all() checks every record as it copies it, and a bad one
// must leave the open batch as it was (a frame is sealed whole or skipped whole).
TEST_CASE("add_all adds a frame's records whole, or none of them when one is malformed") {
  TempDir dir;
  const auto key = make_key(dir, "k");
  const Records first(0, 3);
  Records frame(3, 4);
  // The frame's third record's history loses its NUL: reading it throws (as a traversal
  // would not: only the copy sees it).
  kj::Array<capnp::word> flat = capnp::messageToFlatArray(frame.message);
  auto bytes = flat.asBytes();
  const std::string history = "ShADadFf";
  std::size_t found = 0;
  for (std::size_t at = 0; at + history.size() < bytes.size(); at += 8) {
    if (std::memcmp(bytes.begin() + at, history.data(), history.size()) != 0) continue;
    if (++found == 3) bytes[at + history.size()] = 'X';  // "ShADadFf\0" -> "ShADadFfX"
  }
  REQUIRE(found == 4);
  capnp::FlatArrayMessageReader bad(flat);
  const auto bad_events = bad.getRoot<schema::FlowEventBatch>().getEvents();

  BatchSealer sealer(key.priv, kStream, 0, seal::Digest{});
  BatchSealer clean(key.priv, kStream, 0, seal::Digest{});
  sealer.add_all(first.events);
  clean.add_all(first.events);
  const std::size_t words = sealer.words(), canonical_bytes = sealer.bytes();
  CHECK_THROWS_AS(sealer.add_all(bad_events), kj::Exception);
  CHECK(sealer.size() == 3);
  CHECK(sealer.words() == words);
  CHECK(sealer.bytes() == canonical_bytes);
  // The batch is the one the good records alone make: leaves, times and all.
  sealer.add_all(frame.events);
  clean.add_all(frame.events);
  CHECK(sealer.size() == 7);
  auto a = std::make_unique<capnp::MallocMessageBuilder>();
  auto b = std::make_unique<capnp::MallocMessageBuilder>();
  sealer.seal(*a);
  clean.seal(*b);
  CHECK(same_bytes(*a, *b));
}

TEST_CASE("words() holds a sealed batch in one segment") {
  TempDir dir;
  const auto key = make_key(dir, "k");
  for (const unsigned count : {1u, 5u, 300u}) {
    BatchSealer sealer(key.priv, kStream, 0, seal::Digest{});
    const Records records(0, count);
    sealer.add_all(records.events);
    std::vector<capnp::word> first(sealer.words());
    capnp::MallocMessageBuilder message(kj::arrayPtr(first.data(), first.size()));
    sealer.seal(message);
    const auto segments = message.getSegmentsForOutput();
    REQUIRE(segments.size() == 1);
    // Exact for the records: only the header and signature's allowance is left over.
    CHECK(first.size() - segments[0].size() <= 1024);
    CHECK(first.size() - segments[0].size() > 1024 - 64);
  }
}
