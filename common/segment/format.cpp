#include "segment/format.h"

#include <algorithm>
#include <charconv>
#include <cstring>

#include <fmt/format.h>

namespace flowseal::segment {
namespace {

constexpr std::array<std::uint32_t, 256> make_crc_table() {
  std::array<std::uint32_t, 256> table{};
  for (std::uint32_t i = 0; i < 256; ++i) {
    std::uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    table[i] = c;
  }
  return table;
}
constexpr auto kCrcTable = make_crc_table();

void put16(std::uint8_t* p, std::uint16_t v) {
  for (int i = 0; i < 2; ++i) p[i] = static_cast<std::uint8_t>(v >> (8 * i));
}
void put32(std::uint8_t* p, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<std::uint8_t>(v >> (8 * i));
}
void put64(std::uint8_t* p, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<std::uint8_t>(v >> (8 * i));
}
std::uint16_t get16(const std::uint8_t* p) {
  return static_cast<std::uint16_t>(p[0] | (p[1] << 8));
}
std::uint32_t get32(const std::uint8_t* p) {
  std::uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}
std::uint64_t get64(const std::uint8_t* p) {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}
void put_batch(std::uint8_t* p, const BatchMeta& b) {
  put64(p, b.seq);
  put64(p + 8, static_cast<std::uint64_t>(b.first_ts_ns));
  put64(p + 16, static_cast<std::uint64_t>(b.last_ts_ns));
}
BatchMeta get_batch(const std::uint8_t* p) {
  BatchMeta b;
  b.seq = get64(p);
  b.first_ts_ns = static_cast<std::int64_t>(get64(p + 8));
  b.last_ts_ns = static_cast<std::int64_t>(get64(p + 16));
  return b;
}

bool has_suffix(std::string_view name, std::string_view suffix) {
  return name.size() >= suffix.size() && name.substr(name.size() - suffix.size()) == suffix;
}

// "seg-" + 20 digits + ".fsg" [+ ".part"]
bool is_segment_name(std::string_view name) {
  if (has_suffix(name, kPartSuffix)) name.remove_suffix(kPartSuffix.size());
  if (!has_suffix(name, kSegmentSuffix)) return false;
  name.remove_suffix(kSegmentSuffix.size());
  if (name.size() != 24 || name.substr(0, 4) != "seg-") return false;
  return std::all_of(name.begin() + 4, name.end(), [](char c) { return c >= '0' && c <= '9'; });
}

}  // namespace

std::uint32_t crc32c_portable(std::span<const std::uint8_t> bytes, std::uint32_t crc) {
  crc = ~crc;
  for (const std::uint8_t b : bytes) crc = kCrcTable[(crc ^ b) & 0xFF] ^ (crc >> 8);
  return ~crc;
}

#if defined(__x86_64__)
namespace {
// SSE 4.2's crc32 instruction computes CRC32C (Castagnoli) itself, 8 bytes per instruction:
// the table above goes a byte at a time, and writerd and shipd checksum every frame they write
// or send (16 % of shipd's CPU was the table).
__attribute__((target("sse4.2"))) std::uint32_t crc32c_sse42(std::span<const std::uint8_t> bytes,
                                                             std::uint32_t crc) {
  std::uint64_t c = ~crc;
  const std::uint8_t* p = bytes.data();
  std::size_t n = bytes.size();
  for (; n >= 8; p += 8, n -= 8) {
    std::uint64_t word;
    std::memcpy(&word, p, 8);
    c = __builtin_ia32_crc32di(c, word);
  }
  auto c32 = static_cast<std::uint32_t>(c);
  for (; n > 0; ++p, --n) c32 = __builtin_ia32_crc32qi(c32, *p);
  return ~c32;
}

bool has_sse42() {
  static const bool has = __builtin_cpu_supports("sse4.2");
  return has;
}
}  // namespace
#endif

std::uint32_t crc32c(std::span<const std::uint8_t> bytes, std::uint32_t crc) {
#if defined(__x86_64__)
  if (has_sse42()) return crc32c_sse42(bytes, crc);
#endif
  return crc32c_portable(bytes, crc);
}

void encode(const FileHeader& h, std::span<std::uint8_t, kFileHeaderBytes> out) {
  std::uint8_t* p = out.data();
  std::memset(p, 0, kFileHeaderBytes);
  std::memcpy(p, kFileMagic.data(), 8);
  put16(p + 8, h.version);
  put16(p + 10, static_cast<std::uint16_t>(kFileHeaderBytes));
  put32(p + 12, 0);  // flags: none defined
  std::memcpy(p + 16, h.stream_id.data(), 16);
  std::memcpy(p + 32, h.key_id.data(), 32);
  put64(p + 64, static_cast<std::uint64_t>(h.created_ns));
  put32(p + 72, crc32c({p, 72}));
  put32(p + 76, 0);
}

std::optional<FileHeader> decode_file_header(std::span<const std::uint8_t, kFileHeaderBytes> in,
                                             std::string& why) {
  const std::uint8_t* p = in.data();
  if (std::memcmp(p, kFileMagic.data(), 8) != 0) {
    why = "not a flowseal segment (bad file magic)";
    return std::nullopt;
  }
  if (get32(p + 72) != crc32c({p, 72})) {
    why = "file header checksum mismatch";
    return std::nullopt;
  }
  FileHeader h;
  h.version = get16(p + 8);
  if (h.version < kOldestFormatVersion || h.version > kFormatVersion) {
    why = h.version < kOldestFormatVersion
              ? fmt::format(
                    "segment format version {} is not supported: this build reads "
                    "versions {} to {} (version {} was never deployed; re-run the "
                    "capture)",
                    h.version, kOldestFormatVersion, kFormatVersion, h.version)
              : fmt::format("unsupported segment format version {} (this build reads {} to {})",
                            h.version, kOldestFormatVersion, kFormatVersion);
    return std::nullopt;
  }
  if (get16(p + 10) != kFileHeaderBytes || get32(p + 12) != 0 || get32(p + 76) != 0) {
    why = "file header has unknown sizes or flags";
    return std::nullopt;
  }
  std::memcpy(h.stream_id.data(), p + 16, 16);
  std::memcpy(h.key_id.data(), p + 32, 32);
  h.created_ns = static_cast<std::int64_t>(get64(p + 64));
  return h;
}

void encode(const FrameHeader& h, std::span<std::uint8_t, kFrameHeaderBytes> out) {
  std::uint8_t* p = out.data();
  put32(p, kFrameMagic);
  put32(p + 4, h.compressed_bytes);
  put32(p + 8, h.uncompressed_bytes);
  put32(p + 12, h.batch.record_count);
  put_batch(p + 16, h.batch);
  put32(p + 40, h.data_crc);
  put32(p + 44, crc32c({p, 44}));
}

std::optional<FrameHeader> decode_frame_header(std::span<const std::uint8_t, kFrameHeaderBytes> in,
                                               std::string& why) {
  const std::uint8_t* p = in.data();
  if (get32(p) != kFrameMagic) {
    why = fmt::format("bad frame magic {:08x}", get32(p));
    return std::nullopt;
  }
  if (get32(p + 44) != crc32c({p, 44})) {
    why = "frame header checksum mismatch";
    return std::nullopt;
  }
  FrameHeader h;
  h.compressed_bytes = get32(p + 4);
  h.uncompressed_bytes = get32(p + 8);
  h.batch = get_batch(p + 16);
  h.batch.record_count = get32(p + 12);
  h.data_crc = get32(p + 40);
  if (h.compressed_bytes == 0 || h.compressed_bytes > kMaxFrameBytes || h.uncompressed_bytes == 0 ||
      h.uncompressed_bytes > kMaxFrameBytes) {
    why = fmt::format("frame lengths {} / {} outside 1..{}", h.compressed_bytes,
                      h.uncompressed_bytes, kMaxFrameBytes);
    return std::nullopt;
  }
  return h;
}

std::vector<std::uint8_t> encode_index(std::span<const IndexEntry> entries,
                                       std::uint64_t index_offset) {
  std::vector<std::uint8_t> out(kIndexHeaderBytes + entries.size() * kIndexEntryBytes +
                                kIndexCrcBytes + kTrailerBytes);
  std::uint8_t* p = out.data();
  std::memcpy(p, kIndexMagic.data(), 8);
  put64(p + 8, entries.size());
  p += kIndexHeaderBytes;
  for (const IndexEntry& e : entries) {
    put_batch(p, e.batch);
    put64(p + 24, e.offset);
    put32(p + 32, e.batch.record_count);
    put32(p + 36, 0);
    p += kIndexEntryBytes;
  }
  put32(p, crc32c({out.data(), static_cast<std::size_t>(p - out.data())}));
  put32(p + 4, 0);
  p += kIndexCrcBytes;
  put64(p, index_offset);
  put64(p + 8, entries.size());
  std::memcpy(p + 16, kTrailerMagic.data(), 8);
  return out;
}

// Kept here, beside encode_index, so the two cannot drift apart.
std::optional<std::vector<IndexEntry>> decode_index(std::span<const std::uint8_t> in,
                                                    std::uint64_t index_offset, std::string& why) {
  if (in.size() < kIndexHeaderBytes + kIndexCrcBytes + kTrailerBytes ||
      std::memcmp(in.data(), kIndexMagic.data(), 8) != 0) {
    why = "bad index magic";
    return std::nullopt;
  }
  const std::uint64_t count = get64(in.data() + 8);
  const std::size_t fixed = kIndexHeaderBytes + kIndexCrcBytes + kTrailerBytes;
  if (count > (in.size() - fixed) / kIndexEntryBytes ||
      fixed + count * kIndexEntryBytes != in.size()) {
    why = fmt::format("index of {} entries does not fit the {} bytes after the last frame", count,
                      in.size());
    return std::nullopt;
  }
  const std::uint8_t* crc_at = in.data() + kIndexHeaderBytes + count * kIndexEntryBytes;
  if (get32(crc_at) != crc32c({in.data(), static_cast<std::size_t>(crc_at - in.data())}) ||
      get32(crc_at + 4) != 0) {
    why = "index checksum mismatch";
    return std::nullopt;
  }
  const std::uint8_t* trailer = crc_at + kIndexCrcBytes;
  if (std::memcmp(trailer + 16, kTrailerMagic.data(), 8) != 0 || get64(trailer) != index_offset ||
      get64(trailer + 8) != count) {
    why = "trailer does not match the index";
    return std::nullopt;
  }
  std::vector<IndexEntry> entries(count);
  const std::uint8_t* p = in.data() + kIndexHeaderBytes;
  for (IndexEntry& e : entries) {
    e.batch = get_batch(p);
    e.offset = get64(p + 24);
    e.batch.record_count = get32(p + 32);
    if (get32(p + 36) != 0) {
      why = "index entry has non-zero reserved bytes";
      return std::nullopt;
    }
    p += kIndexEntryBytes;
  }
  return entries;
}

std::optional<std::uint64_t> parse_trailer(std::span<const std::uint8_t, kTrailerBytes> in,
                                           std::uint64_t& count) {
  if (std::memcmp(in.data() + 16, kTrailerMagic.data(), 8) != 0) return std::nullopt;
  count = get64(in.data() + 8);
  return get64(in.data());
}

std::string segment_name(std::uint64_t first_seq) {
  return fmt::format("seg-{:020}{}", first_seq, kSegmentSuffix);
}

std::optional<std::uint64_t> first_seq_of_name(const std::filesystem::path& file) {
  const std::string name = file.filename().string();
  if (!is_segment_name(name)) return std::nullopt;
  std::uint64_t value = 0;
  const auto [end, error] = std::from_chars(name.data() + 4, name.data() + 24, value);
  if (error != std::errc() || end != name.data() + 24) return std::nullopt;  // past 2^64-1
  return value;
}

bool is_part(const std::filesystem::path& file) {
  return has_suffix(file.filename().string(), kPartSuffix);
}

std::vector<std::filesystem::path> list_segments(const std::filesystem::path& dir) {
  std::vector<std::filesystem::path> done, parts;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    if (!entry.is_regular_file() || !is_segment_name(name)) continue;
    (has_suffix(name, kPartSuffix) ? parts : done).push_back(entry.path());
  }
  std::sort(done.begin(), done.end());
  std::sort(parts.begin(), parts.end());
  done.insert(done.end(), parts.begin(), parts.end());
  return done;
}

std::string to_hex(std::span<const std::uint8_t> bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (const std::uint8_t b : bytes) out += fmt::format("{:02x}", b);
  return out;
}

}  // namespace flowseal::segment
