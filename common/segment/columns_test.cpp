#include <algorithm>
#include <bit>
#include <cstring>
#include <limits>
#include <random>
#include <fstream>
#include <iterator>
#include <vector>

#include <zstd.h>

#include <capnp/any.h>
#include <capnp/message.h>
#include <capnp/serialize.h>
#include <catch2/catch.hpp>
#include <openssl/evp.h>

#include "flowseal.capnp.h"
#include "packet/flow_id.h"
#include "segment/columns.h"
#include "segment/format.h"

using namespace flowseal;
using namespace flowseal::segment;

namespace {

constexpr std::uint16_t kSeed = 7;

template <typename Reader>
std::vector<std::uint8_t> canonical(Reader reader) {
  const kj::Array<capnp::word> words = capnp::canonicalize(reader);
  const auto bytes = words.asBytes();
  return {bytes.begin(), bytes.end()};
}

struct Sha1 {
  EVP_MD* md = EVP_MD_fetch(nullptr, "SHA1", nullptr);
  ~Sha1() { EVP_MD_free(md); }
};

// Random records: mostly flowd-like (derivable uid and Community ID, IPv4 or IPv6, pcap
// microsecond times), with every field also taking extreme and odd values: unknown enum
// values, NaN sampling rates, null and empty pointers, addresses of odd lengths, texts with
// a NUL inside, dedupd summaries with uid ranges.
class RecordMaker {
 public:
  explicit RecordMaker(std::uint32_t seed) : rng_(seed), parents_rng_(seed ^ 0x7A7Au) {}

