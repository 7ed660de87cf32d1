// The refusals of a run that continues its directory's stream, on real signed batches and real
// segment files in a temporary directory:
//  - adopt_stream (stream_adoption.h): the newest stored batch of another key (78), a newest
//    segment or batch that cannot be read or does not verify, a chain link broken between the
//    two newest batches (65). Each refusal names what (key ids, seq, the check that failed)
//    and where (writer.dir, the segment file), and leaves the directory as it was.
//  - continue_chain / take_over_leftovers (sealed_recovery.h): the dead run's sealed batches
//    are taken only while they continue the chain exactly; the first that does not (not a
//    batch, another stream, a gap, a repeat, a fork, another key, tampered records) stops
//    the recovery, and why names the frame and batch seq and how many frames are left.
// Signed batches come from signerd's BatchSealer, as in a run.
#include <stdlib.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <capnp/any.h>
#include <capnp/message.h>
#include <capnp/serialize.h>
#include <catch2/catch.hpp>
#include <fmt/format.h>

#include "test_temp_dir.h"
#include "batch_sealer.h"
#include "capnp_frame.h"
#include "command_error.h"
#include "flowseal.capnp.h"
#include "layout.h"
#include "ring.h"
#include "seal/keys.h"
#include "sealed_recovery.h"
#include "stage_runtime.h"
#include "segment/format.h"
#include "segment/reader.h"
#include "segment/store.h"
#include "stream_adoption.h"

namespace flowseal::supervisor {
namespace {

namespace fs = std::filesystem;
using Catch::Matchers::Contains;
using Frames = std::vector<std::vector<std::byte>>;

// Each TempDir of this file is named after it.
class TempDir : public flowseal::testing::TempDir {
 public:
  TempDir() : flowseal::testing::TempDir("chain_continuation_test") {}
};

struct Key {
  fs::path file;  // the private key, as seal.key_file names it
  seal::PrivateKey priv;
  seal::PublicKey pub;
};

Key make_key(const TempDir& dir, const std::string& name) {
  const fs::path priv = dir / (name + ".key");
  seal::generate_key_pair(seal::Algorithm::kEd25519, priv, dir / (name + ".pub"));
  return {priv, seal::PrivateKey::load(priv), seal::PublicKey::load(dir / (name + ".pub"))};
}

constexpr std::array<std::uint8_t, 16> kStream = {1, 2,  3,  4,  5,  6,  7,  8,
                                                  9, 10, 11, 12, 13, 14, 15, 16};
constexpr std::array<std::uint8_t, 16> kOtherStream = {9, 9, 9, 9, 9, 9, 9, 9,
                                                       9, 9, 9, 9, 9, 9, 9, 9};

// `records` flow records numbered from `first`, one FlowEventBatch.
struct Records {
  capnp::MallocMessageBuilder message;
  capnp::List<schema::FlowEvent>::Reader events;

  Records(unsigned first, unsigned records) {
    auto list = message.initRoot<schema::FlowEventBatch>().initEvents(records);
    for (unsigned i = 0; i < records; ++i) {
      const unsigned n = first + i;
      auto e = list[i];
      e.setUid(0x1000 + n);
      e.setKind(schema::EventKind::END);
      e.setEndReason(schema::EndReason::FIN);
      e.setProto(6);
      const std::uint8_t orig[] = {10, 0, 0, static_cast<std::uint8_t>(n)};
      const std::uint8_t resp[] = {192, 168, 1, static_cast<std::uint8_t>(n * 7)};
      e.setOrigAddr(capnp::Data::Reader(orig, 4));
      e.setRespAddr(capnp::Data::Reader(resp, 4));
      e.setOrigPort(static_cast<std::uint16_t>(40000 + n));
      e.setRespPort(443);
      e.setFirstTsNs(1'000'000'000LL * (1'700'000'000 + n));
      e.setLastTsNs(1'000'000'000LL * (1'700'000'010 + n));
      e.getOrig().setPkts(n + 3);
      e.getResp().setBytes(1000ULL * n);
      e.setConnState("SF");
    }
    events = list.asReader();
  }
};

// A sealed batch as the ring frame (and writerd's input) holds it: the flat-array message.
std::vector<std::byte> seal_next(signerd::BatchSealer& sealer, unsigned records = 4) {
  const Records input(static_cast<unsigned>(sealer.next_seq() * 100), records);
  for (auto e : input.events) sealer.add(e);
  capnp::MallocMessageBuilder message;
  sealer.seal(message);
  const auto words = capnp::messageToFlatArray(message);
  const auto bytes = words.asBytes();
  std::vector<std::byte> frame(bytes.size());
  std::memcpy(frame.data(), bytes.begin(), bytes.size());
  return frame;
}

