#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <vector>

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <catch2/catch.hpp>

#include "flowseal.capnp.h"
#include "segment/format.h"
#include "segment/reader.h"
#include "segment/writer.h"

namespace fs = std::filesystem;
using namespace flowseal::segment;

namespace {

struct TempDir {
  fs::path path;
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "segment-test.XXXXXX").string();
    REQUIRE(::mkdtemp(pattern.data()) != nullptr);
    path = pattern;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

StreamId test_stream() {
  StreamId id{};
  for (std::size_t i = 0; i < id.size(); ++i) id[i] = static_cast<std::uint8_t>(i + 1);
  return id;
}

KeyId test_key() {
  KeyId id{};
  for (std::size_t i = 0; i < id.size(); ++i) id[i] = static_cast<std::uint8_t>(0xA0 + i);
  return id;
}

std::vector<std::byte> sealed_batch(std::uint64_t seq, std::uint32_t records) {
  capnp::MallocMessageBuilder message;
  auto batch = message.initRoot<flowseal::schema::SealedBatch>();
  auto header = batch.initHeader();
  const StreamId stream = test_stream();
  header.setStreamId(capnp::Data::Reader(stream.data(), stream.size()));
  header.setSeq(seq);
  header.setRecordCount(records);
  header.setFirstTsNs(static_cast<std::int64_t>(seq * 1000));
  header.setLastTsNs(static_cast<std::int64_t>(seq * 1000 + 999));
  auto list = batch.initRecords(records);
  for (std::uint32_t i = 0; i < records; ++i) {
    list[i].setUid(seq * 100 + i);
    list[i].setKind(flowseal::schema::EventKind::END);
    list[i].getOrig().setPkts(i);
    list[i].setConnState("SF");
  }
  auto words = capnp::messageToFlatArray(message);
  auto bytes = words.asBytes();
  return {reinterpret_cast<const std::byte*>(bytes.begin()),
          reinterpret_cast<const std::byte*>(bytes.end())};
}

// The canonical encoding of a SealedBatch message: equal exactly when header, records and
// signature are, whatever order the message was built in.
std::vector<std::uint8_t> canonical_batch(std::span<const std::byte> message) {
  std::vector<capnp::word> words(message.size() / sizeof(capnp::word));
  std::memcpy(words.data(), message.data(), words.size() * sizeof(capnp::word));
  capnp::FlatArrayMessageReader reader(kj::arrayPtr(words.data(), words.size()));
  const auto canonical = capnp::canonicalize(reader.getRoot<flowseal::schema::SealedBatch>());
  const auto bytes = canonical.asBytes();
  return {bytes.begin(), bytes.end()};
}

BatchMeta meta(std::uint64_t seq, std::uint32_t records) {
  return BatchMeta{seq, static_cast<std::int64_t>(seq * 1000),
                   static_cast<std::int64_t>(seq * 1000 + 999), records};
}

FileHeader test_header() {
  FileHeader header;
  header.stream_id = test_stream();
  header.key_id = test_key();
  header.created_ns = 1'700'000'000'000'000'000;
  return header;
}

// Writes `batches` batches of 3 records to a new segment and closes it; returns its path.
fs::path write_segment(const fs::path& dir, std::uint64_t batches, bool close = true) {
  IoStatus status;
  auto writer = SegmentWriter::create(dir, 0, test_header(), WriterOptions{}, status);
  REQUIRE(writer);
  for (std::uint64_t seq = 0; seq < batches; ++seq) {
    REQUIRE(writer->append(meta(seq, 3), sealed_batch(seq, 3)).ok());
  }
  if (close) REQUIRE(writer->close().ok());
  return writer->path();
}

std::vector<std::uint8_t> read_file(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_file(const fs::path& file, std::span<const std::uint8_t> bytes) {
  std::ofstream out(file, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
}

// Reads every frame; returns the number read and whether the read ended in an error.
std::pair<std::size_t, bool> read_all(const fs::path& file, std::string* message = nullptr) {
  SegmentReader reader(file);
  std::size_t frames = 0;
  SegmentReader::Next next = reader.ok() ? SegmentReader::Next::kEnd : SegmentReader::Next::kError;
  if (reader.ok()) {
    while ((next = reader.next()) == SegmentReader::Next::kFrame) {
      // The message must open as Cap'n Proto: the frame is what was written, word-aligned.
      auto bytes = reader.message();
      kj::ArrayPtr<const capnp::word> words(reinterpret_cast<const capnp::word*>(bytes.data()),
                                            bytes.size() / sizeof(capnp::word));
      capnp::FlatArrayMessageReader message_reader(words);
      CHECK(message_reader.getRoot<flowseal::schema::SealedBatch>().getHeader().getSeq() ==
            reader.frame().batch.seq);
      ++frames;
    }
  }
  if (next == SegmentReader::Next::kError && message) *message = reader.error()->message();
  return {frames, next == SegmentReader::Next::kError};
}

}  // namespace

TEST_CASE("a closed segment reads back batch by batch with the batches that were written") {
  TempDir dir;
  const fs::path file = write_segment(dir.path, 5);
  CHECK(file.filename() == "seg-00000000000000000000.fsg");
  CHECK_FALSE(fs::exists(dir.path / "seg-00000000000000000000.fsg.part"));

  SegmentReader reader(file);
  REQUIRE(reader.ok());
  CHECK(reader.header().stream_id == test_stream());
  CHECK(reader.header().key_id == test_key());
  CHECK(reader.header().created_ns == test_header().created_ns);
  for (std::uint64_t seq = 0; seq < 5; ++seq) {
    REQUIRE(reader.next() == SegmentReader::Next::kFrame);
    CHECK(reader.frame().batch.seq == seq);
    CHECK(reader.frame().batch.record_count == 3);
    CHECK(reader.frame().batch.first_ts_ns == static_cast<std::int64_t>(seq * 1000));
    // Rebuilt from the columns: the same batch value (canonical form), not the same bytes.
    CHECK(canonical_batch(reader.message()) == canonical_batch(sealed_batch(seq, 3)));
  }
  CHECK(reader.next() == SegmentReader::Next::kEnd);
  CHECK(reader.has_index());
}

TEST_CASE(
    "read for its stored bytes only, a segment gives every frame undecoded and still "
    "refuses a frame whose bytes do not match their CRC") {
  TempDir dir;
  const fs::path file = write_segment(dir.path, 5);
  SegmentReader full(file);
  SegmentReader stored(file, SegmentReader::Depth::kStoredBytes);
  for (std::uint64_t seq = 0; seq < 5; ++seq) {
    REQUIRE(full.next() == SegmentReader::Next::kFrame);
    REQUIRE(stored.next() == SegmentReader::Next::kFrame);
    CHECK(stored.frame().batch.seq == seq);
    CHECK(stored.frame_offset() == full.frame_offset());
    CHECK(std::equal(stored.compressed().begin(), stored.compressed().end(),
                     full.compressed().begin(), full.compressed().end()));
    CHECK(stored.message().empty());
  }
  CHECK(stored.next() == SegmentReader::Next::kEnd);
  CHECK(stored.has_index());

  // One byte of the first frame's zstd bytes changed: its CRC refuses it unread.
  auto bytes = read_file(file);
  bytes[kFileHeaderBytes + kFrameHeaderBytes + 3] ^= 0x40;
  const fs::path bad = dir.path / "seg-00000000000000000077.fsg";
  write_file(bad, bytes);
  SegmentReader damaged(bad, SegmentReader::Depth::kStoredBytes);
  CHECK(damaged.next() == SegmentReader::Next::kError);
  REQUIRE(damaged.error());
  CHECK(damaged.error()->kind == Damage::kChecksum);
}

TEST_CASE("the index of a closed segment lists every frame so a reader can seek to one") {
  TempDir dir;
  const fs::path file = write_segment(dir.path, 4);
  SegmentError error;
  auto index = read_index(file, error);
  REQUIRE(index);
  REQUIRE(index->size() == 4);
  CHECK((*index)[2].batch.seq == 2);
  CHECK((*index)[2].batch.last_ts_ns == 2999);

  SegmentReader reader(file);
  reader.seek((*index)[2].offset);
  REQUIRE(reader.next() == SegmentReader::Next::kFrame);
  CHECK(reader.frame().batch.seq == 2);
  REQUIRE(reader.next() == SegmentReader::Next::kFrame);
  CHECK(reader.next() == SegmentReader::Next::kEnd);
}

TEST_CASE("a .part without its index is readable frame by frame") {
  TempDir dir;
  const fs::path part = write_segment(dir.path, 3, false);
  CHECK(is_part(part));
  SegmentError error;
  CHECK_FALSE(read_index(part, error));
  auto [frames, failed] = read_all(part);
  CHECK(frames == 3);
  CHECK_FALSE(failed);
}

TEST_CASE("a segment's first seq is read from its name, closed or .part, and from nothing else") {
  CHECK(first_seq_of_name("/d/seg-00000000000000000042.fsg") == 42u);
  CHECK(first_seq_of_name("seg-00000000000000000042.fsg.part") == 42u);
  CHECK(first_seq_of_name("seg-18446744073709551615.fsg") == ~std::uint64_t{0});
  CHECK_FALSE(first_seq_of_name("seg-99999999999999999999.fsg"));  // past 2^64-1
  CHECK_FALSE(first_seq_of_name("seg-0000000000000000004x.fsg"));
  CHECK_FALSE(first_seq_of_name("seg-42.fsg"));
  CHECK_FALSE(first_seq_of_name("seg-00000000000000000042.fsg.damaged"));
  CHECK_FALSE(first_seq_of_name("gap-00000000000000000042.fsg"));
}

TEST_CASE("list_segments returns segments in stream order with .part files last") {
  TempDir dir;
  for (const char* name : {"seg-00000000000000000010.fsg", "seg-00000000000000000002.fsg",
                           "seg-00000000000000000011.fsg.part", "notes.txt", "seg-12.fsg"}) {
    std::ofstream(dir.path / name) << "x";
  }
  fs::create_directory(dir.path / "keys");
  const auto segments = list_segments(dir.path);
  REQUIRE(segments.size() == 3);
  CHECK(segments[0].filename() == "seg-00000000000000000002.fsg");
  CHECK(segments[1].filename() == "seg-00000000000000000010.fsg");
  CHECK(segments[2].filename() == "seg-00000000000000000011.fsg.part");
}

TEST_CASE("every single-bit flip in a small segment is reported as damage, never a crash") {
  TempDir dir;
  const fs::path file = write_segment(dir.path, 3);
  const auto good = read_file(file);
  const fs::path bad = dir.path / "seg-00000000000000000099.fsg";
  write_file(bad, good);
  // The file is patched in place: rewriting it whole each time (O_TRUNC) makes ext4 flush.
  std::fstream patch(bad, std::ios::binary | std::ios::in | std::ios::out);
  auto put = [&](std::size_t offset, std::uint8_t value) {
    patch.seekp(static_cast<std::streamoff>(offset));
    patch.put(static_cast<char>(value));
    patch.flush();
  };
  std::size_t undetected = 0;
  for (std::size_t offset = 0; offset < good.size(); ++offset) {
    for (int bit = 0; bit < 8; ++bit) {
      put(offset, static_cast<std::uint8_t>(good[offset] ^ (1u << bit)));
      std::string message;
      auto [frames, failed] = read_all(bad, &message);
      if (!failed) {
        ++undetected;
        UNSCOPED_INFO("flip of bit " << bit << " at offset " << offset << " went unnoticed");
      } else {
        // The message names the file and an offset.
        CHECK(message.find("seg-00000000000000000099.fsg: offset ") != std::string::npos);
      }
    }
    put(offset, good[offset]);
  }
  CHECK(undetected == 0);
}

TEST_CASE("a segment cut at any length is reported as truncated, never a crash") {
  TempDir dir;
  const fs::path file = write_segment(dir.path, 3);
  const auto good = read_file(file);
  const fs::path cut = dir.path / "seg-00000000000000000098.fsg";
  const fs::path cut_part = dir.path / "seg-00000000000000000097.fsg.part";
  write_file(cut, good);
  write_file(cut_part, good);
  // Shortest last would rewrite the file each time; shrinking it step by step is cheap.
  for (std::size_t length = good.size(); length-- > 0;) {
    fs::resize_file(cut, length);
    std::string message;
    auto [frames, failed] = read_all(cut, &message);
    INFO("cut at " << length << ": " << message);
    CHECK(failed);
    CHECK(frames <= 3);
    // The same bytes as a .part: whole frames read, then the end or a clear error.
    fs::resize_file(cut_part, length);
    auto [part_frames, part_failed] = read_all(cut_part);
    CHECK(part_frames <= 3);
    (void)part_failed;
  }
}

TEST_CASE("a frame header with a forged huge length is refused before anything is allocated") {
  TempDir dir;
  const fs::path file = write_segment(dir.path, 1, false);
  auto bytes = read_file(file);
  FrameHeader forged;
  forged.batch = meta(0, 3);
  forged.compressed_bytes = 0xFFFFFFF0u;
  forged.uncompressed_bytes = 64;
  encode(forged, std::span<std::uint8_t, kFrameHeaderBytes>(bytes.data() + kFileHeaderBytes,
                                                            kFrameHeaderBytes));
  write_file(file, bytes);
  SegmentReader reader(file);
  REQUIRE(reader.ok());
  CHECK(reader.next() == SegmentReader::Next::kError);
  CHECK(reader.error()->kind == Damage::kOversize);
  CHECK(reader.error()->offset == kFileHeaderBytes);
}

TEST_CASE("a file that is not a segment is named as such") {
  TempDir dir;
  const fs::path file = dir.path / "seg-00000000000000000000.fsg";
  std::ofstream(file) << std::string(200, 'x');
  SegmentReader reader(file);
  REQUIRE_FALSE(reader.ok());
  CHECK(reader.error()->kind == Damage::kBadHeader);
  CHECK(reader.error()->message().find("bad file magic") != std::string::npos);
  SegmentReader missing(dir.path / "nope.fsg");
  CHECK(missing.error()->kind == Damage::kIo);
}

TEST_CASE("a segment of format version 1 is refused with a message naming the file and version") {
  TempDir dir;
  const fs::path file = write_segment(dir.path, 1);
  auto bytes = read_file(file);
  FileHeader old = test_header();
  old.version = 1;
  encode(old, std::span<std::uint8_t, kFileHeaderBytes>(bytes.data(), kFileHeaderBytes));
  write_file(file, bytes);
  SegmentReader reader(file);
  REQUIRE_FALSE(reader.ok());
  CHECK(reader.error()->kind == Damage::kBadHeader);
  const std::string message = reader.error()->message();
  INFO(message);
  CHECK(message.find(file.string() + ": offset 0: segment format version 1 is not supported") !=
        std::string::npos);
  CHECK(message.find("versions 2 to 3") != std::string::npos);
}

TEST_CASE("crc32c with the CPU's instruction equals the table version at every length and seed") {
  std::vector<std::uint8_t> bytes(1100);
  std::uint32_t x = 12345;
  for (auto& b : bytes) b = static_cast<std::uint8_t>((x = x * 1103515245 + 12345) >> 16);
  for (std::size_t offset = 0; offset < 9; ++offset) {
    for (std::size_t length = 0; length + offset <= bytes.size();
         length += (length < 64 ? 1 : 37)) {
      const std::span<const std::uint8_t> part(bytes.data() + offset, length);
      REQUIRE(crc32c(part) == crc32c_portable(part));
      REQUIRE(crc32c(part, 0xDEADBEEF) == crc32c_portable(part, 0xDEADBEEF));
    }
  }
}

TEST_CASE("crc32c matches the published check value") {
  const std::string text = "123456789";
  CHECK(crc32c({reinterpret_cast<const std::uint8_t*>(text.data()), text.size()}) == 0xE3069283u);
}
