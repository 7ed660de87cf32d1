// libFuzzer target: the column decoder (common/segment/columns.h) on stored batch bytes, with
// no zstd or CRC in front (those stop most mutations before the columns in fuzz_segment).
// decode() promises never to throw, never to read outside its input and to allocate only in
// proportion to it. A batch it accepts is re-encoded and decoded again: the same message.
// Input: byte 0 the segment format version (2 or 3), bytes 1-2 the frame header's record
// count, then the stored batch.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <span>
#include <vector>

#include "segment/columns.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 3) return 0;
  const std::uint16_t version = data[0] % 2 == 0 ? 3 : 2;
  const std::uint32_t records = data[1] | (std::uint32_t{data[2]} << 8);
  // An exact-size copy: ASan sees a read past the end of the stored bytes.
  std::vector<std::uint8_t> stored(data + 3, data + size);
  flowseal::segment::BatchCodec codec;
  std::vector<std::uint64_t> out;
  std::size_t bytes = 0;
  if (codec.decode(stored, records, out, bytes, version)) return 0;  // damage named: fine
  if (bytes > out.size() * sizeof(std::uint64_t)) std::abort();
  if (version != flowseal::segment::kFormatVersion) return 0;  // old formats are only read
  const std::span<const std::byte> message(reinterpret_cast<const std::byte*>(out.data()), bytes);
  std::vector<std::uint8_t> again;
  codec.encode(message, again);
  std::vector<std::uint64_t> out2;
  std::size_t bytes2 = 0;
  if (codec.decode(again, records, out2, bytes2, version)) std::abort();  // stored, unreadable
  if (bytes2 != bytes || std::memcmp(out2.data(), out.data(), bytes) != 0) std::abort();
  return 0;
}
