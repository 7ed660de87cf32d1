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
  for (const seal::ChainGap& gap : summary.gaps) {
    fmt::print(
        "gap:      batches seq {}..{} given up by the probe before they were shipped: passed "
        "over on its signed gap marker(s)\n",
        gap.first_seq, gap.last_seq);
  }
  if (summary.batches > 0 && summary.first_seq > 0) {
    // Legal (retention removes the oldest segments), but what was verified is only the rest.
    fmt::print(
        "verify: note: the chain starts at batch seq {}: batches 0..{} are not in this "
        "store (removed by retention, or never stored here)\n",
        summary.first_seq, summary.first_seq - 1);
  }
}

// Every signed gap marker of the store, including those before the chain's start (a probe's
// own store, whose retention deleted what it gave up): what was lost, and when.
void print_given_up(const std::vector<seal::GapMarker>& markers) {
  for (const seal::GapMarker& marker : markers) {
    fmt::print("given up: batches seq {}..{}, {} records, at {} ({}; signed gap marker)\n",
               marker.claim.first_seq, marker.claim.last_seq, marker.claim.records,
               format_utc(marker.claim.given_up_ns), marker.claim.reason);
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
  ProblemLog problems("verify");
  StoreChecker checker = StoreChecker::for_store(options.dir, options.public_key, problems);
  const std::vector<seal::GapMarker>& markers = checker.gap_markers();
  for (const fs::path& file : files) verify_segment(file, checker, problems);
  print_summary(files.size(), checker.summary());
  std::fflush(stdout);
  if (problems.count() > 0) {
    fmt::print(stderr, "verify: FAILED: {}\n", problems.first());
    if (problems.count() > 1) fmt::print(stderr, "verify: {} problems in all\n", problems.count());
    return exit_code::kDataError;
  }
  if (files.empty()) fmt::print("verify: {} holds no segments yet\n", options.dir);
  print_given_up(markers);
  if (options.no_gaps && !checker.summary().gaps.empty()) {
    const seal::ChainGap& gap = checker.summary().gaps.front();
    fmt::print(stderr,
               "verify: FAILED (--no-gaps): batches seq {}..{} are missing from the chain, given "
               "up by the probe before they were shipped ({} gap(s) in all, each signed)\n",
               gap.first_seq, gap.last_seq, checker.summary().gaps.size());
    return exit_code::kDataError;
  }
  if (!markers.empty()) {
    std::uint64_t records = 0;
    for (const seal::GapMarker& marker : markers) records += marker.claim.records;
    fmt::print(
        "verify: OK, with {} signed gap marker(s): the probe gave up batches before they were "
        "shipped ({} records by the markers' count, which may include batches the Core took "
        "before the probe knew it had)\n",
        markers.size(), records);
    return exit_code::kOk;
  }
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
