// What shipd publishes and `flowseal collect` reads: one JetStream message per stored batch.
//
// The payload is the batch's frame exactly as writerd stored it in its segment (the 48-byte
// frame header and the zstd frame: docs/FORMAT.md), so the wire carries the compressed
// columns and everything `verify` needs (records, signed header with Merkle root, chain link
// and key id, signature, leaf hints). The headers name it without decompressing:
//
//   Nats-Msg-Id       <key id hex>.<stream id hex>.<seq>: a republish after a crash or a
//                     reconnect is dropped by JetStream's de-duplication window
//   Flowseal-Stream   stream id, hex
//   Flowseal-Seq      batch seq, decimal
//   Flowseal-Key      the signing key's DER SubjectPublicKeyInfo, hex (collect checks that
//                     its SHA-256 is the key id the signed header names)
//
// The headers are untrusted hints: collect decides everything from the signed batch.
//
// A gap marker (seal/gap_marker.h: batches the probe gave up before shipping them) travels
// on the same subject, before the first batch after the gap, as the marker file's bytes, with
//
//   Nats-Msg-Id       <key id hex>.<stream id hex>.gap.<first seq>-<last seq>
//   Flowseal-Gap      first seq given up, decimal (its presence says: a marker, not a batch)
//   Flowseal-Seq      last seq given up (shipd's position moves there once it is acked)
//   Flowseal-Stream, Flowseal-Key   as for a batch
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "segment/format.h"

namespace flowseal::ship {

inline constexpr const char* kHeaderStream = "Flowseal-Stream";
inline constexpr const char* kHeaderSeq = "Flowseal-Seq";
inline constexpr const char* kHeaderKey = "Flowseal-Key";
inline constexpr const char* kHeaderGap = "Flowseal-Gap";

// "<prefix>.<key id hex>.batches"
std::string batch_subject(std::string_view prefix, const segment::KeyId& key);
// "<key id hex>.<stream id hex>.<seq>"
std::string message_id(const segment::KeyId& key, const segment::StreamId& stream,
                       std::uint64_t seq);

// "<key id hex>.<stream id hex>.gap.<first>-<last>"
std::string gap_message_id(const segment::KeyId& key, const segment::StreamId& stream,
                           std::uint64_t first_seq, std::uint64_t last_seq);

// The frame as stored: frame header + zstd bytes.
std::vector<std::uint8_t> encode_frame(const segment::FrameHeader& header,
                                       std::span<const std::uint8_t> compressed);

// Turns a frame received from the wire back into its SealedBatch message, with the checks a
// segment reader makes (header CRC, bounds, data CRC, zstd size and checksum, columns). Never
// throws; one decoder per thread (it owns a zstd context and a batch codec).
class FrameDecoder {
 public:
  FrameDecoder();
  FrameDecoder(FrameDecoder&&) noexcept;
  FrameDecoder& operator=(FrameDecoder&&) noexcept;
  ~FrameDecoder();

  // nullopt on success (frame() and message() describe the batch), else what is wrong.
  std::optional<std::string> decode(std::span<const std::uint8_t> bytes);
  const segment::FrameHeader& frame() const { return frame_; }
  // 8-byte aligned SealedBatch flat-array message, valid until the next decode().
  std::span<const std::byte> message() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
  segment::FrameHeader frame_;
  std::vector<std::uint8_t> stored_;
  std::vector<std::uint64_t> message_;
  std::size_t message_bytes_ = 0;
};

// Hex to bytes; nullopt if `hex` is not an even run of hex digits.
std::optional<std::vector<std::uint8_t>> from_hex(std::string_view hex);

}  // namespace flowseal::ship
