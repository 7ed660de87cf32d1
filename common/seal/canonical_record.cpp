#include "seal/canonical_record.h"

#include <array>
#include <bit>
#include <cstdint>
#include <cstring>

#include <capnp/any.h>

namespace flowseal::seal {
namespace {

static_assert(std::endian::native == std::endian::little, "words are written as host integers");

using Private = schema::FlowEvent::_capnpPrivate;
// origAddr, respAddr (Data); connState, history, communityId (Text); tunnelParents (UInt64)
constexpr unsigned kPointers = 6;
static_assert(Private::pointerCount == kPointers);

// A list of primitive elements, as its list pointer describes it.
struct Blob {
  const void* bytes = nullptr;
  std::size_t count = 0;  // elements; bytes: the NUL included for Text
  std::uint64_t element_size = 2;  // Cap'n Proto's code: 2 byte, 5 eight bytes
  std::size_t element_bytes = 1;
  bool present = false;
  std::size_t words() const { return (count * element_bytes + 7) / 8; }
};

}  // namespace

bool append_canonical(schema::FlowEvent::Reader record, std::vector<capnp::word>& out) {
  const capnp::AnyStruct::Reader any(record);
  const auto data = any.getDataSection();
  const auto pointers = any.getPointerSection();
  if (data.size() > Private::dataWordSize * sizeof(capnp::word) || data.size() % 8 != 0 ||
      pointers.size() > kPointers) {
    return false;
  }
  std::size_t data_words = data.size() / 8;
  while (data_words > 0) {
    std::uint64_t w;
    std::memcpy(&w, data.begin() + (data_words - 1) * 8, 8);
    if (w != 0) break;
    --data_words;
  }
  // The typed getters check each pointer's kind, as canonicalize() would.
  std::array<Blob, kPointers> blobs{};
  auto data_blob = [](bool has, capnp::Data::Reader d) {
    return Blob{d.begin(), d.size(), 2, 1, has};
  };
  auto text_blob = [](bool has, capnp::Text::Reader t) {
    return Blob{t.begin(), t.size() + 1, 2, 1, has};  // the list holds the NUL too
  };
  blobs[0] = data_blob(record.hasOrigAddr(), record.getOrigAddr());
  blobs[1] = data_blob(record.hasRespAddr(), record.getRespAddr());
  blobs[2] = text_blob(record.hasConnState(), record.getConnState());
  blobs[3] = text_blob(record.hasHistory(), record.getHistory());
  blobs[4] = text_blob(record.hasCommunityId(), record.getCommunityId());
  if (record.hasTunnelParents()) {
    // Only a list of 8-byte elements is written back the same way (capnp reads others too).
    const auto list = pointers[5].getAs<capnp::AnyList>();
    if (list.getElementSize() != capnp::ElementSize::EIGHT_BYTES) return false;
    const auto bytes = list.getRawBytes();
    blobs[5] = Blob{bytes.begin(), list.size(), 5, 8, true};
  }
  unsigned pointer_count = 0;
  std::size_t total = 1 + data_words;
  for (unsigned i = 0; i < kPointers; ++i) {
    if (!blobs[i].present) continue;
    if (blobs[i].count == 0) return false;  // zero-sized objects have their own rule
    pointer_count = i + 1;
    total += blobs[i].words();
  }
  if (data_words == 0 && pointer_count == 0) return false;
  total += pointer_count;

  const std::size_t start = out.size();
  out.resize(start + total);  // zero words: padding stays zero
  auto* w = reinterpret_cast<std::uint64_t*>(out.data() + start);
  // Root: struct pointer, offset 0, then its data and pointer section sizes in words.
  w[0] = (std::uint64_t{data_words} << 32) | (std::uint64_t{pointer_count} << 48);
  std::memcpy(w + 1, data.begin(), data_words * 8);
  std::size_t next = 1 + data_words + pointer_count;  // where the next list goes
  for (unsigned i = 0; i < pointer_count; ++i) {
    if (!blobs[i].present) continue;
    const std::size_t at = 1 + data_words + i;
    // List pointer: offset from the end of the pointer word, element size code, count.
    const auto offset = static_cast<std::uint32_t>(next - at - 1);
    w[at] = (std::uint64_t{offset} << 2) | 1 | (blobs[i].element_size << 32) |
            (std::uint64_t{blobs[i].count} << 35);
    std::memcpy(w + next, blobs[i].bytes, blobs[i].count * blobs[i].element_bytes);
    next += blobs[i].words();
  }
  return true;
}

}  // namespace flowseal::seal
