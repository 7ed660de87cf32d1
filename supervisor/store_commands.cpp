// `flowseal cat` and `flowseal verify`: read the segments writerd stored.
//
// Both read every segment frame by frame (a `.part` too), so they work on a directory that a
// run is still writing and on one a crash left behind. Damage never stops them early: cat
// prints every record it can read and exits 65 naming each damaged file and offset; verify
// keeps scanning to count the problems, names the first and exits 65.
#include <ctime>
#include <cstdio>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <fmt/format.h>

#include "capnp_frame.h"
#include "commands.h"
#include "flowseal.capnp.h"
#include "record_json.h"
#include "seal/chain_verifier.h"
#include "seal/keys.h"
#include "segment/format.h"
#include "segment/reader.h"
#include "stage_runtime.h"

namespace flowseal::supervisor {
namespace {

namespace fs = std::filesystem;

// The segments named by `path` (a directory or one segment file); nullopt after saying why.
std::optional<std::vector<fs::path>> segments_at(const std::string& command,
                                                 const fs::path& path) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    try {
      return segment::list_segments(path);
    } catch (const fs::filesystem_error& e) {
      fmt::print(stderr, "{}: {}: cannot list segments: {}\n", command, path.string(),
                 e.code().message());
      return std::nullopt;
    }
  }
  if (fs::is_regular_file(path, ec)) return std::vector<fs::path>{path};
  fmt::print(stderr, "{}: {}: no such segment file or directory\n", command, path.string());
  return std::nullopt;
}

capnp::FlatArrayMessageReader open_batch(const segment::SegmentReader& reader) {
  const auto bytes = reader.message();
  return capnp::FlatArrayMessageReader(
      as_words({reinterpret_cast<const std::byte*>(bytes.data()), bytes.size()}),
      frame_reader_options());
}

