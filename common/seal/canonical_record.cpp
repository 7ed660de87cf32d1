#include "seal/canonical_record.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cstdint>
#include <cstring>

#include <capnp/any.h>

namespace flowseal::seal {
namespace {

static_assert(std::endian::native == std::endian::little, "words are written as host integers");

using Private = schema::FlowEvent::_capnpPrivate;
// origAddr, respAddr (Data); connState, history, communityId (Text); tunnelParents (UInt64);
// orig, resp (Direction); service (Text)
constexpr unsigned kPointers = 9;
static_assert(Private::pointerCount == kPointers);
static_assert(schema::Direction::_capnpPrivate::pointerCount == 0);

// A list of primitive elements, as its list pointer describes it, or a struct without
// pointers (`element_size` kStruct: `count` data words).
constexpr std::uint64_t kStruct = ~std::uint64_t{0};
struct Blob {
  const void* bytes = nullptr;
  std::size_t count = 0;           // elements; bytes: the NUL included for Text
  std::uint64_t element_size = 2;  // Cap'n Proto's code: 2 byte, 5 eight bytes
  std::size_t element_bytes = 1;
  bool present = false;
  std::size_t words() const { return (count * element_bytes + 7) / 8; }
};

// The data words of `data` without the trailing zero words.
std::size_t data_words_of(kj::ArrayPtr<const kj::byte> data) {
  std::size_t words = data.size() / 8;
  while (words > 0) {
    std::uint64_t w;
    std::memcpy(&w, data.begin() + (words - 1) * 8, 8);
    if (w != 0) break;
    --words;
  }
  return words;
}

// Copies `bytes` into the data section of a fresh (all-zero) struct, as far as it reaches.
void copy_data(const void* bytes, std::size_t size, capnp::AnyStruct::Builder to) {
  auto dst = to.getDataSection();
  std::memcpy(dst.begin(), bytes, std::min(size, dst.size()));
}

}  // namespace

bool append_canonical(schema::FlowEvent::Reader record, std::vector<capnp::word>& out) {
  const capnp::AnyStruct::Reader any(record);
  const auto data = any.getDataSection();
  const auto pointers = any.getPointerSection();
  if (data.size() > Private::dataWordSize * sizeof(capnp::word) || data.size() % 8 != 0 ||
      pointers.size() > kPointers) {
    return false;
  }
  const std::size_t data_words = data_words_of(data);
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
  for (const unsigned i : {6u, 7u}) {  // orig, resp: structs without pointers
    if (pointers[i].isNull()) continue;
    const auto side = pointers[i].getAs<capnp::AnyStruct>();
    const auto side_data = side.getDataSection();
    if (side_data.size() > schema::Direction::_capnpPrivate::dataWordSize * 8 ||
        side_data.size() % 8 != 0) {
      return false;
    }
    for (const auto pointer : side.getPointerSection()) {
      if (!pointer.isNull()) return false;
    }
    blobs[i] = Blob{side_data.begin(), data_words_of(side_data), kStruct, 8, true};
  }
  blobs[8] = text_blob(record.hasService(), record.getService());
  unsigned pointer_count = 0;
  std::size_t total = 1 + data_words;
  for (unsigned i = 0; i < kPointers; ++i) {
    if (!blobs[i].present) continue;
    // A zero-sized list has its own rule; a zero-sized struct is written below.
    if (blobs[i].count == 0 && blobs[i].element_size != kStruct) return false;
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
    if (blobs[i].element_size == kStruct) {
      // Struct pointer: offset, data words, no pointers; an empty struct points at offset -1
      // (not 0, which would read as null), as Cap'n Proto writes it.
      w[at] = blobs[i].count == 0
                  ? 0xFFFFFFFCu
                  : (std::uint64_t{offset} << 2) | (std::uint64_t{blobs[i].count} << 32);
    } else {
      w[at] = (std::uint64_t{offset} << 2) | 1 | (blobs[i].element_size << 32) |
              (std::uint64_t{blobs[i].count} << 35);
    }
    std::memcpy(w + next, blobs[i].bytes, blobs[i].count * blobs[i].element_bytes);
    next += blobs[i].words();
  }
  return true;
}

void copy_canonical(const capnp::word* canonical, schema::FlowEvent::Builder to) {
  static_assert(Private::pointerCount == 9,
                "a new pointer field of FlowEvent must be copied here too");
  // The layout append_canonical() writes (see there): the root struct pointer (offset 0),
  // the data words, the pointers, each pointing forward at its object.
  const auto* w = reinterpret_cast<const std::uint64_t*>(canonical);
  const std::size_t data_words = (w[0] >> 32) & 0xFFFF;
  const std::size_t pointer_count = w[0] >> 48;
  copy_data(w + 1, data_words * 8, capnp::AnyStruct::Builder(schema::FlowEvent::Builder(to)));
  const std::uint64_t* pointers = w + 1 + data_words;
  for (std::size_t i = 0; i < pointer_count; ++i) {
    const std::uint64_t p = pointers[i];
    if (p == 0) continue;
    // Offset in words from the end of the pointer (an empty struct's is -1: it has no bytes).
    const std::uint64_t* target =
        pointers + i + 1 + (static_cast<std::int32_t>(static_cast<std::uint32_t>(p)) >> 2);
    const auto* bytes = reinterpret_cast<const kj::byte*>(target);
    const auto count = static_cast<std::size_t>(p >> 35);  // a list's element count
    auto text = [&] {
      return capnp::Text::Reader(reinterpret_cast<const char*>(bytes), count - 1);
    };
    switch (i) {
      case 0: to.setOrigAddr({bytes, count}); break;
      case 1: to.setRespAddr({bytes, count}); break;
      case 2: to.setConnState(text()); break;
      case 3: to.setHistory(text()); break;
      case 4: to.setCommunityId(text()); break;
      case 5: {
        auto parents = to.initTunnelParents(static_cast<unsigned>(count));
        for (unsigned j = 0; j < count; ++j) parents.set(j, target[j]);
        break;
      }
      // orig, resp: structs of data only (their data words in bits 32..47), copied as bytes.
      case 6: copy_data(bytes, ((p >> 32) & 0xFFFF) * 8, to.initOrig()); break;
      case 7: copy_data(bytes, ((p >> 32) & 0xFFFF) * 8, to.initResp()); break;
      case 8: to.setService(text()); break;
      default: break;
    }
  }
}

std::size_t copied_words(const capnp::word* canonical) {
  static_assert(Private::pointerCount == 9,
                "a new pointer field of FlowEvent must be counted here too");
  using Side = schema::Direction::_capnpPrivate;
  // The layout copy_canonical() reads (see there).
  const auto* w = reinterpret_cast<const std::uint64_t*>(canonical);
  const std::size_t data_words = (w[0] >> 32) & 0xFFFF;
  const std::size_t pointer_count = w[0] >> 48;
  const std::uint64_t* pointers = w + 1 + data_words;
  std::size_t words = 0;
  for (std::size_t i = 0; i < pointer_count; ++i) {
    const std::uint64_t p = pointers[i];
    if (p == 0) continue;
    const auto count = static_cast<std::size_t>(p >> 35);
    switch (i) {
      case 5: words += count; break;                                              // tunnel parents
      case 6:                                                                     // orig
      case 7: words += Side::dataWordSize + Side::pointerCount; break;            // resp
      default: words += (count + sizeof(capnp::word) - 1) / sizeof(capnp::word);  // bytes, text
    }
  }
  return words;
}

}  // namespace flowseal::seal
