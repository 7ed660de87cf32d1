// The segment file format: where writerd stores sealed batches and what `flowseal cat` and
// `flowseal verify` read. docs/FORMAT.md describes it byte by byte; this header is its code.
//
//   file header   80 bytes: "FLWSSEG1", version, stream id, key id, created time, CRC32C
//   frame × n     48-byte frame header (lengths, batch seq, first/last time, CRC32C of the
//                 compressed bytes, CRC32C of the header) + one zstd frame holding one
//                 sealed batch as columns (columns.h)
//   index         written on close: "FLWSIDX1", count, one entry per frame, CRC32C
//   trailer       24 bytes: index offset, count, "FLWSEND1"
//
// Every integer is little-endian and every structure is encoded and decoded field by field
// (never memcpy'd as a struct), so the format does not depend on the compiler's layout.
// Guarantees a reader can rely on: every header carries its own CRC32C, so a corrupt length is
// caught before it is followed; lengths are bounded (kMaxFrameBytes), so a forged one cannot
// make a reader allocate gigabytes; a file without its index (a `.part`) is still readable
// frame by frame.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace flowseal::segment {

using StreamId = std::array<std::uint8_t, 16>;
using KeyId = std::array<std::uint8_t, 32>;

// What is written: 3, records with Direction structs and conn.log's columns (columns.h).
// Also read: 2, records with flat per-direction fields. 1 stored the Cap'n Proto message and
// was never deployed; not read.
inline constexpr std::uint16_t kFormatVersion = 3;
inline constexpr std::uint16_t kOldestFormatVersion = 2;
inline constexpr std::size_t kFileHeaderBytes = 80;
inline constexpr std::size_t kFrameHeaderBytes = 48;
inline constexpr std::size_t kIndexHeaderBytes = 16;
inline constexpr std::size_t kIndexEntryBytes = 40;
inline constexpr std::size_t kIndexCrcBytes = 8;
inline constexpr std::size_t kTrailerBytes = 24;
// Largest compressed or uncompressed batch accepted: the Cap'n Proto reader's traversal limit
// (64 MiB) would refuse a larger message anyway.
inline constexpr std::uint32_t kMaxFrameBytes = 64u << 20;

inline constexpr std::string_view kFileMagic = "FLWSSEG1";
inline constexpr std::string_view kIndexMagic = "FLWSIDX1";
inline constexpr std::string_view kTrailerMagic = "FLWSEND1";
inline constexpr std::uint32_t kFrameMagic = 0x52465346u;  // "FSFR" in file order

inline constexpr std::string_view kSegmentSuffix = ".fsg";
inline constexpr std::string_view kPartSuffix = ".part";

struct FileHeader {
  std::uint16_t version = kFormatVersion;
  StreamId stream_id{};
  KeyId key_id{};
  std::int64_t created_ns = 0;  // CLOCK_REALTIME when the segment was started
};

// What a frame header says about the batch inside, so a reader can skip or seek by seq and
// time without decompressing.
struct BatchMeta {
  std::uint64_t seq = 0;
  std::int64_t first_ts_ns = 0;
  std::int64_t last_ts_ns = 0;
  std::uint32_t record_count = 0;
};

struct FrameHeader {
  BatchMeta batch;
  std::uint32_t compressed_bytes = 0;
  std::uint32_t uncompressed_bytes = 0;
  std::uint32_t data_crc = 0;  // CRC32C of the compressed bytes
};

struct IndexEntry {
  BatchMeta batch;
  std::uint64_t offset = 0;  // of the frame header
};

// CRC32C (Castagnoli), as iSCSI and ext4 use it; `crc` continues an earlier value.
// With the CPU's crc32 instruction where there is one (x86-64 SSE 4.2), else a table.
std::uint32_t crc32c(std::span<const std::uint8_t> bytes, std::uint32_t crc = 0);
// The table version always (tests compare the two).
std::uint32_t crc32c_portable(std::span<const std::uint8_t> bytes, std::uint32_t crc = 0);

void encode(const FileHeader& header, std::span<std::uint8_t, kFileHeaderBytes> out);
// nullopt with `why` set when the magic, version, reserved bytes or CRC do not match.
std::optional<FileHeader> decode_file_header(std::span<const std::uint8_t, kFileHeaderBytes> in,
                                             std::string& why);

void encode(const FrameHeader& header, std::span<std::uint8_t, kFrameHeaderBytes> out);
std::optional<FrameHeader> decode_frame_header(std::span<const std::uint8_t, kFrameHeaderBytes> in,
                                               std::string& why);

// Index and trailer together, as written after the last frame at `index_offset`.
std::vector<std::uint8_t> encode_index(std::span<const IndexEntry> entries,
                                       std::uint64_t index_offset);
// `in` is everything from `index_offset` to the end of the file.
std::optional<std::vector<IndexEntry>> decode_index(std::span<const std::uint8_t> in,
                                                    std::uint64_t index_offset, std::string& why);
// The index offset a trailer names (and its entry count), or nullopt if `in` is no trailer.
std::optional<std::uint64_t> parse_trailer(std::span<const std::uint8_t, kTrailerBytes> in,
                                           std::uint64_t& count);

// `seg-<first seq, 20 digits>.fsg`: names sort in stream order.
std::string segment_name(std::uint64_t first_seq);
// The first seq a segment's name (closed or .part) says; nullopt for any other name.
std::optional<std::uint64_t> first_seq_of_name(const std::filesystem::path& file);
bool is_part(const std::filesystem::path& file);

// The segment files of `dir` in stream order, `.part` files last. Other files (keys/,
// anything not named like a segment) are ignored. Throws std::filesystem::filesystem_error
// if `dir` cannot be read.
std::vector<std::filesystem::path> list_segments(const std::filesystem::path& dir);

std::string to_hex(std::span<const std::uint8_t> bytes);

}  // namespace flowseal::segment
