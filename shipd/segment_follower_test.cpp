// SegmentFollower and the shipped position: what shipd reads from a store, and where it
// resumes.
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <vector>

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <catch2/catch.hpp>

#include "flowseal.capnp.h"
#include "segment/shipped_position.h"
#include "segment/store.h"
#include "shipd/segment_follower.h"
#include "ship/ship_message.h"

namespace fs = std::filesystem;
using namespace flowseal;
using flowseal::shipd::SegmentFollower;

namespace {

constexpr std::int64_t kNow = 1'700'000'000'000'000'000;

struct TempDir {
  fs::path path;
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "follower-test.XXXXXX").string();
    REQUIRE(::mkdtemp(pattern.data()) != nullptr);
    path = pattern;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

segment::StreamId stream_id() {
  segment::StreamId id;
  id.fill(7);
  return id;
}
segment::KeyId key_id() {
  segment::KeyId id;
  id.fill(9);
  return id;
}

std::vector<std::byte> batch_bytes(std::uint64_t seq) {
  capnp::MallocMessageBuilder message;
  auto batch = message.initRoot<schema::SealedBatch>();
  batch.initHeader().setSeq(seq);
  auto list = batch.initRecords(4);
  std::uint64_t x = seq * 0x9E3779B97F4A7C15ull + 1;
  for (auto record : list) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    record.setUid(x);
    record.initOrig().setBytes(x * 3);
  }
  auto words = capnp::messageToFlatArray(message);
  auto bytes = words.asBytes();
  return {reinterpret_cast<const std::byte*>(bytes.begin()),
          reinterpret_cast<const std::byte*>(bytes.end())};
}

segment::SegmentStore make_store(const fs::path& dir, std::uint64_t max_bytes = 1 << 20) {
  segment::StoreOptions o;
  o.dir = dir;
  o.segment_max_bytes = max_bytes;
  o.segment_max_age = std::chrono::hours(1);
  return segment::SegmentStore(o);
}

void append(segment::SegmentStore& store, std::uint64_t seq) {
  REQUIRE(store.append(stream_id(), key_id(), segment::BatchMeta{seq, 0, 0, 4}, batch_bytes(seq),
                       kNow) == segment::AppendResult::kStored);
}

std::vector<std::uint64_t> drain(SegmentFollower& follower) {
  std::vector<std::uint64_t> seqs;
  while (auto frame = follower.next()) seqs.push_back(frame->frame.batch.seq);
  return seqs;
}

std::vector<std::uint64_t> range(std::uint64_t from, std::uint64_t to) {
  std::vector<std::uint64_t> out;
  for (auto s = from; s < to; ++s) out.push_back(s);
  return out;
}

}  // namespace

TEST_CASE(
    "the follower hands out every stored batch in order, across closed segments and the "
    "open .part, and follows the .part when it is closed") {
  TempDir dir;
  auto store = make_store(dir.path, 600);  // a few batches per segment
  for (std::uint64_t s = 0; s < 20; ++s) append(store, s);
  REQUIRE(store.segments_started() > 2);
  SegmentFollower follower(dir.path, std::nullopt);
  CHECK(drain(follower) == range(0, 20));
  CHECK_FALSE(follower.at_end_of_closed_store());  // a .part is still open
  for (std::uint64_t s = 20; s < 25; ++s) append(store, s);
  CHECK(drain(follower) == range(20, 25));
  REQUIRE(store.close().ok());
  CHECK(drain(follower).empty());
  CHECK(follower.at_end_of_closed_store());
  CHECK(follower.error_count() == 0);
}

TEST_CASE("the follower resumes after the shipped seq and rewinds to it") {
  TempDir dir;
  auto store = make_store(dir.path, 600);
  for (std::uint64_t s = 0; s < 30; ++s) append(store, s);
  REQUIRE(store.close().ok());
  SegmentFollower follower(dir.path, std::uint64_t{17});
  CHECK(drain(follower) == range(18, 30));
  follower.rewind(std::uint64_t{3});
  CHECK(drain(follower) == range(4, 30));
  follower.rewind(std::nullopt);
  CHECK(drain(follower) == range(0, 30));
}

