// SegmentReader: reads a segment file frame after frame, from its start, without needing the
// index, so a `.part` that writerd is still writing (or that a crash left behind) is readable.
//
// Guarantees: it never throws and never crashes on a damaged file. Every damage — bad magic,
// a truncated header or frame, a checksum mismatch, a zstd error, a length out of bounds, a
// batch whose columns do not decode, an index that disagrees with the frames — ends the read with a
// SegmentError naming the file, the byte offset and what is wrong. Lengths are checked against
// kMaxFrameBytes and the file size before anything is allocated. A closed segment (not `.part`)
// must end with its index; one that ends early is reported as truncated.
//
// One reader owns one file descriptor and one zstd context; it is not thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "segment/format.h"
#include "unique_fd.h"

namespace flowseal::segment {

enum class Damage {
  kIo,         // the file could not be opened or read
  kBadHeader,  // the file header is missing, torn or corrupt
  kBadMagic,   // a frame does not start where the previous one ended
  kTruncated,  // the file ends inside a frame or before its index
  kChecksum,   // a frame header or frame's bytes do not match their CRC32C
  kOversize,   // a length is out of bounds
  kZstd,       // the frame does not decompress (or to another length than declared)
  kBadIndex,   // the index or trailer is corrupt or disagrees with the frames
  kBadBatch,   // the decompressed batch does not decode (columns.h)
};

struct SegmentError {
  std::filesystem::path file;
  std::uint64_t offset = 0;
  Damage kind = Damage::kIo;
  std::string what;
  // "FILE: offset N: what"
  std::string message() const;
};

class SegmentReader {
 public:
  enum class Next { kFrame, kEnd, kError };

  // How far next() reads a frame. kBatches: decompressed and decoded (message() valid).
  // kStoredBytes: its header, bounds, data CRC and zstd frame size are checked, nothing is
  // decompressed (message() is empty): for shipd, which publishes the stored bytes as they are
  // and whose Core decodes and verifies each batch anyway; decoding cost it 2/3 of its CPU.
  enum class Depth { kBatches, kStoredBytes };

  // Opens `file` and reads its header; error() says why if that failed.
  explicit SegmentReader(std::filesystem::path file, Depth depth = Depth::kBatches);
  // The same, reading with `spent`'s decompression context, batch codec and buffers (a
  // follower opening a growing `.part` again: nothing to set up and fault in anew).
  SegmentReader(std::filesystem::path file, Depth depth, SegmentReader&& spent);
  SegmentReader(SegmentReader&&) noexcept;
  SegmentReader& operator=(SegmentReader&&) noexcept;
  ~SegmentReader();

  // Decoding (columns.h): false leaves out the Community IDs the store derived, and their
  // SHA-1s (for the IPFIX export). The messages are then not the sealed records.
  void set_decode_derived_community_ids(bool decode);

  const std::filesystem::path& file() const { return file_; }
  bool ok() const { return !error_; }
  const std::optional<SegmentError>& error() const { return error_; }
  const FileHeader& header() const { return header_; }

  // Reads the next frame. kFrame: frame() and message() describe it. kEnd: no more frames
  // (has_index() says whether the index was there). kError: error() says what and where;
  // every later call returns kError too.
  Next next();
  const FrameHeader& frame() const { return frame_; }
  // The last frame's zstd bytes as stored (frame() is their header): what shipd publishes.
  std::span<const std::uint8_t> compressed() const { return compressed_; }
  std::uint64_t frame_offset() const { return frame_offset_; }
  // The SealedBatch message of the last frame, rebuilt from its columns (columns.h), 8-byte
  // aligned for Cap'n Proto; valid until the next call to next().
  std::span<const std::byte> message() const;
  // Moves the last frame's message out (message() is empty after), with its size in bytes:
  // for a caller that keeps it past the next call to next(), without a copy. `storage`: a
  // buffer for the next frames' messages (one handed out before and done with), so that
  // reading does not allocate and fault in fresh memory for every batch.
  std::vector<std::uint64_t> take_message(std::size_t& bytes,
                                          std::vector<std::uint64_t> storage = {});

  // Offset just past the last whole frame read (the file header's end before any).
  std::uint64_t end_of_frames() const { return end_of_frames_; }
  bool has_index() const { return has_index_; }
  // Frames read so far, as index entries.
  const std::vector<IndexEntry>& frames() const { return frames_; }

  // Moves to the frame at `offset` (taken from an index entry), so the next next() reads it.
  void seek(std::uint64_t offset);

 private:
  struct ZstdState;
  SegmentReader(std::filesystem::path file, Depth depth, std::unique_ptr<ZstdState> zstd);
  Next fail(Damage kind, std::uint64_t offset, std::string what);
  bool read_at(std::uint64_t offset, std::span<std::uint8_t> out);
  Next read_index_here();

  std::filesystem::path file_;
  UniqueFd fd_;
  std::uint64_t size_ = 0;
  std::optional<SegmentError> error_;
  FileHeader header_;
  FrameHeader frame_;
  std::uint64_t frame_offset_ = 0;
  std::uint64_t offset_ = 0;
  std::uint64_t end_of_frames_ = 0;
  bool has_index_ = false;
  bool done_ = false;
  Depth depth_ = Depth::kBatches;
  bool sought_ = false;
  std::vector<IndexEntry> frames_;
  std::vector<std::uint8_t> compressed_;
  std::vector<std::uint8_t> stored_;    // the frame decompressed: the batch as columns
  std::vector<std::uint64_t> message_;  // uint64 storage: Cap'n Proto word alignment
  std::size_t message_bytes_ = 0;
  std::unique_ptr<ZstdState> zstd_;
};

// Reads a closed segment's index through its trailer, without reading the frames (for seeking
// by seq or time, and for finding the newest stored seq quickly). nullopt with `error` set
// when the file has no valid index (a `.part`, or damage: then read it frame by frame).
std::optional<std::vector<IndexEntry>> read_index(const std::filesystem::path& file,
                                                  SegmentError& error);

std::string_view to_string(Damage kind);

}  // namespace flowseal::segment
