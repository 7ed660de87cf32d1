// A flow record's two directions, defined once.
//
// Every per-direction figure of a FlowEvent (packets, bytes, TCP flags, size and
// inter-arrival sums, retransmissions, locality) lives in DirectionStats, a plain value with
// one reader and one writer for either side, so flowd, dedupd, the segment format and the
// JSON writer never spell out orig and resp field by field.
//
// Two record layouts exist. Format 3 (schema.Direction structs in FlowEvent.orig / .resp) is
// what every stage writes. Format 2 (flat legacyOrig* / legacyResp* fields) is what records
// sealed before hold; the segment decoder rebuilds them in that layout, because their Merkle
// leaves were computed over it. direction() reads either; a record is in format 3 when it has
// either Direction struct.
//
// Thread-safe; nothing here allocates outside the message it writes into.
#pragma once

#include <array>
#include <cstdint>

#include "flowseal.capnp.h"

namespace flowseal::record {

enum class Side : std::uint8_t { kOrig, kResp };
inline constexpr std::array<Side, 2> kSides = {Side::kOrig, Side::kResp};
inline constexpr std::size_t index_of(Side side) { return static_cast<std::size_t>(side); }

struct DirectionStats {
  std::uint64_t pkts = 0;
  std::uint64_t ip_bytes = 0;
  std::uint64_t bytes = 0;  // payload (TCP: by sequence numbers, as Zeek)
  std::uint8_t tcp_flags = 0;
  std::uint32_t size_min = 0;
  std::uint32_t size_max = 0;
  std::uint64_t size_sumsq = 0;
  std::uint64_t iat_min_us = 0;
  std::uint64_t iat_max_us = 0;
  std::uint64_t iat_sum_us = 0;
  double iat_sumsq_us = 0;
  std::uint32_t rexmits = 0;
  schema::Locality local = schema::Locality::UNKNOWN;

  bool operator==(const DirectionStats&) const = default;

  static DirectionStats read(schema::Direction::Reader in);
  void write(schema::Direction::Builder out) const;
};

// True if `event` carries its directions as Direction structs (format 3).
bool has_direction_structs(schema::FlowEvent::Reader event);
// One side's figures, from whichever layout `event` has.
DirectionStats direction(schema::FlowEvent::Reader event, Side side);
// Sets one side in the format-3 layout (the Direction struct).
void set_direction(schema::FlowEvent::Builder event, Side side, const DirectionStats& stats);
// Sets one side in the format-2 layout (the flat legacy fields; `stats.local` has no field
// there and must be unknown). Only for rebuilding records sealed in format 2.
void set_legacy_direction(schema::FlowEvent::Builder event, Side side, const DirectionStats& stats);

}  // namespace flowseal::record
