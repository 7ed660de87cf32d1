#include "stream_adoption.h"

#include <algorithm>
#include <map>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <kj/exception.h>

#include "command_error.h"
#include "segment/format.h"
#include "segment/reader.h"
#include "stage_runtime.h"
#include "store_commands.h"

namespace flowseal::supervisor {
namespace {

namespace fs = std::filesystem;
using segment::SegmentReader;

[[noreturn]] void refuse_damaged(const fs::path& dir, const std::string& what) {
  throw CommandError(
      exit_code::kDataError,
      fmt::format("writer.dir {}: cannot continue its stream: {}. Nothing in it was changed; "
                  "`flowseal verify {}` names the damage, and a run into another directory "
                  "starts a new stream",
                  dir.string(), what, dir.string()));
}

// The whole batches of one segment, as index entries, in stored order.
struct SegmentBatches {
  fs::path file;
  segment::FileHeader header;
  std::vector<segment::IndexEntry> entries;
  std::uint64_t last_seq() const { return entries.back().batch.seq; }
};

// What writerd's recovery will keep of `file`: nullopt if no whole batch (a `.part` torn
// before its header or its first frame, which recovery removes; a closed segment with an
// empty index). A `.part` may end in a torn frame (recovery cuts it off); any other damage
// that hides which batch is the newest is a refusal.
std::optional<SegmentBatches> batches_of(const fs::path& dir, const fs::path& file) {
  const bool part = segment::is_part(file);
  SegmentReader reader(file);
  if (!reader.ok()) {
    std::error_code ec;
    if (part && fs::file_size(file, ec) < segment::kFileHeaderBytes && !ec) return std::nullopt;
    refuse_damaged(dir, reader.error()->message());
  }
  SegmentBatches batches{file, reader.header(), {}};
  segment::SegmentError index_error;
  if (auto index = part ? std::nullopt : segment::read_index(file, index_error)) {
    batches.entries = std::move(*index);
  } else {
    while (reader.next() == SegmentReader::Next::kFrame) {
    }
    if (reader.error() && !part) refuse_damaged(dir, reader.error()->message());
    batches.entries = reader.frames();
  }
  if (batches.entries.empty()) return std::nullopt;
  return batches;
}

// The segments that may hold the newest batch, and the one before it: every `.part` (after
// a crash there may be several) and the two newest closed segments that hold a batch; the
// rest are older by their names.
std::vector<SegmentBatches> newest_segments(const fs::path& dir) {
  std::vector<fs::path> files;
  try {
    files = segment::list_segments(dir);
  } catch (const fs::filesystem_error& e) {
    throw CommandError(exit_code::kNoInput, fmt::format("writer.dir {}: cannot list segments: {}",
                                                        dir.string(), e.code().message()));
  }
  std::vector<SegmentBatches> found;
  std::size_t closed_found = 0;
  for (auto it = files.rbegin(); it != files.rend(); ++it) {  // `.part` files come last
    const bool part = segment::is_part(*it);
    if (!part && closed_found == 2) break;
    if (auto batches = batches_of(dir, *it)) {
      closed_found += part ? 0 : 1;
      found.push_back(std::move(*batches));
    }
  }
  std::sort(found.begin(), found.end(),
            [](const auto& a, const auto& b) { return a.last_seq() < b.last_seq(); });
  return found;
}

// The keys the newest batches may carry: seal.key_file's, and the store's own keys/*.pub
// (the batch before the newest may be of a segment sealed before a key change).
std::map<seal::Digest, seal::PublicKey> keys_for(const fs::path& dir, const seal::PublicKey& key) {
  std::map<seal::Digest, seal::PublicKey> keys;
  try {
    keys = trusted_keys(dir, "");
  } catch (const CommandError&) {
    // no keys/ (seal.key_file lives elsewhere), or a file there that is no key: not needed
  }
  keys.insert_or_assign(key.key_id(), seal::PublicKey::from_der(key.public_der()));
  return keys;
}

}  // namespace

std::optional<AdoptedStream> adopt_stream(const fs::path& dir, const seal::PublicKey& key,
                                          const std::string& key_file, bool rotate_key) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return std::nullopt;
  const std::vector<SegmentBatches> segments = newest_segments(dir);
  if (segments.empty()) return std::nullopt;
  const SegmentBatches& newest = segments.back();
  auto keys = keys_for(dir, key);
  AdoptedStream adopted;
  if (newest.header.key_id != key.key_id()) {
    const std::string sealed_by = fmt::format(
        "writer.dir {} holds a stream sealed with key id {} (batch seq {} in {}), "
        "but seal.key_file {} is key id {}",
        dir.string(), segment::to_hex(newest.header.key_id), newest.last_seq(),
        newest.file.filename().string(), key_file, seal::to_hex(key.key_id()));
    if (!rotate_key) {
      throw CommandError(
          exit_code::kConfig,
          sealed_by +
              ": a run continues its directory's stream with the same key. Give that key, "
              "another writer.dir for a new stream, or, to sign this stream with the new key "
              "from here on, run once with --rotate-key");
    }
    if (!keys.contains(newest.header.key_id)) {
      throw CommandError(
          exit_code::kConfig,
          sealed_by + fmt::format(": cannot rotate: {}/keys/ holds no public key "
                                  "of key id {}, so `flowseal verify {}` could not "
                                  "check the batches sealed before the rotation. "
                                  "Copy that key's .pub there first",
                                  dir.string(), segment::to_hex(newest.header.key_id),
                                  dir.string()));
    }
    adopted.rotated_from = newest.header.key_id;
  }