std::string utc(std::int64_t ns) {
  const std::time_t seconds = static_cast<std::time_t>(ns / 1'000'000'000);
  std::tm tm{};
  gmtime_r(&seconds, &tm);
  char text[32];
  std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%S", &tm);
  return fmt::format("{}.{:06}Z", text, (ns % 1'000'000'000) / 1000);
}

// First seq from a segment's name ("seg-<20 digits>.fsg[.part]").
std::optional<std::uint64_t> first_seq_of(const fs::path& file) {
  const std::string name = file.filename().string();
  if (name.size() < 24 || name.compare(0, 4, "seg-") != 0) return std::nullopt;
  try {
    return std::stoull(name.substr(4, 20));
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

std::map<seal::Digest, seal::PublicKey> load_keys(const VerifyOptions& options) {
  std::map<seal::Digest, seal::PublicKey> keys;
  auto add = [&](const fs::path& file) {
    seal::PublicKey key = seal::PublicKey::load(file);
    const seal::Digest id = key.key_id();
    keys.emplace(id, std::move(key));
  };
  if (!options.public_key.empty()) {
    add(options.public_key);  // pinned: only this key is trusted
    return keys;
  }
  const fs::path key_dir = fs::path(options.dir) / "keys";
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(key_dir, ec)) {
    if (entry.path().extension() == ".pub") add(entry.path());
  }
  if (keys.empty()) {
    throw std::runtime_error(fmt::format(
        "verify: no public key: {} holds no *.pub file; give one with --pubkey FILE",
        key_dir.string()));
  }
  return keys;
}

// Counts problems and remembers the first, which is the one named in the verdict.
class ProblemLog {
 public:
  void add(std::string line) {
    if (count_ < kShown) fmt::print(stderr, "verify: problem: {}\n", line);
    if (count_ == 0) first_ = std::move(line);
    ++count_;
  }
  std::uint64_t count() const { return count_; }
  const std::string& first() const { return first_; }

 private:
  static constexpr std::uint64_t kShown = 20;
  std::uint64_t count_ = 0;
  std::string first_;
};

std::string batch_problem(const fs::path& file, std::uint64_t seq,
                          std::optional<std::uint32_t> record, const std::string& what) {
  return record ? fmt::format("{}: batch seq {}, record {}: {}", file.string(), seq, *record, what)
                : fmt::format("{}: batch seq {}: {}", file.string(), seq, what);
}

// Checks one segment's frames against its header and name, and feeds them to the verifier.
void verify_segment(const fs::path& file, seal::ChainVerifier& verifier, ProblemLog& problems) {
  segment::SegmentReader reader(file);
  if (!reader.ok()) {
    problems.add(reader.error()->message());
    return;
  }
  const segment::FileHeader& header = reader.header();
  const auto named_seq = first_seq_of(file);
  bool first = true;
  while (reader.next() == segment::SegmentReader::Next::kFrame) {
    const segment::BatchMeta& meta = reader.frame().batch;
    if (first && named_seq && *named_seq != meta.seq) {
      problems.add(batch_problem(file, meta.seq, std::nullopt,
                                 fmt::format("the segment's name says it starts at batch seq {}",
                                             *named_seq)));
    }
    first = false;
    try {
      capnp::FlatArrayMessageReader message = open_batch(reader);
      const auto batch = message.getRoot<schema::SealedBatch>();
      const auto batch_header = batch.getHeader();
      const auto stream = batch_header.getStreamId();
      const auto key = batch_header.getKeyId();
      if (batch_header.getSeq() != meta.seq) {
        problems.add(batch_problem(file, meta.seq, std::nullopt,
                                   fmt::format("the batch inside says seq {}",
                                               batch_header.getSeq())));
      }
      if (stream.size() == header.stream_id.size() &&
          !std::equal(stream.begin(), stream.end(), header.stream_id.begin())) {
        problems.add(batch_problem(file, meta.seq, std::nullopt,
                                   "stream id differs from the segment header's " +
                                       segment::to_hex(header.stream_id)));
      }
      if (key.size() == header.key_id.size() &&
          !std::equal(key.begin(), key.end(), header.key_id.begin())) {
        problems.add(batch_problem(file, meta.seq, std::nullopt,
                                   "key id differs from the segment header's " +
                                       segment::to_hex(header.key_id)));
      }
      if (auto problem = verifier.check(batch)) {
        problems.add(batch_problem(file, problem->seq, problem->record, problem->what));
      }
    } catch (const kj::Exception& e) {
      problems.add(batch_problem(file, meta.seq, std::nullopt,
                                 fmt::format("the batch cannot be read: {}",
                                             e.getDescription().cStr())));
    }
  }
  if (reader.error()) problems.add(reader.error()->message());
}

}  // namespace

int cat_command(const CatOptions& options) {
  const auto files = segments_at("cat", options.path);
  if (!files) return exit_code::kNoInput;
  int status = exit_code::kOk;
  std::string out;
  auto flush = [&] {
    std::fwrite(out.data(), 1, out.size(), stdout);
    out.clear();
  };
  for (const fs::path& file : *files) {
    segment::SegmentReader reader(file);
    while (reader.ok() && reader.next() == segment::SegmentReader::Next::kFrame) {
      try {
        capnp::FlatArrayMessageReader message = open_batch(reader);
        for (const auto record : message.getRoot<schema::SealedBatch>().getRecords()) {
          if (!options.all_events && record.getKind() != schema::EventKind::END) continue;
          out += to_json_line(record);
          out += '\n';
        }
      } catch (const kj::Exception& e) {
        flush();
        fmt::print(stderr, "cat: {}: batch seq {} at offset {}: cannot be read: {}\n",
                   file.string(), reader.frame().batch.seq, reader.frame_offset(),
                   e.getDescription().cStr());
        status = exit_code::kDataError;
      }
      if (out.size() > (1 << 16)) flush();
    }
    flush();
    if (reader.error()) {
      fmt::print(stderr, "cat: {}\n", reader.error()->message());
      status = exit_code::kDataError;
    }
  }
  std::fflush(stdout);
  return status;
}

int verify_command(const VerifyOptions& options) {
  std::error_code ec;
  if (!fs::is_directory(options.dir, ec)) {
    fmt::print(stderr, "verify: {}: not a directory\n", options.dir);
    return exit_code::kNoInput;
  }
  const auto files = segments_at("verify", options.dir);
  if (!files) return exit_code::kNoInput;
  seal::ChainVerifier verifier(load_keys(options));
  ProblemLog problems;
  for (const fs::path& file : *files) verify_segment(file, verifier, problems);

  const seal::ChainSummary& summary = verifier.summary();
  fmt::print("segments: {}\n", files->size());
  fmt::print("batches:  {}", summary.batches);
  if (summary.batches > 0) fmt::print(" (seq {}..{})", summary.first_seq, summary.last_seq);
  fmt::print("\nrecords:  {}\n", summary.records);
  if (summary.records > 0) {
    fmt::print("time:     {} .. {}\n", utc(summary.first_ts_ns), utc(summary.last_ts_ns));
  }
  for (const std::string& key : summary.key_ids) fmt::print("key id:   {}\n", key);
  std::fflush(stdout);
  if (problems.count() > 0) {
    fmt::print(stderr, "verify: FAILED: {}\n", problems.first());
    if (problems.count() > 1) fmt::print(stderr, "verify: {} problems in all\n", problems.count());
    return exit_code::kDataError;
  }
  if (files->empty()) fmt::print("verify: {} holds no segments yet\n", options.dir);
  fmt::print("verify: OK\n");
  return exit_code::kOk;
}

}  // namespace flowseal::supervisor
