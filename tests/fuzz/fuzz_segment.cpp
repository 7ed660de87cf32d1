// libFuzzer target: the segment reader (common/segment/reader.h) over a damaged file, as
// `flowseal verify` and `cat` read a store: frame by frame (SegmentReader::next, message),
// and through the index (read_index, seek). The reader promises never to throw or crash and
// to end every damage with a SegmentError; each batch it returns opens as a SealedBatch.
// The first input byte chooses a closed segment or a `.part`; the rest is the file.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include <capnp/message.h>
#include <capnp/serialize.h>

#include "capnp_frame.h"
#include "flowseal.capnp.h"
#include "segment/reader.h"

namespace {

namespace fs = std::filesystem;
using flowseal::segment::SegmentReader;

const fs::path& work_dir() {
  static const fs::path dir = [] {
    char t[] = "/tmp/flowseal-fuzz-segment.XXXXXX";
    if (mkdtemp(t) == nullptr) std::abort();
    return fs::path(t);
  }();
  return dir;
}

void read_batches(SegmentReader& reader, unsigned limit) {
  for (unsigned i = 0; i < limit && reader.next() == SegmentReader::Next::kFrame; ++i) {
    const auto message = reader.message();
    if (reinterpret_cast<std::uintptr_t>(message.data()) % 8 != 0) std::abort();
    try {
      capnp::FlatArrayMessageReader batch(flowseal::as_words(message),
                                          flowseal::frame_reader_options());
      (void)batch.getRoot<flowseal::schema::SealedBatch>().totalSize();
    } catch (const kj::Exception&) {
      // verify names the batch as unreadable
    }
  }
  if (!reader.ok()) (void)reader.error()->message();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  // Segment names carry the first seq; a closed one must end with its index.
  const std::string name = flowseal::segment::segment_name(0);
  const fs::path file =
      work_dir() / (data[0] % 2 == 0 ? name : name + std::string(flowseal::segment::kPartSuffix));
  {
    std::ofstream out(file, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(data + 1), static_cast<std::streamsize>(size - 1));
  }
  {
    SegmentReader reader(file);
    read_batches(reader, 1000);
  }
  flowseal::segment::SegmentError error;
  if (auto index = flowseal::segment::read_index(file, error)) {
    SegmentReader reader(file);
    for (const auto& entry : *index) {
      if (!reader.ok()) break;
      reader.seek(entry.offset);
      read_batches(reader, 1);
    }
  }
  fs::remove(file);
  return 0;
}