  void fill(schema::FlowEvent::Builder e, bool odd) {
    auto pick = [&](std::uint64_t n) {
      return std::uniform_int_distribution<std::uint64_t>(0, n - 1)(rng_);
    };
    auto u64 = [&]() -> std::uint64_t {
      switch (pick(6)) {
        case 0: return 0;
        case 1: return ~0ull;
        case 2: return rng_();
        default: return pick(2000);
      }
    };
    const bool v6 = pick(3) == 0;
    std::uint8_t orig[16], resp[16];
    for (auto& b : orig) b = static_cast<std::uint8_t>(pick(4) == 0 ? rng_() : 10);
    for (auto& b : resp) b = static_cast<std::uint8_t>(pick(4) == 0 ? rng_() : 192);
    const std::size_t len = v6 ? 16 : 4;
    const std::uint8_t proto = odd && pick(4) == 0
                                   ? static_cast<std::uint8_t>(rng_())
                                   : std::array<std::uint8_t, 5>{6, 17, 1, 58, 132}[pick(5)];
    const auto orig_port = static_cast<std::uint16_t>(pick(3) == 0 ? rng_() : 40000 + pick(50));
    const auto resp_port = static_cast<std::uint16_t>(pick(3) == 0 ? rng_() : 443);
    const auto vlan = static_cast<std::uint16_t>(pick(5) == 0 ? rng_() : 0);
    std::int64_t first =
        1'700'000'000'000'000'000 + static_cast<std::int64_t>(pick(1'000'000)) * 1000;
    std::int64_t last = first + static_cast<std::int64_t>(pick(3'000'000)) * 1000;
    if (odd) {
      const std::int64_t extremes[] = {0,
                                       -1,
                                       1,
                                       std::numeric_limits<std::int64_t>::min(),
                                       std::numeric_limits<std::int64_t>::max(),
                                       123456789};
      if (pick(3) == 0) first = extremes[pick(6)];
      if (pick(3) == 0) last = extremes[pick(6)];
    }
    e.setProto(proto);
    if (odd && pick(5) == 0) {
      // null, empty, or of an odd length
      const std::size_t n = pick(3) == 0 ? 0 : pick(20);
      if (pick(2) == 0) e.setOrigAddr({orig, std::min<std::size_t>(n, 16)});
      if (pick(2) == 0) e.setRespAddr({resp, len});
    } else {
      e.setOrigAddr({orig, len});
      e.setRespAddr({resp, len});
    }
    e.setOrigPort(orig_port);
    e.setRespPort(resp_port);
    e.setVlan(vlan);
    e.setFirstTsNs(first);
    e.setLastTsNs(last);
    e.setKind(static_cast<schema::EventKind>(odd && pick(4) == 0 ? rng_() : pick(4)));
    e.setEventNumber(static_cast<std::uint32_t>(odd && pick(3) == 0 ? rng_() : pick(3)));
    e.setEndReason(static_cast<schema::EndReason>(odd && pick(4) == 0 ? rng_() : pick(7)));
    if (pick(3) == 0) {
      const std::uint32_t bits[] = {0x3F400000u,
                                    0x7FC00001u,
                                    0x7F800001u,
                                    0xFFFFFFFFu,
                                    0,
                                    0x80000000u,
                                    static_cast<std::uint32_t>(rng_())};
      e.setSamplingRate(std::bit_cast<float>(bits[pick(7)]));
    }
    e.getOrig().setPkts(u64());
    e.getOrig().setIpBytes(u64());
    e.getOrig().setBytes(u64());
    e.getResp().setPkts(u64());
    e.getResp().setIpBytes(u64());
    e.getResp().setBytes(u64());
    e.getOrig().setTcpFlags(static_cast<std::uint8_t>(rng_()));
    e.getResp().setTcpFlags(static_cast<std::uint8_t>(rng_()));
    const char* states[] = {"S0", "SF", "REJ", "", "OTH"};
    const char* histories[] = {"S", "ShADadFf", "^hr", "Sr", ""};
    if (!odd || pick(6) != 0) e.setConnState(states[pick(5)]);
    if (!odd || pick(6) != 0) e.setHistory(histories[pick(5)]);
    if (odd && pick(6) == 0) e.setHistory(capnp::Text::Reader("a\0b", 3));

    // uid: derivable from the flow key and a shard, or not
    packet::FlowKey key;
    std::memcpy(key.src.data(), orig, len);
    std::memcpy(key.dst.data(), resp, len);
    key.src_port = orig_port;
    key.dst_port = resp_port;
    key.vlan = vlan;
    key.proto = proto;
    key.ip_version = v6 ? 6 : 4;
    std::uint64_t uid =
        packet::flow_uid(packet::symmetric_hash64(key), first, static_cast<std::uint32_t>(pick(8)));
    if (odd && pick(3) == 0) uid = u64();
    e.setUid(uid);
    // Community ID: right (derivable), with another seed, garbage, empty or null
    const auto a = e.asReader().getOrigAddr();
    const auto b = e.asReader().getRespAddr();
    const std::uint16_t seed = odd && pick(4) == 0 ? 99 : kSeed;
    const packet::CommunityIdText id = packet::community_id(
        sha1_.md, seed, proto, {a.begin(), a.size()}, {b.begin(), b.size()}, orig_port, resp_port);
    switch (odd ? pick(5) : 0) {
      case 0: e.setCommunityId({id.chars.data(), id.size}); break;
      case 1: e.setCommunityId("1:not-a-real-id"); break;
      case 2: e.setCommunityId(""); break;
      default: break;  // null
    }
    if (pick(4) == 0) {  // a dedupd summary
      e.setKind(schema::EventKind::SUMMARY);
      e.setFlowCount(static_cast<std::uint32_t>(odd && pick(3) == 0 ? rng_() : 2 + pick(100)));
      e.setFirstUid(uid);
      e.setLastUid(rng_());
    } else {
      e.setFlowCount(odd && pick(8) == 0 ? 0 : 1);
      e.setFirstUid(odd && pick(5) == 0 ? rng_() : uid);
      e.setLastUid(odd && pick(5) == 0 ? rng_() : uid);
    }
    // Size and inter-arrival spreads: ordinary ones, and odd ones (max below min, extremes,
    // NaN and negative bit patterns in the float sums).
    auto wide = [&](std::uint64_t limit) { return odd && pick(3) == 0 ? rng_() : pick(limit); };
    e.getOrig().setSizeMin(static_cast<std::uint32_t>(wide(1500)));
    e.getOrig().setSizeMax(
        static_cast<std::uint32_t>(odd ? wide(70000) : e.getOrig().getSizeMin() + pick(1500)));
    e.getOrig().setSizeSumSq(wide(1u << 30));
    e.getOrig().setIatMinUs(wide(1000000));
    e.getOrig().setIatMaxUs(odd ? wide(1000000) : e.getOrig().getIatMinUs() + pick(5000000));
    e.getOrig().setIatSumUs(wide(100000000));
    e.getOrig().setIatSumSqUs(odd && pick(2) == 0 ? std::bit_cast<double>(rng_())
                                                  : static_cast<double>(pick(1u << 30)) * 1e3);
    e.getOrig().setRexmits(static_cast<std::uint32_t>(wide(5)));
    e.getResp().setSizeMin(static_cast<std::uint32_t>(wide(1500)));
    e.getResp().setSizeMax(static_cast<std::uint32_t>(wide(70000)));
    e.getResp().setSizeSumSq(wide(1u << 30));
    e.getResp().setIatMinUs(wide(1000000));
    e.getResp().setIatMaxUs(wide(1000000));
    e.getResp().setIatSumUs(wide(100000000));
    e.getResp().setIatSumSqUs(std::bit_cast<double>(wide(~0ull)));
    e.getResp().setRexmits(static_cast<std::uint32_t>(wide(5)));
    // Format 3's conn.log columns: locality (unknown values too), missed bytes, service.
    for (auto side : {e.getOrig(), e.getResp()}) {
      side.setLocal(static_cast<schema::Locality>(odd && pick(4) == 0 ? rng_() : pick(3)));
    }
    if (pick(3) == 0) e.setMissedBytes(u64());
    if (pick(3) == 0) e.setService(odd && pick(2) == 0 ? "dns,\x01\xff" : "dns");
    // Tunnel parents: mostly none (null), some one or two uids, and (odd) an empty list.
    // From their own generator, so the other fields stay what they were before the column.
    switch (parents_rng_() % 6) {
      case 0: e.initTunnelParents(1).set(0, parents_rng_()); break;
      case 1: {
        auto parents = e.initTunnelParents(2);
        parents.set(0, parents_rng_());
        parents.set(1, parents_rng_());
        break;
      }
      case 2:
        if (odd) e.initTunnelParents(0);
        break;
      default: break;
    }
  }

