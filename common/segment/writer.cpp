#include "segment/writer.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>  // renameat2
#include <cstring>
#include <stdexcept>

#include <fmt/format.h>
#include <zstd.h>

#include "segment/columns.h"

namespace flowseal::segment {

struct SegmentWriter::ZstdState {
  struct Free {
    void operator()(ZSTD_CCtx* ctx) const { ZSTD_freeCCtx(ctx); }
  };
  explicit ZstdState(const WriterOptions& options)
      : codec(ColumnOptions{options.community_id_seed}) {}
  std::unique_ptr<ZSTD_CCtx, Free> cctx{ZSTD_createCCtx()};
  BatchCodec codec;
};

FsyncPolicy parse_fsync_policy(std::string_view name) {
  if (name == "batch") return FsyncPolicy::kBatch;
  if (name == "interval") return FsyncPolicy::kInterval;
  if (name == "rotate") return FsyncPolicy::kRotate;
  throw std::invalid_argument(
      fmt::format("writer.fsync: '{}' is not one of batch, interval, rotate", name));
}

IoStatus sync_directory(const std::filesystem::path& dir) {
  UniqueFd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd || ::fsync(fd.get()) != 0) {
    const int err = errno;
    return IoStatus::failure(
        err, fmt::format("{}: cannot fsync the directory: {}", dir.string(), std::strerror(err)));
  }
  return {};
}

SegmentWriter::SegmentWriter(std::filesystem::path path, UniqueFd fd, const FileHeader& header,
                             const WriterOptions& options)
    : path_(std::move(path)),
      fd_(std::move(fd)),
      header_(header),
      options_(options),
      last_sync_(std::chrono::steady_clock::now()),
      zstd_(std::make_unique<ZstdState>(options)) {}

SegmentWriter::SegmentWriter(SegmentWriter&&) noexcept = default;
SegmentWriter& SegmentWriter::operator=(SegmentWriter&&) noexcept = default;
SegmentWriter::~SegmentWriter() = default;

IoStatus SegmentWriter::fail(int error, std::string_view action) {
  return IoStatus::failure(error,
                           fmt::format("{}: {}: {}", path_.string(), action, std::strerror(error)));
}

std::optional<SegmentWriter> SegmentWriter::create(const std::filesystem::path& dir,
                                                   std::uint64_t first_seq,
                                                   const FileHeader& header,
                                                   const WriterOptions& options, IoStatus& status) {
  std::filesystem::path path = dir / (segment_name(first_seq) + std::string(kPartSuffix));
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                     static_cast<mode_t>(options.file_mode)));
  if (fd && ::fchmod(fd.get(), static_cast<mode_t>(options.file_mode)) != 0) {
    const int err = errno;
    ::unlink(path.c_str());
    status = IoStatus::failure(err, fmt::format("{}: cannot chmod {:04o}: {}", path.string(),
                                                options.file_mode, std::strerror(err)));
    return std::nullopt;
  }
  if (!fd) {
    const int err = errno;
    status = IoStatus::failure(
        err, fmt::format("{}: cannot create: {}", path.string(), std::strerror(err)));
    return std::nullopt;
  }
  SegmentWriter writer(path, std::move(fd), header, options);
  if (!writer.zstd_->cctx) {
    status = IoStatus::failure(ENOMEM, "cannot create a zstd compression context");
    return std::nullopt;
  }
  std::array<std::uint8_t, kFileHeaderBytes> raw{};
  encode(header, raw);
  status = writer.write_at(0, raw);
  if (status.ok() && options.fsync != FsyncPolicy::kRotate) {
    status = writer.sync();
    if (status.ok()) status = sync_directory(dir);
  }
  if (!status.ok()) {
    // A header-less .part would only confuse recovery: take it away again.
    ::unlink(path.c_str());
    return std::nullopt;
  }
  writer.end_ = kFileHeaderBytes;
  return writer;
}

std::optional<SegmentWriter> SegmentWriter::adopt(const std::filesystem::path& part,
                                                  const FileHeader& header,
                                                  std::vector<IndexEntry> frames, std::uint64_t end,
                                                  const WriterOptions& options, IoStatus& status) {
  UniqueFd fd(::open(part.c_str(), O_WRONLY | O_CLOEXEC));
  if (!fd || ::ftruncate(fd.get(), static_cast<off_t>(end)) != 0 || ::fsync(fd.get()) != 0) {
    const int err = errno;
    status = IoStatus::failure(err, fmt::format("{}: cannot cut back to offset {}: {}",
                                                part.string(), end, std::strerror(err)));
    return std::nullopt;
  }
  SegmentWriter writer(part, std::move(fd), header, options);
  if (!writer.zstd_->cctx) {
    status = IoStatus::failure(ENOMEM, "cannot create a zstd compression context");
    return std::nullopt;
  }
  writer.end_ = end;
  writer.frames_ = std::move(frames);
  writer.synced_frames_ = writer.frames_.size();  // fsynced after the cut above
  status = {};
  return writer;
}

IoStatus SegmentWriter::write_at(std::uint64_t offset, std::span<const std::uint8_t> bytes) {
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::pwrite(fd_.get(), bytes.data() + done, bytes.size() - done,
                               static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return fail(n < 0 ? errno : EIO, fmt::format("write at offset {} failed", offset));
    done += static_cast<std::size_t>(n);
  }
  return {};
}