Frames seal_batches(signerd::BatchSealer& sealer, unsigned batches) {
  Frames frames;
  for (unsigned b = 0; b < batches; ++b) frames.push_back(seal_next(sealer));
  return frames;
}

seal::Digest root_of(const std::vector<std::byte>& frame) {
  capnp::FlatArrayMessageReader reader(as_words(frame), frame_reader_options());
  const auto root = reader.getRoot<schema::SealedBatch>().getHeader().getMerkleRoot();
  seal::Digest out{};
  std::copy_n(root.begin(), out.size(), out.begin());
  return out;
}

ChainPosition position_of(const signerd::BatchSealer& sealer,
                          const std::array<std::uint8_t, 16>& stream = kStream) {
  return {stream, sealer.next_seq(), sealer.prev_root()};
}

// A copy of `frame` with its SealedBatch changed by `edit` (the frame must stay one segment).
template <typename Edit>
std::vector<std::byte> edited(const std::vector<std::byte>& frame, Edit edit) {
  capnp::FlatArrayMessageReader reader(as_words(frame), frame_reader_options());
  capnp::MallocMessageBuilder message;
  message.setRoot(reader.getRoot<schema::SealedBatch>());
  edit(message.getRoot<schema::SealedBatch>());
  const auto words = capnp::messageToFlatArray(message);
  const auto bytes = words.asBytes();
  std::vector<std::byte> out(bytes.size());
  std::memcpy(out.data(), bytes.begin(), bytes.size());
  return out;
}

// ---- a store directory, written by the store writerd uses ----

segment::StoreOptions store_options(const fs::path& dir) {
  segment::StoreOptions options;
  options.dir = dir;
  return options;
}

constexpr std::int64_t kNow = 1'800'000'000'000'000'000;

// Appends `frame` as writerd does, under its own key id or, as a forged segment could claim,
// under `claimed_key`.
void append(segment::SegmentStore& store, const std::vector<std::byte>& frame,
            std::optional<segment::KeyId> claimed_key = std::nullopt) {
  capnp::FlatArrayMessageReader reader(as_words(frame), frame_reader_options());
  const auto batch = reader.getRoot<schema::SealedBatch>();
  const auto header = batch.getHeader();
  segment::StreamId stream{};
  segment::KeyId key{};
  std::copy_n(header.getStreamId().begin(), stream.size(), stream.begin());
  std::copy_n(header.getKeyId().begin(), key.size(), key.begin());
  segment::BatchMeta meta;
  meta.seq = header.getSeq();
  meta.first_ts_ns = header.getFirstTsNs();
  meta.last_ts_ns = header.getLastTsNs();
  meta.record_count = batch.getRecords().size();
  REQUIRE(store.append(stream, claimed_key.value_or(key), meta, frame, kNow) ==
          segment::AppendResult::kStored);
}

// Stores `frames` in `dir` as closed segments (or, with `leave_part`, leaves the last one a
// `.part`, as a SIGKILLed writerd does).
void store_frames(const fs::path& dir, const Frames& frames, bool leave_part = false) {
  segment::SegmentStore store(store_options(dir));
  for (const auto& frame : frames) append(store, frame);
  if (!leave_part) REQUIRE(store.close().ok());
}

// Every file of `dir` with its bytes: what "nothing in it was changed" compares.
std::map<std::string, std::string> snapshot(const fs::path& dir) {
  std::map<std::string, std::string> files;
  for (const auto& entry : fs::recursive_directory_iterator(dir)) {
    if (!entry.is_regular_file()) continue;
    std::ifstream in(entry.path(), std::ios::binary);
    files[entry.path().string()] = std::string(std::istreambuf_iterator<char>(in), {});
  }
  return files;
}

std::vector<fs::path> segment_files(const fs::path& dir) { return segment::list_segments(dir); }

// The refusal adopt_stream throws: its exit code and message.
struct Refusal {
  int code = 0;
  std::string what;
};

Refusal refusal_of(const fs::path& dir, const Key& key) {
  try {
    adopt_stream(dir, key.pub, key.file.string());
  } catch (const CommandError& e) {
    return {e.exit_code(), e.what()};
  }
  FAIL("adopt_stream did not refuse " << dir);
  return {};
}

std::string hex(const seal::Digest& id) { return seal::to_hex(id); }

