// libFuzzer target: the pcap/pcapng file reader (capture/capture_file.h) and, as the capture
// stage does, the decoder over each record it returns. The reader promises never to read
// outside the mapping and never to throw after open(); every record it returns must lie
// inside the file and respect kMaxCaplen.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>

#include "capture_file.h"
#include "packet/decode.h"

using flowseal::capture::CaptureFileReader;
using flowseal::capture::FileProblem;
using flowseal::capture::FileRecord;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  // An exact-size copy so that ASan sees a read past the end of the "file".
  auto* file = static_cast<std::uint8_t*>(std::malloc(size == 0 ? 1 : size));
  if (size > 0) __builtin_memcpy(file, data, size);
  const std::span<const std::uint8_t> bytes(file, size);
  std::size_t fatal = 0;
  auto reader = CaptureFileReader::open(
      bytes, [&](const FileProblem& p) { fatal += p.fatal ? 1 : 0; },
      [](int link) { return link != 0xBEEF; });
  if (reader) {
    FileRecord record;
    flowseal::packet::DecodedPacket decoded;
    while (reader->next(record)) {
      if (record.bytes.data() < file || record.bytes.data() + record.bytes.size() > file + size)
        std::abort();
      if (record.bytes.size() > flowseal::capture::kMaxCaplen) std::abort();
      if (record.wire_len < record.bytes.size()) std::abort();
      (void)flowseal::packet::decode(record.link_type, record.bytes, record.wire_len, decoded);
    }
    if (reader->offset() > size) std::abort();
    (void)flowseal::capture::link_type_name(record.link_type);
  }
  if (fatal > 1) std::abort();  // one fatal problem ends the file
  std::free(file);
  return 0;
}
