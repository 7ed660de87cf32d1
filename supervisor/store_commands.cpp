#include "store_commands.h"

#include <algorithm>
#include <cstdio>

#include <fmt/format.h>

#include "capnp_frame.h"
#include "rfc3339.h"
#include "segment/format.h"
#include "stage_runtime.h"

namespace flowseal::supervisor {
namespace {

namespace fs = std::filesystem;

seal::PublicKey load_public_key(const fs::path& file, const std::string& label) {
  std::error_code ec;
  const auto status = fs::status(file, ec);
  if (!fs::exists(status)) {
    throw StoreInputError(exit_code::kNoInput,
                          fmt::format("{}{}: no such file", label, file.string()));
  }
  if (!fs::is_regular_file(status)) {
    throw StoreInputError(exit_code::kNoInput,
                          fmt::format("{}{}: not a regular file", label, file.string()));
  }
  try {
    return seal::PublicKey::load(file);  // its message names the file and what is wrong
  } catch (const std::runtime_error& e) {
    throw StoreInputError(exit_code::kNoInput, label + e.what());
  }
}

bool equal_bytes(capnp::Data::Reader a, std::span<const std::uint8_t> b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin());
}

}  // namespace

std::vector<fs::path> store_segments(const fs::path& path, bool file_allowed) {
  std::error_code ec;
  const auto status = fs::status(path, ec);
  if (fs::is_directory(status)) {
    try {
      return segment::list_segments(path);
    } catch (const fs::filesystem_error& e) {
      throw StoreInputError(exit_code::kNoInput, fmt::format("{}: cannot list segments: {}",
                                                             path.string(), e.code().message()));
    }
  }
  if (fs::is_regular_file(status)) {
    if (file_allowed) return {path};
    throw StoreInputError(exit_code::kUsage,
                          fmt::format("{}: a file; give the store's directory", path.string()));
  }
  if (!fs::exists(status)) {
    throw StoreInputError(exit_code::kNoInput,
                          fmt::format("{}: no such {}", path.string(),
                                      file_allowed ? "segment file or directory" : "directory"));
  }
  throw StoreInputError(exit_code::kNoInput,
                        fmt::format("{}: not a segment file or directory", path.string()));
}

fs::path store_dir_of(const fs::path& path) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) return path;
  const fs::path parent = path.parent_path();
  return parent.empty() ? fs::path(".") : parent;
}

std::map<seal::Digest, seal::PublicKey> trusted_keys(const fs::path& store_dir,
                                                     const std::string& pinned) {
  std::map<seal::Digest, seal::PublicKey> keys;
  auto add = [&](seal::PublicKey key) {
    const seal::Digest id = key.key_id();
    keys.emplace(id, std::move(key));
  };
  if (!pinned.empty()) {
    // Pinned: only this key is trusted, or the keys of this directory's *.pub (a store whose
    // keys were rotated holds batches of each; an auditor pins every one of them).
    std::error_code ec;
    if (!fs::is_directory(pinned, ec)) {
      add(load_public_key(pinned, "--pubkey "));
      return keys;
    }
    for (const auto& entry : fs::directory_iterator(pinned, ec)) {
      if (entry.path().extension() == ".pub") add(load_public_key(entry.path(), "--pubkey "));
    }
    if (keys.empty()) {
      throw StoreInputError(exit_code::kNoInput,
                            fmt::format("--pubkey {}: a directory holding no *.pub file{}", pinned,
                                        ec ? " (" + ec.message() + ")" : ""));
    }
    return keys;
  }
  const fs::path key_dir = store_dir / "keys";
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(key_dir, ec)) {
    if (entry.path().extension() == ".pub") add(load_public_key(entry.path(), ""));
  }
  if (keys.empty()) {
    throw StoreInputError(
        exit_code::kNoInput,
        fmt::format("{} holds no *.pub file{}; give the public key with --pubkey FILE",
                    key_dir.string(), ec ? " (" + ec.message() + ")" : ""));
  }
  return keys;
}

capnp::FlatArrayMessageReader open_batch(const segment::SegmentReader& reader) {
  const auto bytes = reader.message();
  return capnp::FlatArrayMessageReader(
      as_words({reinterpret_cast<const std::byte*>(bytes.data()), bytes.size()}),
      frame_reader_options());
}

void ProblemLog::add(std::string line) {
  if (print_ && count_ < kShown) fmt::print(stderr, "{}: problem: {}\n", command_, line);
  if (count_ == 0) first_ = std::move(line);
  ++count_;
}