// Overwrites `bytes.size()` bytes of `file` at `offset`.
void overwrite(const fs::path& file, std::uint64_t offset, const std::string& bytes) {
  std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
  REQUIRE(f);
  f.seekp(static_cast<std::streamoff>(offset));
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  REQUIRE(f);
}

// ==== adopt_stream ====

TEST_CASE("a store's chain is adopted after its newest batch and the one before it verify") {
  TempDir tmp;
  const Key key = make_key(tmp, "k");
  const fs::path dir = tmp / "store";
  signerd::BatchSealer sealer(key.priv, kStream, 0, seal::Digest{});
  store_frames(dir, seal_batches(sealer, 3));

  const auto adopted = adopt_stream(dir, key.pub, key.file.string());
  REQUIRE(adopted);
  CHECK(adopted->position == position_of(sealer));
  CHECK(adopted->last_seq == 2);
  CHECK(adopted->batches_checked == 2);

  SECTION("and from a .part a killed writerd left") {
    const fs::path part_dir = tmp / "part";
    signerd::BatchSealer again(key.priv, kStream, 0, seal::Digest{});
    store_frames(part_dir, seal_batches(again, 3), /*leave_part=*/true);
    REQUIRE(segment::is_part(segment_files(part_dir).back()));
    const auto from_part = adopt_stream(part_dir, key.pub, key.file.string());
    REQUIRE(from_part);
    CHECK(from_part->position == position_of(again));
  }
  SECTION("an empty or missing directory is a new stream, not a refusal") {
    fs::create_directory(tmp / "empty");
    CHECK_FALSE(adopt_stream(tmp / "empty", key.pub, key.file.string()));
    CHECK_FALSE(adopt_stream(tmp / "missing", key.pub, key.file.string()));
  }
}

TEST_CASE("a store sealed with another key is refused (78), naming both key ids, batch and file") {
  TempDir tmp;
  const Key old_key = make_key(tmp, "old");
  const Key new_key = make_key(tmp, "new");
  const fs::path dir = tmp / "store";
  signerd::BatchSealer sealer(old_key.priv, kStream, 0, seal::Digest{});
  store_frames(dir, seal_batches(sealer, 2));
  const auto before = snapshot(dir);

  const Refusal r = refusal_of(dir, new_key);
  CHECK(r.code == exit_code::kConfig);
  CHECK_THAT(r.what, Contains(dir.string()));
  CHECK_THAT(r.what, Contains("key id " + hex(old_key.pub.key_id())));
  CHECK_THAT(r.what, Contains("seal.key_file " + new_key.file.string() + " is key id " +
                              hex(new_key.pub.key_id())));
  CHECK_THAT(r.what, Contains("batch seq 1 in " + segment_files(dir).back().filename().string()));
  CHECK(snapshot(dir) == before);
}

TEST_CASE("a newest segment whose header cannot be read is refused (65), naming the file") {
  TempDir tmp;
  const Key key = make_key(tmp, "k");
  const fs::path dir = tmp / "store";
  signerd::BatchSealer sealer(key.priv, kStream, 0, seal::Digest{});
  store_frames(dir, seal_batches(sealer, 2));
  const fs::path newest = segment_files(dir).back();
  overwrite(newest, 0, "NOTASEGM");
  const auto before = snapshot(dir);

  const Refusal r = refusal_of(dir, key);
  CHECK(r.code == exit_code::kDataError);
  CHECK_THAT(r.what, Contains("writer.dir " + dir.string() + ": cannot continue its stream"));
  CHECK_THAT(r.what, Contains(newest.filename().string()));
  CHECK_THAT(r.what, Contains("Nothing in it was changed"));
  CHECK(snapshot(dir) == before);
}

// Where batch `seq`'s stored (compressed) bytes start in `file`, from its index.
std::uint64_t data_offset(const fs::path& file, std::uint64_t seq) {
  segment::SegmentError error;
  const auto index = segment::read_index(file, error);
  REQUIRE(index);
  for (const auto& entry : *index) {
    if (entry.batch.seq == seq) return entry.offset + segment::kFrameHeaderBytes;
  }
  FAIL("no batch seq " << seq << " in " << file);
  return 0;
}

// What writerd's recovery (SegmentStore) takes as the newest stored batch of `dir`.
std::optional<std::uint64_t> recovered_highest_seq(const fs::path& dir) {
  return segment::SegmentStore(store_options(dir)).highest_seq();
}

