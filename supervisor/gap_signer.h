// GapSigner: turns writerd's given-up note (DIR/given-up, segment/shipped_position.h) into
// signed gap markers (seal/gap_marker.h) beside the segments, for shipd to publish before
// the first batch after a gap, so that the Core records what the probe gave up instead of
// refusing the rest of its chain.
//
// It runs in the supervisor because the supervisor holds the signing key anyway (it hands it
// to signerd) and talks to no network: shipd, which does, never gets the key. The note is
// written by writerd (as supervisor.user, in a directory that user owns), so it is read as
// untrusted input: O_NOFOLLOW, a regular file only, a bounded read per poll, every line
// parsed strictly; a line that does not parse is logged and skipped, never signed. A line is
// signed only once the store shows it true (its batches gone, its stream the store's), so a
// stage user cannot get a marker for batches that are still there. It can still get one for
// batches already deleted (shipped or not): shipd's user owns the shipped position that
// retention trusts, so only running shipd under a uid of its own would close that.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

#include "seal/keys.h"
#include "segment/format.h"

namespace flowseal::supervisor {

class GapSigner {
 public:
  GapSigner(std::filesystem::path dir, std::filesystem::path key_file);

  // Signs every entry the note gained since the last call that has no marker file yet.
  // One lstat when nothing changed. Never throws: problems are logged (each once).
  void poll();
  std::uint64_t markers_written() const { return markers_written_; }

 private:
  struct StoreStart {
    segment::StreamId stream{};
    std::uint64_t first_seq = 0;  // of the oldest segment left
  };
  static constexpr std::size_t kMaxSignedPerPoll = 16;

  std::optional<StoreStart> store_start() const;
  void seal_entries(const std::string& text);
  const seal::PrivateKey* key();
  void problem(const std::string& what);

  std::filesystem::path dir_;
  std::filesystem::path key_file_;
  std::optional<seal::PrivateKey> key_;
  std::uint64_t offset_ = 0;  // bytes of the note already read up to a whole line
  std::uint64_t markers_written_ = 0;
  std::string last_problem_;
};

}  // namespace flowseal::supervisor