std::string batch_problem(const fs::path& file, std::uint64_t seq,
                          std::optional<std::uint32_t> record, const std::string& what) {
  return record ? fmt::format("{}: batch seq {}, record {}: {}", file.string(), seq, *record, what)
                : fmt::format("{}: batch seq {}: {}", file.string(), seq, what);
}

std::vector<seal::GapMarker> store_gap_markers(const fs::path& store_dir,
                                               const std::map<seal::Digest, seal::PublicKey>& keys,
                                               ProblemLog& problems) {
  std::vector<std::string> bad;
  std::vector<seal::GapMarker> markers;
  try {
    markers = seal::load_gap_markers(store_dir, keys, bad);
  } catch (const fs::filesystem_error& e) {
    bad.push_back(
        fmt::format("{}: cannot list gap markers: {}", store_dir.string(), e.code().message()));
  }
  for (std::string& what : bad) problems.add("gap marker " + what);
  return markers;
}

StoreChecker::StoreChecker(std::map<seal::Digest, seal::PublicKey> keys)
    : verifier_(std::move(keys)) {}

StoreChecker StoreChecker::for_store(const fs::path& store_dir, const std::string& pinned,
                                     ProblemLog& problems) {
  auto keys = trusted_keys(store_dir, pinned);
  std::vector<seal::GapMarker> markers = store_gap_markers(store_dir, keys, problems);
  StoreChecker checker(std::move(keys));
  checker.allow_gaps(std::move(markers));
  return checker;
}

void StoreChecker::start_segment(const segment::SegmentReader& reader, bool at_first_frame) {
  named_seq_ = at_first_frame ? segment::first_seq_of_name(reader.file()) : std::nullopt;
  first_in_segment_ = true;
}

bool StoreChecker::check(const segment::SegmentReader& reader, schema::SealedBatch::Reader batch,
                         ProblemLog& problems) {
  const fs::path& file = reader.file();
  const segment::FileHeader& segment_header = reader.header();
  const segment::BatchMeta& meta = reader.frame().batch;
  const std::uint64_t before = problems.count();
  auto add = [&](const std::string& what) {
    problems.add(batch_problem(file, meta.seq, std::nullopt, what));
  };
  if (first_in_segment_ && named_seq_ && *named_seq_ != meta.seq) {
    add(fmt::format("the segment's name says it starts at batch seq {}", *named_seq_));
  }
  first_in_segment_ = false;
  const auto header = batch.getHeader();
  if (header.getSeq() != meta.seq) {
    add(fmt::format("the batch inside says seq {}", header.getSeq()));
  }
  const auto stream = header.getStreamId();
  if (stream.size() == segment_header.stream_id.size() &&
      !equal_bytes(stream, segment_header.stream_id)) {
    add("stream id differs from the segment header's " + segment::to_hex(segment_header.stream_id));
  }
  const auto key = header.getKeyId();
  if (key.size() == segment_header.key_id.size() && !equal_bytes(key, segment_header.key_id)) {
    add("key id differs from the segment header's " + segment::to_hex(segment_header.key_id));
  }
  if (auto problem = verifier_.check(batch)) {
    problems.add(batch_problem(file, problem->seq, problem->record, problem->what));
  }
  // The frame header's count and times are not signed, yet readers skip frames by them: they
  // must say what the records say.
  if (const auto& extent = verifier_.last_extent();
      extent && (meta.record_count != extent->records || meta.first_ts_ns != extent->first_ts_ns ||
                 meta.last_ts_ns != extent->last_ts_ns)) {
    add(
        fmt::format("the frame header at offset {} says {} records from {} to {}, but the "
                    "records are {} from {} to {} (frame header times are not signed)",
                    reader.frame_offset(), meta.record_count, format_utc(meta.first_ts_ns),
                    format_utc(meta.last_ts_ns), extent->records, format_utc(extent->first_ts_ns),
                    format_utc(extent->last_ts_ns)));
  }
  return problems.count() == before;
}

void StoreChecker::end_segment(const segment::SegmentReader& reader, ProblemLog& problems) {
  if (!reader.error()) return;
  // Name where the readable part ends: the batches after it are the ones lost.
  const auto& frames = reader.frames();
  problems.add(frames.empty() ? reader.error()->message()
                              : fmt::format("{} (the last whole batch read is seq {})",
                                            reader.error()->message(), frames.back().batch.seq));
}

}  // namespace flowseal::supervisor
