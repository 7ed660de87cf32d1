#include "proof_command.h"

#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <fmt/format.h>

#include "hex.h"
#include "record/record_json.h"
#include "seal/chain_verifier.h"
#include "seal/merkle.h"
#include "stage_runtime.h"
#include "store_commands.h"
#include "record_list.h"

namespace flowseal::supervisor {
namespace {

using namespace flowseal::record;  // cat's JSON line and TSV row, event id text

namespace fs = std::filesystem;
using Json = nlohmann::ordered_json;

seal::Digest digest_of(std::span<const std::uint8_t> bytes) {
  seal::Digest digest{};
  std::memcpy(digest.data(), bytes.data(), std::min(bytes.size(), digest.size()));
  return digest;
}
seal::Digest digest_of(capnp::Data::Reader data) {
  return digest_of(std::span<const std::uint8_t>(data.begin(), data.size()));
}
std::vector<std::uint8_t> bytes_of(capnp::Data::Reader data) { return {data.begin(), data.end()}; }

Json header_json(schema::BatchHeader::Reader h) {
  return Json{{"stream_id", hex_of(h.getStreamId())},
              {"seq", h.getSeq()},
              {"prev_root", hex_of(h.getPrevRoot())},
              {"merkle_root", hex_of(h.getMerkleRoot())},
              {"record_count", h.getRecordCount()},
              {"first_ts_ns", h.getFirstTsNs()},
              {"last_ts_ns", h.getLastTsNs()},
              {"key_id", hex_of(h.getKeyId())},
              {"algorithm", seal::to_string(static_cast<seal::Algorithm>(h.getAlgorithm()))}};
}

// Reads the members of a proof object, naming the first that is missing or malformed.
class MemberReader {
 public:
  explicit MemberReader(const Json& object) : object_(object) {}
  const Json& member(const char* name) {
    const auto it = object_.find(name);
    if (it == object_.end())
      throw std::invalid_argument(fmt::format("member \"{}\" is missing", name));
    return *it;
  }
  std::string text(const char* name) {
    const Json& value = member(name);
    if (!value.is_string()) bad(name, "not a string");
    return value.get<std::string>();
  }
  std::uint64_t number(const char* name) {
    const Json& value = member(name);
    if (!value.is_number_unsigned()) bad(name, "not a whole number >= 0");
    return value.get<std::uint64_t>();
  }
  std::vector<std::uint8_t> bytes(const char* name, std::size_t words_of = 0) {
    auto bytes = from_hex(text(name));
    if (!bytes || bytes->empty()) bad(name, "not hex bytes");
    if (words_of && bytes->size() % words_of != 0) {
      bad(name, fmt::format("{} bytes, not whole {}-byte words", bytes->size(), words_of));
    }
    return *bytes;
  }
  seal::Digest digest(const char* name, const Json* value = nullptr) {
    const Json& v = value ? *value : member(name);
    const auto bytes = v.is_string() ? from_hex(v.get<std::string>()) : std::nullopt;
    if (!bytes || bytes->size() != 32) bad(name, "not 32 bytes of hex");
    return digest_of(*bytes);
  }
  [[noreturn]] static void bad(const std::string& name, const std::string& what) {
    throw std::invalid_argument(fmt::format("member \"{}\": {}", name, what));
  }

