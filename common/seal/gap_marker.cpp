#include "seal/gap_marker.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <limits>
#include <tuple>

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <fmt/format.h>

#include "flowseal.capnp.h"
#include "unique_fd.h"

namespace flowseal::seal {
namespace {

namespace fs = std::filesystem;

constexpr std::string_view kSignedPrefix = "flowseal gap marker 1\n";
constexpr std::string_view kFilePrefix = "gap-";
constexpr std::string_view kFileSuffix = ".fgm";

std::vector<std::uint8_t> signed_bytes(schema::GapMarker::Reader marker) {
  const kj::Array<capnp::word> words = capnp::canonicalize(marker);
  const auto bytes = words.asBytes();
  std::vector<std::uint8_t> out(kSignedPrefix.size() + bytes.size());
  std::memcpy(out.data(), kSignedPrefix.data(), kSignedPrefix.size());
  std::memcpy(out.data() + kSignedPrefix.size(), bytes.begin(), bytes.size());
  return out;
}

schema::SignatureAlgorithm to_schema(Algorithm algorithm) {
  switch (algorithm) {
    case Algorithm::kEd25519: return schema::SignatureAlgorithm::ED25519;
    case Algorithm::kEcdsaP256: return schema::SignatureAlgorithm::ECDSA_P256;
    case Algorithm::kRsa4096: return schema::SignatureAlgorithm::RSA4096;
  }
  return schema::SignatureAlgorithm::ED25519;
}

// The marker's fields and signature as they are, before any key is looked at.
struct Unchecked {
  GapMarker marker;
  schema::SignatureAlgorithm algorithm;
  std::vector<std::uint8_t> message;  // what the signature covers
  std::vector<std::uint8_t> signature;
};

std::optional<Unchecked> parse(std::span<const std::uint8_t> bytes, std::string& why) {
  if (bytes.empty() || bytes.size() % sizeof(capnp::word) != 0 ||
      bytes.size() > kMaxGapMarkerBytes) {
    why = fmt::format("{} bytes: not a gap marker message", bytes.size());
    return std::nullopt;
  }
  std::vector<capnp::word> words(bytes.size() / sizeof(capnp::word));
  std::memcpy(words.data(), bytes.data(), bytes.size());
  try {
    capnp::ReaderOptions options;
    options.traversalLimitInWords = words.size() * 2;
    options.nestingLimit = 8;
    capnp::FlatArrayMessageReader reader(kj::arrayPtr(words.data(), words.size()), options);
    const auto root = reader.getRoot<schema::SignedGapMarker>();
    const auto marker = root.getMarker();
    const auto stream = marker.getStreamId();
    const auto key = marker.getKeyId();
    if (stream.size() != 16 || key.size() != 32) {
      why = fmt::format("stream id of {} bytes and key id of {} bytes (expected 16 and 32)",
                        stream.size(), key.size());
      return std::nullopt;
    }
    Unchecked out;
    std::copy(stream.begin(), stream.end(), out.marker.claim.stream_id.begin());
    std::copy(key.begin(), key.end(), out.marker.key_id.begin());
    out.marker.claim.first_seq = marker.getFirstSeq();
    out.marker.claim.last_seq = marker.getLastSeq();
    out.marker.claim.records = marker.getRecordCount();
    out.marker.claim.given_up_ns = marker.getGivenUpNs();
    out.marker.claim.reason = marker.getReason().cStr();
    out.algorithm = marker.getAlgorithm();
    out.message = signed_bytes(marker);
    const auto signature = root.getSignature();
    out.signature.assign(signature.begin(), signature.end());
    if (out.marker.claim.last_seq == std::numeric_limits<std::uint64_t>::max()) {
      // A chain that went on after it would need seq 2^64: no real batch has that seq.
      why = "last seq 2^64-1: no chain goes on after it";
      return std::nullopt;
    }
    if (out.marker.claim.first_seq > out.marker.claim.last_seq) {
      why = fmt::format("first seq {} after last seq {}", out.marker.claim.first_seq,
                        out.marker.claim.last_seq);
      return std::nullopt;
    }
    return out;
  } catch (const kj::Exception& e) {
    why = fmt::format("not a gap marker message: {}", e.getDescription().cStr());
    return std::nullopt;
  }
}

std::optional<GapMarker> check_with(const Unchecked& unchecked, const PublicKey& key,
                                    std::string& why) {
  if (unchecked.algorithm != to_schema(key.algorithm())) {
    why = fmt::format("the marker names algorithm {}, its key is {}",
                      static_cast<int>(unchecked.algorithm), to_string(key.algorithm()));
    return std::nullopt;
  }
  if (!key.verify(unchecked.message, unchecked.signature)) {
    why = fmt::format("bad signature (key id {})", to_hex(unchecked.marker.key_id));
    return std::nullopt;
  }
  return unchecked.marker;
}

}  // namespace

std::optional<std::vector<std::uint8_t>> read_gap_marker_file(const fs::path& file,
                                                              std::string& why) {
  UniqueFd fd(::open(file.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK));
  struct stat st {};
  if (!fd || ::fstat(fd.get(), &st) != 0) {
    why = fmt::format("{}: cannot open: {}", file.string(), std::strerror(errno));
    return std::nullopt;
  }
  if (!S_ISREG(st.st_mode) || st.st_size <= 0 ||
      static_cast<std::uint64_t>(st.st_size) > kMaxGapMarkerBytes) {
    why = fmt::format("{}: not a regular file of at most {} bytes", file.string(),
                      kMaxGapMarkerBytes);
    return std::nullopt;
  }
  std::vector<std::uint8_t> bytes(static_cast<std::size_t>(st.st_size));
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::read(fd.get(), bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      why = fmt::format("{}: cannot read: {}", file.string(),
                        n < 0 ? std::strerror(errno) : "shorter than its size");
      return std::nullopt;
    }
    done += static_cast<std::size_t>(n);
  }
  return bytes;
}