TEST_CASE("a closed newest segment with damaged bytes is refused (65), naming file and offset") {
  TempDir tmp;
  const Key key = make_key(tmp, "k");
  const fs::path dir = tmp / "store";
  signerd::BatchSealer sealer(key.priv, kStream, 0, seal::Digest{});
  store_frames(dir, seal_batches(sealer, 3));
  const fs::path newest = segment_files(dir).back();

  SECTION("the newest batch's compressed bytes (its frame CRC fails)") {
    const auto at = data_offset(newest, 2) + 4;
    overwrite(newest, at, "\xff\xfe\xfd\xfc");
    const auto before = snapshot(dir);
    const Refusal r = refusal_of(dir, key);
    CHECK(r.code == exit_code::kDataError);
    CHECK_THAT(r.what, Contains("writer.dir " + dir.string() +
                                ": cannot continue its stream: " + newest.string()));
    CHECK_THAT(r.what, Contains(fmt::format("offset {}: frame bytes do not match their CRC32C",
                                            data_offset(newest, 2))));
    CHECK(snapshot(dir) == before);
  }
  SECTION("the batch before it (the link to the newest is checked from it)") {
    overwrite(newest, data_offset(newest, 1) + 4, "\xff\xfe\xfd\xfc");
    const Refusal r = refusal_of(dir, key);
    CHECK(r.code == exit_code::kDataError);
    CHECK_THAT(r.what, Contains(newest.string()));
  }
  SECTION("only its index (every frame whole)") {
    // Stricter than writerd's recovery, which reads the frames and goes on after seq 2: the
    // store does not verify (verify names the index damage), and a run does not continue a
    // store that does not verify at its newest segment. Said here so a change is a decision.
    const auto size = fs::file_size(newest);
    const std::uint64_t index_at =
        size - 24 - 8 - 3 * segment::kIndexEntryBytes - segment::kIndexHeaderBytes;
    overwrite(newest, index_at + 8, "\xff\xff\xff\xff");
    const auto before = snapshot(dir);
    const Refusal r = refusal_of(dir, key);
    CHECK(r.code == exit_code::kDataError);
    CHECK_THAT(r.what, Contains(newest.string()));
    CHECK_THAT(r.what, Contains("index"));
    CHECK(snapshot(dir) == before);
    CHECK(recovered_highest_seq(dir) == 2u);
  }
}

TEST_CASE("a .part's damaged frames are cut off as writerd's recovery cuts them, not refused") {
  // A killed writerd's .part may end in a torn frame; recovery keeps the frames before the
  // first damaged one. The chain goes on from exactly the batch recovery keeps.
  TempDir tmp;
  const Key key = make_key(tmp, "k");
  const fs::path dir = tmp / "store";
  signerd::BatchSealer sealer(key.priv, kStream, 0, seal::Digest{});
  const Frames frames = seal_batches(sealer, 3);
  // Closed first, to learn the frames' offsets from the index, then stored again as a .part.
  const fs::path closed_dir = tmp / "closed";
  store_frames(closed_dir, frames);
  const fs::path closed = segment_files(closed_dir).back();
  store_frames(dir, frames, /*leave_part=*/true);
  const fs::path part = segment_files(dir).back();
  REQUIRE(segment::is_part(part));

  const std::uint64_t damaged_seq = GENERATE(2u, 1u);
  overwrite(part, data_offset(closed, damaged_seq) + 4, "\xff\xfe\xfd\xfc");
  const auto adopted = adopt_stream(dir, key.pub, key.file.string());
  REQUIRE(adopted);
  CHECK(adopted->last_seq == damaged_seq - 1);
  CHECK(adopted->position.next_seq == damaged_seq);
  CHECK(recovered_highest_seq(dir) == damaged_seq - 1);
}

TEST_CASE("a .part whose header is damaged is refused (65), although recovery would set it aside") {
  // writerd's recovery renames such a file to *.damaged and goes on; the run refuses first,
  // since the newest batches may be in it. A power loss can leave one (a header-sized file of
  // zeros), and then the operator must move it: the message says where to look.
  TempDir tmp;
  const Key key = make_key(tmp, "k");
  const fs::path dir = tmp / "store";
  signerd::BatchSealer sealer(key.priv, kStream, 0, seal::Digest{});
  store_frames(dir, seal_batches(sealer, 2), /*leave_part=*/true);
  const fs::path part = segment_files(dir).back();
  overwrite(part, 0, std::string(segment::kFileHeaderBytes, '\0'));
  const auto before = snapshot(dir);
  const Refusal r = refusal_of(dir, key);
  CHECK(r.code == exit_code::kDataError);
  CHECK_THAT(r.what, Contains(part.string()));
  CHECK_THAT(r.what, Contains("`flowseal verify " + dir.string() + "` names the damage"));
  CHECK(snapshot(dir) == before);
}

