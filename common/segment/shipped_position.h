// The shipped position: the last batch of a store's stream that the Core (NATS JetStream) has
// acknowledged, and every batch before it. shipd writes it; a restarted shipd resumes after
// it; writerd's retention reads it so that it never deletes a segment not yet shipped unless
// the disk limit forces it (a documented exception to one-way data: the file is the only
// thing shipd hands back upstream).
//
// The file is `DIR/shipped` beside the segments (readers ignore it: not a segment name):
//
//   flowseal-shipped 1
//   stream <32 hex digits>
//   seq <decimal>
//
// Written as a temp file, fsynced, renamed over the old one, directory fsynced; opened with
// O_NOFOLLOW, so a crash leaves the old or the new position, never a torn one, and a
// symlink planted in its place is refused.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

#include "segment/format.h"

namespace flowseal::segment {

inline constexpr const char* kShippedFileName = "shipped";

struct ShippedPosition {
  StreamId stream{};
  std::uint64_t seq = 0;  // last acked batch; every batch <= seq of `stream` is shipped
};

// nullopt if the file does not exist; also nullopt with `why` set if it cannot be read or
// does not parse (the caller says so: shipping from the start again is safe, only slower).
std::optional<ShippedPosition> load_shipped_position(const std::filesystem::path& dir,
                                                     std::string& why);
// false with `why` on any failure (the old file stays).
bool save_shipped_position(const std::filesystem::path& dir, const ShippedPosition& position,
                           std::string& why);

}  // namespace flowseal::segment