 private:
  std::mt19937_64 rng_;
  std::mt19937_64 parents_rng_;
  Sha1 sha1_;
};

std::vector<std::byte> sealed_batch(std::uint32_t seed, std::uint32_t records, bool odd) {
  capnp::MallocMessageBuilder message;
  auto batch = message.initRoot<schema::SealedBatch>();
  auto header = batch.initHeader();
  std::uint8_t id[32];
  for (std::size_t i = 0; i < sizeof id; ++i) id[i] = static_cast<std::uint8_t>(seed + i);
  header.setStreamId({id, 16});
  header.setSeq(seed);
  header.setPrevRoot({id, 32});
  header.setMerkleRoot({id, 32});
  header.setRecordCount(records);
  header.setFirstTsNs(-5);
  header.setLastTsNs(std::numeric_limits<std::int64_t>::max());
  header.setKeyId({id, 32});
  header.setAlgorithm(schema::SignatureAlgorithm::ED25519);
  std::uint8_t signature[64];
  for (std::size_t i = 0; i < sizeof signature; ++i)
    signature[i] = static_cast<std::uint8_t>(i * 7 + seed);
  batch.setSignature({signature, sizeof signature});
  RecordMaker maker(seed);
  auto list = batch.initRecords(records);
  for (auto record : list) maker.fill(record, odd);
  const auto words = capnp::messageToFlatArray(message);
  const auto bytes = words.asBytes();
  return {reinterpret_cast<const std::byte*>(bytes.begin()),
          reinterpret_cast<const std::byte*>(bytes.end())};
}

capnp::FlatArrayMessageReader open(const std::vector<std::uint64_t>& words, std::size_t bytes) {
  return capnp::FlatArrayMessageReader(
      kj::arrayPtr(reinterpret_cast<const capnp::word*>(words.data()), bytes / 8));
}

// What the seal covers: the signed header, the signature and each record's canonical bytes.
std::vector<std::vector<std::uint8_t>> sealed_content(schema::SealedBatch::Reader batch) {
  std::vector<std::vector<std::uint8_t>> out;
  out.push_back(canonical(batch.getHeader()));
  const auto signature = batch.getSignature();
  out.emplace_back(signature.begin(), signature.end());
  out.push_back({batch.hasSignature()});
  for (const auto record : batch.getRecords()) out.push_back(canonical(record));
  return out;
}

std::vector<std::vector<std::uint8_t>> sealed_content(std::span<const std::byte> message) {
  std::vector<std::uint64_t> words(message.size() / 8);
  std::memcpy(words.data(), message.data(), message.size());
  auto reader = open(words, message.size());
  return sealed_content(reader.getRoot<schema::SealedBatch>());
}

}  // namespace

TEST_CASE("random records decode to byte-identical canonical encodings, header and signature") {
  BatchCodec codec(ColumnOptions{kSeed});
  std::vector<std::uint8_t> stored;
  std::vector<std::uint64_t> words;
  std::size_t bytes = 0;
  for (std::uint32_t seed = 1; seed <= 60; ++seed) {
    const bool odd = seed % 2 == 0;
    const std::uint32_t count = seed % 10 == 0 ? 0 : seed * 7;
    const auto message = sealed_batch(seed, count, odd);
    INFO("seed " << seed << ", " << count << " records, odd values " << odd);
    REQUIRE(codec.encode(message, stored) == BatchEncoding::kColumns);
    const auto why = codec.decode(stored, count, words, bytes);
    INFO((why ? *why : std::string()));
    REQUIRE(!why);
    auto reader = open(words, bytes);
    CHECK(sealed_content(reader.getRoot<schema::SealedBatch>()) == sealed_content(message));
  }
}

