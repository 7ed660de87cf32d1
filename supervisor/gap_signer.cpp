#include "gap_signer.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "seal/gap_marker.h"
#include "segment/reader.h"
#include "segment/shipped_position.h"
#include "unique_fd.h"

namespace flowseal::supervisor {

namespace fs = std::filesystem;

namespace {
// Per poll: far more than a run's deletions add between two polls (a line is ~100 bytes).
constexpr std::size_t kMaxReadPerPoll = 1 << 20;
}  // namespace

GapSigner::GapSigner(fs::path dir, fs::path key_file)
    : dir_(std::move(dir)), key_file_(std::move(key_file)) {}

void GapSigner::problem(const std::string& what) {
  if (what == last_problem_) return;
  last_problem_ = what;
  spdlog::error("gap markers: {}", what);
}

const seal::PrivateKey* GapSigner::key() {
  if (!key_) {
    try {
      key_.emplace(seal::PrivateKey::load(key_file_));
    } catch (const std::exception& e) {
      problem(fmt::format("cannot sign what retention gave up: {}", e.what()));
      return nullptr;
    }
  }
  return &*key_;
}

void GapSigner::poll() {
  const fs::path note = dir_ / segment::kGivenUpFileName;
  struct stat st {};
  if (::lstat(note.c_str(), &st) != 0) return;  // nothing given up (the usual case)
  if (!S_ISREG(st.st_mode)) {
    problem(fmt::format("{} is not a regular file: ignored", note.string()));
    return;
  }
  const auto size = static_cast<std::uint64_t>(st.st_size);
  if (size < offset_) offset_ = 0;  // replaced by a shorter one: read it again (markers dedupe)
  if (size == offset_) return;
  UniqueFd fd(::open(note.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK));
  if (!fd || ::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode)) {
    problem(fmt::format("{}: cannot read: {}", note.string(), std::strerror(errno)));
    return;
  }
  std::string text(std::min<std::uint64_t>(size - offset_, kMaxReadPerPoll), '\0');
  const ssize_t n = ::pread(fd.get(), text.data(), text.size(), static_cast<off_t>(offset_));
  if (n < 0) {
    problem(fmt::format("{}: cannot read: {}", note.string(), std::strerror(errno)));
    return;
  }
  text.resize(static_cast<std::size_t>(n));
  if (text.size() == kMaxReadPerPoll && text.find('\n') == std::string::npos) {
    problem(fmt::format("{}: a line over {} bytes at offset {}: not a given-up note", note.string(),
                        kMaxReadPerPoll, offset_));
    offset_ = size;
    return;
  }
  seal_entries(text);
}

// What the store itself says, so that a line is signed only if it can be true: the stream of
// its oldest segment, and that segment's first seq (retention deletes oldest first, so every
// batch given up lies before it). nullopt while the store has no segment to say it.
std::optional<GapSigner::StoreStart> GapSigner::store_start() const {
  std::vector<fs::path> files;
  try {
    files = segment::list_segments(dir_);
  } catch (const fs::filesystem_error&) {
    return std::nullopt;
  }
  for (const fs::path& file : files) {
    const auto first = segment::first_seq_of_name(file);
    if (!first) continue;
    segment::SegmentReader reader(file, segment::SegmentReader::Depth::kStoredBytes);
    if (!reader.ok()) continue;
    return StoreStart{reader.header().stream_id, *first};
  }
  return std::nullopt;
}

void GapSigner::seal_entries(const std::string& text) {
  std::size_t consumed = 0;
  std::vector<std::string> problems;
  const std::vector<segment::GivenUp> entries = segment::parse_given_up(text, consumed, problems);
  for (const std::string& what : problems) {
    problem(fmt::format("{} (after byte {}): {}", (dir_ / segment::kGivenUpFileName).string(),
                        offset_, what));
  }
  const std::optional<StoreStart> start = store_start();
  std::size_t signed_now = 0;
  // offset_ moves past the text only once every entry in it is settled; until then the same
  // text is read again at the next poll (the entries already signed are found by name).
  for (const segment::GivenUp& entry : entries) {
    const std::string name = seal::gap_marker_file_name(entry.first_seq, entry.last_seq);
    struct stat st {};
    if (::lstat((dir_ / name).c_str(), &st) == 0) continue;  // signed before (a restart)
    // The note is written before the deletion, by a user that is not root: a line is signed
    // only once the store shows it true, its batches gone (all before the oldest segment
    // left: retention deletes oldest first) and its stream the store's. Until then it waits.
    if (!start || entry.last_seq >= start->first_seq) return;
    if (entry.stream != start->stream) {
      problem(fmt::format("{}: a line for stream {}, which is not the store's ({}): not signed",
                          (dir_ / segment::kGivenUpFileName).string(),
                          segment::to_hex(entry.stream), segment::to_hex(start->stream)));
      continue;
    }
    // A bounded share of the supervisor's loop (a signature and two fsyncs each): the rest at
    // the next poll.
    if (signed_now == kMaxSignedPerPoll) return;
    const seal::PrivateKey* signing_key = key();
    if (signing_key == nullptr) return;
    seal::GapClaim claim;
    claim.stream_id = entry.stream;
    claim.first_seq = entry.first_seq;
    claim.last_seq = entry.last_seq;
    claim.records = entry.records;
    claim.given_up_ns = entry.at_ns;
    claim.reason =
        "retention deleted them at the disk limit (writer.retention_max_mb) before "
        "they were shipped";
    const std::vector<std::uint8_t> bytes = seal::seal_gap_marker(claim, *signing_key);
    std::string why;
    if (!segment::write_file_atomically(
            dir_, name, std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()),
            why)) {
      problem(fmt::format("cannot write the gap marker for batches seq {}..{}: {}", entry.first_seq,
                          entry.last_seq, why));
      return;
    }
    ++markers_written_;
    ++signed_now;
    spdlog::warn(
        "gap marker {}: batches seq {}..{} ({} records) given up before shipping, signed for "
        "the Core",
        name, entry.first_seq, entry.last_seq, entry.records);
  }
  offset_ += consumed;
}

}  // namespace flowseal::supervisor
