#include <bit>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include <capnp/any.h>
#include <capnp/message.h>
#include <capnp/serialize.h>
#include <catch2/catch.hpp>
#include <openssl/evp.h>

#include "flowseal.capnp.h"
#include "packet/flow_id.h"
#include "segment/columns.h"

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
    auto pick = [&](std::uint64_t n) { return std::uniform_int_distribution<std::uint64_t>(0, n - 1)(rng_); };
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
    const std::uint8_t proto = odd && pick(4) == 0 ? static_cast<std::uint8_t>(rng_())
                                                   : std::array<std::uint8_t, 5>{6, 17, 1, 58, 132}[pick(5)];
    const auto orig_port = static_cast<std::uint16_t>(pick(3) == 0 ? rng_() : 40000 + pick(50));
    const auto resp_port = static_cast<std::uint16_t>(pick(3) == 0 ? rng_() : 443);
    const auto vlan = static_cast<std::uint16_t>(pick(5) == 0 ? rng_() : 0);
    std::int64_t first = 1'700'000'000'000'000'000 + static_cast<std::int64_t>(pick(1'000'000)) * 1000;
    std::int64_t last = first + static_cast<std::int64_t>(pick(3'000'000)) * 1000;
    if (odd) {
      const std::int64_t extremes[] = {0, -1, 1, std::numeric_limits<std::int64_t>::min(),
                                       std::numeric_limits<std::int64_t>::max(), 123456789};
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
      const std::uint32_t bits[] = {0x3F400000u, 0x7FC00001u, 0x7F800001u, 0xFFFFFFFFu, 0,
                                    0x80000000u, static_cast<std::uint32_t>(rng_())};
      e.setSamplingRate(std::bit_cast<float>(bits[pick(7)]));
    }
    e.setOrigPkts(u64());
    e.setOrigIpBytes(u64());
    e.setOrigBytes(u64());
    e.setRespPkts(u64());
    e.setRespIpBytes(u64());
    e.setRespBytes(u64());
    e.setOrigTcpFlags(static_cast<std::uint8_t>(rng_()));
    e.setRespTcpFlags(static_cast<std::uint8_t>(rng_()));
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
    std::uint64_t uid = packet::flow_uid(packet::symmetric_hash64(key), first,
                                         static_cast<std::uint32_t>(pick(8)));
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
    e.setOrigSizeMin(static_cast<std::uint32_t>(wide(1500)));
    e.setOrigSizeMax(static_cast<std::uint32_t>(odd ? wide(70000) : e.getOrigSizeMin() + pick(1500)));
    e.setOrigSizeSumSq(wide(1u << 30));
    e.setOrigIatMinUs(wide(1000000));
    e.setOrigIatMaxUs(odd ? wide(1000000) : e.getOrigIatMinUs() + pick(5000000));
    e.setOrigIatSumUs(wide(100000000));
    e.setOrigIatSumSqUs(odd && pick(2) == 0 ? std::bit_cast<double>(rng_())
                                            : static_cast<double>(pick(1u << 30)) * 1e3);
    e.setOrigRexmits(static_cast<std::uint32_t>(wide(5)));
    e.setRespSizeMin(static_cast<std::uint32_t>(wide(1500)));
    e.setRespSizeMax(static_cast<std::uint32_t>(wide(70000)));
    e.setRespSizeSumSq(wide(1u << 30));
    e.setRespIatMinUs(wide(1000000));
    e.setRespIatMaxUs(wide(1000000));
    e.setRespIatSumUs(wide(100000000));
    e.setRespIatSumSqUs(std::bit_cast<double>(wide(~0ull)));
    e.setRespRexmits(static_cast<std::uint32_t>(wide(5)));
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
      case 2: if (odd) e.initTunnelParents(0); break;
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
  for (std::size_t i = 0; i < sizeof signature; ++i) signature[i] = static_cast<std::uint8_t>(i * 7 + seed);
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

