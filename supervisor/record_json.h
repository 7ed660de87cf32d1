// FlowEvent -> one line of JSON with Zeek conn.log field names (ts, uid, id.orig_h, ...,
// conn_state, history, orig_pkts, orig_ip_bytes, community_id) plus flowseal's own
// (event, event_number, end_reason, vlan, sampling_rate, flow_count).
#pragma once

#include <string>

#include "flowseal.capnp.h"

namespace flowseal::supervisor {

std::string address_to_string(capnp::Data::Reader address);
std::string proto_name(std::uint8_t proto);
// Zeek-style uid text for a 64-bit flow uid ("C" + base62).
std::string uid_text(std::uint64_t uid);
std::string to_json_line(schema::FlowEvent::Reader event);

}  // namespace flowseal::supervisor