 private:
  const Json& object_;
};

kj::Array<capnp::word> words_of(const std::vector<std::uint8_t>& bytes) {
  auto words = kj::heapArray<capnp::word>(bytes.size() / 8);
  std::memcpy(words.begin(), bytes.data(), bytes.size());
  return words;
}

// The proof of record `index` of `batch`; nullopt after saying why none can be given.
std::optional<Proof> make_proof(schema::SealedBatch::Reader batch, std::uint32_t index,
                                const std::map<seal::Digest, seal::PublicKey>& keys,
                                const std::string& where, const std::string& dir) {
  const auto records = sized_records(batch.getRecords(), "SealedBatch.records");
  std::vector<seal::Digest> leaves;
  leaves.reserve(records.size());
  for (const auto r : records) leaves.push_back(seal::leaf_hash(seal::canonical_bytes(r)));
  const auto header = batch.getHeader();
  if (seal::merkle_root(leaves) != digest_of(header.getMerkleRoot())) {
    fmt::print(stderr,
               "verify: {}: the batch's Merkle root does not match its records; "
               "no proof can be given (run verify {})\n",
               where, dir);
    return std::nullopt;
  }
  const auto key = keys.find(digest_of(header.getKeyId()));
  const auto header_bytes = seal::canonical_bytes(header);
  const auto signature = batch.getSignature();
  if (key == keys.end() ||
      !key->second.verify(header_bytes, {signature.begin(), signature.size()})) {
    fmt::print(stderr,
               "verify: {}: the batch's signature does not verify with a trusted "
               "key; no proof can be given\n",
               where);
    return std::nullopt;
  }
  const auto record = records[index];
  Proof proof;
  proof.event_id = event_id_text(record);
  proof.record = Json::parse(to_json_line(record));
  proof.record_canonical = seal::canonical_bytes(record);
  proof.leaf_hash = leaves[index];
  proof.leaf_index = index;
  proof.leaf_count = leaves.size();
  proof.path = seal::inclusion_proof(leaves, index);
  proof.merkle_root = digest_of(header.getMerkleRoot());
  proof.header = header_json(header);
  proof.header_canonical = header_bytes;
  proof.signature = bytes_of(signature);
  proof.public_key_der = key->second.public_der();
  return proof;
}

}  // namespace

std::optional<EventId> parse_event_id(std::string_view text) {
  const auto a = text.find(':');
  const auto b = a == std::string_view::npos ? a : text.find(':', a + 1);
  if (b == std::string_view::npos) return std::nullopt;
  EventId id;
  const auto uid = parse_uid_text(text.substr(0, a));
  if (!uid) return std::nullopt;
  id.uid = *uid;
  const std::string_view kind = text.substr(a + 1, b - a - 1);
  bool known = false;
  for (const auto k : {schema::EventKind::START, schema::EventKind::UPDATE, schema::EventKind::END,
                       schema::EventKind::SUMMARY}) {
    if (kind_name(k) == kind) {
      id.kind = k;
      known = true;
    }
  }
  const std::string_view number = text.substr(b + 1);
  if (!known || number.empty() || number.size() > 10 ||
      number.find_first_not_of("0123456789") != std::string_view::npos) {
    return std::nullopt;
  }
  const unsigned long long n = std::stoull(std::string(number));
  if (n > UINT32_MAX) return std::nullopt;
  id.number = static_cast<std::uint32_t>(n);
  return id;
}

std::string proof_text(const Proof& p) {
  Json path = Json::array();
  for (const auto& node : p.path) path.push_back(seal::to_hex(node));
  const std::pair<const char*, Json> members[] = {
      {"event_id", p.event_id},
      {"segment", p.segment},
      {"record", p.record},
      {"record_canonical", seal::to_hex(p.record_canonical)},
      {"leaf_hash", seal::to_hex(p.leaf_hash)},
      {"leaf_index", p.leaf_index},
      {"leaf_count", p.leaf_count},
      {"proof", path},
      {"merkle_root", seal::to_hex(p.merkle_root)},
      {"header", p.header},
      {"header_canonical", seal::to_hex(p.header_canonical)},
      {"signature", seal::to_hex(p.signature)},
      {"public_key_der", seal::to_hex(p.public_key_der)}};
  std::string out = "{\n";
  for (const auto& [name, value] : members) {
    if (out.size() > 2) out += ",\n";
    out += fmt::format("  {}: {}", Json(name).dump(), value.dump());
  }
  return out + "\n}\n";
}

std::optional<Proof> parse_proof(std::string_view text, std::string& error) {
  Json object;
  try {
    object = Json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    // "[json.exception.parse_error.101] parse error at line 3, column 5: ..." without the tag.
    // Not only parse_error: a number too large for a double is out_of_range.406.
    const std::string what = e.what();
    const auto tag_end = what.find("] ");
    error = "not JSON: " + (tag_end == std::string::npos ? what : what.substr(tag_end + 2));
    return std::nullopt;
  }
  if (!object.is_object()) {
    error = "not a JSON object";
    return std::nullopt;
  }
  try {
    MemberReader m(object);
    Proof p;
    p.event_id = m.text("event_id");
    if (object.contains("segment") && object["segment"].is_string()) {
      p.segment = object["segment"].get<std::string>();
    }
    p.record = m.member("record");
    if (!p.record.is_object()) MemberReader::bad("record", "not an object");
    p.record_canonical = m.bytes("record_canonical", 8);
    p.leaf_hash = m.digest("leaf_hash");
    p.leaf_index = m.number("leaf_index");
    p.leaf_count = m.number("leaf_count");
    const Json& path = m.member("proof");
    if (!path.is_array()) MemberReader::bad("proof", "not a list");
    for (std::size_t i = 0; i < path.size(); ++i) {
      p.path.push_back(m.digest(fmt::format("proof[{}]", i).c_str(), &path[i]));
    }
    p.merkle_root = m.digest("merkle_root");
    if (object.contains("header")) p.header = object["header"];
    p.header_canonical = m.bytes("header_canonical", 8);
    p.signature = m.bytes("signature");
    p.public_key_der = m.bytes("public_key_der");
    return p;
  } catch (const std::invalid_argument& e) {
    error = e.what();
    return std::nullopt;
  }
}

std::optional<std::string> check_proof(const Proof& p, const seal::PublicKey* pinned,
                                       std::string& summary) {
  // 1. The record: its canonical bytes hash to the leaf, and they say what "record" says.
  if (seal::leaf_hash(p.record_canonical) != p.leaf_hash) {
    return "leaf_hash is not SHA-256(0x00 || record_canonical)";
  }
  const auto record_words = words_of(p.record_canonical);
  const auto header_words = words_of(p.header_canonical);
  try {
    kj::ArrayPtr<const capnp::word> record_segments[] = {record_words.asPtr()};
    capnp::SegmentArrayMessageReader record_message(record_segments);
    if (!record_message.isCanonical()) return "record_canonical is not canonical";
    const auto record = record_message.getRoot<schema::FlowEvent>();
    // Compared as JSON values, so a proof reformatted by another JSON writer still holds.
    if (nlohmann::json::parse(to_json_line(record)) != nlohmann::json::parse(p.record.dump())) {
      return "\"record\" does not say what record_canonical holds";
    }
    if (event_id_text(record) != p.event_id) return "event_id is not the record's event id";
    // 2. The Merkle path from the leaf to the root.
    if (!seal::verify_inclusion(p.leaf_hash, p.leaf_index, p.leaf_count, p.path, p.merkle_root)) {
      return fmt::format("the inclusion proof of leaf {} of {} does not lead to merkle_root",
                         p.leaf_index, p.leaf_count);
    }
    // 3. The signed header names that root and count, and its signature verifies.
    kj::ArrayPtr<const capnp::word> header_segments[] = {header_words.asPtr()};
    capnp::SegmentArrayMessageReader header_message(header_segments);
    if (!header_message.isCanonical()) return "header_canonical is not canonical";
    const auto header = header_message.getRoot<schema::BatchHeader>();
    if (header.getMerkleRoot().size() != 32 || digest_of(header.getMerkleRoot()) != p.merkle_root) {
      return "the signed header's merkleRoot is not merkle_root";
    }
    if (header.getRecordCount() != p.leaf_count) {
      return "the signed header's recordCount is not leaf_count";
    }
    const seal::PublicKey key = seal::PublicKey::from_der(p.public_key_der);
    if (header.getKeyId().size() != 32 || digest_of(header.getKeyId()) != key.key_id()) {
      return "the signed header's keyId is not SHA-256 of public_key_der";
    }
    if (!key.verify(p.header_canonical, p.signature)) {
      return "the signature does not verify with public_key_der";
    }
    if (pinned && pinned->key_id() != key.key_id()) {
      return fmt::format("signed with key {}, not the pinned key {}", seal::to_hex(key.key_id()),
                         seal::to_hex(pinned->key_id()));
    }
    summary = fmt::format("{} is record {} of {} in batch seq {} of stream {}, signed by key {}",
                          p.event_id, p.leaf_index, p.leaf_count, header.getSeq(),
                          hex_of(header.getStreamId()), seal::to_hex(key.key_id()));
    return std::nullopt;
  } catch (const kj::Exception& e) {
    return fmt::format("cannot be decoded: {}", e.getDescription().cStr());
  } catch (const std::runtime_error& e) {
    return std::string(e.what());
  }
}

int print_proof(const std::vector<fs::path>& files, const VerifyOptions& options) {
  const auto id = parse_event_id(options.proof_event);
  if (!id) {
    throw StoreInputError(
        exit_code::kUsage,
        fmt::format(
            "--proof {}: not an event id (want UID:KIND:NUMBER, e.g. CmondrrJD8IG:end:1; kind is "
            "start, update, end or summary)",
            options.proof_event));
  }
  const auto keys = trusted_keys(options.dir, options.public_key);
  for (const fs::path& file : files) {
    segment::SegmentReader reader(file);
    while (reader.ok() && reader.next() == segment::SegmentReader::Next::kFrame) {
      try {
        capnp::FlatArrayMessageReader message = open_batch(reader);
        const auto batch = message.getRoot<schema::SealedBatch>();
        const auto records = sized_records(batch.getRecords(), "SealedBatch.records");
        std::optional<std::uint32_t> index;
        for (std::uint32_t i = 0; i < records.size() && !index; ++i) {
          const auto r = records[i];
          if (r.getUid() == id->uid && r.getKind() == id->kind &&
              r.getEventNumber() == id->number) {
            index = i;
          }
        }
        if (!index) continue;
        const std::string where = fmt::format("{}: batch seq {}, record {}", file.string(),
                                              batch.getHeader().getSeq(), *index);
        auto proof = make_proof(batch, *index, keys, where, options.dir);
        if (!proof) return exit_code::kDataError;
        proof->segment = file.filename().string();
        fmt::print("{}", proof_text(*proof));
        std::fflush(stdout);
        return exit_code::kOk;
      } catch (const kj::Exception& e) {
        fmt::print(stderr, "verify: {}: batch seq {}: cannot be read: {}\n", file.string(),
                   reader.frame().batch.seq, e.getDescription().cStr());
      }
    }
  }
  fmt::print(stderr, "verify: {}: no stored record has event id {}\n", options.dir,
             options.proof_event);
  return exit_code::kDataError;
}

int verify_proof_command(const VerifyProofOptions& options) {
  std::ifstream in(options.file, std::ios::binary);
  if (!in) {
    fmt::print(stderr, "verify-proof: {}: cannot open: {}\n", options.file, std::strerror(errno));
    return exit_code::kNoInput;
  }
  std::stringstream buffer;
  buffer << in.rdbuf();
  std::string error;
  const auto proof = parse_proof(buffer.str(), error);
  if (!proof) {
    fmt::print(stderr, "verify-proof: {}: not a proof: {}\n", options.file, error);
    return exit_code::kDataError;
  }
  std::optional<seal::PublicKey> pinned;
  try {
    if (!options.public_key.empty()) {
      auto keys = trusted_keys({}, options.public_key);
      pinned.emplace(std::move(keys.begin()->second));
    }
  } catch (const StoreInputError& e) {
    fmt::print(stderr, "verify-proof: {}\n", e.what());
    return e.exit_code();
  }
  std::string summary;
  if (auto failure = check_proof(*proof, pinned ? &*pinned : nullptr, summary)) {
    fmt::print(stderr, "verify-proof: {}: FAILED: {}\n", options.file, *failure);
    return exit_code::kDataError;
  }
  fmt::print("verify-proof: OK: {}{}\n", summary,
             pinned ? "" : " (give --pubkey to pin the key you trust)");
  return exit_code::kOk;
}

}  // namespace flowseal::supervisor
