// `flowseal verify`: reads every segment of a store frame by frame (a `.part` too, so a store
// a run is still writing, or one a crash left behind, can be checked) and checks every batch
// with StoreChecker. Damage never stops it early: it counts the problems, names the first
// and exits 65.
#include <cstdio>
#include <filesystem>

#include <fmt/format.h>

#include "commands.h"
#include "proof_command.h"
#include "rfc3339.h"
#include "stage_runtime.h"
#include "store_commands.h"

namespace flowseal::supervisor {
namespace {

namespace fs = std::filesystem;

void verify_segment(const fs::path& file, StoreChecker& checker, ProblemLog& problems) {
  segment::SegmentReader reader(file);
  checker.start_segment(reader);
  while (reader.ok() && reader.next() == segment::SegmentReader::Next::kFrame) {
    try {
      capnp::FlatArrayMessageReader message = open_batch(reader);
      checker.check(reader, message.getRoot<schema::SealedBatch>(), problems);
    } catch (const kj::Exception& e) {
      problems.add(
          batch_problem(file, reader.frame().batch.seq, std::nullopt,
                        fmt::format("the batch cannot be read: {}", e.getDescription().cStr())));
    }
  }
  StoreChecker::end_segment(reader, problems);
}

void print_summary(std::size_t segments, const seal::ChainSummary& summary) {
  fmt::print("segments: {}\n", segments);
  fmt::print("batches:  {}", summary.batches);
  if (summary.batches > 0) fmt::print(" (seq {}..{})", summary.first_seq, summary.last_seq);
  fmt::print("\nrecords:  {}\n", summary.records);
  if (summary.records > 0) {
    fmt::print("time:     {} .. {}\n", format_utc(summary.first_ts_ns),
               format_utc(summary.last_ts_ns));
  }
  for (const std::string& key : summary.key_ids) fmt::print("key id:   {}\n", key);
  if (summary.batches > 0 && summary.first_seq > 0) {
    // Legal (retention removes the oldest segments), but what was verified is only the rest.
    fmt::print(
        "verify: note: the chain starts at batch seq {}: batches 0..{} are not in this "
        "store (removed by retention, or never stored here)\n",
        summary.first_seq, summary.first_seq - 1);
  }
}

int verify(const VerifyOptions& options) {
  const auto files = store_segments(options.dir, /*file_allowed=*/false);
  std::error_code ec;
  if (files.empty() && !fs::exists(fs::path(options.dir) / "keys", ec)) {
    throw StoreInputError(
        exit_code::kNoInput,
        fmt::format("{}: holds no segments and no keys/: not a flowseal store", options.dir));
  }
  if (!options.proof_event.empty()) return print_proof(files, options);
  StoreChecker checker(trusted_keys(options.dir, options.public_key));
  ProblemLog problems("verify");
  for (const fs::path& file : files) verify_segment(file, checker, problems);
  print_summary(files.size(), checker.summary());
  std::fflush(stdout);
  if (problems.count() > 0) {
    fmt::print(stderr, "verify: FAILED: {}\n", problems.first());
    if (problems.count() > 1) fmt::print(stderr, "verify: {} problems in all\n", problems.count());
    return exit_code::kDataError;
  }
  if (files.empty()) fmt::print("verify: {} holds no segments yet\n", options.dir);
  fmt::print("verify: OK\n");
  return exit_code::kOk;
}

}  // namespace

int verify_command(const VerifyOptions& options) {
  try {
    return verify(options);
  } catch (const StoreInputError& e) {
    fmt::print(stderr, "verify: {}\n", e.what());
    return e.exit_code();
  }
}

}  // namespace flowseal::supervisor
