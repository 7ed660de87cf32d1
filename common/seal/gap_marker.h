// Gap markers: a probe's signed statement that it gave up batches of its stream before they
// were shipped (writerd's retention deleted their segment at the disk limit). Without one the
// Core would wait for the missing batches for ever and refuse the rest of the chain; with one
// it records the loss, says so in `verify`, and goes on after it.
//
// Who makes them: writerd's retention appends a line to DIR/given-up (segment/store.h) before
// it deletes; the supervisor, which holds the signing key, seals each line into
// DIR/gap-<first>-<last>.fgm (supervisor/gap_signer.h); shipd publishes that file before the
// first batch after the gap; `flowseal collect` checks it and keeps it in the collected store,
// where `verify` reads it. The key never reaches shipd, the stage that talks to the network.
//
// The file is the SignedGapMarker message (flowseal.capnp) as one flat array, nothing else.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "seal/keys.h"

namespace flowseal::seal {

using StreamId = std::array<std::uint8_t, 16>;

struct GapClaim {
  StreamId stream_id{};
  std::uint64_t first_seq = 0;
  std::uint64_t last_seq = 0;
  std::uint64_t records = 0;
  std::int64_t given_up_ns = 0;
  std::string reason;
};

struct GapMarker {
  GapClaim claim;
  Digest key_id{};
};

// A marker file is far smaller than this; anything larger is not one.
inline constexpr std::size_t kMaxGapMarkerBytes = 16 * 1024;

// The SignedGapMarker message for `claim`, signed with `key`.
std::vector<std::uint8_t> seal_gap_marker(const GapClaim& claim, const PrivateKey& key);

// Reads and checks a SignedGapMarker: its shape, a key of `keys`, the signature, and
// first <= last. nullopt with `why` (naming what is wrong) if any check fails.
std::optional<GapMarker> open_gap_marker(std::span<const std::uint8_t> bytes,
                                         const std::map<Digest, PublicKey>& keys, std::string& why);
// The same for a key known only by its DER (collect learns keys from messages).
std::optional<GapMarker> open_gap_marker(std::span<const std::uint8_t> bytes, const PublicKey& key,
                                         std::string& why);

// The key id a marker names, unverified: only to find the key to check it with.
std::optional<Digest> gap_marker_key_id(std::span<const std::uint8_t> bytes);

// A marker file's bytes: opened O_NOFOLLOW|O_NONBLOCK, a regular file of at most
// kMaxGapMarkerBytes (a symlink, a FIFO or anything larger is refused, never waited on).
std::optional<std::vector<std::uint8_t>> read_gap_marker_file(const std::filesystem::path& file,
                                                              std::string& why);

// "gap-<first, 20 digits>-<last, 20 digits>.fgm"
std::string gap_marker_file_name(std::uint64_t first_seq, std::uint64_t last_seq);
// A marker file as its name describes it (nothing read): the batches it claims to cover.
struct GapMarkerFileName {
  std::filesystem::path path;
  std::uint64_t first_seq = 0;
  std::uint64_t last_seq = 0;
};
// The marker files of `dir` by name (gap-<20 digits>-<20 digits>.fgm, each at most 2^64-1),
// sorted by first seq. Throws std::filesystem::filesystem_error if `dir` cannot be listed.
std::vector<GapMarkerFileName> list_gap_marker_files(const std::filesystem::path& dir);

// The markers of `dir` that verify with `keys`; each file that does not (unreadable, a
// symlink, too large, not a marker, a bad signature) is named in `problems`.
std::vector<GapMarker> load_gap_markers(const std::filesystem::path& dir,
                                        const std::map<Digest, PublicKey>& keys,
                                        std::vector<std::string>& problems);

}  // namespace flowseal::seal
