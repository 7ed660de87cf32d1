#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <vector>

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <catch2/catch.hpp>
#include <fmt/format.h>

#include "flowseal.capnp.h"
#include "segment/format.h"
#include "segment/reader.h"
#include "segment/shipped_position.h"
#include "segment/store.h"

namespace fs = std::filesystem;
using namespace flowseal::segment;

namespace {

constexpr std::int64_t kNow = 1'700'000'000'000'000'000;

struct TempDir {
  fs::path path;
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "store-test.XXXXXX").string();
    REQUIRE(::mkdtemp(pattern.data()) != nullptr);
    path = pattern;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

StreamId stream(std::uint8_t fill = 7) {
  StreamId id;
  id.fill(fill);
  return id;
}

KeyId key(std::uint8_t fill = 9) {
  KeyId id;
  id.fill(fill);
  return id;
}

// A SealedBatch with `records` records whose bytes do not compress much, so sizes are
// predictable enough for rotation.
std::vector<std::byte> batch_bytes(std::uint64_t seq, std::uint32_t records = 20) {
  capnp::MallocMessageBuilder message;
  auto batch = message.initRoot<flowseal::schema::SealedBatch>();
  batch.initHeader().setSeq(seq);
  auto list = batch.initRecords(records);
  std::uint64_t x = seq * 0x9E3779B97F4A7C15ull + 1;
  for (auto record : list) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    record.setUid(x);
    record.getOrig().setBytes(x * 3);
    record.getResp().setBytes(x * 5);
  }
  auto words = capnp::messageToFlatArray(message);
  auto bytes = words.asBytes();
  return {reinterpret_cast<const std::byte*>(bytes.begin()),
          reinterpret_cast<const std::byte*>(bytes.end())};
}

BatchMeta meta(std::uint64_t seq) { return BatchMeta{seq, 0, 0, 20}; }

StoreOptions options(const fs::path& dir) {
  StoreOptions o;
  o.dir = dir;
  o.segment_max_bytes = 1 << 20;
  o.segment_max_age = std::chrono::hours(1);
  return o;
}

std::vector<std::uint64_t> stored_seqs(const fs::path& dir) {
  std::vector<std::uint64_t> seqs;
  for (const auto& file : list_segments(dir)) {
    SegmentReader reader(file);
    REQUIRE(reader.ok());
    SegmentReader::Next next;
    while ((next = reader.next()) == SegmentReader::Next::kFrame) {
      seqs.push_back(reader.frame().batch.seq);
    }
    INFO((reader.error() ? reader.error()->message() : ""));
    REQUIRE(next == SegmentReader::Next::kEnd);
  }
  return seqs;
}

std::vector<std::uint64_t> iota(std::uint64_t n) {
  std::vector<std::uint64_t> v(n);
  for (std::uint64_t i = 0; i < n; ++i) v[i] = i;
  return v;
}

}  // namespace

TEST_CASE("rotation by size starts a new segment named after its first batch") {
  TempDir dir;
  StoreOptions o = options(dir.path);
  o.segment_max_bytes = 2048;
  {
    SegmentStore store(o);
    for (std::uint64_t seq = 0; seq < 12; ++seq) {
      REQUIRE(store.append(stream(), key(), meta(seq), batch_bytes(seq), kNow) ==
              AppendResult::kStored);
    }
    REQUIRE(store.close().ok());
    CHECK(store.segments_started() > 2);
  }
  const auto segments = list_segments(dir.path);
  REQUIRE(segments.size() > 2);
  for (const auto& s : segments) CHECK_FALSE(is_part(s));
  CHECK(segments[0].filename() == "seg-00000000000000000000.fsg");
  SegmentReader second(segments[1]);
  REQUIRE(second.next() == SegmentReader::Next::kFrame);
  CHECK(segments[1].filename() == segment_name(second.frame().batch.seq));
  CHECK(stored_seqs(dir.path) == iota(12));
}

