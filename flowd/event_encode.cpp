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
  out.setOrigPkts(e.orig_pkts);
  out.setOrigIpBytes(e.orig_ip_bytes);
  out.setOrigBytes(e.orig_bytes);
  out.setRespPkts(e.resp_pkts);
  out.setRespIpBytes(e.resp_ip_bytes);
  out.setRespBytes(e.resp_bytes);
  out.setOrigTcpFlags(e.orig_tcp_flags);
  out.setRespTcpFlags(e.resp_tcp_flags);
  out.setConnState(text(e.conn_state));
  out.setHistory(text(e.history));
  out.setCommunityId(text(e.community_id));
  out.setFlowCount(e.flow_count);
  out.setFirstUid(e.first_uid);
  out.setLastUid(e.last_uid);
  const auto& o = e.orig_spread;
  out.setOrigSizeMin(o.size_min);
  out.setOrigSizeMax(o.size_max);
  out.setOrigSizeSumSq(o.size_sumsq);
  out.setOrigIatMinUs(o.iat_min_us);
  out.setOrigIatMaxUs(o.iat_max_us);
  out.setOrigIatSumUs(o.iat_sum_us);
  out.setOrigIatSumSqUs(o.iat_sumsq_us);
  out.setOrigRexmits(o.rexmits);
  const auto& r = e.resp_spread;
  out.setRespSizeMin(r.size_min);
  out.setRespSizeMax(r.size_max);
  out.setRespSizeSumSq(r.size_sumsq);
  out.setRespIatMinUs(r.iat_min_us);
  out.setRespIatMaxUs(r.iat_max_us);
  out.setRespIatSumUs(r.iat_sum_us);
  out.setRespIatSumSqUs(r.iat_sumsq_us);
  out.setRespRexmits(r.rexmits);
  const auto parents = static_cast<unsigned>(
      std::count_if(e.tunnel_parents.begin(), e.tunnel_parents.end(), [](auto u) { return u != 0; }));
  if (parents > 0) {  // null, not an empty list, when there is none
    auto list = out.initTunnelParents(parents);
    for (unsigned i = 0; i < parents; ++i) list.set(i, e.tunnel_parents[i]);
  }
}

}  // namespace flowseal::flowd
