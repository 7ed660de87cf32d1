// Hex text for the byte strings a proof carries (canonical records and headers, hashes,
// signatures, keys): written lower case by seal::to_hex, read back here.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <capnp/common.h>
#include <capnp/blob.h>

namespace flowseal::supervisor {

// Pairs of hex digits (either case) to bytes; nullopt for an odd length or any other
// character. The empty string is zero bytes.
std::optional<std::vector<std::uint8_t>> from_hex(std::string_view text);

// A Cap'n Proto Data field as lower-case hex.
std::string hex_of(capnp::Data::Reader data);

}  // namespace flowseal::supervisor