TEST_CASE("key rotation: asked for, a store of another key is continued with the new key") {
  TempDir tmp;
  const Key old_key = make_key(tmp, "old");
  const Key new_key = make_key(tmp, "new");
  const fs::path dir = tmp / "store";
  signerd::BatchSealer sealer(old_key.priv, kStream, 0, seal::Digest{});
  store_frames(dir, seal_batches(sealer, 2));
  fs::create_directory(dir / "keys");

  SECTION("refused (78) without the old key's public half in keys/, naming what to copy") {
    const auto before = snapshot(dir);
    try {
      adopt_stream(dir, new_key.pub, new_key.file.string(), /*rotate_key=*/true);
      FAIL("rotated without the old key in keys/");
    } catch (const CommandError& e) {
      CHECK(e.exit_code() == exit_code::kConfig);
      CHECK_THAT(e.what(),
                 Contains("cannot rotate: " + (dir / "keys").string() +
                          "/ holds no public key of key id " + hex(old_key.pub.key_id())));
    }
    CHECK(snapshot(dir) == before);
  }
  SECTION("with it, the chain goes on from the newest batch, verified with the old key") {
    fs::copy_file(tmp / "old.pub", dir / "keys" / "flowseal.pub");
    const auto adopted = adopt_stream(dir, new_key.pub, new_key.file.string(), true);
    REQUIRE(adopted);
    CHECK(adopted->position == position_of(sealer));
    REQUIRE(adopted->rotated_from);
    CHECK(*adopted->rotated_from == old_key.pub.key_id());
    // The refusal without --rotate-key says how to rotate.
    const Refusal r = refusal_of(dir, new_key);
    CHECK(r.code == exit_code::kConfig);
    CHECK_THAT(r.what, Contains("run once with --rotate-key"));
    // The same key asked to rotate: nothing to rotate.
    const auto same = adopt_stream(dir, old_key.pub, old_key.file.string(), true);
    REQUIRE(same);
    CHECK_FALSE(same->rotated_from);
  }
  SECTION("a rotated store's newest batches must still verify") {
    fs::copy_file(tmp / "old.pub", dir / "keys" / "flowseal.pub");
    overwrite(segment_files(dir).back(), data_offset(segment_files(dir).back(), 1) + 4, "\xff");
    try {
      adopt_stream(dir, new_key.pub, new_key.file.string(), true);
      FAIL("rotated onto a damaged batch");
    } catch (const CommandError& e) {
      CHECK(e.exit_code() == exit_code::kDataError);
    }
  }
}

TEST_CASE("a newest batch whose signature does not verify is refused (65), naming seq and file") {
  TempDir tmp;
  const Key key = make_key(tmp, "k");
  const fs::path dir = tmp / "store";
  signerd::BatchSealer sealer(key.priv, kStream, 0, seal::Digest{});
  Frames frames = seal_batches(sealer, 2);
  frames[1] = edited(frames[1], [](schema::SealedBatch::Builder batch) {
    auto signature = batch.getSignature();
    signature[0] = static_cast<std::uint8_t>(signature[0] ^ 1);
  });
  store_frames(dir, frames);
  const auto before = snapshot(dir);

  const Refusal r = refusal_of(dir, key);
  CHECK(r.code == exit_code::kDataError);
  CHECK_THAT(r.what, Contains(segment_files(dir).back().filename().string()));
  CHECK_THAT(r.what, Contains("batch seq 1"));
  CHECK_THAT(r.what, Contains("signature does not verify with key " + hex(key.pub.key_id())));
  CHECK(snapshot(dir) == before);
}

TEST_CASE("a newest batch whose records do not match its Merkle root is refused (65)") {
  TempDir tmp;
  const Key key = make_key(tmp, "k");
  const fs::path dir = tmp / "store";
  signerd::BatchSealer sealer(key.priv, kStream, 0, seal::Digest{});
  Frames frames = seal_batches(sealer, 2);
  frames[1] = edited(frames[1], [](schema::SealedBatch::Builder batch) {
    batch.getRecords()[2].setRespPort(8443);
  });
  store_frames(dir, frames);

  const Refusal r = refusal_of(dir, key);
  CHECK(r.code == exit_code::kDataError);
  CHECK_THAT(r.what, Contains("batch seq 1"));
  CHECK_THAT(r.what, Contains("Merkle root"));
  CHECK_THAT(r.what, Contains(segment_files(dir).back().filename().string()));
}