TEST_CASE("rotation by age closes an idle segment") {
  TempDir dir;
  StoreOptions o = options(dir.path);
  o.segment_max_age = std::chrono::seconds(10);
  SegmentStore store(o);
  REQUIRE(store.append(stream(), key(), meta(0), batch_bytes(0), kNow) == AppendResult::kStored);
  REQUIRE(store.maintain(kNow + 5'000'000'000).ok());
  CHECK(store.has_open_segment());
  REQUIRE(store.maintain(kNow + 10'000'000'000).ok());
  CHECK_FALSE(store.has_open_segment());
  REQUIRE(list_segments(dir.path).size() == 1);
  CHECK_FALSE(is_part(list_segments(dir.path)[0]));
}

TEST_CASE(
    "a wall clock stepped back behind the open segment's creation closes it, not freezes it") {
  // An NTP step (or an operator) sets the clock back an hour: measured on the wall clock, the
  // open segment would be "-1 h" old and stay open for an hour past writer.segment_max_age.
  TempDir dir;
  StoreOptions o = options(dir.path);
  o.segment_max_age = std::chrono::seconds(10);
  SegmentStore store(o);
  REQUIRE(store.append(stream(), key(), meta(0), batch_bytes(0), kNow) == AppendResult::kStored);
  const std::int64_t back = kNow - 3600'000'000'000;
  REQUIRE(store.maintain(back).ok());
  CHECK_FALSE(store.has_open_segment());
  const auto notes = store.take_notes();
  REQUIRE(notes.size() == 1);
  CHECK(notes[0].find("the wall clock went back 3600.0 s") != std::string::npos);
  // The next segment ages from the new time, and appends after a step back close the same way.
  REQUIRE(store.append(stream(), key(), meta(1), batch_bytes(1), back) == AppendResult::kStored);
  REQUIRE(store.maintain(back + 5'000'000'000).ok());
  CHECK(store.has_open_segment());
  REQUIRE(store.append(stream(), key(), meta(2), batch_bytes(2), back - 1'000'000'000) ==
          AppendResult::kStored);
  CHECK(list_segments(dir.path).size() == 3);
  REQUIRE(store.close().ok());
  CHECK(stored_seqs(dir.path) == iota(3));
}

TEST_CASE("a new signing key starts a new segment, since a header names one key") {
  TempDir dir;
  SegmentStore store(options(dir.path));
  REQUIRE(store.append(stream(), key(1), meta(0), batch_bytes(0), kNow) == AppendResult::kStored);
  REQUIRE(store.append(stream(), key(2), meta(1), batch_bytes(1), kNow) == AppendResult::kStored);
  REQUIRE(store.close().ok());
  const auto segments = list_segments(dir.path);
  REQUIRE(segments.size() == 2);
  CHECK(SegmentReader(segments[1]).header().key_id == key(2));
}

TEST_CASE("a torn .part is cut back to its last whole frame and appended to after a restart") {
  TempDir dir;
  fs::path part;
  {
    SegmentStore store(options(dir.path));
    for (std::uint64_t seq = 0; seq < 3; ++seq) {
      REQUIRE(store.append(stream(), key(), meta(seq), batch_bytes(seq), kNow) ==
              AppendResult::kStored);
    }
    // No close: the store goes away like a killed writerd.
  }
  auto segments = list_segments(dir.path);
  REQUIRE(segments.size() == 1);
  part = segments[0];
  REQUIRE(is_part(part));
  // Tear the last frame: cut 10 bytes off its end.
  fs::resize_file(part, fs::file_size(part) - 10);

  SegmentStore store(options(dir.path));
  REQUIRE(store.highest_seq());
  CHECK(*store.highest_seq() == 1);
  REQUIRE_FALSE(store.recovery_notes().empty());
  CHECK(store.recovery_notes()[0].find("truncated") != std::string::npos);
  // The replay from the ring: 1 is held already, 2 was torn and is stored again.
  CHECK(store.append(stream(), key(), meta(1), batch_bytes(1), kNow) == AppendResult::kDuplicate);
  CHECK(store.append(stream(), key(), meta(2), batch_bytes(2), kNow) == AppendResult::kStored);
  CHECK(store.append(stream(), key(), meta(3), batch_bytes(3), kNow) == AppendResult::kStored);
  REQUIRE(store.close().ok());
  segments = list_segments(dir.path);
  REQUIRE(segments.size() == 1);
  CHECK(segments[0].filename() == "seg-00000000000000000000.fsg");
  CHECK(stored_seqs(dir.path) == iota(4));
}

TEST_CASE("recovery reports its progress frame by frame, so a caller can keep its heartbeat") {
  TempDir dir;
  {
    SegmentStore store(options(dir.path));
    for (std::uint64_t seq = 0; seq < 5; ++seq) {
      REQUIRE(store.append(stream(), key(), meta(seq), batch_bytes(seq), kNow) ==
              AppendResult::kStored);
    }
  }  // no close: a .part, as a killed writerd leaves it
  StoreOptions o = options(dir.path);
  int calls = 0;
  o.on_recovery_progress = [&] { ++calls; };
  SegmentStore store(std::move(o));
  CHECK(calls == 5);  // once per whole frame of the .part
  REQUIRE(store.highest_seq());
  CHECK(*store.highest_seq() == 4);
}

TEST_CASE("a restart after a clean close drops replayed batches and continues the stream") {
  TempDir dir;
  {
    SegmentStore store(options(dir.path));
    for (std::uint64_t seq = 0; seq < 3; ++seq) {
      REQUIRE(store.append(stream(), key(), meta(seq), batch_bytes(seq), kNow) ==
              AppendResult::kStored);
    }
    REQUIRE(store.close().ok());
  }
  SegmentStore store(options(dir.path));
  REQUIRE(store.highest_seq());
  CHECK(*store.highest_seq() == 2);
  CHECK(store.append(stream(), key(), meta(0), batch_bytes(0), kNow) == AppendResult::kDuplicate);
  CHECK(store.append(stream(), key(), meta(2), batch_bytes(2), kNow) == AppendResult::kDuplicate);
  CHECK(store.append(stream(), key(), meta(3), batch_bytes(3), kNow) == AppendResult::kStored);
  REQUIRE(store.close().ok());
  CHECK(list_segments(dir.path).size() == 2);
  CHECK(stored_seqs(dir.path) == iota(4));
}

TEST_CASE("a .part torn before its header was whole is removed at recovery") {
  TempDir dir;
  std::ofstream(dir.path / "seg-00000000000000000000.fsg.part") << "FLWS";
  SegmentStore store(options(dir.path));
  CHECK_FALSE(store.highest_seq());
  CHECK(list_segments(dir.path).empty());
  CHECK(store.append(stream(), key(), meta(0), batch_bytes(0), kNow) == AppendResult::kStored);
}

TEST_CASE("a batch of another stream is refused, not mixed into the directory's chain") {
  TempDir dir;
  SegmentStore store(options(dir.path));
  REQUIRE(store.append(stream(1), key(), meta(0), batch_bytes(0), kNow) == AppendResult::kStored);
  CHECK(store.append(stream(2), key(), meta(0), batch_bytes(0), kNow) ==
        AppendResult::kForeignStream);
  CHECK(store.last_error().what.find("another output directory") != std::string::npos);
}

namespace {

std::int64_t real_now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace

TEST_CASE("retention by total size deletes the oldest closed segments and never the open one") {
  TempDir dir;
  StoreOptions o = options(dir.path);
  o.segment_max_bytes = 2048;
  o.retention_max_bytes = 6000;
  SegmentStore store(o);
  // At least 40 batches, and then until a segment is open (the last batch may have just
  // filled one, depending on how well the batches compress).
  std::uint64_t last = 0;
  for (std::uint64_t seq = 0; seq < 40 || !store.has_open_segment(); ++seq) {
    REQUIRE(store.append(stream(), key(), meta(seq), batch_bytes(seq), real_now_ns()) ==
            AppendResult::kStored);
    last = seq;
  }
  REQUIRE(store.has_open_segment());
  CHECK(store.segments_deleted() > 0);
  const auto segments = list_segments(dir.path);
  REQUIRE_FALSE(segments.empty());
  CHECK(is_part(segments.back()));  // the open segment is still there
  std::uint64_t closed_bytes = 0;
  for (const auto& s : segments) {
    if (!is_part(s)) closed_bytes += fs::file_size(s);
  }
  CHECK(closed_bytes <= o.retention_max_bytes);
  // What is left is the newest part of the stream, without a gap.
  const auto seqs = stored_seqs(dir.path);
  REQUIRE_FALSE(seqs.empty());
  CHECK(seqs.front() > 0);
  CHECK(seqs.back() == last);
  for (std::size_t i = 1; i < seqs.size(); ++i) CHECK(seqs[i] == seqs[i - 1] + 1);
}

TEST_CASE("retention by age deletes closed segments past the limit when idle") {
  TempDir dir;
  StoreOptions o = options(dir.path);
  o.segment_max_bytes = 2048;
  o.retention_max_age = std::chrono::hours(1);
  SegmentStore store(o);
  for (std::uint64_t seq = 0; seq < 10 || !store.has_open_segment(); ++seq) {
    REQUIRE(store.append(stream(), key(), meta(seq), batch_bytes(seq), real_now_ns()) ==
            AppendResult::kStored);
  }
  REQUIRE(store.has_open_segment());
  auto segments = list_segments(dir.path);
  REQUIRE(segments.size() > 2);
  CHECK(store.segments_deleted() == 0);
  // The two oldest closed segments were closed two hours ago.
  const auto old = fs::file_time_type::clock::now() - std::chrono::hours(2);
  fs::last_write_time(segments[0], old);
  fs::last_write_time(segments[1], old);
  fs::path open_part = segments.back();
  fs::last_write_time(open_part, old);  // even an old open segment stays
  REQUIRE(store.maintain(real_now_ns()).ok());
  CHECK(store.segments_deleted() == 2);
  const auto left = list_segments(dir.path);
  CHECK(left.size() == segments.size() - 2);
  CHECK_FALSE(fs::exists(segments[0]));
  CHECK_FALSE(fs::exists(segments[1]));
  CHECK(fs::exists(open_part));
}

// Batches 0.. into `store` until it has at least 10 and an open segment, then every closed
// segment marked as closed two hours ago; the segments, oldest first (more than three).
std::vector<fs::path> fill_and_age(SegmentStore& store, const fs::path& dir) {
  for (std::uint64_t seq = 0; seq < 10 || !store.has_open_segment(); ++seq) {
    REQUIRE(store.append(stream(), key(), meta(seq), batch_bytes(seq), real_now_ns()) ==
            AppendResult::kStored);
  }
  auto segments = list_segments(dir);
  REQUIRE(segments.size() > 3);
  const auto old = fs::file_time_type::clock::now() - std::chrono::hours(2);
  for (std::size_t i = 0; i + 1 < segments.size(); ++i) fs::last_write_time(segments[i], old);
  return segments;
}

TEST_CASE(
    "shipping on: retention by age keeps what shipd has not had acked, and deletes what it has") {
  TempDir dir;
  StoreOptions o = options(dir.path);
  o.segment_max_bytes = 2048;
  o.retention_max_age = std::chrono::hours(1);
  o.output_positions = {kShippedFileName};
  SegmentStore store(o);
  const auto segments = fill_and_age(store, dir.path);

  // No shipped position: nothing is shipped, every old segment stays.
  REQUIRE(store.maintain(real_now_ns() + 2'000'000'000).ok());
  CHECK(store.segments_deleted() == 0);
  CHECK(store.take_alarms().empty());
  const auto notes = store.take_notes();
  CHECK(std::any_of(notes.begin(), notes.end(), [](const std::string& n) {
    return n.find("not shipped yet") != std::string::npos;
  }));

  // shipd has had everything of the first segment and part of the second acked: only the
  // first goes (the second still holds unshipped batches).
  SegmentReader second(segments[1]);
  REQUIRE(second.next() == SegmentReader::Next::kFrame);
  const std::uint64_t first_of_second = second.frame().batch.seq;
  std::string why;
  REQUIRE(save_shipped_position(dir.path, {stream(), first_of_second}, why));
  REQUIRE(store.maintain(real_now_ns() + 4'000'000'000).ok());
  CHECK(store.segments_deleted() == 1);
  CHECK_FALSE(fs::exists(segments[0]));
  CHECK(fs::exists(segments[1]));
  CHECK(store.dropped_unshipped_records() == 0);
  CHECK(store.take_alarms().empty());

  // A position of another stream ships nothing of this one.
  REQUIRE(save_shipped_position(dir.path, {stream(8), 1000}, why));
  REQUIRE(store.maintain(real_now_ns() + 6'000'000'000).ok());
  CHECK(store.segments_deleted() == 1);
  CHECK(fs::exists(segments[1]));
}

TEST_CASE(
    "several outputs: retention by age keeps what any one has not handed over (an IPFIX state "
    "is read by its head)") {
  TempDir dir;
  StoreOptions o = options(dir.path);
  o.segment_max_bytes = 2048;
  o.retention_max_age = std::chrono::hours(1);
  o.output_positions = {kShippedFileName, kIpfixExportedFileName, kKafkaExportedFileName};
  SegmentStore store(o);
  const auto segments = fill_and_age(store, dir.path);
  SegmentReader second(segments[1]);
  REQUIRE(second.next() == SegmentReader::Next::kFrame);
  const std::uint64_t first_of_second = second.frame().batch.seq;

  // Shipped and Kafka past the first segment, IPFIX not started: nothing goes.
  std::string why;
  REQUIRE(save_shipped_position(dir.path, {stream(), 1000}, why));
  REQUIRE(save_shipped_position(dir.path, {stream(), 1000}, why, kKafkaExportedFileName));
  REQUIRE(store.maintain(real_now_ns() + 2'000'000'000).ok());
  CHECK(store.segments_deleted() == 0);

  // The IPFIX state (its position, then a long per-flow part retention does not read) reaches
  // into the second segment: the first goes, the second stays.
  std::string state = fmt::format("flowseal-ipfix-exported 1\nstream {}\nseq {}\n",
                                  to_hex(stream()), first_of_second);
  state.append(1 << 20, 'x');
  REQUIRE(write_file_atomically(dir.path, kIpfixExportedFileName, state, why));
  REQUIRE(store.maintain(real_now_ns() + 4'000'000'000).ok());
  CHECK(store.segments_deleted() == 1);
  CHECK_FALSE(fs::exists(segments[0]));
  CHECK(fs::exists(segments[1]));
  CHECK(store.take_alarms().empty());

  // A damaged position counts as nothing handed over, said in a note.
  REQUIRE(write_file_atomically(dir.path, kKafkaExportedFileName, "garbage", why));
  REQUIRE(store.maintain(real_now_ns() + 6'000'000'000).ok());
  CHECK(store.segments_deleted() == 1);
  const auto notes = store.take_notes();
  CHECK(std::any_of(notes.begin(), notes.end(), [](const std::string& n) {
    return n.find("kafka-exported: not a position") != std::string::npos;
  }));
}

TEST_CASE("shipping on: the size limit forces unshipped segments out, loudly and counted") {
  TempDir dir;
  StoreOptions o = options(dir.path);
  o.segment_max_bytes = 2048;
  o.retention_max_bytes = 6000;
  o.output_positions = {kShippedFileName};
  SegmentStore store(o);
  std::string why;
  // shipd has had batches 0..4 acked.
  REQUIRE(save_shipped_position(dir.path, {stream(), 4}, why));
  std::uint64_t last = 0;
  for (std::uint64_t seq = 0; seq < 40 || !store.has_open_segment(); ++seq) {
    REQUIRE(store.append(stream(), key(), meta(seq), batch_bytes(seq), real_now_ns()) ==
            AppendResult::kStored);
    last = seq;
  }
  REQUIRE(store.segments_deleted() > 0);
  const auto seqs = stored_seqs(dir.path);
  REQUIRE_FALSE(seqs.empty());
  REQUIRE(seqs.front() > 5);
  // Every batch deleted past seq 4 was unshipped: 20 records each (meta()), all counted.
  CHECK(store.dropped_unshipped_records() == (seqs.front() - 5) * 20);
  CHECK(store.dropped_unshipped_segments() > 0);
  const auto alarms = store.take_alarms();
  REQUIRE(alarms.size() == store.dropped_unshipped_segments());
  CHECK(alarms.front().find("BEFORE IT WAS SHIPPED") != std::string::npos);
  CHECK(seqs.back() == last);
  // Each deletion was noted for a gap marker first: the unshipped batches, in order, whole.
  const auto note = read_small_file(dir.path, kGivenUpFileName, 1 << 16, why);
  REQUIRE(note);
  std::size_t consumed = 0;
  std::vector<std::string> problems;
  const std::vector<GivenUp> given_up = parse_given_up(*note, consumed, problems);
  CHECK(problems.empty());
  CHECK(consumed == note->size());
  REQUIRE(given_up.size() == store.dropped_unshipped_segments());
  std::uint64_t next = 5, records = 0;
  for (const GivenUp& entry : given_up) {
    CHECK(entry.stream == stream());
    CHECK(entry.first_seq == next);
    CHECK(entry.records == (entry.last_seq - entry.first_seq + 1) * 20);
    next = entry.last_seq + 1;
    records += entry.records;
  }
  CHECK(next == seqs.front());
  CHECK(records == store.dropped_unshipped_records());
}

TEST_CASE("the given-up note counts only what the Core lacks, not what a lagging export lacks") {
  TempDir dir;
  StoreOptions o = options(dir.path);
  o.segment_max_bytes = 2048;
  o.retention_max_bytes = 6000;
  o.output_positions = {kShippedFileName, kKafkaExportedFileName};
  SegmentStore store(o);
  std::string why;
  // shipd has had 0..11 acked; the Kafka export is behind at 4.
  REQUIRE(save_shipped_position(dir.path, {stream(), 11}, why));
  REQUIRE(save_shipped_position(dir.path, {stream(), 4}, why, kKafkaExportedFileName));
  for (std::uint64_t seq = 0; seq < 40 || !store.has_open_segment(); ++seq) {
    REQUIRE(store.append(stream(), key(), meta(seq), batch_bytes(seq), real_now_ns()) ==
            AppendResult::kStored);
  }
  const auto seqs = stored_seqs(dir.path);
  REQUIRE(seqs.front() > 12);
  // Retention counts what any output lacked (5 on), the note what the Core lacked (12 on).
  CHECK(store.dropped_unshipped_records() == (seqs.front() - 5) * 20);
  const auto note = read_small_file(dir.path, kGivenUpFileName, 1 << 16, why);
  REQUIRE(note);
  std::size_t consumed = 0;
  std::vector<std::string> problems;
  const std::vector<GivenUp> given_up = parse_given_up(*note, consumed, problems);
  REQUIRE_FALSE(given_up.empty());
  CHECK(given_up.front().first_seq == 12);
  CHECK(given_up.back().last_seq + 1 == seqs.front());
  std::uint64_t records = 0;
  for (const GivenUp& entry : given_up) records += entry.records;
  CHECK(records == (seqs.front() - 12) * 20);
}

TEST_CASE("a given-up note: bad lines are named and skipped, a half-written last line waits") {
  const std::string hex(32, 'a');
  const std::string text = "given-up " + hex + " 5 9 100 1700000000000000000\n" + "given-up " +
                           hex + " 9 5 100 1\n" +                        // first after last
                           "given-up " + hex.substr(1) + " 1 2 3 4\n" +  // short stream id
                           "given-up " + hex + " 10 12 60 1 extra\n" + "hello\n" + "given-up " +
                           hex + " 1 -1 60 1\n" +  // a sign: not read as 2^64-1
                           "given-up " + hex + " 1 18446744073709551615 60 1\n" + "given-up " +
                           hex + " 13 14 40 2\n" + "given-up " + hex + " 15";
  std::size_t consumed = 0;
  std::vector<std::string> problems;
  const std::vector<GivenUp> entries = parse_given_up(text, consumed, problems);
  REQUIRE(entries.size() == 2);
  CHECK(entries[0].first_seq == 5);
  CHECK(entries[0].last_seq == 9);
  CHECK(entries[0].records == 100);
  CHECK(entries[0].at_ns == 1700000000000000000);
  CHECK(entries[1].first_seq == 13);
  CHECK(problems.size() == 6);
  CHECK(problems[0].find("line 2") != std::string::npos);
  CHECK(consumed == text.rfind('\n') + 1);
}

TEST_CASE("the given-up note is never written through a symlink") {
  TempDir dir;
  TempDir elsewhere;
  const fs::path target = elsewhere.path / "victim";
  { std::ofstream(target) << "keep\n"; }
  fs::create_symlink(target, dir.path / kGivenUpFileName);
  std::string why;
  CHECK_FALSE(append_given_up(dir.path, {stream(), 1, 2, 3, 4}, why));
  CHECK(why.find(kGivenUpFileName) != std::string::npos);
  std::ifstream in(target);
  std::string line;
  std::getline(in, line);
  CHECK(line == "keep");
}
