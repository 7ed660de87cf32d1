// `flowseal cat` and `flowseal verify`: read the segments writerd stored.
//
// Both read every segment frame by frame (a `.part` too), so they work on a directory that a
// run is still writing and on one a crash left behind. Damage never stops them early: cat
// prints every record it can read and exits 65 naming each damaged file and offset; verify
// keeps scanning to count the problems, names the first and exits 65.
#include <arpa/inet.h>

#include <algorithm>
#include <chrono>
#include <ctime>
#include <unordered_set>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <fmt/format.h>

#include "capnp_frame.h"
#include "commands.h"
#include "flowseal.capnp.h"
#include "record/record_json.h"
#include "seal/chain_verifier.h"
#include "seal/keys.h"
#include "seal/leaf_hints.h"
#include "seal/merkle.h"
#include "segment/format.h"
#include "segment/reader.h"
#include "segment/writer.h"
#include "stage_runtime.h"

namespace flowseal::supervisor {

using record::event_id_text;
using record::kind_name;
using record::parse_uid_text;
using record::to_json_line;
using record::to_tsv_line;
using record::tsv_header;

namespace {

namespace fs = std::filesystem;

// The segments named by `path` (a directory or one segment file); nullopt after saying why.
std::optional<std::vector<fs::path>> segments_at(const std::string& command,
                                                 const fs::path& path) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    try {
      return segment::list_segments(path);
    } catch (const fs::filesystem_error& e) {
      fmt::print(stderr, "{}: {}: cannot list segments: {}\n", command, path.string(),
                 e.code().message());
      return std::nullopt;
    }
  }
  if (fs::is_regular_file(path, ec)) return std::vector<fs::path>{path};
  fmt::print(stderr, "{}: {}: no such segment file or directory\n", command, path.string());
  return std::nullopt;
}

capnp::FlatArrayMessageReader open_batch(const segment::SegmentReader& reader) {
  const auto bytes = reader.message();
  return capnp::FlatArrayMessageReader(
      as_words({reinterpret_cast<const std::byte*>(bytes.data()), bytes.size()}),
      frame_reader_options());
}

std::string utc(std::int64_t ns) {
  // Floor, so a time before 1970 keeps a fraction in 0..999999 (not "-00500").
  std::int64_t whole = ns / 1'000'000'000;
  std::int64_t fraction = ns % 1'000'000'000;
  if (fraction < 0) {
    fraction += 1'000'000'000;
    --whole;
  }
  const std::time_t seconds = static_cast<std::time_t>(whole);
  std::tm tm{};
  gmtime_r(&seconds, &tm);
  char text[32];
  std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%S", &tm);
  return fmt::format("{}.{:06}Z", text, fraction / 1000);
}

