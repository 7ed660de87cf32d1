// FlowEvent -> one line of JSON with Zeek conn.log's fields in Zeek's order (ts, uid,
// id.orig_h, ..., proto, service, duration, ..., conn_state, local_orig, local_resp,
// missed_bytes, history, orig_pkts, ..., tunnel_parents, ip_proto) plus flowseal's own
// (community_id, vlan, event, event_number, end_reason, sampling_rate, flow_count, and in JSON
// each side's size and inter-arrival figures), or one Zeek-style TSV row with the conn.log
// fields (tsv_header() gives the #fields/#types lines). Fields Zeek leaves unset are left out
// of the JSON and "-" in TSV: service until flowd names applications, local_orig/local_resp
// when net.local_nets is empty. A transport Zeek has no analyzer for is proto
// "unknown_transport" with its number in ip_proto. Records sealed in segment format 2 print
// the same way (record/direction.h reads either layout).
//
// Every JSON line is valid UTF-8 with every control byte escaped, whatever bytes the record's
// texts hold (they are sealed as they came, and a damaged store can hold anything).
//
// An event is named by its event id text, `<uid text>:<kind>:<event number>` (for example
// `CmondrrJD8IG:end:1`): what `flowseal cat` deduplicates on and `verify --proof` takes.
//
// A record that leaves the box (the Kafka export) is cat's line with four members appended
// after cat's last one: its event id and where it is sealed (stream id, batch seq, its leaf
// index in that batch's Merkle tree), so a consumer can drop repeats by event id and prove
// the record against the store with `flowseal verify --proof EVENT_ID`.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "flowseal.capnp.h"
#include "record/direction.h"

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

// Where a record is sealed: its batch's stream id and seq, and its index among the batch's
// records (the Merkle leaf index).
struct SealedAt {
  std::span<const std::uint8_t> stream_id;
  std::uint64_t batch_seq = 0;
  std::uint64_t leaf_index = 0;
};
// to_json_line(event) with `,"event_id":"...","stream_id":"<hex>","batch_seq":N,
// "leaf_index":N` before its closing brace: every other byte is cat's line.
std::string to_json_line(schema::FlowEvent::Reader event, const SealedAt& sealed);
// The same line appended to `out` (an exporter reuses one buffer for every record).
void append_json_line(std::string& out, schema::FlowEvent::Reader event, const SealedAt& sealed);
// `#separator` .. `#types` lines of a Zeek conn-style TSV log (each ends with '\n').
std::string tsv_header(std::string_view open_time);
std::string to_tsv_line(schema::FlowEvent::Reader event);

}  // namespace flowseal::record