TEST_CASE("a newest batch that does not link to the one before it is refused (65)") {
  TempDir tmp;
  const Key key = make_key(tmp, "k");
  const fs::path dir = tmp / "store";
  signerd::BatchSealer sealer(key.priv, kStream, 0, seal::Digest{});
  Frames frames = seal_batches(sealer, 2);
  // A fork: seq 2 sealed by a sealer that believed another batch came before it.
  seal::Digest wrong_root{};
  wrong_root.fill(0x5a);
  signerd::BatchSealer fork(key.priv, kStream, 2, wrong_root);
  frames.push_back(seal_next(fork));
  const bool same_segment = GENERATE(true, false);
  if (same_segment) {
    store_frames(dir, frames);
  } else {
    // The two newest batches in two segments: the link across segments is checked too.
    store_frames(dir, {frames[0], frames[1]});
    store_frames(dir, {frames[2]});
    REQUIRE(segment_files(dir).size() == 2);
  }
  const auto before = snapshot(dir);

  const Refusal r = refusal_of(dir, key);
  CHECK(r.code == exit_code::kDataError);
  CHECK_THAT(r.what, Contains("prevRoot"));
  CHECK_THAT(r.what, Contains("batch seq 1"));  // the root it should have linked to
  CHECK(snapshot(dir) == before);
}

TEST_CASE("a newest batch of another key than its segment says is refused, not adopted") {
  // The segment header (unsigned) names seal.key_file's key; the batch in it is signed with
  // another key: the first check passes, the signature check must not.
  TempDir tmp;
  const Key key = make_key(tmp, "k");
  const Key other = make_key(tmp, "other");
  const fs::path dir = tmp / "store";
  signerd::BatchSealer sealer(key.priv, kStream, 0, seal::Digest{});
  Frames frames = seal_batches(sealer, 1);
  signerd::BatchSealer impostor(other.priv, kStream, 1, sealer.prev_root());
  frames.push_back(seal_next(impostor));
  {
    segment::SegmentStore store(store_options(dir));
    append(store, frames[0]);
    append(store, frames[1], key.pub.key_id());  // its segment claims seal.key_file's key
    REQUIRE(store.close().ok());
  }
  const Refusal r = refusal_of(dir, key);
  CHECK(r.code == exit_code::kDataError);
  CHECK_THAT(r.what, Contains("batch seq 1"));
  CHECK_THAT(r.what, Contains("key id differs from the segment header's " + hex(key.pub.key_id())));
}

// ==== continue_chain ====

// The dead run's ring: batches 0..5 sealed; the store holds 0..2 (position after seq 2).
struct DeadRun {
  TempDir tmp;
  Key key = make_key(tmp, "k");
  signerd::BatchSealer sealer{key.priv, kStream, 0, seal::Digest{}};
  Frames stored = seal_batches(sealer, 3);
  ChainPosition store_position = position_of(sealer);
  Frames ring = seal_batches(sealer, 3);  // seq 3, 4, 5
  ChainPosition end_position = position_of(sealer);
};

TEST_CASE("sealed batches that continue the chain are taken; ones the store holds are skipped") {
  DeadRun run;
  Frames frames = {run.stored[2]};  // stored, its frame not yet committed
  frames.insert(frames.end(), run.ring.begin(), run.ring.end());
  const SealedRecovery r = continue_chain(frames, run.store_position, run.key.pub);
  CHECK(r.already_stored == 1);
  REQUIRE(r.taken.size() == 3);
  CHECK(r.taken.front().seq == 3);
  CHECK(r.taken.front().frame == 1);
  CHECK(r.taken.back().seq == 5);
  CHECK(r.taken.back().records == 4);
  CHECK(r.taken.back().after == run.end_position);
  CHECK(r.stopped.empty());
}

// The recovery of `frames` must stop at frame `at`, after taking `taken` batches, saying
// `why` and how many frames are left.
void check_stops(const SealedRecovery& r, std::size_t frames, std::size_t at, std::size_t taken,
                 const std::string& why) {
  CHECK(r.taken.size() == taken);
  CHECK_THAT(r.stopped, Contains(why));
  CHECK_THAT(r.stopped, Contains(fmt::format("it and the {} frame(s) after it are not recovered",
                                             frames - at - 1)));
}