IoStatus SegmentWriter::sync() {
  if (::fsync(fd_.get()) != 0) {
    IoStatus status = fail(errno, "fsync failed");
    // Batches appended since the last good fsync were reported stored (`interval`, `rotate`)
    // and the ring has let them go. The kernel may have dropped the pages it could not
    // write, and a retried fsync then succeeds without them: say which batches that risks.
    if (frames_.size() > synced_frames_) {
      status.what += fmt::format(
          " (batches {}..{}, stored since the last good fsync, may not be on disk: a retried "
          "fsync can succeed without them)",
          frames_[synced_frames_].batch.seq, frames_.back().batch.seq);
    }
    return status;
  }
  unsynced_ = false;
  synced_frames_ = frames_.size();
  last_sync_ = std::chrono::steady_clock::now();
  return {};
}

IoStatus SegmentWriter::append(const BatchMeta& batch, std::span<const std::byte> message) {
  if (!fd_) return IoStatus::failure(EBADF, fmt::format("{}: append after close", path_.string()));
  if (message.empty() || message.size() > kMaxFrameBytes || message.size() % 8 != 0) {
    return IoStatus::failure(
        EINVAL, fmt::format("{}: batch {}: a message of {} bytes cannot be stored (1..{}, whole "
                            "8-byte words)",
                            path_.string(), batch.seq, message.size(), kMaxFrameBytes));
  }
  zstd_->codec.encode(message, stored_);
  if (stored_.size() > kMaxFrameBytes) {
    return IoStatus::failure(
        EINVAL, fmt::format("{}: batch {}: {} bytes encoded, more than {}", path_.string(),
                            batch.seq, stored_.size(), kMaxFrameBytes));
  }
  ZSTD_CCtx* cctx = zstd_->cctx.get();
  ZSTD_CCtx_reset(cctx, ZSTD_reset_session_only);
  ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, options_.zstd_level);
  ZSTD_CCtx_setParameter(cctx, ZSTD_c_checksumFlag, 1);
  ZSTD_CCtx_setParameter(cctx, ZSTD_c_contentSizeFlag, 1);
  buffer_.resize(kFrameHeaderBytes + ZSTD_compressBound(stored_.size()));
  const std::size_t n =
      ZSTD_compress2(cctx, buffer_.data() + kFrameHeaderBytes, buffer_.size() - kFrameHeaderBytes,
                     stored_.data(), stored_.size());
  if (ZSTD_isError(n) || n > kMaxFrameBytes) {
    return IoStatus::failure(EIO, fmt::format("{}: batch {}: zstd: {}", path_.string(), batch.seq,
                                              ZSTD_isError(n) ? ZSTD_getErrorName(n) : "too big"));
  }
  FrameHeader header;
  header.batch = batch;
  header.compressed_bytes = static_cast<std::uint32_t>(n);
  header.uncompressed_bytes = static_cast<std::uint32_t>(stored_.size());
  header.data_crc = crc32c({buffer_.data() + kFrameHeaderBytes, n});
  encode(header, std::span<std::uint8_t, kFrameHeaderBytes>(buffer_.data(), kFrameHeaderBytes));

  IoStatus status = write_at(end_, {buffer_.data(), kFrameHeaderBytes + n});
  if (status.ok()) {
    unsynced_ = true;
    // The `interval` fsync due now is part of this append too: if it fails, the frame is cut
    // off like any failed write, so that the caller's retry stores the batch once (it used to
    // stay in the file while append said it failed, and the retry stored it twice).
    if (options_.fsync == FsyncPolicy::kBatch || sync_due()) status = sync();
  }
  if (!status.ok()) {
    // Whatever part of the frame reached the file is cut off again: the file keeps only whole
    // frames and the caller retries this batch. If even that fails, the reader and recovery
    // still stop at the torn frame.
    if (::ftruncate(fd_.get(), static_cast<off_t>(end_)) != 0) {
      status.what += fmt::format(" (and cutting back to offset {} failed too)", end_);
    }
    return status;
  }
  frames_.push_back(IndexEntry{batch, end_});
  end_ += kFrameHeaderBytes + n;
  return {};
}

bool SegmentWriter::sync_due() const {
  return fd_ && unsynced_ && options_.fsync == FsyncPolicy::kInterval &&
         std::chrono::steady_clock::now() - last_sync_ >= options_.fsync_interval;
}

std::chrono::steady_clock::time_point SegmentWriter::sync_due_at() const {
  if (!fd_ || !unsynced_ || options_.fsync != FsyncPolicy::kInterval) {
    return std::chrono::steady_clock::time_point::max();
  }
  return last_sync_ +
         std::chrono::duration_cast<std::chrono::steady_clock::duration>(options_.fsync_interval);
}

IoStatus SegmentWriter::sync_if_due() { return sync_due() ? sync() : IoStatus{}; }

IoStatus SegmentWriter::close() {
  if (!fd_) return {};
  const std::vector<std::uint8_t> index = encode_index(frames_, end_);
  IoStatus status = write_at(end_, index);
  if (status.ok()) status = sync();
  if (!status.ok()) {
    if (::ftruncate(fd_.get(), static_cast<off_t>(end_)) != 0) {
      status.what += fmt::format(" (and cutting back to offset {} failed too)", end_);
    }
    return status;
  }
  std::filesystem::path final_path = path_;
  final_path.replace_extension();  // drops ".part"
  // RENAME_NOREPLACE: a finished segment of the same name is never overwritten.
  if (::renameat2(AT_FDCWD, path_.c_str(), AT_FDCWD, final_path.c_str(), RENAME_NOREPLACE) != 0) {
    const int err = errno;
    ::ftruncate(fd_.get(), static_cast<off_t>(end_));
    return IoStatus::failure(err, fmt::format("{}: cannot rename to {}: {}", path_.string(),
                                              final_path.filename().string(), std::strerror(err)));
  }
  fd_.reset();
  path_ = final_path;
  // The rename happened; a failed directory fsync only weakens its durability, and the
  // file is complete either way, so it is reported but the writer is closed.
  return sync_directory(path_.parent_path());
}

}  // namespace flowseal::segment
