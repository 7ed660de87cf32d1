// FlowEvent -> one line of JSON with Zeek conn.log field names (ts, uid, id.orig_h, ...,
// conn_state, history, orig_pkts, orig_ip_bytes, community_id) plus flowseal's own
// (event, event_number, end_reason, vlan, sampling_rate, flow_count), or one Zeek-style TSV
// row with the same fields in the same order (tsv_header() gives the #fields/#types lines).
//
// Every JSON line is valid UTF-8 with every control byte escaped, whatever bytes the record's
// texts hold (they are sealed as they came, and a damaged store can hold anything).
//
// An event is named by its event id text, `<uid text>:<kind>:<event number>` (for example
// `CmondrrJD8IG:end:1`): what `flowseal cat` deduplicates on and `verify --proof` takes.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "flowseal.capnp.h"

namespace flowseal::record {

// `bytes` as a JSON string literal that is valid UTF-8 whatever the bytes: well-formed UTF-8
// passes, '"' and '\\' are escaped, every control character (C0, DEL, C1) is written \u00NN,
// and each byte that is not part of well-formed UTF-8 becomes the text \xNN (as Zeek writes
// it: JSON "\\xNN").
void append_json_string(std::string& out, std::string_view bytes);
std::string json_string(std::string_view bytes);

std::string address_to_string(capnp::Data::Reader address);
std::string proto_name(std::uint8_t proto);
std::string_view kind_name(schema::EventKind kind);
// Zeek-style uid text for a 64-bit flow uid ("C" + base62).
std::string uid_text(std::uint64_t uid);
// The inverse of uid_text; nullopt if `text` is not one.
std::optional<std::uint64_t> parse_uid_text(std::string_view text);
std::string event_id_text(schema::FlowEvent::Reader event);

std::string to_json_line(schema::FlowEvent::Reader event);
// `#separator` .. `#types` lines of a Zeek conn-style TSV log (each ends with '\n').
std::string tsv_header(std::string_view open_time);
std::string to_tsv_line(schema::FlowEvent::Reader event);

}  // namespace flowseal::record