TEST_CASE("a stored batch decodes to the same bytes whatever the codec decoded before") {
  // A codec keeps its message segment from batch to batch, sized by what it has seen: a large
  // batch after small ones must still come out as a fresh codec makes it.
  BatchCodec fresh_encoder(ColumnOptions{kSeed});
  std::vector<std::uint8_t> small_stored, large_stored;
  const auto small = sealed_batch(3, 2, false);
  const auto large = sealed_batch(4, 400, true);
  REQUIRE(fresh_encoder.encode(small, small_stored) == BatchEncoding::kColumns);
  REQUIRE(fresh_encoder.encode(large, large_stored) == BatchEncoding::kColumns);
  std::vector<std::uint64_t> expected, got;
  std::size_t expected_bytes = 0, got_bytes = 0;
  BatchCodec fresh(ColumnOptions{kSeed});
  REQUIRE_FALSE(fresh.decode(large_stored, 400, expected, expected_bytes));
  BatchCodec used(ColumnOptions{kSeed});
  for (int round = 0; round < 3; ++round) {
    REQUIRE_FALSE(used.decode(small_stored, 2, got, got_bytes));
    REQUIRE_FALSE(used.decode(large_stored, 400, got, got_bytes));
    REQUIRE(got_bytes == expected_bytes);
    CHECK(std::memcmp(got.data(), expected.data(), expected_bytes) == 0);
  }
}

TEST_CASE("a flowd record's uid and Community ID are recomputed, not stored") {
  // The same records twice: once as flowd makes them, once with uids and Community IDs no
  // formula gives. The first must store at least 8 + 28 bytes per record less before zstd.
  const auto derivable = sealed_batch(3, 200, false);
  std::vector<std::uint64_t> words(derivable.size() / 8);
  std::memcpy(words.data(), derivable.data(), derivable.size());
  capnp::FlatArrayMessageReader reader(
      kj::arrayPtr(reinterpret_cast<const capnp::word*>(words.data()), words.size()));
  capnp::MallocMessageBuilder changed;
  changed.setRoot(reader.getRoot<schema::SealedBatch>());
  std::uint64_t x = 1;
  for (auto r : changed.getRoot<schema::SealedBatch>().getRecords()) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    r.setUid(x);
    r.setFirstUid(x);
    r.setLastUid(x);
    std::string id = "1:" + std::to_string(x) + "abcdefghijklmnop";
    r.setCommunityId(id.substr(0, 30));
  }
  const auto flat = capnp::messageToFlatArray(changed);
  BatchCodec codec(ColumnOptions{kSeed});
  std::vector<std::uint8_t> a, b;
  codec.encode(derivable, a);
  codec.encode({reinterpret_cast<const std::byte*>(flat.begin()), flat.asBytes().size()}, b);
  CHECK(b.size() >= a.size() + 200 * (8 + 28));
  // Another seed: the Community IDs are kept in full, and still decode.
  BatchCodec other(ColumnOptions{kSeed + 1});
  std::vector<std::uint8_t> c;
  REQUIRE(other.encode(derivable, c) == BatchEncoding::kColumns);
  CHECK(c.size() >= a.size() + 200 * 28);
  std::vector<std::uint64_t> out;
  std::size_t bytes = 0;
  REQUIRE(!other.decode(c, 200, out, bytes));
  auto decoded = open(out, bytes);
  CHECK(sealed_content(decoded.getRoot<schema::SealedBatch>()) == sealed_content(derivable));
}

