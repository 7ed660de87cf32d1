// SegmentFollower: hands out, in stream order, the batches writerd has made durable in one
// store directory, starting after a given seq, as the frames stored (header + zstd bytes).
//
// It reads closed segments (durable: writerd fsyncs them before the rename) and the open
// `.part` while writerd appends to it. A `.part`'s frames are handed out only after the
// follower itself has fsynced the file (cheap when writer.fsync = batch has done it already),
// so shipd is never ahead of what is on the probe's disk. A frame still being written (a
// `.part` ending inside a frame) is not an error: it is read on a later poll. A `.part`
// renamed to its closed name is followed there. Damage in a closed segment is reported once
// (error_count, last_error) and the follower goes on with the next segment: the Core then
// sees the gap, as `verify` does locally.
//
// Not thread-safe; one follower per store directory.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "segment/format.h"
#include "segment/reader.h"

namespace flowseal::shipd {

// What a follower hands out of each batch: the stored bytes (shipping publishes them), the
// decoded message (the exporters read its records; shipping on a live probe reads the
// records' times for its latency figures), or both. kMessageNoDerivedIds: the message, its
// records without the Community IDs the store derives rather than stores (the IPFIX export,
// which sends none, saves a SHA-1 per record).
enum class FrameParts { kStoredBytes, kMessage, kBoth, kMessageNoDerivedIds };

struct StoredFrame {
  segment::FileHeader file;    // the segment's header: stream id, key id
  segment::FrameHeader frame;  // seq, times, record count
  // kStoredBytes, kBoth: frame header + zstd bytes, as stored. Empty otherwise.
  std::vector<std::uint8_t> bytes;
  // All but kStoredBytes: the SealedBatch message rebuilt from the stored columns (8-byte
  // aligned words), of message_bytes bytes. Empty with kStoredBytes.
  std::vector<std::uint64_t> message;
  std::size_t message_bytes = 0;
};

class SegmentFollower {
 public:
  // `after`: the last batch already shipped (nullopt: ship from the first stored batch).
  SegmentFollower(std::filesystem::path dir, std::optional<std::uint64_t> after,
                  FrameParts parts = FrameParts::kStoredBytes);

  // The next durable batch after the last one handed out, or nullopt if there is none yet.
  std::optional<StoredFrame> next();
  // Hands back a StoredFrame's message once its records are used: its storage takes the
  // next batch's message, so following a store does not allocate per batch.
  void recycle(std::vector<std::uint64_t>&& message) { spare_ = std::move(message); }
  // Starts again after `after` (a failed publish: everything after the last ack is re-read).
  void rewind(std::optional<std::uint64_t> after);

  // True when no `.part` exists and every closed segment has been read to its end: the
  // store is complete (writerd drained) and everything in it was handed out.
  bool at_end_of_closed_store();
  std::uint64_t error_count() const { return errors_; }
  const std::string& last_error() const { return last_error_; }
  // The highest seq stored in the directory (for the lag), as far as the follower has seen.
  std::optional<std::uint64_t> newest_seen() const { return newest_seen_; }

 private:
  bool open_next_segment();
  bool open(const std::filesystem::path& file, std::uint64_t first, bool part);
  std::filesystem::path path_of(std::uint64_t first, bool part) const;
  void note_error(const std::string& what);
  void retire_reader();

  std::filesystem::path dir_;
  std::optional<std::uint64_t> after_;
  FrameParts parts_ = FrameParts::kStoredBytes;
  // The segment being read, by its first seq (its name survives the .part -> closed rename).
  std::optional<std::uint64_t> current_first_;
  bool current_is_part_ = false;
  bool finished_current_ = false;    // read to its end (closed) or given up (damage, deleted)
  std::uint64_t resume_offset_ = 0;  // next frame's offset in the current segment
  std::optional<segment::SegmentReader> reader_;
  // The last reader closed: the next one opened takes its decompression state and buffers
  // (a .part is opened again each time it grows).
  std::optional<segment::SegmentReader> spent_;
  std::uint64_t part_size_seen_ = 0;  // size of the .part when last read to its end
  std::uint64_t errors_ = 0;
  std::string last_error_;
  std::optional<std::uint64_t> newest_seen_;
  std::vector<std::uint64_t> spare_;  // recycled message storage
};

}  // namespace flowseal::shipd
