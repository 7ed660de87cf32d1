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
#include <string_view>
#include <vector>

#include "segment/format.h"

namespace flowseal::segment {

inline constexpr const char* kShippedFileName = "shipped";
// The Kafka exporter's position (shipd/kafka_exporter.h), in the same format: the last batch
// whose every record Kafka has delivered.
inline constexpr const char* kKafkaExportedFileName = "kafka-exported";
// The IPFIX exporter's state (shipd/ipfix_exporter.h): the same three lines under its own
// first line ("flowseal-ipfix-exported 1"), then its per-flow state.
inline constexpr const char* kIpfixExportedFileName = "ipfix-exported";

struct ShippedPosition {
  StreamId stream{};
  std::uint64_t seq = 0;  // last acked batch; every batch <= seq of `stream` is shipped
};

// nullopt if the file does not exist; also nullopt with `why` set if it cannot be read or
// does not parse (the caller says so: shipping from the start again is safe, only slower).
// `name`: the file in `dir` (kShippedFileName, or an exporter's own).
std::optional<ShippedPosition> load_shipped_position(const std::filesystem::path& dir,
                                                     std::string& why,
                                                     const char* name = kShippedFileName);
// The position at the head of any output's file (shipped, kafka-exported, ipfix-exported):
// what retention needs, without reading an IPFIX state's per-flow lines. nullopt as above.
std::optional<ShippedPosition> load_output_position(const std::filesystem::path& dir,
                                                    const std::string& name, std::string& why);

// 32 hex digits (either case) as a stream id; false if `hex` is anything else.
bool parse_stream_id(std::string_view hex, StreamId& out);

// false with `why` on any failure (the old file stays).
bool save_shipped_position(const std::filesystem::path& dir, const ShippedPosition& position,
                           std::string& why, const char* name = kShippedFileName);

// The same crash-safe write for any small state file kept beside the segments (the IPFIX
// exporter's position): DIR/NAME.tmp created O_EXCL|O_NOFOLLOW, written, fsynced, renamed
// over DIR/NAME, directory fsynced. false with `why` on any failure (the old file stays).
bool write_file_atomically(const std::filesystem::path& dir, const std::string& name,
                           std::string_view text, std::string& why);
// Reads DIR/NAME (O_NOFOLLOW) of at most `max_bytes`: nullopt if it does not exist, nullopt
// with `why` if it cannot be read, is a symlink or is larger.
std::optional<std::string> read_small_file(const std::filesystem::path& dir,
                                           const std::string& name, std::size_t max_bytes,
                                           std::string& why);
// The first `max_bytes` of DIR/NAME (O_NOFOLLOW), or all of it if shorter; nullopt as above.
std::optional<std::string> read_file_head(const std::filesystem::path& dir, const std::string& name,
                                          std::size_t max_bytes, std::string& why);

// The given-up note, DIR/given-up: one line per segment retention deleted before every
// output had it (the disk limit forced it), appended and fsynced before the deletion:
//
//   given-up <stream id, 32 hex digits> <first seq> <last seq> <records> <ns since epoch>
//
// The supervisor signs each line into a gap marker for the Core (seal/gap_marker.h).
inline constexpr const char* kGivenUpFileName = "given-up";

struct GivenUp {
  StreamId stream{};
  std::uint64_t first_seq = 0;
  std::uint64_t last_seq = 0;
  std::uint64_t records = 0;
  std::int64_t at_ns = 0;
};

// Appends one line (O_APPEND, O_NOFOLLOW, a regular file only) and fsyncs it; false with
// `why` on any failure.
bool append_given_up(const std::filesystem::path& dir, const GivenUp& entry, std::string& why);
// The entries of a note's text; a line that does not parse is named in `problems` (with its
// number) and skipped. An unterminated last line is not read (it may be half written):
// `consumed` is the length of the text up to the end of the last whole line.
std::vector<GivenUp> parse_given_up(std::string_view text, std::size_t& consumed,
                                    std::vector<std::string>& problems);

}  // namespace flowseal::segment