TEST_CASE("a decoder told to leave out derived Community IDs gives every other field as stored") {
  // For the IPFIX export, which sends no Community ID: the ones the store derives are not
  // rebuilt (a SHA-1 each); the ones it stores in full still come back.
  const auto derivable = sealed_batch(3, 200, false);
  std::vector<std::uint8_t> stored, stored_in_full;
  BatchCodec encoder(ColumnOptions{kSeed});
  REQUIRE(encoder.encode(derivable, stored) == BatchEncoding::kColumns);
  BatchCodec other_seed(ColumnOptions{kSeed + 1});
  REQUIRE(other_seed.encode(derivable, stored_in_full) == BatchEncoding::kColumns);

  ColumnOptions options{kSeed};
  options.decode_derived_community_ids = false;
  BatchCodec decoder(options);
  std::vector<std::uint64_t> out, full_out;
  std::size_t bytes = 0, full_bytes = 0;
  REQUIRE_FALSE(decoder.decode(stored, 200, out, bytes));
  REQUIRE_FALSE(decoder.decode(stored_in_full, 200, full_out, full_bytes));
  auto decoded = open(out, bytes);
  auto decoded_full = open(full_out, full_bytes);
  auto records = decoded.getRoot<schema::SealedBatch>().getRecords();
  auto records_full = decoded_full.getRoot<schema::SealedBatch>().getRecords();

  std::vector<std::uint64_t> words(derivable.size() / 8);
  std::memcpy(words.data(), derivable.data(), derivable.size());
  capnp::FlatArrayMessageReader original(
      kj::arrayPtr(reinterpret_cast<const capnp::word*>(words.data()), words.size()));
  auto expected = original.getRoot<schema::SealedBatch>().getRecords();
  REQUIRE(records.size() == expected.size());
  std::size_t derived = 0;
  for (unsigned i = 0; i < expected.size(); ++i) {
    CHECK(canonical(records_full[i]) == canonical(expected[i]));
    if (!expected[i].hasCommunityId()) {
      CHECK(canonical(records[i]) == canonical(expected[i]));
      continue;
    }
    CHECK_FALSE(records[i].hasCommunityId());
    ++derived;
    capnp::MallocMessageBuilder without;
    without.setRoot(expected[i]);
    without.getRoot<schema::FlowEvent>().disownCommunityId();
    CHECK(canonical(records[i]) == canonical(without.getRoot<schema::FlowEvent>().asReader()));
  }
  CHECK(derived > 100);

  // Not rebuilding them does not make damage pass: every single-bit flip of a small batch is
  // refused by both decoders or by neither. Its uids are stored (none derivable), so that the
  // derived Community IDs' check is the only one that needs the 5-tuple.
  const auto small_batch = sealed_batch(5, 12, false);
  std::vector<std::uint64_t> small_words(small_batch.size() / 8);
  std::memcpy(small_words.data(), small_batch.data(), small_batch.size());
  capnp::FlatArrayMessageReader small_reader(
      kj::arrayPtr(reinterpret_cast<const capnp::word*>(small_words.data()), small_words.size()));
  capnp::MallocMessageBuilder stored_uids;
  stored_uids.setRoot(small_reader.getRoot<schema::SealedBatch>());
  std::uint64_t x = 7;
  for (auto r : stored_uids.getRoot<schema::SealedBatch>().getRecords()) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    r.setUid(x);
    r.setFirstUid(x);
    r.setLastUid(x);
  }
  const auto stored_uids_flat = capnp::messageToFlatArray(stored_uids);
  std::vector<std::uint8_t> small;
  REQUIRE(encoder.encode({reinterpret_cast<const std::byte*>(stored_uids_flat.begin()),
                          stored_uids_flat.asBytes().size()},
                         small) == BatchEncoding::kColumns);
  BatchCodec full(ColumnOptions{kSeed});
  for (std::size_t bit = 0; bit < small.size() * 8; ++bit) {
    auto flipped = small;
    flipped[bit / 8] ^= static_cast<std::uint8_t>(1u << (bit % 8));
    INFO("bit " << bit);
    CHECK(full.decode(flipped, 12, out, bytes).has_value() ==
          decoder.decode(flipped, 12, full_out, full_bytes).has_value());
  }
}

TEST_CASE("tunnel parents are stored in their own column, one null byte per record without") {
  // Records without parents: the column holds one 0 per record, and nothing may be missing.
  capnp::MallocMessageBuilder message;
  auto batch = message.initRoot<schema::SealedBatch>();
  batch.initHeader().setRecordCount(3);
  auto records = batch.initRecords(3);
  for (auto r : records) {
    r.setUid(7);
    r.setHistory("D");
    r.initOrig();
    r.initResp();
  }
  records[1].initTunnelParents(2).set(1, 0x1122334455667788ull);
  const auto flat = capnp::messageToFlatArray(message);
  const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(flat.begin()),
                                         flat.asBytes().size());
  BatchCodec codec;
  std::vector<std::uint8_t> stored;
  REQUIRE(codec.encode(bytes, stored) == BatchEncoding::kColumns);
  // The column: length 19, then null, 3 + two u64 (little-endian), null.
  std::vector<std::uint8_t> column{19, 0,    3,    0,    0,    0,    0,    0,    0,    0,
                                   0,  0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, 0};
  REQUIRE(stored.size() > column.size());
  CHECK(std::search(stored.begin(), stored.end(), column.begin(), column.end()) != stored.end());
  std::vector<std::uint64_t> out;
  std::size_t size = 0;
  REQUIRE(!codec.decode(stored, 3, out, size));
  auto reader = open(out, size);
  CHECK(sealed_content(reader.getRoot<schema::SealedBatch>()) == sealed_content(bytes));
  CHECK_FALSE(reader.getRoot<schema::SealedBatch>().getRecords()[0].hasTunnelParents());
  CHECK(reader.getRoot<schema::SealedBatch>().getRecords()[1].getTunnelParents()[1] ==
        0x1122334455667788ull);
  // A batch that ends before its last columns is damage.
  stored.resize(stored.size() - 20);
  const auto why = codec.decode(stored, 3, out, size);
  REQUIRE(why);
  CHECK(why->find("batch prologue") != std::string::npos);
}

