// make_seeds SEGMENT... OUT_DIR: seed inputs for the batch fuzz targets from real segments
// (a developer tool of the fuzz build, not a test). For each stored batch it writes
//   OUT_DIR/capnp_batch/<name>-<n>-sealed : 0x00 + the SealedBatch message (verify's input)
//   OUT_DIR/capnp_batch/<name>-<n>-events : 0x01 + a FlowEventBatch of its records (signerd's)
//   OUT_DIR/columns/<name>-<n>            : format byte + record count + the stored columns
// in the input layouts fuzz_capnp_batch.cpp and fuzz_columns.cpp read.
#include <zstd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <capnp/message.h>
#include <capnp/serialize.h>

#include "capnp_frame.h"
#include "flowseal.capnp.h"
#include "segment/reader.h"

namespace fs = std::filesystem;
using namespace flowseal;

namespace {

void write(const fs::path& file, std::uint8_t first, std::span<const std::uint8_t> prefix,
           std::span<const std::uint8_t> bytes) {
  std::ofstream out(file, std::ios::binary | std::ios::trunc);
  out.put(static_cast<char>(first));
  out.write(reinterpret_cast<const char*>(prefix.data()),
            static_cast<std::streamsize>(prefix.size()));
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: make_seeds SEGMENT... OUT_DIR\n");
    return 64;
  }
  const fs::path out = argv[argc - 1];
  fs::create_directories(out / "capnp_batch");
  fs::create_directories(out / "columns");
  for (int i = 1; i < argc - 1; ++i) {
    const fs::path file = argv[i];
    const std::string name = file.parent_path().filename().string() + "-" + file.stem().string();
    segment::SegmentReader reader(file);
    int n = 0;
    while (reader.next() == segment::SegmentReader::Next::kFrame) {
      const auto message = reader.message();
      const auto* bytes = reinterpret_cast<const std::uint8_t*>(message.data());
      write(out / "capnp_batch" / (name + "-" + std::to_string(n) + "-sealed"), 0, {},
            {bytes, message.size()});
      capnp::FlatArrayMessageReader sealed(as_words(message), frame_reader_options());
      capnp::MallocMessageBuilder events;
      auto records = sealed.getRoot<schema::SealedBatch>().getRecords();
      auto list = events.initRoot<schema::FlowEventBatch>().initEvents(records.size());
      for (unsigned r = 0; r < records.size(); ++r) list.setWithCaveats(r, records[r]);
      const auto words = capnp::messageToFlatArray(events);
      const auto ebytes = words.asBytes();
      write(out / "capnp_batch" / (name + "-" + std::to_string(n) + "-events"), 1, {},
            {ebytes.begin(), ebytes.size()});
      const auto compressed = reader.compressed();
      std::vector<std::uint8_t> stored(reader.frame().uncompressed_bytes);
      const std::size_t got =
          ZSTD_decompress(stored.data(), stored.size(), compressed.data(), compressed.size());
      if (ZSTD_isError(got)) return 1;
      const std::uint32_t count = reader.frame().batch.record_count;
      const std::uint8_t header[2] = {static_cast<std::uint8_t>(count),
                                      static_cast<std::uint8_t>(count >> 8)};
      write(out / "columns" / (name + "-" + std::to_string(n)),
            reader.header().version == 2 ? 1 : 0, header, stored);
      ++n;
    }
    if (!reader.ok())
      std::fprintf(stderr, "%s: %s\n", file.c_str(), reader.error()->message().c_str());
    std::fprintf(stderr, "%s: %d batches\n", file.c_str(), n);
  }
  return 0;
}