TEST_CASE("a frame handed out is the stored frame: it decodes to the batch stored") {
  TempDir dir;
  auto store = make_store(dir.path);
  append(store, 5);
  SegmentFollower follower(dir.path, std::nullopt);
  auto frame = follower.next();
  REQUIRE(frame);
  CHECK(frame->file.stream_id == stream_id());
  CHECK(frame->file.key_id == key_id());
  ship::FrameDecoder decoder;
  REQUIRE_FALSE(decoder.decode(frame->bytes));
  capnp::FlatArrayMessageReader reader(kj::ArrayPtr<const capnp::word>(
      reinterpret_cast<const capnp::word*>(decoder.message().data()),
      decoder.message().size() / sizeof(capnp::word)));
  CHECK(reader.getRoot<schema::SealedBatch>().getHeader().getSeq() == 5);
  // Every single-bit flip of the frame is refused (header CRC, data CRC, zstd checksum).
  for (std::size_t i = 0; i < frame->bytes.size() * 8; i += 7) {
    auto copy = frame->bytes;
    copy[i / 8] ^= static_cast<std::uint8_t>(1u << (i % 8));
    CHECK(decoder.decode(copy).has_value());
  }
}

TEST_CASE(
    "with messages, each batch handed out carries its own decoded records, still whole after "
    "the follower read the next ones; with both parts, also its stored frame") {
  TempDir dir;
  auto store = make_store(dir.path, 600);
  for (std::uint64_t s = 0; s < 6; ++s) append(store, s);
  for (const auto parts :
       {flowseal::shipd::FrameParts::kMessage, flowseal::shipd::FrameParts::kBoth}) {
    const bool both = parts == flowseal::shipd::FrameParts::kBoth;
    INFO("both parts: " << both);
    SegmentFollower follower(dir.path, std::nullopt, parts);
    std::vector<flowseal::shipd::StoredFrame> frames;
    while (auto frame = follower.next()) frames.push_back(std::move(*frame));
    REQUIRE(frames.size() == 6);
    for (std::uint64_t s = 0; s < frames.size(); ++s) {
      const flowseal::shipd::StoredFrame& frame = frames[s];
      // The stored frame only for a caller that publishes it (shipping on a live probe).
      if (both) {
        ship::FrameDecoder decoder;
        REQUIRE_FALSE(decoder.decode(frame.bytes));
        CHECK(decoder.frame().batch.seq == s);
      } else {
        CHECK(frame.bytes.empty());
      }
      REQUIRE(frame.message_bytes > 0);
      REQUIRE(frame.message.size() * 8 >= frame.message_bytes);
      capnp::FlatArrayMessageReader reader(kj::ArrayPtr<const capnp::word>(
          reinterpret_cast<const capnp::word*>(frame.message.data()), frame.message_bytes / 8));
      // The batch as appended: its seq and its records' uids.
      const std::vector<std::byte> expected = batch_bytes(s);
      capnp::FlatArrayMessageReader appended(kj::ArrayPtr<const capnp::word>(
          reinterpret_cast<const capnp::word*>(expected.data()), expected.size() / 8));
      const auto got = reader.getRoot<schema::SealedBatch>();
      const auto want = appended.getRoot<schema::SealedBatch>();
      CHECK(got.getHeader().getSeq() == s);
      REQUIRE(got.getRecords().size() == want.getRecords().size());
      for (unsigned i = 0; i < got.getRecords().size(); ++i) {
        CHECK(got.getRecords()[i].getUid() == want.getRecords()[i].getUid());
        CHECK(got.getRecords()[i].getOrig().getBytes() ==
              want.getRecords()[i].getOrig().getBytes());
      }
    }
  }
}

TEST_CASE("a recycled message's storage holds the next batch, the one handed out stays whole") {
  TempDir dir;
  auto store = make_store(dir.path);  // one segment: one reader for every batch
  for (std::uint64_t s = 0; s < 4; ++s) append(store, s);
  SegmentFollower follower(dir.path, std::nullopt, flowseal::shipd::FrameParts::kMessage);
  auto seq_of = [](const flowseal::shipd::StoredFrame& frame) {
    capnp::FlatArrayMessageReader reader(kj::ArrayPtr<const capnp::word>(
        reinterpret_cast<const capnp::word*>(frame.message.data()), frame.message_bytes / 8));
    return reader.getRoot<schema::SealedBatch>().getHeader().getSeq();
  };
  auto first = follower.next();
  REQUIRE(first);
  auto second = follower.next();
  REQUIRE(second);
  CHECK(seq_of(*first) == 0);
  CHECK(seq_of(*second) == 1);
  const std::uint64_t* storage = first->message.data();
  follower.recycle(std::move(first->message));
  auto third = follower.next();
  REQUIRE(third);
  CHECK(seq_of(*third) == 2);
  CHECK(seq_of(*second) == 1);  // handed out before the recycle: untouched
  auto fourth = follower.next();
  REQUIRE(fourth);
  // The recycled storage went back to the reader and now holds a later batch.
  CHECK((third->message.data() == storage || fourth->message.data() == storage));
  CHECK(seq_of(*fourth) == 3);
  CHECK(seq_of(*third) == 2);
}

