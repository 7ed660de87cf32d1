#include "ship/ship_message.h"

#include <fmt/format.h>
#include <zstd.h>

#include "segment/columns.h"

namespace flowseal::ship {

struct FrameDecoder::State {
  struct Free {
    void operator()(ZSTD_DCtx* ctx) const { ZSTD_freeDCtx(ctx); }
  };
  std::unique_ptr<ZSTD_DCtx, Free> dctx{ZSTD_createDCtx()};
  segment::BatchCodec codec;
};

std::string batch_subject(std::string_view prefix, const segment::KeyId& key) {
  return fmt::format("{}.{}.batches", prefix, segment::to_hex(key));
}

std::string message_id(const segment::KeyId& key, const segment::StreamId& stream,
                       std::uint64_t seq) {
  return fmt::format("{}.{}.{}", segment::to_hex(key), segment::to_hex(stream), seq);
}

std::string gap_message_id(const segment::KeyId& key, const segment::StreamId& stream,
                           std::uint64_t first_seq, std::uint64_t last_seq) {
  return fmt::format("{}.{}.gap.{}-{}", segment::to_hex(key), segment::to_hex(stream), first_seq,
                     last_seq);
}

std::vector<std::uint8_t> encode_frame(const segment::FrameHeader& header,
                                       std::span<const std::uint8_t> compressed) {
  std::vector<std::uint8_t> out(segment::kFrameHeaderBytes + compressed.size());
  segment::encode(header, std::span<std::uint8_t, segment::kFrameHeaderBytes>(
                              out.data(), segment::kFrameHeaderBytes));
  std::copy(compressed.begin(), compressed.end(), out.begin() + segment::kFrameHeaderBytes);
  return out;
}

FrameDecoder::FrameDecoder() : state_(std::make_unique<State>()) {}
FrameDecoder::FrameDecoder(FrameDecoder&&) noexcept = default;
FrameDecoder& FrameDecoder::operator=(FrameDecoder&&) noexcept = default;
FrameDecoder::~FrameDecoder() = default;

std::span<const std::byte> FrameDecoder::message() const {
  return {reinterpret_cast<const std::byte*>(message_.data()), message_bytes_};
}

std::optional<std::string> FrameDecoder::decode(std::span<const std::uint8_t> bytes) {
  message_bytes_ = 0;
  if (!state_->dctx) return "cannot create a zstd decompression context";
  if (bytes.size() < segment::kFrameHeaderBytes) {
    return fmt::format("frame of {} bytes is shorter than a frame header", bytes.size());
  }
  std::string why;
  auto header = segment::decode_frame_header(bytes.first<segment::kFrameHeaderBytes>(), why);
  if (!header) return fmt::format("frame header: {}", why);
  const auto data = bytes.subspan(segment::kFrameHeaderBytes);
  if (data.size() != header->compressed_bytes) {
    return fmt::format("frame holds {} bytes after its header, which says {}", data.size(),
                       header->compressed_bytes);
  }
  if (segment::crc32c(data) != header->data_crc) {
    return std::string("frame bytes do not match their CRC32C");
  }
  if (ZSTD_getFrameContentSize(data.data(), data.size()) != header->uncompressed_bytes ||
      ZSTD_findFrameCompressedSize(data.data(), data.size()) != data.size()) {
    return std::string("the zstd frame's declared size does not match the frame header");
  }
  stored_.resize(header->uncompressed_bytes);
  const std::size_t n = ZSTD_decompressDCtx(state_->dctx.get(), stored_.data(), stored_.size(),
                                            data.data(), data.size());
  if (ZSTD_isError(n)) return fmt::format("zstd: {}", ZSTD_getErrorName(n));
  if (n != header->uncompressed_bytes) {
    return fmt::format("decompressed to {} bytes, header says {}", n, header->uncompressed_bytes);
  }
  if (auto bad =
          state_->codec.decode(stored_, header->batch.record_count, message_, message_bytes_)) {
    return fmt::format("batch seq {}: {}", header->batch.seq, *bad);
  }
  frame_ = *header;
  return std::nullopt;
}

std::optional<std::vector<std::uint8_t>> from_hex(std::string_view hex) {
  if (hex.size() % 2 != 0) return std::nullopt;
  auto digit = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  std::vector<std::uint8_t> out(hex.size() / 2);
  for (std::size_t i = 0; i < out.size(); ++i) {
    const int hi = digit(hex[2 * i]);
    const int lo = digit(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return std::nullopt;
    out[i] = static_cast<std::uint8_t>(hi << 4 | lo);
  }
  return out;
}

}  // namespace flowseal::ship
