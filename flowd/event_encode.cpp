#include "event_encode.h"

#include <algorithm>

#include <capnp/blob.h>

namespace flowseal::flowd {
namespace {

capnp::Data::Reader address(const std::array<std::uint8_t, 16>& addr, std::uint8_t ip_version) {
  return {addr.data(), ip_version == 4 ? std::size_t{4} : std::size_t{16}};
}

template <std::size_t N>
capnp::Text::Reader text(const FixedText<N>& s) {
  return {s.c_str(), s.size};
}

}  // namespace

std::size_t event_batch_words(std::span<const FlowEventData> events) {
  using Event = schema::FlowEvent::_capnpPrivate;
  using Side = schema::Direction::_capnpPrivate;
  constexpr std::size_t kFixed =
      Event::dataWordSize + Event::pointerCount + 2 * (Side::dataWordSize + Side::pointerCount);
  auto text_words = [](std::size_t size) { return (size + 1 + 7) / 8; };  // NUL included
  // Root pointer, FlowEventBatch struct, list pointer's tag word.
  std::size_t words = 1 + schema::FlowEventBatch::_capnpPrivate::dataWordSize +
                      schema::FlowEventBatch::_capnpPrivate::pointerCount + 1;
  for (const FlowEventData& e : events) {
    words += kFixed + (e.ip_version == 4 ? 2 : 4) + text_words(e.conn_state.size) +
             text_words(e.history.size) + text_words(e.community_id.size) +
             static_cast<std::size_t>(std::count_if(
                 e.tunnel_parents.begin(), e.tunnel_parents.end(), [](auto u) { return u != 0; }));
  }
  return words;
}

void encode(const FlowEventData& e, schema::FlowEvent::Builder out) {
  out.setUid(e.uid);
  out.setKind(e.kind);
  out.setEventNumber(e.event_number);
  out.setEndReason(e.end_reason);
  out.setSamplingRate(e.sampling_rate);
  out.setProto(e.proto);
  out.setOrigAddr(address(e.orig_addr, e.ip_version));
  out.setRespAddr(address(e.resp_addr, e.ip_version));
  out.setOrigPort(e.orig_port);
  out.setRespPort(e.resp_port);
  out.setVlan(e.vlan);
  out.setFirstTsNs(e.first_ts_ns);
  out.setLastTsNs(e.last_ts_ns);
  out.setConnState(text(e.conn_state));
  out.setHistory(text(e.history));
  out.setCommunityId(text(e.community_id));
  out.setFlowCount(e.flow_count);
  out.setFirstUid(e.first_uid);
  out.setLastUid(e.last_uid);
  record::set_direction(out, record::Side::kOrig, e.orig);
  record::set_direction(out, record::Side::kResp, e.resp);
  out.setMissedBytes(e.missed_bytes);
  const auto parents = static_cast<unsigned>(std::count_if(
      e.tunnel_parents.begin(), e.tunnel_parents.end(), [](auto u) { return u != 0; }));
  if (parents > 0) {  // null, not an empty list, when there is none
    auto list = out.initTunnelParents(parents);
    for (unsigned i = 0; i < parents; ++i) list.set(i, e.tunnel_parents[i]);
  }
}

}  // namespace flowseal::flowd
