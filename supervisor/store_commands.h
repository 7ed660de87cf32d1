// What `flowseal cat`, `verify` and `verify --proof` share: the segments of a store, the keys
// its batches may be signed with, a stored batch opened for reading, and StoreChecker, the one
// check of a stored batch that verify and cat both apply (its seal, its place in the chain,
// and everything unsigned the segment says about it: name, segment header, frame header).
//
// Errors: a store command that cannot start (a path missing or unreadable, a key that is not
// one, a file where a directory is needed) throws StoreInputError, one line naming the path
// with its sysexits code (66 input missing or unreadable, 64 usage); each command catches it,
// prints "<command>: <line>" and exits with that code. Damage found while reading is data,
// not an exception: it goes to a ProblemLog and the command goes on.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <capnp/serialize.h>

#include "command_error.h"
#include "flowseal.capnp.h"
#include "seal/chain_verifier.h"
#include "seal/gap_marker.h"
#include "seal/keys.h"
#include "segment/reader.h"

namespace flowseal::supervisor {

// A store command's start-up error: one line naming the path, with its sysexits code.
using StoreInputError = CommandError;

// The segments of `path` in stream order: a store directory or, if `file_allowed`, one
// segment file. Throws StoreInputError: 66 if `path` is missing or unreadable, 64 if it is a
// file where a directory is needed.
std::vector<std::filesystem::path> store_segments(const std::filesystem::path& path,
                                                  bool file_allowed);

// The store a segment path belongs to: `path` itself if it is a directory, else its parent.
std::filesystem::path store_dir_of(const std::filesystem::path& path);

// The keys a batch of the store in `store_dir` may be signed with: only `pinned` if it is
// given (--pubkey: a PEM file, or a directory whose *.pub are the keys of a store that
// rotated keys), else every keys/*.pub of the store. Throws StoreInputError 66 naming the
// file that is missing or holds no public key, or the keys/ directory that holds none.
std::map<seal::Digest, seal::PublicKey> trusted_keys(const std::filesystem::path& store_dir,
                                                     const std::string& pinned);

// The SealedBatch of `reader`'s current frame; valid until its next(). Throws kj::Exception
// on a batch Cap'n Proto cannot read.
capnp::FlatArrayMessageReader open_batch(const segment::SegmentReader& reader);

class ProblemLog;
// The gap markers of the store in `store_dir` that verify with `keys`; a marker file that does
// not (a bad signature, an unknown key, a name that lies) is a problem: a marker is what lets
// a chain pass over missing batches, so one that cannot be trusted must not pass silently.
std::vector<seal::GapMarker> store_gap_markers(const std::filesystem::path& store_dir,
                                               const std::map<seal::Digest, seal::PublicKey>& keys,
                                               ProblemLog& problems);

// Counts problems and remembers the first, which is the one a verdict names. The first 20
// are printed as they come, as "<command>: problem: <line>" (unless `print` is false: a
// caller that reports the first itself).
class ProblemLog {
 public:
  explicit ProblemLog(std::string command, bool print = true)
      : command_(std::move(command)), print_(print) {}
  void add(std::string line);
  std::uint64_t count() const { return count_; }
  const std::string& first() const { return first_; }

 private:
  static constexpr std::uint64_t kShown = 20;
  std::string command_;
  bool print_;
  std::uint64_t count_ = 0;
  std::string first_;
};

// "FILE: batch seq N[, record I]: what" — how every problem of a stored batch is named.
std::string batch_problem(const std::filesystem::path& file, std::uint64_t seq,
                          std::optional<std::uint32_t> record, const std::string& what);

// Checks stored batches, segment after segment in stream order, as verify does: each batch's
// seal and chain position (seal::ChainVerifier), and what is not signed against what is:
// the segment's name and header against its batches, and each frame header's seq, record
// count and time range (what `cat --since/--until` and any index-based seek rely on) against
// the batch's signed header and its records.
class StoreChecker {
 public:
  explicit StoreChecker(std::map<seal::Digest, seal::PublicKey> keys);
  // The checker of the store in `store_dir`, as verify and cat use it: its trusted_keys (only
  // `pinned` if given) and the gap markers that verify with them (store_gap_markers: a marker
  // that does not is added to `problems`). Throws what trusted_keys throws.
  static StoreChecker for_store(const std::filesystem::path& store_dir, const std::string& pinned,
                                ProblemLog& problems);

  // Call before the first frame checked of each segment; `at_first_frame` false when the
  // reader was moved past the segment's first frame (then its name is not checked).
  void start_segment(const segment::SegmentReader& reader, bool at_first_frame = true);
  // Checks the batch of `reader`'s current frame (already decoded as `batch`), adding every
  // problem to `problems`. True if nothing is wrong with it.
  bool check(const segment::SegmentReader& reader, schema::SealedBatch::Reader batch,
             ProblemLog& problems);
  // Call when `reader` stops: if it stopped on damage, says where the readable part ends.
  static void end_segment(const segment::SegmentReader& reader, ProblemLog& problems);

  // The store's signed gap markers (seal/gap_marker.h): a jump over batches they give up is
  // reported in the summary, not as a problem.
  void allow_gaps(std::vector<seal::GapMarker> markers) {
    verifier_.allow_gaps(std::move(markers));
  }
  const std::vector<seal::GapMarker>& gap_markers() const { return verifier_.gap_markers(); }
  const seal::ChainSummary& summary() const { return verifier_.summary(); }

 private:
  seal::ChainVerifier verifier_;
  std::optional<std::uint64_t> named_seq_;  // the first seq the segment's name claims
  bool first_in_segment_ = true;
};

}  // namespace flowseal::supervisor
