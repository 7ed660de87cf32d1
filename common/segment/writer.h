// SegmentWriter: appends sealed batches to one segment file, `NAME.part` until close() writes
// the index and trailer, fsyncs and renames it to NAME (then fsyncs the directory).
//
// Guarantees: the file only ever holds whole frames after a successful append — a failed write
// (disk full, I/O error) is cut back off, so the caller can simply retry the same batch later.
// When append() returns ok the batch is in the file, and on disk if the fsync policy is
// `batch` (`interval`: within fsync_interval; `rotate`: when the segment closes). Nothing
// throws: every failure is an IoStatus naming the file and the errno. Destroying a writer
// without close() leaves the `.part` for recovery (that is what a crash does too).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "segment/format.h"
#include "unique_fd.h"

namespace flowseal::segment {

enum class FsyncPolicy { kBatch, kInterval, kRotate };
// "batch" | "interval" | "rotate"; throws std::invalid_argument naming the value.
FsyncPolicy parse_fsync_policy(std::string_view name);

struct WriterOptions {
  int zstd_level = 3;
  std::uint16_t community_id_seed = 0;  // flowd.community_id_seed (see columns.h)
  FsyncPolicy fsync = FsyncPolicy::kBatch;
  std::chrono::milliseconds fsync_interval{1000};
  // Mode of each segment file (writer.file_mode), set exactly whatever the umask.
  unsigned file_mode = 0640;
};

struct IoStatus {
  int error = 0;     // errno, or EINVAL / EIO for our own checks
  std::string what;  // "FILE: write failed: No space left on device"
  bool ok() const { return error == 0; }
  static IoStatus failure(int error, std::string what) { return {error, std::move(what)}; }
};

class SegmentWriter {
 public:
  // Starts `dir/segment_name(first_seq).part` (created exclusively) with `header`.
  static std::optional<SegmentWriter> create(const std::filesystem::path& dir,
                                             std::uint64_t first_seq, const FileHeader& header,
                                             const WriterOptions& options, IoStatus& status);
  // Continues a `.part` found at start-up: cuts it to `end` (just past its last whole frame,
  // `frames` being those frames) and appends after it.
  static std::optional<SegmentWriter> adopt(const std::filesystem::path& part,
                                            const FileHeader& header,
                                            std::vector<IndexEntry> frames, std::uint64_t end,
                                            const WriterOptions& options, IoStatus& status);

  SegmentWriter(SegmentWriter&&) noexcept;
  SegmentWriter& operator=(SegmentWriter&&) noexcept;
  ~SegmentWriter();

  // Encodes `message` (one SealedBatch in flat-array form) as columns (columns.h), compresses
  // them into one frame and appends it.
  IoStatus append(const BatchMeta& batch, std::span<const std::byte> message);
  // fsyncs if the policy is `interval` and the interval passed since the last fsync.
  IoStatus sync_if_due();
  // When sync_if_due() has an fsync to do if nothing else is written (time_point::max():
  // none: other policy, nothing unsynced or no file).
  std::chrono::steady_clock::time_point sync_due_at() const;
  // Index, trailer, fsync, rename to the final name, fsync of the directory. After ok, the
  // writer holds nothing; after a failure the `.part` is as before and close() may be retried.
  IoStatus close();

  const std::filesystem::path& path() const { return path_; }
  const FileHeader& header() const { return header_; }
  std::uint64_t bytes() const { return end_; }
  std::size_t batches() const { return frames_.size(); }
  bool closed() const { return !fd_; }

 private:
  struct ZstdState;
  SegmentWriter(std::filesystem::path path, UniqueFd fd, const FileHeader& header,
                const WriterOptions& options);
  IoStatus write_at(std::uint64_t offset, std::span<const std::uint8_t> bytes);
  IoStatus sync();
  bool sync_due() const;  // `interval` policy, unsynced bytes, the interval passed
  IoStatus fail(int error, std::string_view action);

  std::filesystem::path path_;
  UniqueFd fd_;
  FileHeader header_;
  WriterOptions options_;
  std::uint64_t end_ = 0;
  std::vector<IndexEntry> frames_;
  std::vector<std::uint8_t> stored_;  // the batch as columns, reused
  std::vector<std::uint8_t> buffer_;  // frame header + compressed bytes, reused
  bool unsynced_ = false;
  std::size_t synced_frames_ = 0;  // frames_ covered by the last good fsync
  std::chrono::steady_clock::time_point last_sync_;
  std::unique_ptr<ZstdState> zstd_;
};

// fsyncs a directory, so a file created or renamed in it survives a crash.
IoStatus sync_directory(const std::filesystem::path& dir);

}  // namespace flowseal::segment
