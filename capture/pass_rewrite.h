// Loop mode's address rewrite: on pass p > 0 over the input files, both addresses of every IP
// packet get p XORed into their three low bytes, in the packet bytes and in the decoded key,
// before the flow hash is computed.
//
// Why XOR of both addresses with the same value: it is its own inverse and maps a flow's two
// directions to the same rewritten pair, so both directions still meet in one flow and one
// shard, while each pass's copy of a flow is a different 5-tuple — flows stay unique across
// passes (up to 2^24 passes) and a benchmark sees N times the flows, not N times the packets
// of the same flows. The IP checksum is not fixed: nothing downstream checks it.
#pragma once

#include <cstdint>
#include <span>

#include "packet/decode.h"

namespace flowseal::capture {

// Rewrites the outer IP addresses of `bytes` (whose decode gave `decoded`) for `pass`.
// False when the addresses could not be found in the bytes; nothing is changed then.
bool rewrite_for_pass(std::span<std::uint8_t> bytes, packet::DecodedPacket& decoded,
                      std::uint32_t pass);

}  // namespace flowseal::capture