TEST_CASE("a frame that is not a sealed batch stops the recovery, naming the frame") {
  DeadRun run;
  Frames frames = run.ring;
  SECTION("garbage") { frames[1] = std::vector<std::byte>(64, std::byte{0xa5}); }
  SECTION("a record list of 100000 empty structs (the forgery record_list.h refuses)") {
    frames[1] = edited(frames[1], [](schema::SealedBatch::Builder batch) {
      capnp::toAny(batch).getPointerSection()[1].initAsAnyList(capnp::ElementSize::VOID, 100000);
    });
  }
  const SealedRecovery r = continue_chain(frames, run.store_position, run.key.pub);
  check_stops(r, frames.size(), 1, 1, "frame 1 is not a readable sealed batch");
}

TEST_CASE("a batch of another stream stops the recovery, naming the frame and seq") {
  DeadRun run;
  signerd::BatchSealer other(run.key.priv, kOtherStream, 3, run.store_position.prev_root);
  Frames frames = {seal_next(other)};
  const SealedRecovery r = continue_chain(frames, run.store_position, run.key.pub);
  check_stops(r, 1, 0, 0, "frame 0 (batch seq 3) is of another stream than the store's");
  CHECK(r.already_stored == 0);  // another stream's seq says nothing about this store
}

TEST_CASE("a gap in seq stops the recovery, naming the seq found and the one expected") {
  DeadRun run;
  SECTION("at the first frame") {
    const Frames frames = {run.ring[1], run.ring[2]};
    check_stops(continue_chain(frames, run.store_position, run.key.pub), 2, 0, 0,
                "frame 0 is batch seq 4, where seq 3 comes next");
  }
  SECTION("after a taken batch") {
    const Frames frames = {run.ring[0], run.ring[2]};
    check_stops(continue_chain(frames, run.store_position, run.key.pub), 2, 1, 1,
                "frame 1 is batch seq 5, where seq 4 comes next");
  }
}

TEST_CASE("a batch repeated after the chain moved on stops the recovery") {
  // Only frames before the first taken one may be ones the store holds; a repeat after it is
  // not the ring's order and is not skipped silently.
  DeadRun run;
  const Frames frames = {run.ring[0], run.ring[1], run.ring[0]};
  check_stops(continue_chain(frames, run.store_position, run.key.pub), 3, 2, 2,
              "frame 2 is batch seq 3, where seq 5 comes next");
}

TEST_CASE("a fork (right seq and stream, another prevRoot) stops the recovery") {
  DeadRun run;
  seal::Digest wrong_root{};
  wrong_root.fill(0x5a);
  signerd::BatchSealer fork(run.key.priv, kStream, 3, wrong_root);
  const Frames frames = {seal_next(fork), run.ring[1]};
  check_stops(continue_chain(frames, run.store_position, run.key.pub), 2, 0, 0,
              "batch seq 3 does not link to the batch before it (prevRoot)");
}

TEST_CASE("a batch signed with another key stops the recovery, naming the key") {
  DeadRun run;
  const Key other = make_key(run.tmp, "other");
  // Seq 4 in the right stream, linked to seq 3, but sealed with another key.
  signerd::BatchSealer impostor(other.priv, kStream, 4, root_of(run.ring[0]));
  const Frames frames = {run.ring[0], seal_next(impostor)};
  const SealedRecovery r = continue_chain(frames, run.store_position, run.key.pub);
  check_stops(r, 2, 1, 1, "batch seq 4 does not verify: ");
  CHECK_THAT(r.stopped, Contains(hex(other.pub.key_id())));
  CHECK_THAT(r.stopped, Contains("not a trusted key"));
}

TEST_CASE("a batch whose records or signature were changed stops the recovery") {
  DeadRun run;
  Frames frames = run.ring;
  SECTION("a record changed: the Merkle root does not match") {
    frames[1] = edited(frames[1], [](schema::SealedBatch::Builder batch) {
      batch.getRecords()[0].setOrigPort(1);
    });
    const SealedRecovery r = continue_chain(frames, run.store_position, run.key.pub);
    check_stops(r, 3, 1, 1, "batch seq 4 does not verify: ");
    CHECK_THAT(r.stopped, Contains("Merkle root"));
  }
  SECTION("a signature bit flipped") {
    frames[1] = edited(frames[1], [](schema::SealedBatch::Builder batch) {
      auto signature = batch.getSignature();
      signature[5] = static_cast<std::uint8_t>(signature[5] ^ 0x10);
    });
    const SealedRecovery r = continue_chain(frames, run.store_position, run.key.pub);
    check_stops(r, 3, 1, 1, "batch seq 4 does not verify: ");
    CHECK_THAT(r.stopped, Contains("signature does not verify"));
  }
}