TEST_CASE("a flowd record's uid and Community ID are recomputed, not stored") {
  // The same records twice: once as flowd makes them, once with uids and Community IDs no
  // formula gives. The first must store at least 8 + 28 bytes per record less before zstd.
  const auto derivable = sealed_batch(3, 200, false);
  std::vector<std::uint64_t> words(derivable.size() / 8);
  std::memcpy(words.data(), derivable.data(), derivable.size());
  capnp::FlatArrayMessageReader reader(kj::arrayPtr(reinterpret_cast<const capnp::word*>(words.data()), words.size()));
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

TEST_CASE("tunnel parents are stored in their own column, one null byte per record without") {
  // Records without parents: the column holds one 0 per record, and nothing may be missing.
  capnp::MallocMessageBuilder message;
  auto batch = message.initRoot<schema::SealedBatch>();
  batch.initHeader().setRecordCount(3);
  auto records = batch.initRecords(3);
  for (auto r : records) {
    r.setUid(7);
    r.setHistory("D");
  }
  records[1].initTunnelParents(2).set(1, 0x1122334455667788ull);
  const auto flat = capnp::messageToFlatArray(message);
  const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(flat.begin()),
                                         flat.asBytes().size());
  BatchCodec codec;
  std::vector<std::uint8_t> stored;
  REQUIRE(codec.encode(bytes, stored) == BatchEncoding::kColumns);
  // The last column: length 19, then null, 3 + two u64 (little-endian), null.
  std::vector<std::uint8_t> last_column{19, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0,
                                        0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, 0};
  REQUIRE(stored.size() > last_column.size());
  CHECK(std::equal(last_column.begin(), last_column.end(), stored.end() - 20));
  std::vector<std::uint64_t> out;
  std::size_t size = 0;
  REQUIRE(!codec.decode(stored, 3, out, size));
  auto reader = open(out, size);
  CHECK(sealed_content(reader.getRoot<schema::SealedBatch>()) == sealed_content(bytes));
  CHECK_FALSE(reader.getRoot<schema::SealedBatch>().getRecords()[0].hasTunnelParents());
  CHECK(reader.getRoot<schema::SealedBatch>().getRecords()[1].getTunnelParents()[1] ==
        0x1122334455667788ull);
  // A batch that ends before the column (as one written before it existed would) is damage.
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
    // Set a bit in the padding of record 3's data section (the byte after respTcpFlags).
    capnp::FlatArrayMessageReader reader(kj::arrayPtr(reinterpret_cast<const capnp::word*>(words.data()), words.size()));
    capnp::MallocMessageBuilder copy;
    copy.setRoot(reader.getRoot<schema::SealedBatch>());
    auto record = copy.getRoot<schema::SealedBatch>().getRecords()[3];
    capnp::MallocMessageBuilder all_fields;
    auto full = all_fields.initRoot<schema::FlowEvent>();
    full.setRespTcpFlags(0xFF);
    const auto known = capnp::AnyStruct::Reader(full.asReader()).getDataSection();
    auto data = capnp::AnyStruct::Builder(kj::mv(record)).getDataSection();
    std::size_t hole = 0;
    while (hole < known.size() && known[hole] == 0) ++hole;
    REQUIRE(hole + 1 < data.size());
    data[hole + 1] ^= 0x10;  // flowd leaves this byte zero; no field owns it
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
    const auto original = sealed_content(message);
    std::vector<std::uint8_t> stored;
    REQUIRE(codec.encode(message, stored) ==
            (hinted ? BatchEncoding::kColumnsWithHints : BatchEncoding::kColumns));
    std::vector<std::uint64_t> out;
    std::size_t bytes = 0;
    std::size_t rejected = 0, changed = 0, hints_changed = 0;
    for (std::size_t bit = 0; bit < stored.size() * 8; ++bit) {
      std::vector<std::uint8_t> damaged = stored;
      damaged[bit / 8] ^= static_cast<std::uint8_t>(1u << (bit % 8));
      if (codec.decode(damaged, 12, out, bytes)) {
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
          REQUIRE(hinted);
          REQUIRE(leaf_hints_of(batch) != hints);
          ++hints_changed;
        }
      } catch (const kj::Exception&) {
        ++changed;  // unreadable content is damage too
      }
    }
    CHECK(rejected + changed + hints_changed == stored.size() * 8);
    CHECK(rejected > 0);
    CHECK(hints_changed <= hints.size() * 8);
    for (std::size_t n = 0; n < stored.size(); ++n) {
      INFO("truncated to " << n << " of " << stored.size() << " bytes");
      CHECK(codec.decode(std::span(stored).first(n), 12, out, bytes));
    }
    CHECK(codec.decode(stored, 13, out, bytes));  // another record count than the frame's
  }
}