TEST_CASE("a record with bits outside every known field is stored as its Cap'n Proto message") {
  auto message = sealed_batch(5, 10, false);
  std::vector<std::uint64_t> words(message.size() / 8);
  std::memcpy(words.data(), message.data(), message.size());
  {
    // Set a bit of a format-2 field (legacyRespTcpFlags) in record 3, a format-3 record.
    capnp::FlatArrayMessageReader reader(
        kj::arrayPtr(reinterpret_cast<const capnp::word*>(words.data()), words.size()));
    capnp::MallocMessageBuilder copy;
    copy.setRoot(reader.getRoot<schema::SealedBatch>());
    auto record = copy.getRoot<schema::SealedBatch>().getRecords()[3];
    capnp::MallocMessageBuilder all_fields;
    auto full = all_fields.initRoot<schema::FlowEvent>();
    full.setLegacyRespTcpFlags(0xFF);
    const auto known = capnp::AnyStruct::Reader(full.asReader()).getDataSection();
    auto data = capnp::AnyStruct::Builder(kj::mv(record)).getDataSection();
    std::size_t hole = 0;
    while (hole < known.size() && known[hole] == 0) ++hole;
    REQUIRE(hole < data.size());
    data[hole] ^= 0x10;  // no format-3 field owns this byte
    const auto flat = capnp::messageToFlatArray(copy);
    message.assign(reinterpret_cast<const std::byte*>(flat.begin()),
                   reinterpret_cast<const std::byte*>(flat.end()));
  }
  BatchCodec codec;
  std::vector<std::uint8_t> stored;
  REQUIRE(codec.encode(message, stored) == BatchEncoding::kCapnp);
  std::vector<std::uint64_t> out;
  std::size_t bytes = 0;
  REQUIRE(!codec.decode(stored, 10, out, bytes));
  REQUIRE(bytes == message.size());
  CHECK(std::memcmp(out.data(), message.data(), bytes) == 0);
}

TEST_CASE("every bit of a record's and its Directions' data sections is carried or stored whole") {
  // Each single bit set in turn: one inside a field comes back from the columns; one outside
  // every format-3 field (the format-2 slots, padding) makes the batch a Cap'n Proto message.
  const auto original = sealed_batch(11, 10, false);
  std::vector<std::uint64_t> words(original.size() / 8);
  std::memcpy(words.data(), original.data(), original.size());
  BatchCodec codec(ColumnOptions{kSeed});
  std::vector<std::uint8_t> stored;
  std::vector<std::uint64_t> out;
  std::size_t bytes = 0;
  std::size_t carried = 0, whole = 0;
  for (int part = 0; part < 3; ++part) {  // the record, its orig, its resp
    for (std::size_t at = 0;; ++at) {
      capnp::FlatArrayMessageReader reader(
          kj::arrayPtr(reinterpret_cast<const capnp::word*>(words.data()), words.size()));
      capnp::MallocMessageBuilder copy;
      copy.setRoot(reader.getRoot<schema::SealedBatch>());
      auto record = copy.getRoot<schema::SealedBatch>().getRecords()[4];
      auto data = part == 0   ? capnp::AnyStruct::Builder(kj::mv(record)).getDataSection()
                  : part == 1 ? capnp::AnyStruct::Builder(record.getOrig()).getDataSection()
                              : capnp::AnyStruct::Builder(record.getResp()).getDataSection();
      if (at >= data.size() * 8) break;
      data[at / 8] ^= static_cast<kj::byte>(1u << (at % 8));
      const auto flat = capnp::messageToFlatArray(copy);
      const std::vector<std::byte> message(reinterpret_cast<const std::byte*>(flat.begin()),
                                           reinterpret_cast<const std::byte*>(flat.end()));
      INFO("part " << part << ", bit " << at);
      const BatchEncoding encoding = codec.encode(message, stored);
      REQUIRE(!codec.decode(stored, 10, out, bytes));
      if (encoding == BatchEncoding::kCapnp) {
        ++whole;
        REQUIRE(bytes == message.size());
        CHECK(std::memcmp(out.data(), message.data(), bytes) == 0);
      } else {
        ++carried;
        REQUIRE(encoding == BatchEncoding::kColumns);
        auto decoded = open(out, bytes);
        CHECK(sealed_content(decoded.getRoot<schema::SealedBatch>()) == sealed_content(message));
      }
    }
  }
  CHECK(carried > 500);
  CHECK(whole > 500);  // the format-2 slots alone are 1,232 bits
}

