// FlowEvent -> one line of JSON with Zeek conn.log field names (ts, uid, id.orig_h, ...,
// conn_state, history, orig_pkts, orig_ip_bytes, community_id) plus flowseal's own
// (event, event_number, end_reason, vlan, sampling_rate, flow_count), or one Zeek-style TSV
// row with the same fields in the same order (tsv_header() gives the #fields/#types lines).
//
// An event is named by its event id text, `<uid text>:<kind>:<event number>` (for example
// `CmondrrJD8IG:end:1`): what `flowseal cat` deduplicates on and `verify --proof` takes.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "flowseal.capnp.h"

namespace flowseal::supervisor {

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

}  // namespace flowseal::supervisor