std::vector<std::uint8_t> seal_gap_marker(const GapClaim& claim, const PrivateKey& key) {
  capnp::MallocMessageBuilder builder;
  auto root = builder.initRoot<schema::SignedGapMarker>();
  auto marker = root.initMarker();
  marker.setStreamId(capnp::Data::Reader(claim.stream_id.data(), claim.stream_id.size()));
  marker.setFirstSeq(claim.first_seq);
  marker.setLastSeq(claim.last_seq);
  marker.setRecordCount(claim.records);
  marker.setGivenUpNs(claim.given_up_ns);
  marker.setKeyId(capnp::Data::Reader(key.key_id().data(), key.key_id().size()));
  marker.setAlgorithm(to_schema(key.algorithm()));
  marker.setReason(claim.reason);
  const std::vector<std::uint8_t> signature = key.sign(signed_bytes(marker.asReader()));
  root.setSignature(capnp::Data::Reader(signature.data(), signature.size()));
  const kj::Array<capnp::word> words = capnp::messageToFlatArray(builder);
  const auto bytes = words.asBytes();
  return {bytes.begin(), bytes.end()};
}

std::optional<GapMarker> open_gap_marker(std::span<const std::uint8_t> bytes,
                                         const std::map<Digest, PublicKey>& keys,
                                         std::string& why) {
  const std::optional<Unchecked> unchecked = parse(bytes, why);
  if (!unchecked) return std::nullopt;
  const auto key = keys.find(unchecked->marker.key_id);
  if (key == keys.end()) {
    why = fmt::format("signed by key id {}, which is not a key of this store",
                      to_hex(unchecked->marker.key_id));
    return std::nullopt;
  }
  return check_with(*unchecked, key->second, why);
}

std::optional<GapMarker> open_gap_marker(std::span<const std::uint8_t> bytes, const PublicKey& key,
                                         std::string& why) {
  const std::optional<Unchecked> unchecked = parse(bytes, why);
  if (!unchecked) return std::nullopt;
  if (unchecked->marker.key_id != key.key_id()) {
    why = fmt::format("signed by key id {}, not {}", to_hex(unchecked->marker.key_id),
                      to_hex(key.key_id()));
    return std::nullopt;
  }
  return check_with(*unchecked, key, why);
}

std::optional<Digest> gap_marker_key_id(std::span<const std::uint8_t> bytes) {
  std::string why;
  const std::optional<Unchecked> unchecked = parse(bytes, why);
  if (!unchecked) return std::nullopt;
  return unchecked->marker.key_id;
}

std::string gap_marker_file_name(std::uint64_t first_seq, std::uint64_t last_seq) {
  return fmt::format("{}{:020}-{:020}{}", kFilePrefix, first_seq, last_seq, kFileSuffix);
}

std::vector<GapMarkerFileName> list_gap_marker_files(const fs::path& dir) {
  std::vector<GapMarkerFileName> found;
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    if (name.size() != kFilePrefix.size() + 20 + 1 + 20 + kFileSuffix.size() ||
        !name.starts_with(kFilePrefix) || !name.ends_with(kFileSuffix) || name[24] != '-') {
      continue;
    }
    // 20 digits each, at most 2^64-1 (from_chars reads digits only, and says if it overflows).
    GapMarkerFileName file{entry.path(), 0, 0};
    const auto first = std::from_chars(name.data() + 4, name.data() + 24, file.first_seq);
    const auto last = std::from_chars(name.data() + 25, name.data() + 45, file.last_seq);
    if (first.ec != std::errc() || first.ptr != name.data() + 24 || last.ec != std::errc() ||
        last.ptr != name.data() + 45) {
      continue;
    }
    found.push_back(std::move(file));
  }
  std::sort(found.begin(), found.end(), [](const auto& a, const auto& b) {
    return std::tie(a.first_seq, a.last_seq) < std::tie(b.first_seq, b.last_seq);
  });
  return found;
}

std::vector<GapMarker> load_gap_markers(const fs::path& dir,
                                        const std::map<Digest, PublicKey>& keys,
                                        std::vector<std::string>& problems) {
  std::vector<GapMarker> markers;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return markers;
  for (const GapMarkerFileName& named : list_gap_marker_files(dir)) {
    const fs::path& file = named.path;
    std::string why;
    const auto bytes = read_gap_marker_file(file, why);
    std::optional<GapMarker> marker;
    if (bytes) marker = open_gap_marker(*bytes, keys, why);
    if (!marker) {
      problems.push_back(fmt::format("{}: {}", file.string(), why));
      continue;
    }
    if (named.first_seq != marker->claim.first_seq || named.last_seq != marker->claim.last_seq) {
      problems.push_back(fmt::format("{}: its name does not say the batches it covers ({}..{})",
                                     file.string(), marker->claim.first_seq,
                                     marker->claim.last_seq));
      continue;
    }
    markers.push_back(std::move(*marker));
  }
  return markers;
}

}  // namespace flowseal::seal
