#include "segment/reader.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include <fmt/format.h>
#include <zstd.h>

#include "segment/columns.h"

namespace flowseal::segment {

struct SegmentReader::ZstdState {
  struct Free {
    void operator()(ZSTD_DCtx* ctx) const { ZSTD_freeDCtx(ctx); }
  };
  std::unique_ptr<ZSTD_DCtx, Free> dctx{ZSTD_createDCtx()};
  BatchCodec codec;  // the seed is in each stored batch; the reader needs none
};

void SegmentReader::set_decode_derived_community_ids(bool decode) {
  if (!zstd_) return;
  ColumnOptions options;
  options.decode_derived_community_ids = decode;
  zstd_->codec.set_options(options);
}

std::string SegmentError::message() const {
  return fmt::format("{}: offset {}: {}", file.string(), offset, what);
}

std::string_view to_string(Damage kind) {
  switch (kind) {
    case Damage::kIo: return "I/O error";
    case Damage::kBadHeader: return "bad file header";
    case Damage::kBadMagic: return "bad frame magic";
    case Damage::kTruncated: return "truncated";
    case Damage::kChecksum: return "checksum mismatch";
    case Damage::kOversize: return "length out of bounds";
    case Damage::kZstd: return "zstd error";
    case Damage::kBadIndex: return "bad index";
    case Damage::kBadBatch: return "bad batch encoding";
  }
  return "unknown";
}

namespace {

bool pread_all(int fd, std::uint64_t offset, std::span<std::uint8_t> out, int& err) {
  std::size_t done = 0;
  while (done < out.size()) {
    const ssize_t n =
        ::pread(fd, out.data() + done, out.size() - done, static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      err = n < 0 ? errno : 0;
      return false;
    }
    done += static_cast<std::size_t>(n);
  }
  return true;
}

}  // namespace

SegmentReader::SegmentReader(std::filesystem::path file, Depth depth)
    : SegmentReader(std::move(file), depth, std::make_unique<ZstdState>()) {}

SegmentReader::SegmentReader(std::filesystem::path file, Depth depth, SegmentReader&& spent)
    : SegmentReader(std::move(file), depth,
                    spent.zstd_ && spent.zstd_->dctx ? std::move(spent.zstd_)
                                                     : std::make_unique<ZstdState>()) {
  message_ = std::move(spent.message_);
  stored_ = std::move(spent.stored_);
  compressed_ = std::move(spent.compressed_);
}

SegmentReader::SegmentReader(std::filesystem::path file, Depth depth,
                             std::unique_ptr<ZstdState> zstd)
    : file_(std::move(file)), depth_(depth), zstd_(std::move(zstd)) {
  fd_.reset(::open(file_.c_str(), O_RDONLY | O_CLOEXEC));
  struct stat st {};
  if (!fd_ || ::fstat(fd_.get(), &st) != 0) {
    fail(Damage::kIo, 0, fmt::format("cannot open: {}", std::strerror(errno)));
    return;
  }
  if (!zstd_->dctx) {
    fail(Damage::kIo, 0, "cannot create a zstd decompression context");
    return;
  }
  size_ = static_cast<std::uint64_t>(st.st_size);
  if (size_ < kFileHeaderBytes) {
    fail(Damage::kBadHeader, size_,
         fmt::format("file header truncated: {} of {} bytes", size_, kFileHeaderBytes));
    return;
  }
  std::array<std::uint8_t, kFileHeaderBytes> raw{};
  if (!read_at(0, raw)) return;
  std::string why;
  auto header = decode_file_header(raw, why);
  if (!header) {
    fail(Damage::kBadHeader, 0, why);
    return;
  }
  header_ = *header;
  offset_ = end_of_frames_ = kFileHeaderBytes;
}

SegmentReader::SegmentReader(SegmentReader&&) noexcept = default;
SegmentReader& SegmentReader::operator=(SegmentReader&&) noexcept = default;
SegmentReader::~SegmentReader() = default;

SegmentReader::Next SegmentReader::fail(Damage kind, std::uint64_t offset, std::string what) {
  if (!error_) error_ = SegmentError{file_, offset, kind, std::move(what)};
  return Next::kError;
}

bool SegmentReader::read_at(std::uint64_t offset, std::span<std::uint8_t> out) {
  int err = 0;
  if (pread_all(fd_.get(), offset, out, err)) return true;
  fail(err ? Damage::kIo : Damage::kTruncated, offset,
       err ? fmt::format("read failed: {}", std::strerror(err))
           : std::string("file shrank while being read"));
  return false;
}

std::span<const std::byte> SegmentReader::message() const {
  return {reinterpret_cast<const std::byte*>(message_.data()), message_bytes_};
}

std::vector<std::uint64_t> SegmentReader::take_message(std::size_t& bytes,
                                                       std::vector<std::uint64_t> storage) {
  bytes = message_bytes_;
  message_bytes_ = 0;
  storage.clear();
  return std::exchange(message_, std::move(storage));
}

void SegmentReader::seek(std::uint64_t offset) {
  if (error_) return;
  offset_ = offset;
  done_ = false;
  sought_ = true;  // frames_ no longer lists every frame, so the index cannot be matched
}

SegmentReader::Next SegmentReader::next() {
  if (error_) return Next::kError;
  if (done_) return Next::kEnd;
  const std::uint64_t at = offset_;
  const std::uint64_t left = size_ - at;
  if (left == 0) {
    if (!is_part(file_)) {
      return fail(Damage::kTruncated, at, "segment ends without its index (truncated?)");
    }
    done_ = true;
    return Next::kEnd;
  }
  std::array<std::uint8_t, kFrameHeaderBytes> raw{};
  const std::size_t have = static_cast<std::size_t>(std::min<std::uint64_t>(left, raw.size()));
  if (!read_at(at, std::span(raw).first(have))) return Next::kError;
  if (have >= kIndexMagic.size() &&
      std::memcmp(raw.data(), kIndexMagic.data(), kIndexMagic.size()) == 0) {
    return read_index_here();
  }
  if (have < kFrameHeaderBytes) {
    return fail(Damage::kTruncated, at,
                fmt::format("frame header truncated: {} of {} bytes", have, kFrameHeaderBytes));
  }
  std::string why;
  auto header = decode_frame_header(raw, why);
  if (!header) {
    const bool magic_ok = raw[0] == (kFrameMagic & 0xFF) && raw[1] == ((kFrameMagic >> 8) & 0xFF) &&
                          raw[2] == ((kFrameMagic >> 16) & 0xFF) && raw[3] == (kFrameMagic >> 24);
    const Damage kind = !magic_ok                                   ? Damage::kBadMagic
                        : why.find("checksum") != std::string::npos ? Damage::kChecksum
                                                                    : Damage::kOversize;
    return fail(kind, at, why);
  }
  if (header->compressed_bytes > left - kFrameHeaderBytes) {
    return fail(Damage::kTruncated, at,
                fmt::format("frame of {} bytes truncated: only {} bytes follow its header",
                            header->compressed_bytes, left - kFrameHeaderBytes));
  }
  const std::uint64_t data_at = at + kFrameHeaderBytes;
  compressed_.resize(header->compressed_bytes);
  if (!read_at(data_at, compressed_)) return Next::kError;
  if (crc32c(compressed_) != header->data_crc) {
    return fail(Damage::kChecksum, data_at, "frame bytes do not match their CRC32C");
  }
  const auto content = ZSTD_getFrameContentSize(compressed_.data(), compressed_.size());
  if (content != header->uncompressed_bytes ||
      ZSTD_findFrameCompressedSize(compressed_.data(), compressed_.size()) != compressed_.size()) {
    return fail(Damage::kZstd, data_at,
                "the zstd frame's declared size does not match the frame header");
  }
  message_bytes_ = 0;
  if (depth_ == Depth::kBatches) {
    stored_.resize(header->uncompressed_bytes);
    const std::size_t n =
        ZSTD_decompressDCtx(zstd_->dctx.get(), stored_.data(), header->uncompressed_bytes,
                            compressed_.data(), compressed_.size());
    if (ZSTD_isError(n)) {
      return fail(Damage::kZstd, data_at, fmt::format("zstd: {}", ZSTD_getErrorName(n)));
    }
    if (n != header->uncompressed_bytes) {
      return fail(
          Damage::kZstd, data_at,
          fmt::format("decompressed to {} bytes, header says {}", n, header->uncompressed_bytes));
    }
    if (auto bad = zstd_->codec.decode(stored_, header->batch.record_count, message_,
                                       message_bytes_, header_.version)) {
      return fail(Damage::kBadBatch, data_at,
                  fmt::format("batch seq {}: {}", header->batch.seq, *bad));
    }
  }
  frame_ = *header;
  frame_offset_ = at;
  offset_ = end_of_frames_ = data_at + header->compressed_bytes;
  frames_.push_back(IndexEntry{frame_.batch, at});
  return Next::kFrame;
}

SegmentReader::Next SegmentReader::read_index_here() {
  const std::uint64_t at = offset_;
  const std::uint64_t left = size_ - at;
  // An index is 80 bytes plus 40 per frame: bounded by the frames already read.
  const std::uint64_t expect =
      kIndexHeaderBytes + frames_.size() * kIndexEntryBytes + kIndexCrcBytes + kTrailerBytes;
  if (!sought_ && left != expect) {
    return fail(
        left < expect ? Damage::kTruncated : Damage::kBadIndex, at,
        fmt::format("index of {} frames should be {} bytes to the end of the file, found {}",
                    frames_.size(), expect, left));
  }
  std::vector<std::uint8_t> raw(static_cast<std::size_t>(left));
  if (!read_at(at, raw)) return Next::kError;
  std::string why;
  auto entries = decode_index(raw, at, why);
  if (!entries) return fail(Damage::kBadIndex, at, why);
  for (std::size_t i = 0; !sought_ && i < entries->size(); ++i) {
    const IndexEntry& a = (*entries)[i];
    const IndexEntry& b = frames_[i];
    if (a.offset != b.offset || a.batch.seq != b.batch.seq ||
        a.batch.first_ts_ns != b.batch.first_ts_ns || a.batch.last_ts_ns != b.batch.last_ts_ns ||
        a.batch.record_count != b.batch.record_count) {
      return fail(Damage::kBadIndex, at + kIndexHeaderBytes + i * kIndexEntryBytes,
                  fmt::format("index entry {} does not match the frame at offset {}", i, b.offset));
    }
  }
  has_index_ = true;
  done_ = true;
  return Next::kEnd;
}

std::optional<std::vector<IndexEntry>> read_index(const std::filesystem::path& file,
                                                  SegmentError& error) {
  error = SegmentError{file, 0, Damage::kIo, {}};
  UniqueFd fd(::open(file.c_str(), O_RDONLY | O_CLOEXEC));
  struct stat st {};
  if (!fd || ::fstat(fd.get(), &st) != 0) {
    error.what = fmt::format("cannot open: {}", std::strerror(errno));
    return std::nullopt;
  }
  const auto size = static_cast<std::uint64_t>(st.st_size);
  const std::uint64_t min_size =
      kFileHeaderBytes + kIndexHeaderBytes + kIndexCrcBytes + kTrailerBytes;
  int err = 0;
  std::array<std::uint8_t, kTrailerBytes> trailer{};
  std::uint64_t count = 0;
  std::optional<std::uint64_t> index_at;
  if (size >= min_size && pread_all(fd.get(), size - kTrailerBytes, trailer, err)) {
    index_at = parse_trailer(trailer, count);
  }
  error.kind = Damage::kBadIndex;
  error.offset = size >= kTrailerBytes ? size - kTrailerBytes : 0;
  if (!index_at) {
    error.what = "no trailer (a .part, or truncated)";
    return std::nullopt;
  }
  if (*index_at < kFileHeaderBytes || *index_at > size - min_size + kFileHeaderBytes ||
      count > (size - *index_at) / kIndexEntryBytes) {
    error.what = fmt::format("trailer names index offset {} of {} entries outside the file",
                             *index_at, count);
    return std::nullopt;
  }
  std::vector<std::uint8_t> raw(static_cast<std::size_t>(size - *index_at));
  if (!pread_all(fd.get(), *index_at, raw, err)) {
    error.kind = Damage::kIo;
    error.what = fmt::format("read failed: {}", std::strerror(err));
    return std::nullopt;
  }
  std::string why;
  auto entries = decode_index(raw, *index_at, why);
  if (!entries) {
    error.offset = *index_at;
    error.what = why;
  }
  return entries;
}

}  // namespace flowseal::segment