namespace {

std::vector<std::byte> with_leaf_hints(const std::vector<std::byte>& message,
                                       const std::vector<std::uint8_t>& hints) {
  std::vector<std::uint64_t> words(message.size() / 8);
  std::memcpy(words.data(), message.data(), message.size());
  auto reader = open(words, message.size());
  capnp::MallocMessageBuilder copy;
  copy.setRoot(reader.getRoot<schema::SealedBatch>());
  copy.getRoot<schema::SealedBatch>().setLeafHints({hints.data(), hints.size()});
  const auto flat = capnp::messageToFlatArray(copy);
  return {reinterpret_cast<const std::byte*>(flat.asBytes().begin()),
          reinterpret_cast<const std::byte*>(flat.asBytes().end())};
}

std::vector<std::uint8_t> leaf_hints_of(schema::SealedBatch::Reader batch) {
  const auto hints = batch.getLeafHints();
  return {hints.begin(), hints.end()};
}

}  // namespace

TEST_CASE("leaf hints are stored byte for byte beside the columns, and cost their size") {
  BatchCodec codec(ColumnOptions{kSeed});
  const auto plain = sealed_batch(21, 100, false);
  std::vector<std::uint8_t> hints = {2};
  for (int i = 0; i < 200; ++i) hints.push_back(static_cast<std::uint8_t>(i * 37 + 11));
  const auto hinted = with_leaf_hints(plain, hints);
  std::vector<std::uint8_t> stored_plain, stored_hinted;
  REQUIRE(codec.encode(plain, stored_plain) == BatchEncoding::kColumns);
  REQUIRE(codec.encode(hinted, stored_hinted) == BatchEncoding::kColumnsWithHints);
  // Byte 0, a 2-byte varint length, the hints: nothing else changes.
  CHECK(stored_hinted.size() == stored_plain.size() + 2 + hints.size());
  CHECK(std::equal(stored_plain.begin() + 1, stored_plain.end(),
                   stored_hinted.end() - static_cast<std::ptrdiff_t>(stored_plain.size() - 1)));
  std::vector<std::uint64_t> out;
  std::size_t bytes = 0;
  REQUIRE(!codec.decode(stored_hinted, 100, out, bytes));
  auto reader = open(out, bytes);
  CHECK(sealed_content(reader.getRoot<schema::SealedBatch>()) == sealed_content(plain));
  CHECK(leaf_hints_of(reader.getRoot<schema::SealedBatch>()) == hints);
  // A batch stored without hints (every segment before encoding 3) decodes without them.
  REQUIRE(!codec.decode(stored_plain, 100, out, bytes));
  auto old = open(out, bytes);
  CHECK(!old.getRoot<schema::SealedBatch>().hasLeafHints());
  CHECK(sealed_content(old.getRoot<schema::SealedBatch>()) == sealed_content(plain));
}

namespace {

// Flips every bit of `stored` (or every `stride`-th) and cuts it at every length (or every
// `stride`-th): each flip is refused, or changes what the seal covers, or (in a hinted batch)
// changes only the unsigned hints; no flip or cut crashes or reads outside the batch.
void check_damage(BatchCodec& codec, const std::vector<std::uint8_t>& stored, std::uint32_t records,
                  std::uint16_t version, std::size_t stride = 1) {
  std::vector<std::uint64_t> out;
  std::size_t bytes = 0;
  REQUIRE(!codec.decode(stored, records, out, bytes, version));
  auto intact = open(out, bytes);
  const auto original = sealed_content(intact.getRoot<schema::SealedBatch>());
  const auto hints = leaf_hints_of(intact.getRoot<schema::SealedBatch>());
  std::size_t rejected = 0, changed = 0, hints_changed = 0, tried = 0;
  for (std::size_t bit = 0; bit < stored.size() * 8; bit += stride) {
    ++tried;
    std::vector<std::uint8_t> damaged = stored;
    damaged[bit / 8] ^= static_cast<std::uint8_t>(1u << (bit % 8));
    if (codec.decode(damaged, records, out, bytes, version)) {
      ++rejected;
      continue;
    }
    auto reader = open(out, bytes);
    INFO("bit " << bit << " of " << stored.size() * 8);
    try {
      const auto batch = reader.getRoot<schema::SealedBatch>();
      if (sealed_content(batch) != original) {
        ++changed;
      } else {
        REQUIRE(!hints.empty());
        REQUIRE(leaf_hints_of(batch) != hints);
        ++hints_changed;
      }
    } catch (const kj::Exception&) {
      ++changed;  // unreadable content is damage too
    }
  }
  CHECK(rejected + changed + hints_changed == tried);
  CHECK(rejected > 0);
  CHECK(hints_changed <= hints.size() * 8);
  for (std::size_t n = 0; n < stored.size(); n += stride) {
    INFO("truncated to " << n << " of " << stored.size() << " bytes");
    CHECK(codec.decode(std::span(stored).first(n), records, out, bytes, version));
  }
  CHECK(codec.decode(stored, records + 1, out, bytes, version));  // another count than the frame's
  // Each format's encodings belong to it alone.
  CHECK(codec.decode(stored, records, out, bytes, version == 2 ? 3 : 2));
}

}  // namespace