// ==== take_over_leftovers: what the run does with the sealed ring ====

struct RingMemory {
  static constexpr std::size_t kCapacity = 64 * 1024;
  explicit RingMemory(std::size_t capacity = kCapacity)
      : bytes(ring_bytes(capacity) + 64), capacity_(capacity) {
    ring_format(memory(), capacity_);
  }
  std::span<std::byte> memory() {
    auto* p = bytes.data();
    p += (64 - reinterpret_cast<std::uintptr_t>(p) % 64) % 64;
    return {p, ring_bytes(capacity_)};
  }
  // The frames a consumer (writerd) would read, in order.
  Frames read() {
    RingConsumer consumer(memory());
    Frames out;
    while (auto frame = consumer.next()) {
      out.emplace_back(frame->begin(), frame->end());
      consumer.advance();
    }
    return out;
  }
  std::vector<std::byte> bytes;
  std::size_t capacity_;
};

LeftoverRing sealed_leftover(const Frames& frames) {
  LeftoverRing ring;
  ring.edge = std::string(kSealedEdge);
  ring.frames = frames.size();
  for (const auto& f : frames) ring.payload += f.size();
  ring.payloads = frames;
  return ring;
}

bool any_contains(const std::vector<std::string>& lines, const std::string& text) {
  return std::any_of(lines.begin(), lines.end(),
                     [&](const auto& line) { return line.find(text) != std::string::npos; });
}

TEST_CASE("the run places the batches that continue the chain in its sealed ring, moves on") {
  DeadRun run;
  RingMemory ring;
  std::optional<ChainPosition> position = run.store_position;
  const auto lines = take_over_leftovers({sealed_leftover(run.ring)}, ring.memory(), position,
                                         run.key.file.string());
  CHECK(position == run.end_position);
  CHECK(ring.read() == run.ring);
  CHECK(any_contains(lines, "recovered 3 sealed batch(es), seq 3..5, 12 records"));
  CHECK(any_contains(lines, "signerd goes on at seq 6"));
}

TEST_CASE("sealed batches are not recovered into a directory that holds no stream") {
  DeadRun run;
  RingMemory ring;
  std::optional<ChainPosition> position;
  const auto lines = take_over_leftovers({sealed_leftover(run.ring)}, ring.memory(), position,
                                         run.key.file.string());
  CHECK_FALSE(position);
  CHECK(ring.read().empty());
  CHECK(any_contains(lines, "3 sealed batch(es) not recovered: writer.dir holds no stream"));
}

TEST_CASE("an unreadable seal.key_file recovers nothing and names the file") {
  DeadRun run;
  RingMemory ring;
  std::optional<ChainPosition> position = run.store_position;
  const std::string missing = (run.tmp / "gone.key").string();
  const auto lines =
      take_over_leftovers({sealed_leftover(run.ring)}, ring.memory(), position, missing);
  CHECK(position == run.store_position);
  CHECK(ring.read().empty());
  CHECK(any_contains(lines, "sealed batches not recovered: seal.key_file " + missing));
}

TEST_CASE("a refusal mid-ring keeps the batches before it and says why in the summary") {
  DeadRun run;
  RingMemory ring;
  Frames frames = run.ring;
  frames[2] = std::vector<std::byte>(64, std::byte{0});
  std::optional<ChainPosition> position = run.store_position;
  const auto lines = take_over_leftovers({sealed_leftover(frames)}, ring.memory(), position,
                                         run.key.file.string());
  CHECK(ring.read() == Frames{run.ring[0], run.ring[1]});
  REQUIRE(position);
  CHECK(position->next_seq == 5);
  CHECK(
      any_contains(lines, "sealed batches not recovered: frame 2 is not a readable sealed batch"));
}

TEST_CASE("batches that do not fit this run's smaller sealed ring are said, not lost silently") {
  DeadRun run;
  // A 4 KiB ring carries frames of at most 1 KiB; each batch here is larger than that.
  RingMemory ring(4096);
  REQUIRE(run.ring[0].size() > ring_max_frame(4096));
  std::optional<ChainPosition> position = run.store_position;
  const auto lines = take_over_leftovers({sealed_leftover(run.ring)}, ring.memory(), position,
                                         run.key.file.string());
  CHECK(position == run.store_position);
  CHECK(ring.read().empty());
  CHECK(any_contains(lines, "only 0 of 3 recoverable batches fit this run's sealed ring"));
}

}  // namespace
}  // namespace flowseal::supervisor
