#include "record/record_json.h"

#include <arpa/inet.h>

#include <array>
#include <charconv>
#include <cmath>

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace flowseal::record {
namespace {

// The length of the well-formed UTF-8 sequence at the start of `s` (RFC 3629: no overlong
// form, no surrogate, nothing above U+10FFFF), or 0 if it does not start with one.
std::size_t utf8_sequence(std::string_view s) {
  const auto b = [&](std::size_t i) { return static_cast<unsigned char>(s[i]); };
  const auto cont = [&](std::size_t i) { return i < s.size() && (b(i) & 0xC0) == 0x80; };
  const unsigned char lead = b(0);
  if (lead < 0x80) return 1;
  if (lead >= 0xC2 && lead <= 0xDF) return cont(1) ? 2 : 0;
  if (lead >= 0xE0 && lead <= 0xEF) {
    if (!cont(1) || !cont(2)) return 0;
    if (lead == 0xE0 && b(1) < 0xA0) return 0;   // overlong
    if (lead == 0xED && b(1) >= 0xA0) return 0;  // UTF-16 surrogate
    return 3;
  }
  if (lead >= 0xF0 && lead <= 0xF4) {
    if (!cont(1) || !cont(2) || !cont(3)) return 0;
    if (lead == 0xF0 && b(1) < 0x90) return 0;   // overlong
    if (lead == 0xF4 && b(1) >= 0x90) return 0;  // above U+10FFFF
    return 4;
  }
  return 0;
}

}  // namespace

void append_json_string(std::string& out, std::string_view bytes) {
  out += '"';
  while (!bytes.empty()) {
    const std::size_t n = utf8_sequence(bytes);
    const auto c = static_cast<unsigned char>(bytes[0]);
    if (n == 0) {
      // Not UTF-8: the byte as the four characters \xNN (in JSON "\\xNN"), as Zeek's JSON
      // writer does, so the line stays valid UTF-8 and the byte stays readable.
      out += fmt::format("\\\\x{:02x}", c);
      bytes.remove_prefix(1);
      continue;
    }
    if (c == '"') {
      out += "\\\"";
    } else if (c == '\\') {
      out += "\\\\";
    } else if (c < 0x20 || c == 0x7F) {
      out += fmt::format("\\u{:04x}", c);  // C0 controls and DEL
    } else if (n == 2 && c == 0xC2 && static_cast<unsigned char>(bytes[1]) < 0xA0) {
      out += fmt::format("\\u{:04x}", static_cast<unsigned char>(bytes[1]));  // C1 controls
    } else {
      out.append(bytes.data(), n);
    }
    bytes.remove_prefix(n);
  }
  out += '"';
}

std::string json_string(std::string_view bytes) {
  std::string out;
  append_json_string(out, bytes);
  return out;
}

std::string_view kind_name(schema::EventKind kind) {
  switch (kind) {
    case schema::EventKind::START: return "start";
    case schema::EventKind::UPDATE: return "update";
    case schema::EventKind::END: return "end";
    case schema::EventKind::SUMMARY: return "summary";
  }
  return "unknown";
}

namespace {

// A Text's bytes, all of them (cStr() would stop at a NUL inside).
std::string_view text(capnp::Text::Reader t) { return {t.begin(), t.size()}; }

std::string_view reason_name(schema::EndReason reason) {
  switch (reason) {
    case schema::EndReason::NONE: return "none";
    case schema::EndReason::FIN: return "fin";
    case schema::EndReason::RST: return "rst";
    case schema::EndReason::IDLE: return "idle";
    case schema::EndReason::ACTIVE: return "active";
    case schema::EndReason::EVICTION: return "eviction";
    case schema::EndReason::SHUTDOWN: return "shutdown";
  }
  return "unknown";
}

// Seconds with microseconds, for any nanosecond count: a record may hold any int64 (and a
// difference of two even more), and a negative one must read "-0.500000", not "0.-500000".
__extension__ using Int128 = __int128;  // GCC's 128-bit integers, not ISO C++
__extension__ using UInt128 = unsigned __int128;

// The JSON line is written piece by piece into one string: it is what the Kafka export sends
// for every record, and formatting each member through fmt (a format string parsed per call, a
// temporary string per value) cost ~4.5 us per record. Numbers are written by std::to_chars,
// which gives printf's digits (the same correctly rounded value for a given precision).
void append_u64(std::string& out, std::uint64_t v) {
  char text[20];
  // (pointer, length): append(first, last) would take the iterator overload, a replace().
  const char* end = std::to_chars(text, text + sizeof text, v).ptr;
  out.append(text, static_cast<std::size_t>(end - text));
}

void append_fixed(std::string& out, double v, int precision) {
  // A double's fixed form has at most 309 digits before the point.
  char text[320 + 16];
  const auto done = std::to_chars(text, text + sizeof text, v, std::chars_format::fixed, precision);
  if (done.ec == std::errc()) {
    out.append(text, static_cast<std::size_t>(done.ptr - text));
  } else {
    out += fmt::format("{:.{}f}", v, precision);  // not reached for a finite double
  }
}

void append_seconds(std::string& out, Int128 ns) {
  const bool negative = ns < 0;
  const auto magnitude = static_cast<UInt128>(negative ? -ns : ns);
  if (negative) out += '-';
  append_u64(out, static_cast<std::uint64_t>(magnitude / 1'000'000'000));
  const auto micros = static_cast<std::uint32_t>(magnitude % 1'000'000'000 / 1000);
  char fraction[7] = {'.', '0', '0', '0', '0', '0', '0'};
  for (std::uint32_t rest = micros, at = 6; rest != 0; rest /= 10, --at) {
    fraction[at] = static_cast<char>('0' + rest % 10);
  }
  out.append(fraction, sizeof fraction);
}

void append_member(std::string& out, std::string_view name_and_colon, std::uint64_t v) {
  out += name_and_colon;
  append_u64(out, v);
}

std::string seconds(Int128 ns) {
  std::string out;
  append_seconds(out, ns);
  return out;
}
std::string duration(schema::FlowEvent::Reader e) {
  return seconds(static_cast<Int128>(e.getLastTsNs()) - e.getFirstTsNs());
}
// JSON has no NaN or infinity; TSV's unset field is "-".
std::string number(float v, std::string_view unset) {
  return std::isfinite(v) ? fmt::format("{}", v) : std::string(unset);
}

double stddev(double sum, double sumsq, double n) {
  if (n <= 0) return 0;
  const double mean = sum / n;
  const double variance = sumsq / n - mean * mean;
  // Rounding can make a zero variance negative; a stored sum of squares can be anything.
  return std::isfinite(variance) && variance > 0 ? std::sqrt(variance) : 0;
}

// An address as text, "-" if it is neither IPv4 nor IPv6. IPv4 by hand: glibc's inet_ntop
// formats it with sprintf, which was a tenth of the JSON line's cost.
void append_address(std::string& out, capnp::Data::Reader address) {
  if (address.size() == 4) {
    for (std::size_t i = 0; i < 4; ++i) {
      if (i > 0) out += '.';
      append_u64(out, address[i]);
    }
  } else if (address.size() == 16) {
    char text[INET6_ADDRSTRLEN] = {};
    inet_ntop(AF_INET6, address.begin(), text, sizeof text);
    out += text;
  } else {
    out += '-';
  }
}

std::string_view side_name(Side side) { return side == Side::kOrig ? "orig" : "resp"; }

// conn.log's local_orig / local_resp: unset (nullopt) when net.local_nets was empty.
std::optional<bool> is_local(const DirectionStats& d) {
  switch (d.local) {
    case schema::Locality::LOCAL: return true;
    case schema::Locality::REMOTE: return false;
    default: return std::nullopt;
  }
}

}  // namespace

std::string address_to_string(capnp::Data::Reader address) {
  std::string out;
  append_address(out, address);
  return out;
}

std::string proto_name(std::uint8_t proto) {
  switch (proto) {
    case 6: return "tcp";
    case 17: return "udp";
    case 1: return "icmp";
    case 58: return "icmp";  // Zeek logs ICMPv6 as icmp too
    case 132: return "sctp";
    default: return "unknown_transport";  // as Zeek: the number is in ip_proto
  }
}

namespace {

std::size_t uid_text_to(std::uint64_t uid, char (&text)[16]) {
  static constexpr char kAlphabet[] =
      "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
  std::size_t size = 0;
  text[size++] = 'C';
  do {  // 62^11 > 2^64: at most 11 digits
    text[size++] = kAlphabet[uid % 62];
    uid /= 62;
  } while (uid != 0);
  return size;
}

void append_uid(std::string& out, std::uint64_t uid) {
  char text[16];
  const std::size_t size = uid_text_to(uid, text);
  out.append(text, size);
}

}  // namespace

std::string uid_text(std::uint64_t uid) {
  char text[16];
  return {text, uid_text_to(uid, text)};
}

std::optional<std::uint64_t> parse_uid_text(std::string_view text) {
  if (text.size() < 2 || text.size() > 12 || text[0] != 'C') return std::nullopt;
  std::uint64_t uid = 0;
  // uid_text writes the least significant digit first.
  for (std::size_t i = text.size() - 1; i >= 1; --i) {
    const char c = text[i];
    int digit = -1;
    if (c >= '0' && c <= '9') digit = c - '0';
    if (c >= 'A' && c <= 'Z') digit = c - 'A' + 10;
    if (c >= 'a' && c <= 'z') digit = c - 'a' + 36;
    if (digit < 0) return std::nullopt;
    const auto d = static_cast<std::uint64_t>(digit);
    if (uid > (UINT64_MAX - d) / 62) return std::nullopt;
    uid = uid * 62 + d;
  }
  if (uid_text(uid) != text) return std::nullopt;  // leading zero digits: not canonical
  return uid;
}

namespace {

void append_event_id(std::string& out, schema::FlowEvent::Reader e) {
  append_uid(out, e.getUid());
  out += ':';
  out += kind_name(e.getKind());
  out += ':';
  append_u64(out, e.getEventNumber());
}

}  // namespace

std::string event_id_text(schema::FlowEvent::Reader e) {
  std::string out;
  append_event_id(out, e);
  return out;
}

namespace {

// Zeek's TSV escaping: the separator and non-printable bytes as \xNN, a backslash doubled.
void append_tsv_value(std::string& out, std::string_view text) {
  if (text.empty()) {
    out += "(empty)";
    return;
  }
  if (text == "-") {
    out += "\\x2d";  // a literal "-" would read as unset
    return;
  }
  for (const char c : text) {
    const auto u = static_cast<unsigned char>(c);
    if (c == '\\') {
      out += "\\\\";
    } else if (u < 0x20 || u >= 0x7f) {
      out += fmt::format("\\x{:02x}", u);
    } else {
      out += c;
    }
  }
}

// The parents' uid texts joined by `separator`, each wrapped in `quote`.
std::string tunnel_parent_list(schema::FlowEvent::Reader e, std::string_view separator,
                               std::string_view quote) {
  std::string out;
  for (const std::uint64_t parent : e.getTunnelParents()) {
    if (!out.empty()) out += separator;
    out += quote;
    out += uid_text(parent);
    out += quote;
  }
  return out;
}

}  // namespace

std::string tsv_header(std::string_view open_time) {
  return fmt::format(
      "#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n#unset_field\t-\n"
      "#path\tconn\n#open\t{}\n"
      "#fields\tts\tuid\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tproto\tservice\t"
      "duration\torig_bytes\tresp_bytes\tconn_state\tlocal_orig\tlocal_resp\tmissed_bytes\t"
      "history\torig_pkts\torig_ip_bytes\tresp_pkts\tresp_ip_bytes\tcommunity_id\tvlan\tevent\t"
      "event_number\tend_reason\tsampling_rate\tflow_count\ttunnel_parents\tip_proto\n"
      "#types\ttime\tstring\taddr\tport\taddr\tport\tenum\tstring\tinterval\tcount\tcount\t"
      "string\tbool\tbool\tcount\tstring\tcount\tcount\tcount\tcount\tstring\tcount\tstring\t"
      "count\tstring\tdouble\tcount\tset[string]\tcount\n",
      open_time);
}

std::string to_tsv_line(schema::FlowEvent::Reader e) {
  const DirectionStats orig = direction(e, Side::kOrig);
  const DirectionStats resp = direction(e, Side::kResp);
  const auto bool_text = [](std::optional<bool> b) { return b ? (*b ? "T" : "F") : "-"; };
  std::string out;
  out.reserve(384);
  out += fmt::format("{}\t{}\t{}\t{}\t{}\t{}\t{}\t", seconds(e.getFirstTsNs()),
                     uid_text(e.getUid()), address_to_string(e.getOrigAddr()), e.getOrigPort(),
                     address_to_string(e.getRespAddr()), e.getRespPort(), proto_name(e.getProto()));
  if (e.hasService()) {
    append_tsv_value(out, text(e.getService()));
  } else {
    out += '-';  // no analyzer named it: unset, as Zeek
  }
  out += fmt::format("\t{}\t{}\t{}\t", duration(e), orig.bytes, resp.bytes);
  append_tsv_value(out, text(e.getConnState()));
  out += fmt::format("\t{}\t{}\t{}\t", bool_text(is_local(orig)), bool_text(is_local(resp)),
                     e.getMissedBytes());
  append_tsv_value(out, text(e.getHistory()));
  out += fmt::format("\t{}\t{}\t{}\t{}\t", orig.pkts, orig.ip_bytes, resp.pkts, resp.ip_bytes);
  append_tsv_value(out, text(e.getCommunityId()));
  out += fmt::format("\t{}\t{}\t{}\t{}\t{}\t{}", e.getVlan(), kind_name(e.getKind()),
                     e.getEventNumber(), reason_name(e.getEndReason()),
                     number(e.getSamplingRate(), "-"), e.getFlowCount());
  // Zeek's set: comma-separated; unset ("-") when the flow was in no tunnel.
  out += '\t';
  out += e.getTunnelParents().size() > 0 ? tunnel_parent_list(e, ",", "") : "-";
  out += fmt::format("\t{}", e.getProto());
  return out;
}

namespace {

// One side's size and inter-arrival figures: mean and standard deviation derive from the
// stored sums. A summary's gaps are those inside each folded flow: one fewer than its
// packets per flow.
void append_spread_json(std::string& out, std::string_view side, const DirectionStats& v,
                        std::uint32_t flow_count) {
  const double n = static_cast<double>(v.pkts);
  const double gaps = v.pkts > flow_count ? static_cast<double>(v.pkts - flow_count) : 0;
  const auto name = [&](std::string_view member) {
    out += ",\"";
    out += side;
    out += member;
  };
  name("_size_min\":");
  append_u64(out, v.size_min);
  name("_size_max\":");
  append_u64(out, v.size_max);
  name("_size_mean\":");
  append_fixed(out, n > 0 ? static_cast<double>(v.ip_bytes) / n : 0.0, 1);
  name("_size_stddev\":");
  append_fixed(out, stddev(static_cast<double>(v.ip_bytes), static_cast<double>(v.size_sumsq), n),
               1);
  name("_iat_min\":");
  append_fixed(out, static_cast<double>(v.iat_min_us) / 1e6, 6);
  name("_iat_max\":");
  append_fixed(out, static_cast<double>(v.iat_max_us) / 1e6, 6);
  name("_iat_mean\":");
  append_fixed(out, gaps > 0 ? static_cast<double>(v.iat_sum_us) / gaps / 1e6 : 0.0, 6);
  name("_iat_stddev\":");
  append_fixed(out, stddev(static_cast<double>(v.iat_sum_us), v.iat_sumsq_us, gaps) / 1e6, 6);
  name("_rexmits\":");
  append_u64(out, v.rexmits);
}

// Every member of the JSON line, without the closing brace.
void append_json_members(std::string& out, schema::FlowEvent::Reader e) {
  const std::array<DirectionStats, 2> sides = {direction(e, Side::kOrig),
                                               direction(e, Side::kResp)};
  const DirectionStats& orig = sides[0];
  const DirectionStats& resp = sides[1];
  out += "{\"ts\":";
  append_seconds(out, e.getFirstTsNs());
  out += ",\"uid\":\"";
  append_uid(out, e.getUid());
  out += "\",\"id.orig_h\":\"";
  append_address(out, e.getOrigAddr());
  append_member(out, "\",\"id.orig_p\":", e.getOrigPort());
  out += ",\"id.resp_h\":\"";
  append_address(out, e.getRespAddr());
  append_member(out, "\",\"id.resp_p\":", e.getRespPort());
  out += ",\"proto\":\"";
  out += proto_name(e.getProto());
  out += "\",";
  if (e.hasService()) {  // unset: left out, as Zeek does
    out += "\"service\":";
    append_json_string(out, text(e.getService()));
    out += ',';
  }
  out += "\"duration\":";
  append_seconds(out, static_cast<Int128>(e.getLastTsNs()) - e.getFirstTsNs());
  append_member(out, ",\"orig_bytes\":", orig.bytes);
  append_member(out, ",\"resp_bytes\":", resp.bytes);
  out += ",\"conn_state\":";
  append_json_string(out, text(e.getConnState()));
  for (const Side side : kSides) {
    if (const auto local = is_local(sides[index_of(side)])) {
      out += ",\"local_";
      out += side_name(side);
      out += *local ? "\":true" : "\":false";
    }
  }
  append_member(out, ",\"missed_bytes\":", e.getMissedBytes());
  out += ",\"history\":";
  append_json_string(out, text(e.getHistory()));
  append_member(out, ",\"orig_pkts\":", orig.pkts);
  append_member(out, ",\"orig_ip_bytes\":", orig.ip_bytes);
  append_member(out, ",\"resp_pkts\":", resp.pkts);
  append_member(out, ",\"resp_ip_bytes\":", resp.ip_bytes);
  out += ",\"community_id\":";
  append_json_string(out, text(e.getCommunityId()));
  append_member(out, ",\"vlan\":", e.getVlan());
  out += ",\"event\":\"";
  out += kind_name(e.getKind());
  append_member(out, "\",\"event_number\":", e.getEventNumber());
  out += ",\"end_reason\":\"";
  out += reason_name(e.getEndReason());
  out += "\",\"sampling_rate\":";
  out += number(e.getSamplingRate(), "null");
  append_member(out, ",\"flow_count\":", e.getFlowCount());
  for (const Side side : kSides) {
    append_spread_json(out, side_name(side), sides[index_of(side)], e.getFlowCount());
  }
  out += ",\"tunnel_parents\":[";
  out += tunnel_parent_list(e, ",", "\"");
  append_member(out, "],\"ip_proto\":", e.getProto());
}

}  // namespace

std::string to_json_line(schema::FlowEvent::Reader e) {
  std::string out;
  out.reserve(1024);
  append_json_members(out, e);
  out += '}';
  return out;
}

std::string to_json_line(schema::FlowEvent::Reader e, const SealedAt& sealed) {
  std::string out;
  out.reserve(1152);
  append_json_line(out, e, sealed);
  return out;
}

void append_json_line(std::string& out, schema::FlowEvent::Reader e, const SealedAt& sealed) {
  static constexpr char kHex[] = "0123456789abcdef";
  append_json_members(out, e);
  out += ",\"event_id\":\"";
  append_event_id(out, e);
  out += "\",\"stream_id\":\"";
  for (const std::uint8_t byte : sealed.stream_id) {
    out += kHex[byte >> 4];
    out += kHex[byte & 0xf];
  }
  append_member(out, "\",\"batch_seq\":", sealed.batch_seq);
  append_member(out, ",\"leaf_index\":", sealed.leaf_index);
  out += '}';
}

}  // namespace flowseal::record