// First seq from a segment's name ("seg-<20 digits>.fsg[.part]").
std::optional<std::uint64_t> first_seq_of(const fs::path& file) {
  const std::string name = file.filename().string();
  if (name.size() < 24 || name.compare(0, 4, "seg-") != 0) return std::nullopt;
  try {
    return std::stoull(name.substr(4, 20));
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

std::map<seal::Digest, seal::PublicKey> load_keys(const VerifyOptions& options) {
  std::map<seal::Digest, seal::PublicKey> keys;
  auto add = [&](const fs::path& file) {
    seal::PublicKey key = seal::PublicKey::load(file);
    const seal::Digest id = key.key_id();
    keys.emplace(id, std::move(key));
  };
  if (!options.public_key.empty()) {
    add(options.public_key);  // pinned: only this key is trusted
    return keys;
  }
  const fs::path key_dir = fs::path(options.dir) / "keys";
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(key_dir, ec)) {
    if (entry.path().extension() == ".pub") add(entry.path());
  }
  if (keys.empty()) {
    throw std::runtime_error(fmt::format(
        "verify: no public key: {} holds no *.pub file; give one with --pubkey FILE",
        key_dir.string()));
  }
  return keys;
}

// Counts problems and remembers the first, which is the one named in the verdict.
class ProblemLog {
 public:
  void add(std::string line) {
    if (count_ < kShown) fmt::print(stderr, "verify: problem: {}\n", line);
    if (count_ == 0) first_ = std::move(line);
    ++count_;
  }
  std::uint64_t count() const { return count_; }
  const std::string& first() const { return first_; }

 private:
  static constexpr std::uint64_t kShown = 20;
  std::uint64_t count_ = 0;
  std::string first_;
};

std::string batch_problem(const fs::path& file, std::uint64_t seq,
                          std::optional<std::uint32_t> record, const std::string& what) {
  return record ? fmt::format("{}: batch seq {}, record {}: {}", file.string(), seq, *record, what)
                : fmt::format("{}: batch seq {}: {}", file.string(), seq, what);
}

// Checks one segment's frames against its header and name, and feeds them to the verifier.
void verify_segment(const fs::path& file, seal::ChainVerifier& verifier, ProblemLog& problems) {
  segment::SegmentReader reader(file);
  if (!reader.ok()) {
    problems.add(reader.error()->message());
    return;
  }
  const segment::FileHeader& header = reader.header();
  const auto named_seq = first_seq_of(file);
  bool first = true;
  while (reader.next() == segment::SegmentReader::Next::kFrame) {
    const segment::BatchMeta& meta = reader.frame().batch;
    if (first && named_seq && *named_seq != meta.seq) {
      problems.add(batch_problem(file, meta.seq, std::nullopt,
                                 fmt::format("the segment's name says it starts at batch seq {}",
                                             *named_seq)));
    }
    first = false;
    try {
      capnp::FlatArrayMessageReader message = open_batch(reader);
      const auto batch = message.getRoot<schema::SealedBatch>();
      const auto batch_header = batch.getHeader();
      const auto stream = batch_header.getStreamId();
      const auto key = batch_header.getKeyId();
      if (batch_header.getSeq() != meta.seq) {
        problems.add(batch_problem(file, meta.seq, std::nullopt,
                                   fmt::format("the batch inside says seq {}",
                                               batch_header.getSeq())));
      }
      if (stream.size() == header.stream_id.size() &&
          !std::equal(stream.begin(), stream.end(), header.stream_id.begin())) {
        problems.add(batch_problem(file, meta.seq, std::nullopt,
                                   "stream id differs from the segment header's " +
                                       segment::to_hex(header.stream_id)));
      }
      if (key.size() == header.key_id.size() &&
          !std::equal(key.begin(), key.end(), header.key_id.begin())) {
        problems.add(batch_problem(file, meta.seq, std::nullopt,
                                   "key id differs from the segment header's " +
                                       segment::to_hex(header.key_id)));
      }
      if (auto problem = verifier.check(batch)) {
        problems.add(batch_problem(file, problem->seq, problem->record, problem->what));
      }
    } catch (const kj::Exception& e) {
      problems.add(batch_problem(file, meta.seq, std::nullopt,
                                 fmt::format("the batch cannot be read: {}",
                                             e.getDescription().cStr())));
    }
  }
  if (reader.error()) {
    // Name where the readable part ends: the batches after it are the ones lost.
    const auto& frames = reader.frames();
    problems.add(frames.empty()
                     ? reader.error()->message()
                     : fmt::format("{} (the last whole batch read is seq {})",
                                   reader.error()->message(), frames.back().batch.seq));
  }
}

// ---- cat: filters

// A host filter: an address, or a CIDR prefix of one.
struct HostFilter {
  std::vector<std::uint8_t> address;  // 4 or 16 bytes
  unsigned prefix = 0;                // bits that must match
  bool matches(capnp::Data::Reader candidate) const {
    if (candidate.size() != address.size()) return false;
    for (unsigned bit = 0; bit < prefix; bit += 8) {
      const unsigned bits = std::min(8u, prefix - bit);
      const std::uint8_t mask = static_cast<std::uint8_t>(0xff00u >> bits);
      if ((candidate[bit / 8] & mask) != (address[bit / 8] & mask)) return false;
    }
    return true;
  }
};

std::optional<HostFilter> parse_host(const std::string& text) {
  const auto slash = text.find('/');
  const std::string host = text.substr(0, slash);
  HostFilter filter;
  std::uint8_t bytes[16];
  if (inet_pton(AF_INET, host.c_str(), bytes) == 1) {
    filter.address.assign(bytes, bytes + 4);
  } else if (inet_pton(AF_INET6, host.c_str(), bytes) == 1) {
    filter.address.assign(bytes, bytes + 16);
  } else {
    return std::nullopt;
  }
  filter.prefix = static_cast<unsigned>(filter.address.size() * 8);
  if (slash != std::string::npos) {
    const std::string bits = text.substr(slash + 1);
    if (bits.empty() || bits.size() > 3 ||
        bits.find_first_not_of("0123456789") != std::string::npos) {
      return std::nullopt;
    }
    const unsigned prefix = static_cast<unsigned>(std::stoul(bits));
    if (prefix > filter.prefix) return std::nullopt;
    filter.prefix = prefix;
  }
  return filter;
}

// Events are deduplicated on their id: a crash may have stored one twice, in two batches.
struct EventKey {
  std::uint64_t uid;
  std::uint64_t kind_and_number;
  bool operator==(const EventKey&) const = default;
};
struct EventKeyHash {
  std::size_t operator()(const EventKey& k) const {
    return std::hash<std::uint64_t>()(k.uid * 0x9E3779B97F4A7C15ull ^ k.kind_and_number);
  }
};
EventKey event_key(schema::FlowEvent::Reader record) {
  return {record.getUid(), (static_cast<std::uint64_t>(record.getKind()) << 32) |
                               record.getEventNumber()};
}

// Zeek's #open/#close stamp: local time as YYYY-MM-DD-HH-MM-SS.
std::string zeek_now() {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  localtime_r(&now, &tm);
  char text[32];
  std::strftime(text, sizeof text, "%Y-%m-%d-%H-%M-%S", &tm);
  return text;
}

std::optional<std::int64_t> parse_time_ns(std::string_view text) {
  if (text.empty()) return std::nullopt;
  auto digits = [](std::string_view s) {
    return !s.empty() && s.find_first_not_of("0123456789") == std::string_view::npos;
  };
  auto fraction_ns = [&](std::string_view frac) -> std::optional<std::int64_t> {
    if (frac.empty()) return 0;
    if (!digits(frac) || frac.size() > 9) return std::nullopt;
    std::string padded(frac);
    padded.resize(9, '0');
    return std::stoll(padded);
  };
  // Epoch seconds, with an optional fraction.
  {
    std::string_view rest = text;
    const bool negative = !rest.empty() && rest[0] == '-';
    if (negative) rest.remove_prefix(1);
    const auto dot = rest.find('.');
    const std::string_view whole = rest.substr(0, dot);
    if (digits(whole) && whole.size() <= 11) {
      const auto frac = fraction_ns(dot == std::string_view::npos ? "" : rest.substr(dot + 1));
      if (!frac) return std::nullopt;
      const std::int64_t ns = std::stoll(std::string(whole)) * 1'000'000'000 + *frac;
      return negative ? -ns : ns;
    }
  }
  // RFC 3339: YYYY-MM-DDTHH:MM:SS[.frac](Z|+HH:MM|-HH:MM); a space for the T is accepted.
  if (text.size() < 20) return std::nullopt;
  const std::string t(text);
  std::tm tm{};
  const auto field = [&](std::size_t pos, std::size_t len) -> int {
    const std::string part = t.substr(pos, len);
    return digits(part) ? std::stoi(part) : -1;
  };
  if (t[4] != '-' || t[7] != '-' || (t[10] != 'T' && t[10] != 't' && t[10] != ' ') ||
      t[13] != ':' || t[16] != ':') {
    return std::nullopt;
  }
  const int year = field(0, 4), month = field(5, 2), day = field(8, 2), hour = field(11, 2),
            minute = field(14, 2), second = field(17, 2);
  if (year < 0 || month < 1 || month > 12 || day < 1 || day > 31 || hour < 0 || hour > 23 ||
      minute < 0 || minute > 59 || second < 0 || second > 60) {
    return std::nullopt;
  }
  tm.tm_year = year - 1900;
  tm.tm_mon = month - 1;
  tm.tm_mday = day;
  tm.tm_hour = hour;
  tm.tm_min = minute;
  tm.tm_sec = second;
  std::size_t pos = 19;
  std::int64_t frac = 0;
  if (pos < t.size() && t[pos] == '.') {
    const std::size_t end = t.find_first_not_of("0123456789", pos + 1);
    const auto f = fraction_ns(std::string_view(t).substr(pos + 1, end - pos - 1));
    if (!f || end == std::string::npos) return std::nullopt;
    frac = *f;
    pos = end;
  }
  std::int64_t offset_s = 0;
  const std::string zone = t.substr(pos);
  if (zone == "Z" || zone == "z") {
    offset_s = 0;
  } else if (zone.size() == 6 && (zone[0] == '+' || zone[0] == '-') && zone[3] == ':') {
    const int oh = field(pos + 1, 2), om = field(pos + 4, 2);
    if (oh < 0 || oh > 23 || om < 0 || om > 59) return std::nullopt;
    offset_s = (oh * 3600 + om * 60) * (zone[0] == '+' ? 1 : -1);
  } else {
    return std::nullopt;
  }
  const std::int64_t seconds = static_cast<std::int64_t>(timegm(&tm)) - offset_s;
  return seconds * 1'000'000'000 + frac;
}


// ---- inclusion proofs

struct EventId {
  std::uint64_t uid = 0;
  schema::EventKind kind = schema::EventKind::END;
  std::uint32_t number = 0;
};

// `<uid text>:<kind>:<event number>`, as event_id_text() writes it.
std::optional<EventId> parse_event_id(const std::string& text) {
  const auto a = text.find(':');
  const auto b = a == std::string::npos ? a : text.find(':', a + 1);
  if (b == std::string::npos) return std::nullopt;
  EventId id;
  const auto uid = parse_uid_text(std::string_view(text).substr(0, a));
  if (!uid) return std::nullopt;
  id.uid = *uid;
  const std::string kind = text.substr(a + 1, b - a - 1);
  bool known = false;
  for (const auto k : {schema::EventKind::START, schema::EventKind::UPDATE,
                       schema::EventKind::END, schema::EventKind::SUMMARY}) {
    if (kind_name(k) == kind) {
      id.kind = k;
      known = true;
    }
  }
  const std::string number = text.substr(b + 1);
  if (!known || number.empty() || number.size() > 10 ||
      number.find_first_not_of("0123456789") != std::string::npos) {
    return std::nullopt;
  }
  const unsigned long long n = std::stoull(number);
  if (n > UINT32_MAX) return std::nullopt;
  id.number = static_cast<std::uint32_t>(n);
  return id;
}

seal::Digest digest_of(std::span<const std::uint8_t> bytes) {
  seal::Digest digest{};
  std::memcpy(digest.data(), bytes.data(), std::min(bytes.size(), digest.size()));
  return digest;
}
seal::Digest digest_of(capnp::Data::Reader data) {
  return digest_of(std::span<const std::uint8_t>(data.begin(), data.size()));
}

std::string hex_of(std::span<const std::uint8_t> bytes) { return seal::to_hex(bytes); }
std::string hex_of(capnp::Data::Reader data) { return seal::to_hex({data.begin(), data.size()}); }

std::optional<std::vector<std::uint8_t>> from_hex(std::string_view text) {
  if (text.size() % 2 != 0) return std::nullopt;
  std::vector<std::uint8_t> out(text.size() / 2);
  for (std::size_t i = 0; i < out.size(); ++i) {
    int v = 0;
    for (int j = 0; j < 2; ++j) {
      const char c = text[2 * i + static_cast<std::size_t>(j)];
      int d = -1;
      if (c >= '0' && c <= '9') d = c - '0';
      if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
      if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
      if (d < 0) return std::nullopt;
      v = v * 16 + d;
    }
    out[i] = static_cast<std::uint8_t>(v);
  }
  return out;
}

std::string_view algorithm_name(schema::SignatureAlgorithm algorithm) {
  return seal::to_string(static_cast<seal::Algorithm>(algorithm));
}

std::string header_json(schema::BatchHeader::Reader h) {
  return fmt::format(
      "{{\"stream_id\":\"{}\",\"seq\":{},\"prev_root\":\"{}\",\"merkle_root\":\"{}\","
      "\"record_count\":{},\"first_ts_ns\":{},\"last_ts_ns\":{},\"key_id\":\"{}\","
      "\"algorithm\":\"{}\"}}",
      hex_of(h.getStreamId()), h.getSeq(), hex_of(h.getPrevRoot()), hex_of(h.getMerkleRoot()),
      h.getRecordCount(), h.getFirstTsNs(), h.getLastTsNs(), hex_of(h.getKeyId()),
      algorithm_name(h.getAlgorithm()));
}

// The file `verify --proof` prints: one JSON object, one member per line, so that
// verify-proof (and a reader with any JSON library) can take it apart.
int proof_command(const std::vector<fs::path>& files, const VerifyOptions& options) {
  const auto id = parse_event_id(options.proof_event);
  if (!id) {
    fmt::print(stderr, "verify: --proof {}: not an event id (want UID:KIND:NUMBER, e.g. "
               "CmondrrJD8IG:end:1; kind is start, update, end or summary)\n",
               options.proof_event);
    return exit_code::kUsage;
  }
  const auto keys = load_keys(options);
  for (const fs::path& file : files) {
    segment::SegmentReader reader(file);
    while (reader.ok() && reader.next() == segment::SegmentReader::Next::kFrame) {
      try {
        capnp::FlatArrayMessageReader message = open_batch(reader);
        const auto batch = message.getRoot<schema::SealedBatch>();
        const auto records = batch.getRecords();
        std::optional<std::uint32_t> index;
        for (std::uint32_t i = 0; i < records.size() && !index; ++i) {
          const auto r = records[i];
          if (r.getUid() == id->uid && r.getKind() == id->kind &&
              r.getEventNumber() == id->number) {
            index = i;
          }
        }
        if (!index) continue;
        std::vector<seal::Digest> leaves;
        leaves.reserve(records.size());
        for (const auto r : records) leaves.push_back(seal::leaf_hash(seal::canonical_bytes(r)));
        const auto header = batch.getHeader();
        const std::string where =
            fmt::format("{}: batch seq {}, record {}", file.string(), header.getSeq(), *index);
        if (seal::merkle_root(leaves) != digest_of(header.getMerkleRoot())) {
          fmt::print(stderr, "verify: {}: the batch's Merkle root does not match its records; "
                     "no proof can be given (run verify {})\n", where, options.dir);
          return exit_code::kDataError;
        }
        const auto key = keys.find(digest_of(header.getKeyId()));
        const auto header_bytes = seal::canonical_bytes(header);
        const auto signature = batch.getSignature();
        if (key == keys.end() ||
            !key->second.verify(header_bytes, {signature.begin(), signature.size()})) {
          fmt::print(stderr, "verify: {}: the batch's signature does not verify with a trusted "
                     "key; no proof can be given\n", where);
          return exit_code::kDataError;
        }
        const auto proof = seal::inclusion_proof(leaves, *index);
        std::string path;
        for (const auto& node : proof) {
          if (!path.empty()) path += ',';
          path += '"' + hex_of(node) + '"';
        }
        const auto record = records[*index];
        fmt::print("{{\n");
        fmt::print("  \"event_id\": \"{}\",\n", event_id_text(record));
        fmt::print("  \"segment\": \"{}\",\n", file.filename().string());
        fmt::print("  \"record\": {},\n", to_json_line(record));
        fmt::print("  \"record_canonical\": \"{}\",\n", hex_of(seal::canonical_bytes(record)));
        fmt::print("  \"leaf_hash\": \"{}\",\n", hex_of(leaves[*index]));
        fmt::print("  \"leaf_index\": {},\n", *index);
        fmt::print("  \"leaf_count\": {},\n", leaves.size());
        fmt::print("  \"proof\": [{}],\n", path);
        fmt::print("  \"merkle_root\": \"{}\",\n", hex_of(header.getMerkleRoot()));
        fmt::print("  \"header\": {},\n", header_json(header));
        fmt::print("  \"header_canonical\": \"{}\",\n", hex_of(header_bytes));
        fmt::print("  \"signature\": \"{}\",\n", hex_of(signature));
        fmt::print("  \"public_key_der\": \"{}\"\n", hex_of(key->second.public_der()));
        fmt::print("}}\n");
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

// Members of a proof file: `"name": value` lines, the value as written (strings unquoted).
std::map<std::string, std::string> read_proof_members(const std::string& text) {
  std::map<std::string, std::string> members;
  std::size_t pos = 0;
  while (pos < text.size()) {
    std::size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    std::string_view line(text.data() + pos, end - pos);
    pos = end + 1;
    while (!line.empty() && line.front() == ' ') line.remove_prefix(1);
    if (line.size() < 4 || line.front() != '"') continue;
    const auto close = line.find("\": ", 1);
    if (close == std::string_view::npos) continue;
    std::string_view value = line.substr(close + 3);
    if (!value.empty() && value.back() == ',') value.remove_suffix(1);
    if (value.size() >= 2 && value.front() == '"' && value.back() == '"') {
      value = value.substr(1, value.size() - 2);
    }
    members.emplace(std::string(line.substr(1, close - 1)), std::string(value));
  }
  return members;
}

}  // namespace

int cat_command(const CatOptions& options) {
  std::optional<std::int64_t> since, until;
  if (!options.since.empty() && !(since = parse_time_ns(options.since))) {
    fmt::print(stderr, "cat: --since {}: not a time (RFC 3339, e.g. 2024-05-01T12:00:00Z, or "
               "epoch seconds)\n", options.since);
    return exit_code::kUsage;
  }
  if (!options.until.empty() && !(until = parse_time_ns(options.until))) {
    fmt::print(stderr, "cat: --until {}: not a time (RFC 3339, e.g. 2024-05-01T12:00:00Z, or "
               "epoch seconds)\n", options.until);
    return exit_code::kUsage;
  }
  std::vector<HostFilter> hosts;
  for (const std::string& text : options.hosts) {
    auto host = parse_host(text);
    if (!host) {
      fmt::print(stderr, "cat: --host {}: not an IPv4/IPv6 address or CIDR prefix\n", text);
      return exit_code::kUsage;
    }
    hosts.push_back(std::move(*host));
  }
  for (const std::uint32_t port : options.ports) {
    if (port > 65535) {
      fmt::print(stderr, "cat: --port {}: out of range 0..65535\n", port);
      return exit_code::kUsage;
    }
  }
  const bool tsv = options.format == "tsv";
  if (!tsv && options.format != "json") {
    fmt::print(stderr, "cat: --format {}: want json or tsv\n", options.format);
    return exit_code::kUsage;
  }
  const auto files = segments_at("cat", options.path);
  if (!files) return exit_code::kNoInput;

  auto wanted = [&](schema::FlowEvent::Reader record) {
    if (!options.all_events && record.getKind() != schema::EventKind::END) return false;
    if (since && record.getLastTsNs() < *since) return false;
    if (until && record.getFirstTsNs() >= *until) return false;
    if (!hosts.empty()) {
      const auto orig = record.getOrigAddr();
      const auto resp = record.getRespAddr();
      if (std::none_of(hosts.begin(), hosts.end(), [&](const HostFilter& h) {
            return h.matches(orig) || h.matches(resp);
          })) {
        return false;
      }
    }
    if (!options.ports.empty() &&
        std::find(options.ports.begin(), options.ports.end(), record.getOrigPort()) ==
            options.ports.end() &&
        std::find(options.ports.begin(), options.ports.end(), record.getRespPort()) ==
            options.ports.end()) {
      return false;
    }
    return true;
  };

  int status = exit_code::kOk;
  std::string out;
  auto flush = [&] {
    std::fwrite(out.data(), 1, out.size(), stdout);
    out.clear();
  };
  if (tsv) out += tsv_header(zeek_now());
  std::unordered_set<EventKey, EventKeyHash> seen;
  for (const fs::path& file : *files) {
    segment::SegmentReader reader(file);
    while (reader.ok() && reader.next() == segment::SegmentReader::Next::kFrame) {
      const segment::BatchMeta& meta = reader.frame().batch;
      // The frame header's time range covers every record: skip without decoding.
      if (meta.record_count > 0 && ((since && meta.last_ts_ns < *since) ||
                                    (until && meta.first_ts_ns >= *until))) {
        continue;
      }
      try {
        capnp::FlatArrayMessageReader message = open_batch(reader);
        for (const auto record : message.getRoot<schema::SealedBatch>().getRecords()) {
          if (!seen.insert(event_key(record)).second) continue;
          if (!wanted(record)) continue;
          out += tsv ? to_tsv_line(record) : to_json_line(record);
          out += '\n';
        }
      } catch (const kj::Exception& e) {
        flush();
        fmt::print(stderr, "cat: {}: batch seq {} at offset {}: cannot be read: {}\n",
                   file.string(), meta.seq, reader.frame_offset(), e.getDescription().cStr());
        status = exit_code::kDataError;
      }
      if (out.size() > (1 << 16)) flush();
    }
    flush();
    if (reader.error()) {
      fmt::print(stderr, "cat: {}\n", reader.error()->message());
      status = exit_code::kDataError;
    }
  }
  if (tsv) out += fmt::format("#close\t{}\n", zeek_now());
  flush();
  std::fflush(stdout);
  return status;
}

int verify_command(const VerifyOptions& options) {
  std::error_code ec;
  if (!fs::is_directory(options.dir, ec)) {
    fmt::print(stderr, "verify: {}: not a directory\n", options.dir);
    return exit_code::kNoInput;
  }
  const auto files = segments_at("verify", options.dir);
  if (!files) return exit_code::kNoInput;
  if (!options.proof_event.empty()) return proof_command(*files, options);
  seal::ChainVerifier verifier(load_keys(options));
  ProblemLog problems;
  for (const fs::path& file : *files) verify_segment(file, verifier, problems);

  const seal::ChainSummary& summary = verifier.summary();
  fmt::print("segments: {}\n", files->size());
  fmt::print("batches:  {}", summary.batches);
  if (summary.batches > 0) fmt::print(" (seq {}..{})", summary.first_seq, summary.last_seq);
  fmt::print("\nrecords:  {}\n", summary.records);
  if (summary.records > 0) {
    fmt::print("time:     {} .. {}\n", utc(summary.first_ts_ns), utc(summary.last_ts_ns));
  }
  for (const std::string& key : summary.key_ids) fmt::print("key id:   {}\n", key);
  std::fflush(stdout);
  if (problems.count() > 0) {
    fmt::print(stderr, "verify: FAILED: {}\n", problems.first());
    if (problems.count() > 1) fmt::print(stderr, "verify: {} problems in all\n", problems.count());
    return exit_code::kDataError;
  }
  if (files->empty()) fmt::print("verify: {} holds no segments yet\n", options.dir);
  fmt::print("verify: OK\n");
  return exit_code::kOk;
}


int verify_proof_command(const VerifyProofOptions& options) {
  std::ifstream in(options.file, std::ios::binary);
  if (!in) {
    fmt::print(stderr, "verify-proof: {}: cannot open\n", options.file);
    return exit_code::kNoInput;
  }
  std::stringstream buffer;
  buffer << in.rdbuf();
  auto members = read_proof_members(buffer.str());
  auto fail = [&](const std::string& what) {
    fmt::print(stderr, "verify-proof: {}: FAILED: {}\n", options.file, what);
    return exit_code::kDataError;
  };
  for (const char* name : {"event_id", "record", "record_canonical", "leaf_hash", "leaf_index",
                           "leaf_count", "proof", "merkle_root", "header_canonical",
                           "signature", "public_key_der"}) {
    if (!members.count(name)) return fail(fmt::format("member \"{}\" is missing", name));
  }
  const auto record_bytes = from_hex(members["record_canonical"]);
  const auto header_bytes = from_hex(members["header_canonical"]);
  const auto leaf = from_hex(members["leaf_hash"]);
  const auto root = from_hex(members["merkle_root"]);
  const auto signature = from_hex(members["signature"]);
  const auto der = from_hex(members["public_key_der"]);
  if (!record_bytes || !header_bytes || !leaf || !root || !signature || !der ||
      leaf->size() != 32 || root->size() != 32 || record_bytes->size() % 8 != 0 ||
      header_bytes->size() % 8 != 0 || record_bytes->empty() || header_bytes->empty()) {
    return fail("a hex member is malformed");
  }
  std::vector<seal::Digest> proof;
  {
    std::string list = members["proof"];
    for (std::size_t p = list.find('"'); p != std::string::npos; p = list.find('"', p)) {
      const std::size_t q = list.find('"', p + 1);
      if (q == std::string::npos) return fail("the proof list is malformed");
      const auto node = from_hex(std::string_view(list).substr(p + 1, q - p - 1));
      if (!node || node->size() != 32) return fail("a proof node is not 32 bytes of hex");
      proof.push_back(digest_of(*node));
      p = q + 1;
    }
  }
  std::uint64_t index = 0, count = 0;
  try {
    index = std::stoull(members["leaf_index"]);
    count = std::stoull(members["leaf_count"]);
  } catch (const std::exception&) {
    return fail("leaf_index or leaf_count is not a number");
  }
  // 1. The record: its canonical bytes hash to the leaf, and they say what "record" says.
  const seal::Digest leaf_digest = digest_of(*leaf);
  if (seal::leaf_hash(*record_bytes) != leaf_digest) {
    return fail("leaf_hash is not SHA-256(0x00 || record_canonical)");
  }
  auto words_of = [](const std::vector<std::uint8_t>& bytes) {
    auto words = kj::heapArray<capnp::word>(bytes.size() / 8);
    std::memcpy(words.begin(), bytes.data(), bytes.size());
    return words;
  };
  const auto record_words = words_of(*record_bytes);
  const auto header_words = words_of(*header_bytes);
  try {
    kj::ArrayPtr<const capnp::word> record_segments[] = {record_words.asPtr()};
    capnp::SegmentArrayMessageReader record_message(record_segments);
    if (!record_message.isCanonical()) return fail("record_canonical is not canonical");
    const auto record = record_message.getRoot<schema::FlowEvent>();
    if (to_json_line(record) != members["record"]) {
      return fail("\"record\" does not say what record_canonical holds");
    }
    if (event_id_text(record) != members["event_id"]) {
      return fail("event_id is not the record's event id");
    }
    // 2. The Merkle path from the leaf to the root.
    if (!seal::verify_inclusion(leaf_digest, index, count, proof, digest_of(*root))) {
      return fail(fmt::format("the inclusion proof of leaf {} of {} does not lead to "
                              "merkle_root", index, count));
    }
    // 3. The signed header names that root and count, and its signature verifies.
    kj::ArrayPtr<const capnp::word> header_segments[] = {header_words.asPtr()};
    capnp::SegmentArrayMessageReader header_message(header_segments);
    if (!header_message.isCanonical()) return fail("header_canonical is not canonical");
    const auto header = header_message.getRoot<schema::BatchHeader>();
    if (header.getMerkleRoot().size() != 32 ||
        digest_of(header.getMerkleRoot()) != digest_of(*root)) {
      return fail("the signed header's merkleRoot is not merkle_root");
    }
    if (header.getRecordCount() != count) {
      return fail("the signed header's recordCount is not leaf_count");
    }
    const seal::PublicKey key = seal::PublicKey::from_der(*der);
    if (header.getKeyId().size() != 32 || digest_of(header.getKeyId()) != key.key_id()) {
      return fail("the signed header's keyId is not SHA-256 of public_key_der");
    }
    if (!key.verify(*header_bytes, *signature)) {
      return fail("the signature does not verify with public_key_der");
    }
    if (!options.public_key.empty()) {
      const seal::PublicKey pinned = seal::PublicKey::load(options.public_key);
      if (pinned.key_id() != key.key_id()) {
        return fail(fmt::format("signed with key {}, not the pinned key {}",
                                seal::to_hex(key.key_id()), seal::to_hex(pinned.key_id())));
      }
    }
    fmt::print("verify-proof: OK: {} is record {} of {} in batch seq {} of stream {}, signed "
               "by key {}{}\n",
               members["event_id"], index, count, header.getSeq(),
               hex_of(header.getStreamId()), seal::to_hex(key.key_id()),
               options.public_key.empty() ? " (give --pubkey to pin the key you trust)" : "");
    return exit_code::kOk;
  } catch (const kj::Exception& e) {
    return fail(fmt::format("cannot be decoded: {}", e.getDescription().cStr()));
  } catch (const std::runtime_error& e) {
    return fail(e.what());
  }
}


int debug_rewrite_command(const DebugRewriteOptions& options) {
  const fs::path file(options.segment);
  if (segment::is_part(file)) {
    fmt::print(stderr, "debug rewrite: {}: only closed segments are rewritten\n", file.string());
    return exit_code::kUsage;
  }
  struct Frame {
    segment::BatchMeta meta;
    std::vector<capnp::word> words;
  };
  std::vector<Frame> frames;
  segment::SegmentReader reader(file);
  while (reader.ok() && reader.next() == segment::SegmentReader::Next::kFrame) {
    const auto bytes = reader.message();
    Frame frame{reader.frame().batch, std::vector<capnp::word>(bytes.size() / 8)};
    std::memcpy(frame.words.data(), bytes.data(), bytes.size());
    frames.push_back(std::move(frame));
  }
  if (reader.error()) {
    fmt::print(stderr, "debug rewrite: {}\n", reader.error()->message());
    return exit_code::kDataError;
  }
  const segment::FileHeader file_header = reader.header();
  auto seq_index = [](const std::string& text) -> std::pair<std::uint64_t, std::uint32_t> {
    const auto colon = text.find(':');
    if (colon == std::string::npos) throw std::invalid_argument("want SEQ:INDEX, got " + text);
    return {std::stoull(text.substr(0, colon)),
            static_cast<std::uint32_t>(std::stoul(text.substr(colon + 1)))};
  };
  auto find = [&](std::uint64_t seq) -> Frame& {
    for (Frame& f : frames) {
      if (f.meta.seq == seq) return f;
    }
    throw std::invalid_argument(fmt::format("{} holds no batch seq {}", file.string(), seq));
  };
  // Rebuilds a frame's message through `change`, which edits a copy of the batch.
  auto rebuild = [&](Frame& frame, const auto& change) {
    capnp::FlatArrayMessageReader in(kj::arrayPtr(frame.words.data(), frame.words.size()),
                                     frame_reader_options());
    capnp::MallocMessageBuilder out;
    out.setRoot(in.getRoot<schema::SealedBatch>());
    change(out.getRoot<schema::SealedBatch>());
    const kj::Array<capnp::word> flat = capnp::messageToFlatArray(out);
    frame.words.assign(flat.begin(), flat.end());
    frame.meta.record_count = out.getRoot<schema::SealedBatch>().getRecords().size();
  };
  for (const auto& text : options.edit_records) {
    const auto [seq, index] = seq_index(text);
    rebuild(find(seq), [&, index = index](schema::SealedBatch::Builder batch) {
      auto record = batch.getRecords()[index];
      record.setOrigPkts(record.getOrigPkts() + 1);
    });
  }
  for (const auto& text : options.drop_records) {
    const auto [seq, index] = seq_index(text);
    rebuild(find(seq), [&, index = index](schema::SealedBatch::Builder batch) {
      capnp::MallocMessageBuilder scratch;
      auto kept = scratch.initRoot<schema::FlowEventBatch>();
      const auto records = batch.asReader().getRecords();
      auto list = kept.initEvents(records.size() - 1);
      for (std::uint32_t i = 0, j = 0; i < records.size(); ++i) {
        if (i != index) list.setWithCaveats(j++, records[i]);
      }
      batch.setRecords(kept.asReader().getEvents());
    });
  }
  // What a tamperer who knows the format does after editing records: rewrite the unsigned
  // leaf hints to match them (verify must still fail, and say it cannot locate the record).
  for (const std::uint64_t seq : options.rehint) {
    rebuild(find(seq), [&](schema::SealedBatch::Builder batch) {
      std::vector<seal::Digest> leaves;
      for (const auto r : batch.asReader().getRecords()) {
        leaves.push_back(seal::leaf_hash(seal::canonical_bytes(r)));
      }
      const auto old_hints = batch.asReader().getLeafHints();
      const unsigned width = old_hints.size() > 0 ? old_hints[0] : seal::kDefaultLeafHintBytes;
      const auto hints = seal::make_leaf_hints(leaves, width);
      batch.setLeafHints({hints.data(), hints.size()});
    });
  }
  if (!options.reseal.empty()) {
    const seal::PrivateKey key = seal::PrivateKey::load(options.key);
    for (const std::uint64_t seq : options.reseal) {
      rebuild(find(seq), [&](schema::SealedBatch::Builder batch) {
        auto header = batch.getHeader();
        header.setKeyId({key.key_id().data(), key.key_id().size()});
        header.setAlgorithm(static_cast<schema::SignatureAlgorithm>(key.algorithm()));
        const auto signature = key.sign(seal::canonical_bytes(header.asReader()));
        batch.setSignature({signature.data(), signature.size()});
      });
    }
  }
  for (const std::uint64_t seq : options.drop_batches) {
    const Frame& gone = find(seq);
    frames.erase(frames.begin() + (&gone - frames.data()));
  }
  if (!options.swap.empty()) {
    const auto colon = options.swap.find(':');
    if (colon == std::string::npos) throw std::invalid_argument("--swap wants SEQ:SEQ");
    std::swap(find(std::stoull(options.swap.substr(0, colon))),
              find(std::stoull(options.swap.substr(colon + 1))));
  }
  if (frames.empty()) throw std::invalid_argument("nothing would be left of " + file.string());

  // Write the new segments beside, then put them in the old one's place: under the old name,
  // or (--split N) as segments of N batches each, named by their first seq as writerd would.
  const fs::path scratch_dir = file.parent_path() / ".rewrite";
  fs::remove_all(scratch_dir);
  fs::create_directories(scratch_dir);
  const std::size_t per_segment = options.split > 0 ? options.split : frames.size();
  std::vector<std::uint64_t> first_seqs;
  for (std::size_t begin = 0; begin < frames.size(); begin += per_segment) {
    const std::size_t end = std::min(frames.size(), begin + per_segment);
    segment::IoStatus status;
    auto writer = segment::SegmentWriter::create(scratch_dir, frames[begin].meta.seq,
                                                 file_header, segment::WriterOptions{}, status);
    for (std::size_t i = begin; writer && status.ok() && i < end; ++i) {
      status = writer->append(frames[i].meta,
                              {reinterpret_cast<const std::byte*>(frames[i].words.data()),
                               frames[i].words.size() * sizeof(capnp::word)});
    }
    if (writer && status.ok()) status = writer->close();
    if (!writer || !status.ok()) {
      fmt::print(stderr, "debug rewrite: {}\n", status.what);
      return exit_code::kIoError;
    }
    first_seqs.push_back(frames[begin].meta.seq);
  }
  if (options.split > 0) {
    fs::remove(file);
    for (const std::uint64_t seq : first_seqs) {
      fs::rename(scratch_dir / segment::segment_name(seq),
                 file.parent_path() / segment::segment_name(seq));
    }
  } else {
    fs::rename(scratch_dir / segment::segment_name(first_seqs.front()), file);
  }
  fs::remove_all(scratch_dir);
  fmt::print("rewrote {}: {} batches\n", file.string(), frames.size());
  return exit_code::kOk;
}

}  // namespace flowseal::supervisor