  // The newest batch and the one before it, in stream order, so the link between them is
  // checked too.
  struct Place {
    const SegmentBatches* segment;
    std::size_t index;
  };
  std::vector<Place> places;
  if (newest.entries.size() >= 2) {
    places.push_back({&newest, newest.entries.size() - 2});
  } else if (segments.size() >= 2) {
    const SegmentBatches& before = segments[segments.size() - 2];
    places.push_back({&before, before.entries.size() - 1});
  }
  places.push_back({&newest, newest.entries.size() - 1});

  StoreChecker checker(std::move(keys));
  ProblemLog problems("run", /*print=*/false);
  for (const Place& place : places) {
    const segment::IndexEntry& entry = place.segment->entries[place.index];
    SegmentReader reader(place.segment->file);
    reader.seek(entry.offset);
    checker.start_segment(reader, /*at_first_frame=*/place.index == 0);
    if (reader.next() != SegmentReader::Next::kFrame) {
      refuse_damaged(dir, reader.error() ? reader.error()->message()
                                         : fmt::format("{}: batch seq {} is not where its index "
                                                       "says (offset {})",
                                                       place.segment->file.string(),
                                                       entry.batch.seq, entry.offset));
    }
    try {
      capnp::FlatArrayMessageReader message = open_batch(reader);
      const auto batch = message.getRoot<schema::SealedBatch>();
      if (!checker.check(reader, batch, problems)) refuse_damaged(dir, problems.first());
      const auto header = batch.getHeader();
      const auto stream = header.getStreamId();
      const auto root = header.getMerkleRoot();
      if (stream.size() != adopted.position.stream_id.size() ||
          root.size() != adopted.position.prev_root.size()) {
        refuse_damaged(dir, "the stream id or Merkle root has the wrong size");  // checked above
      }
      std::copy(stream.begin(), stream.end(), adopted.position.stream_id.begin());
      std::copy(root.begin(), root.end(), adopted.position.prev_root.begin());
      adopted.last_seq = header.getSeq();
    } catch (const kj::Exception& e) {
      refuse_damaged(dir, batch_problem(place.segment->file, entry.batch.seq, std::nullopt,
                                        fmt::format("the batch cannot be read: {}",
                                                    e.getDescription().cStr())));
    }
    ++adopted.batches_checked;
  }
  adopted.position.next_seq = adopted.last_seq + 1;
  adopted.file = newest.file;
  return adopted;
}

}  // namespace flowseal::supervisor
