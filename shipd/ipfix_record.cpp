#include "shipd/ipfix_record.h"

#include <algorithm>
#include <cstring>
#include <sstream>

#include <fmt/format.h>
#include <kj/exception.h>

#include "record/direction.h"

namespace flowseal::shipd {

// fixbuf's spec takes a non-const char*; the names are never written through.
#define FLOWSEAL_IE(name, len, flags) \
  { const_cast<char*>(name), len, flags }
fbInfoElementSpec_t kIpfixSpec[] = {FLOWSEAL_IE("flowStartMilliseconds", 8, 0),
                                    FLOWSEAL_IE("flowEndMilliseconds", 8, 0),
                                    FLOWSEAL_IE("octetDeltaCount", 8, 0),
                                    FLOWSEAL_IE("packetDeltaCount", 8, 0),
                                    FLOWSEAL_IE("reverseOctetDeltaCount", 8, kIpfixBiflow),
                                    FLOWSEAL_IE("reversePacketDeltaCount", 8, kIpfixBiflow),
                                    FLOWSEAL_IE("deltaFlowCount", 8, 0),
                                    FLOWSEAL_IE("sourceIPv6Address", 16, kIpfixV6),
                                    FLOWSEAL_IE("destinationIPv6Address", 16, kIpfixV6),
                                    FLOWSEAL_IE("sourceIPv4Address", 4, kIpfixV4),
                                    FLOWSEAL_IE("destinationIPv4Address", 4, kIpfixV4),
                                    FLOWSEAL_IE("sourceTransportPort", 2, 0),
                                    FLOWSEAL_IE("destinationTransportPort", 2, 0),
                                    FLOWSEAL_IE("vlanId", 2, 0),
                                    FLOWSEAL_IE("tcpControlBits", 2, 0),
                                    FLOWSEAL_IE("reverseTcpControlBits", 2, kIpfixBiflow),
                                    FLOWSEAL_IE("protocolIdentifier", 1, 0),
                                    FLOWSEAL_IE("flowEndReason", 1, 0),
                                    FLOWSEAL_IE("paddingOctets", 4, kIpfixInternal),
                                    FB_IESPEC_NULL};
#undef FLOWSEAL_IE

std::uint32_t external_flags(bool v6, IpfixMode mode) {
  return (v6 ? kIpfixV6 : kIpfixV4) | (mode == IpfixMode::kBiflow ? kIpfixBiflow : 0);
}

std::uint8_t flow_end_reason(schema::FlowEvent::Reader event) {
  if (event.getKind() == schema::EventKind::UPDATE) return 2;  // activeTimeout
  switch (event.getEndReason()) {
    case schema::EndReason::IDLE: return 1;    // idleTimeout
    case schema::EndReason::ACTIVE: return 2;  // activeTimeout
    case schema::EndReason::FIN:
    case schema::EndReason::RST: return 3;       // endOfFlowDetected
    case schema::EndReason::SHUTDOWN: return 4;  // forcedEnd
    case schema::EndReason::EVICTION: return 5;  // lackOfResources
    case schema::EndReason::NONE: return 0;
  }
  return 0;
}

namespace {

std::uint64_t to_ms(std::int64_t ns) {
  return ns > 0 ? static_cast<std::uint64_t>(ns) / 1000000 : 0;
}
std::uint64_t minus(std::uint64_t now, std::uint64_t before) {
  return now > before ? now - before : 0;
}

// Sets source and destination from an address pair (4 or 16 bytes each); false otherwise.
bool set_addresses(IpfixRecord& r, capnp::Data::Reader source, capnp::Data::Reader destination) {
  if (source.size() != destination.size()) return false;
  if (source.size() == 4) {
    r.source_v4 = (std::uint32_t{source[0]} << 24) | (std::uint32_t{source[1]} << 16) |
                  (std::uint32_t{source[2]} << 8) | source[3];
    r.destination_v4 = (std::uint32_t{destination[0]} << 24) |
                       (std::uint32_t{destination[1]} << 16) |
                       (std::uint32_t{destination[2]} << 8) | destination[3];
    // 0.0.0.0 to 0.0.0.0 would read as IPv6: not a flow anyone captures.
    return r.source_v4 != 0 || r.destination_v4 != 0;
  }
  if (source.size() == 16) {
    std::memcpy(r.source_v6.data(), source.begin(), 16);
    std::memcpy(r.destination_v6.data(), destination.begin(), 16);
    return true;
  }
  return false;
}

bool is_icmp(std::uint8_t proto) { return proto == 1 || proto == 58; }

}  // namespace

void IpfixMapper::remember(std::uint64_t uid, const std::optional<Sent>& before) {
  for (const auto& entry : undo_) {
    if (entry.first == uid) return;  // the batch's first change of it is what to restore
  }
  undo_.emplace_back(uid, before);
}

namespace {
EventId event_id(schema::FlowEvent::Reader event) {
  return {event.getUid(),
          (static_cast<std::uint64_t>(event.getKind()) << 32) | event.getEventNumber()};
}
}  // namespace

void IpfixMapper::prefetch(schema::FlowEvent::Reader event) const {
  if (event.getKind() != schema::EventKind::START) recent_.prefetch(event_id(event));
}

void IpfixMapper::map(schema::FlowEvent::Reader event, std::vector<IpfixRecord>& out) {
  try {
    const schema::EventKind kind = event.getKind();
    if (kind == schema::EventKind::START) return;
    const EventId id = event_id(event);
    if (recent_.contains(id)) {
      ++repeats_;
      return;
    }

    IpfixRecord base;
    if (!set_addresses(base, event.getOrigAddr(), event.getRespAddr())) {
      ++malformed_;
      return;
    }
    base.protocol = event.getProto();
    base.vlan = event.getVlan();
    base.end_reason = flow_end_reason(event);
    base.flow_end_ms = to_ms(event.getLastTsNs());
    base.flow_start_ms = to_ms(event.getFirstTsNs());
    if (is_icmp(base.protocol)) {
      base.destination_port = static_cast<std::uint16_t>((event.getOrigPort() & 0xff) << 8 |
                                                         (event.getRespPort() & 0xff));
    } else {
      base.source_port = event.getOrigPort();
      base.destination_port = event.getRespPort();
    }
    const record::DirectionStats orig = record::direction(event, record::Side::kOrig);
    const record::DirectionStats resp = record::direction(event, record::Side::kResp);
    base.tcp_flags = orig.tcp_flags;
    base.reverse_tcp_flags = resp.tcp_flags;

    std::uint64_t orig_pkts = orig.pkts, orig_bytes = orig.ip_bytes;
    std::uint64_t resp_pkts = resp.pkts, resp_bytes = resp.ip_bytes;
    if (kind == schema::EventKind::SUMMARY) {
      base.flow_count = event.getFlowCount();
    } else {
      base.flow_count = 1;
      const std::uint64_t uid = event.getUid();
      auto it = sent_.find(uid);
      if (it != sent_.end()) {
        const Sent& before = it->second;
        orig_pkts = minus(orig.pkts, before.orig_pkts);
        orig_bytes = minus(orig.ip_bytes, before.orig_bytes);
        resp_pkts = minus(resp.pkts, before.resp_pkts);
        resp_bytes = minus(resp.ip_bytes, before.resp_bytes);
        base.flow_start_ms = std::max(base.flow_start_ms, before.last_ms);
      }
      if (kind == schema::EventKind::UPDATE) {
        if (it != sent_.end() || sent_.size() < kMaxTrackedFlows) {
          remember(uid, it == sent_.end() ? std::nullopt : std::optional<Sent>(it->second));
          sent_[uid] = Sent{orig.pkts, orig.ip_bytes, resp.pkts, resp.ip_bytes, base.flow_end_ms};
        } else {
          ++untracked_;  // its end will carry its whole figures again
        }
      } else if (it != sent_.end()) {
        remember(uid, it->second);
        sent_.erase(it);
      }
    }
    recent_.add_pending(id);

    if (mode_ == IpfixMode::kBiflow) {
      IpfixRecord& r = out.emplace_back(base);
      r.packets = orig_pkts;
      r.octets = orig_bytes;
      r.reverse_packets = resp_pkts;
      r.reverse_octets = resp_bytes;
      return;
    }
    // Uniflow: each direction that sent something in this slice (none: an end right after
    // an update has nothing left to count).
    if (orig_pkts > 0) {
      IpfixRecord& r = out.emplace_back(base);
      r.packets = orig_pkts;
      r.octets = orig_bytes;
      r.reverse_tcp_flags = 0;
    }
    if (resp_pkts > 0) {
      IpfixRecord& r = out.emplace_back(base);
      std::swap(r.source_v4, r.destination_v4);
      std::swap(r.source_v6, r.destination_v6);
      if (!is_icmp(r.protocol)) std::swap(r.source_port, r.destination_port);
      r.packets = resp_pkts;
      r.octets = resp_bytes;
      r.tcp_flags = resp.tcp_flags;
      r.reverse_tcp_flags = 0;
    }
  } catch (const kj::Exception&) {
    ++malformed_;  // a record capnp cannot traverse: verify names it; the export skips it
  }
}

void IpfixMapper::commit() {
  recent_.commit();
  undo_.clear();
}

void IpfixMapper::rollback() {
  for (auto it = undo_.rbegin(); it != undo_.rend(); ++it) {
    if (it->second) {
      sent_[it->first] = *it->second;
    } else {
      sent_.erase(it->first);
    }
  }
  undo_.clear();
  recent_.rollback();
}

std::string IpfixMapper::save() const {
  std::string text;
  text.reserve(sent_.size() * 64);
  for (const auto& [uid, s] : sent_) {
    text += fmt::format("flow {} {} {} {} {} {}\n", uid, s.orig_pkts, s.orig_bytes, s.resp_pkts,
                        s.resp_bytes, s.last_ms);
  }
  return text;
}

bool IpfixMapper::load(std::string_view text, std::string& why) {
  sent_.clear();
  std::istringstream in{std::string(text)};
  std::string line;
  std::size_t number = 0;
  while (std::getline(in, line)) {
    ++number;
    if (line.empty()) continue;
    std::istringstream fields(line);
    std::string word;
    std::uint64_t uid = 0;
    Sent s;
    std::string extra;
    if (!(fields >> word >> uid >> s.orig_pkts >> s.orig_bytes >> s.resp_pkts >> s.resp_bytes >>
          s.last_ms) ||
        word != "flow" || (fields >> extra) || sent_.size() >= kMaxTrackedFlows) {
      why = fmt::format("line {}: not 'flow UID OP OB RP RB LAST'", number);
      sent_.clear();
      return false;
    }
    sent_[uid] = s;
  }
  return true;
}

}  // namespace flowseal::shipd