TEST_CASE("every single-bit flip and every truncation of a stored batch is damage, never a crash") {
  // Without the frame CRC in front: each flip either fails to decode, or decodes to a batch
  // whose sealed content differs (which the Merkle root or signature then catch), or (in a
  // hinted batch) to other leaf hints, which are not sealed: all they can do is make verify
  // name a wrong record, and only for a batch already failing.
  BatchCodec codec(ColumnOptions{kSeed});
  std::vector<std::uint8_t> hints = {2};
  for (int i = 0; i < 24; ++i) hints.push_back(static_cast<std::uint8_t>(i * 91 + 5));
  for (const auto& [odd, hinted] : {std::pair{false, false}, {true, false}, {true, true}}) {
    INFO("odd values " << odd << ", leaf hints " << hinted);
    const auto plain = sealed_batch(odd ? 11 : 12, 12, odd);
    const auto message = hinted ? with_leaf_hints(plain, hints) : plain;
    std::vector<std::uint8_t> stored;
    REQUIRE(codec.encode(message, stored) ==
            (hinted ? BatchEncoding::kColumnsWithHints : BatchEncoding::kColumns));
    std::vector<std::uint64_t> out;
    std::size_t bytes = 0;
    REQUIRE(!codec.decode(stored, 12, out, bytes));
    auto reader = open(out, bytes);
    CHECK(sealed_content(reader.getRoot<schema::SealedBatch>()) == sealed_content(message));
    check_damage(codec, stored, 12, kFormatVersion);
  }
}

TEST_CASE("format-2 batches still decode, to their format-2 records, and every flip is damage") {
  // The batches of tests/data/store-format2 (format 2, encodings 3 and 4), straight from the
  // file: frame headers, zstd, then the stored batch.
  std::ifstream in(std::string(FLOWSEAL_TESTDATA) + "/store-format2/seg-00000000000000000000.fsg",
                   std::ios::binary);
  REQUIRE(in);
  const std::vector<std::uint8_t> file((std::istreambuf_iterator<char>(in)),
                                       std::istreambuf_iterator<char>());
  std::string why;
  REQUIRE(file.size() > kFileHeaderBytes);
  const auto header = decode_file_header(std::span(file).first<kFileHeaderBytes>(), why);
  REQUIRE(header);
  REQUIRE(header->version == 2);
  BatchCodec codec;
  std::size_t at = kFileHeaderBytes, batches = 0, records = 0;
  std::vector<std::uint8_t> smallest;
  std::uint32_t smallest_count = 0;
  while (at + kFrameHeaderBytes <= file.size()) {
    const auto frame =
        decode_frame_header(std::span(file).subspan(at).first<kFrameHeaderBytes>(), why);
    if (!frame) break;  // the index
    std::vector<std::uint8_t> stored(frame->uncompressed_bytes);
    REQUIRE(ZSTD_decompress(stored.data(), stored.size(), file.data() + at + kFrameHeaderBytes,
                            frame->compressed_bytes) == stored.size());
    std::vector<std::uint64_t> out;
    std::size_t bytes = 0;
    const auto problem = codec.decode(stored, frame->batch.record_count, out, bytes, 2);
    INFO("batch " << frame->batch.seq << ": " << problem.value_or("ok"));
    REQUIRE(!problem);
    auto reader = open(out, bytes);
    for (const auto record : reader.getRoot<schema::SealedBatch>().getRecords()) {
      CHECK(!record.hasOrig());  // rebuilt in the layout its leaf was hashed over
      CHECK(record.getLegacyOrigPkts() + record.getLegacyRespPkts() > 0);
      ++records;
    }
    if (smallest.empty() || stored.size() < smallest.size()) {
      smallest = stored;
      smallest_count = frame->batch.record_count;
    }
    ++batches;
    at += kFrameHeaderBytes + frame->compressed_bytes;
  }
  CHECK(batches > 0);
  CHECK(records > 0);
  // Every 7th bit and length of the smallest batch: the format-2 decoder stays as strict.
  check_damage(codec, smallest, smallest_count, 2, 7);
}
