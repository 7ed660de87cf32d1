#include "record/direction.h"

#include <string>

#include <capnp/dynamic.h>
#include <capnp/schema.h>

namespace flowseal::record {
namespace {

// The format-2 fields, named "legacy" + "Orig"/"Resp" + one of these: the two sides are found
// by name (Cap'n Proto's reflection), so neither is spelled out.
enum LegacyField {
  kPkts,
  kIpBytes,
  kBytes,
  kTcpFlags,
  kSizeMin,
  kSizeMax,
  kSizeSumSq,
  kIatMinUs,
  kIatMaxUs,
  kIatSumUs,
  kIatSumSqUs,
  kRexmits,
  kLegacyFieldCount
};
constexpr std::array<const char*, kLegacyFieldCount> kLegacySuffix = {
    "Pkts",      "IpBytes",  "Bytes",    "TcpFlags", "SizeMin",    "SizeMax",
    "SizeSumSq", "IatMinUs", "IatMaxUs", "IatSumUs", "IatSumSqUs", "Rexmits"};

using LegacyFields = std::array<capnp::StructSchema::Field, kLegacyFieldCount>;

const LegacyFields& legacy_fields(Side side) {
  static const std::array<LegacyFields, 2> fields = [] {
    std::array<LegacyFields, 2> out;
    const auto flow_event = capnp::Schema::from<schema::FlowEvent>();
    for (const Side s : kSides) {
      const std::string prefix = s == Side::kOrig ? "legacyOrig" : "legacyResp";
      for (std::size_t i = 0; i < kLegacyFieldCount; ++i) {
        out[index_of(s)][i] = flow_event.getFieldByName(prefix + kLegacySuffix[i]);
      }
    }
    return out;
  }();
  return fields[index_of(side)];
}

}  // namespace

DirectionStats DirectionStats::read(schema::Direction::Reader in) {
  return {in.getPkts(),     in.getIpBytes(),  in.getBytes(),      in.getTcpFlags(),
          in.getSizeMin(),  in.getSizeMax(),  in.getSizeSumSq(),  in.getIatMinUs(),
          in.getIatMaxUs(), in.getIatSumUs(), in.getIatSumSqUs(), in.getRexmits(),
          in.getLocal()};
}

void DirectionStats::write(schema::Direction::Builder out) const {
  out.setPkts(pkts);
  out.setIpBytes(ip_bytes);
  out.setBytes(bytes);
  out.setTcpFlags(tcp_flags);
  out.setSizeMin(size_min);
  out.setSizeMax(size_max);
  out.setSizeSumSq(size_sumsq);
  out.setIatMinUs(iat_min_us);
  out.setIatMaxUs(iat_max_us);
  out.setIatSumUs(iat_sum_us);
  out.setIatSumSqUs(iat_sumsq_us);
  out.setRexmits(rexmits);
  out.setLocal(local);
}

bool has_direction_structs(schema::FlowEvent::Reader event) {
  return event.hasOrig() || event.hasResp();
}

DirectionStats direction(schema::FlowEvent::Reader event, Side side) {
  if (has_direction_structs(event)) {
    return DirectionStats::read(side == Side::kOrig ? event.getOrig() : event.getResp());
  }
  const auto in = capnp::toDynamic(event);
  const LegacyFields& f = legacy_fields(side);
  const auto u64 = [&](LegacyField i) { return in.get(f[i]).as<std::uint64_t>(); };
  const auto u32 = [&](LegacyField i) { return in.get(f[i]).as<std::uint32_t>(); };
  return {u64(kPkts),
          u64(kIpBytes),
          u64(kBytes),
          in.get(f[kTcpFlags]).as<std::uint8_t>(),
          u32(kSizeMin),
          u32(kSizeMax),
          u64(kSizeSumSq),
          u64(kIatMinUs),
          u64(kIatMaxUs),
          u64(kIatSumUs),
          in.get(f[kIatSumSqUs]).as<double>(),
          u32(kRexmits),
          schema::Locality::UNKNOWN};
}

void set_direction(schema::FlowEvent::Builder event, Side side, const DirectionStats& stats) {
  stats.write(side == Side::kOrig ? event.initOrig() : event.initResp());
}

void set_legacy_direction(schema::FlowEvent::Builder event, Side side,
                          const DirectionStats& stats) {
  auto out = capnp::toDynamic(event);
  const LegacyFields& f = legacy_fields(side);
  out.set(f[kPkts], stats.pkts);
  out.set(f[kIpBytes], stats.ip_bytes);
  out.set(f[kBytes], stats.bytes);
  out.set(f[kTcpFlags], stats.tcp_flags);
  out.set(f[kSizeMin], stats.size_min);
  out.set(f[kSizeMax], stats.size_max);
  out.set(f[kSizeSumSq], stats.size_sumsq);
  out.set(f[kIatMinUs], stats.iat_min_us);
  out.set(f[kIatMaxUs], stats.iat_max_us);
  out.set(f[kIatSumUs], stats.iat_sum_us);
  out.set(f[kIatSumSqUs], stats.iat_sumsq_us);
  out.set(f[kRexmits], stats.rexmits);
}

}  // namespace flowseal::record