TEST_CASE("a .part ending inside a frame is not damage: the frame is read once whole") {
  TempDir dir;
  auto store = make_store(dir.path);
  append(store, 0);
  append(store, 1);
  fs::path part;
  for (const auto& f : segment::list_segments(dir.path)) part = f;
  REQUIRE(segment::is_part(part));
  // Simulate writerd halfway through writing a third frame.
  {
    std::ofstream out(part, std::ios::app | std::ios::binary);
    out << "FSFR partial";
  }
  SegmentFollower follower(dir.path, std::nullopt);
  CHECK(drain(follower) == range(0, 2));
  CHECK(follower.error_count() == 0);
}

TEST_CASE("the shipped position survives a reload, and a damaged file is reported, not trusted") {
  TempDir dir;
  std::string why;
  CHECK_FALSE(segment::load_shipped_position(dir.path, why));
  CHECK(why.empty());
  REQUIRE(segment::save_shipped_position(dir.path, {stream_id(), 41}, why));
  auto loaded = segment::load_shipped_position(dir.path, why);
  REQUIRE(loaded);
  CHECK(loaded->seq == 41);
  CHECK(loaded->stream == stream_id());
  REQUIRE(segment::save_shipped_position(dir.path, {stream_id(), 42}, why));
  CHECK(segment::load_shipped_position(dir.path, why)->seq == 42);
  {
    std::ofstream out(dir.path / segment::kShippedFileName, std::ios::trunc);
    out << "flowseal-shipped 1\nstream zz\nseq 3\n";
  }
  CHECK_FALSE(segment::load_shipped_position(dir.path, why));
  CHECK_FALSE(why.empty());
  // A symlink in its place is refused, not followed.
  fs::remove(dir.path / segment::kShippedFileName);
  fs::create_symlink("/etc/hostname", dir.path / segment::kShippedFileName);
  CHECK_FALSE(segment::load_shipped_position(dir.path, why));
  CHECK_FALSE(why.empty());
}

TEST_CASE("a state file is replaced whole, never written or read through a symlink") {
  TempDir dir;
  std::string why;
  CHECK_FALSE(segment::read_small_file(dir.path, "state", 1024, why));
  CHECK(why.empty());  // absent: not an error
  REQUIRE(segment::write_file_atomically(dir.path, "state", "one\n", why));
  REQUIRE(segment::write_file_atomically(dir.path, "state", "two\n", why));
  CHECK(segment::read_small_file(dir.path, "state", 1024, why) == std::string("two\n"));
  CHECK_FALSE(fs::exists(dir.path / "state.tmp"));
  // Larger than the reader takes: refused, named.
  CHECK_FALSE(segment::read_small_file(dir.path, "state", 2, why));
  CHECK(why.find("larger than") != std::string::npos);
  // A symlink in the file's place is not read; one planted as the temp file is not followed
  // (the target stays as it was).
  const fs::path target = dir.path / "target";
  { std::ofstream(target) << "untouched"; }
  fs::remove(dir.path / "state");
  fs::create_symlink(target, dir.path / "state");
  CHECK_FALSE(segment::read_small_file(dir.path, "state", 1024, why));
  CHECK_FALSE(why.empty());
  fs::create_symlink(target, dir.path / "state.tmp");
  REQUIRE(segment::write_file_atomically(dir.path, "state", "three\n", why));
  CHECK(fs::is_regular_file(fs::symlink_status(dir.path / "state")));
  std::ifstream in(target);
  std::string text;
  std::getline(in, text);
  CHECK(text == "untouched");
}
