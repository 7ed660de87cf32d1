#include "export_latency.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <string_view>

#include <fmt/format.h>

namespace flowseal {
namespace {

constexpr std::uint8_t kProtoTcp = 6, kProtoUdp = 17, kProtoIcmp = 1, kProtoIcmpv6 = 58;

std::int64_t seconds_to_ns(double s) { return static_cast<std::int64_t>(s * 1e9); }

std::string milliseconds(std::int64_t ns) {
  const double ms = static_cast<double>(ns) / 1e6;
  return ms < 10 ? fmt::format("{:.2f} ms", ms) : fmt::format("{:.0f} ms", ms);
}

// flowd's attempt timer class (flowd/flow_table.cpp is_attempt): the originator opened with
// a SYN (history S, or H for its SYN-ACK) and the responder sent nothing. Every other open
// TCP flow, one-sided or not, waits for the established timeout, as in Zeek.
bool is_attempt(schema::FlowEvent::Reader r) {
  if (r.getResp().getPkts() != 0) return false;
  const std::string_view history = r.getHistory().cStr();
  return history.find_first_of("SH") != std::string_view::npos;
}

}  // namespace

// Buckets 0..15 hold 0..15 us exactly; above, each power of two [2^e, 2^(e+1)) is cut into
// 16 equal parts.
std::size_t ExportLatency::bucket_of(std::uint64_t us) {
  if (us < kSubBuckets) return static_cast<std::size_t>(us);
  const int e = std::bit_width(us) - 1;  // >= 4
  const std::size_t sub = static_cast<std::size_t>((us >> (e - 4)) & (kSubBuckets - 1));
  return std::min(kSubBuckets + static_cast<std::size_t>(e - 4) * kSubBuckets + sub, kBuckets - 1);
}

std::uint64_t ExportLatency::upper_us(std::size_t bucket) {
  if (bucket < kSubBuckets) return bucket;
  const std::size_t e = (bucket - kSubBuckets) / kSubBuckets + 4;
  const std::uint64_t sub = (bucket - kSubBuckets) % kSubBuckets;
  return ((kSubBuckets + sub + 1) << (e - 4)) - 1;
}

std::int64_t ExportLatency::due_ns(schema::FlowEvent::Reader r) const {
  if (r.getKind() != schema::EventKind::END) return -1;
  double timeout = 0;
  switch (r.getEndReason()) {
    case schema::EndReason::FIN:
    case schema::EndReason::RST: timeout = timeouts_.tcp_closed_timeout; break;
    case schema::EndReason::IDLE:
      switch (r.getProto()) {
        case kProtoTcp:
          timeout = is_attempt(r) ? timeouts_.tcp_attempt_timeout : timeouts_.tcp_idle_timeout;
          break;
        case kProtoUdp: timeout = timeouts_.udp_idle_timeout; break;
        case kProtoIcmp:
        case kProtoIcmpv6: timeout = timeouts_.icmp_idle_timeout; break;
        default: timeout = timeouts_.other_idle_timeout; break;
      }
      break;
    default: return -1;  // eviction, shutdown: no natural due time
  }
  return r.getLastTsNs() + seconds_to_ns(timeout);
}

void ExportLatency::add(schema::FlowEvent::Reader record, std::int64_t stored_ns) {
  const std::int64_t due = due_ns(record);
  if (due < 0) return;
  add_latency_ns(stored_ns - due);
}

void ExportLatency::add_latency_ns(std::int64_t latency_ns) {
  const std::int64_t ns = std::max<std::int64_t>(latency_ns, 0);
  ++buckets_[bucket_of(static_cast<std::uint64_t>(ns) / 1000)];
  ++count_;
  sum_us_ += static_cast<std::uint64_t>(ns) / 1000;
  for (std::size_t i = 0; i < kCoarseBoundsS.size(); ++i) {
    if (double(ns) <= kCoarseBoundsS[i] * 1e9) ++coarse_[i];
  }
  max_ns_ = std::max(max_ns_, ns);
}

std::int64_t ExportLatency::percentile_ns(double fraction) const {
  if (count_ == 0) return 0;
  const auto rank = static_cast<std::uint64_t>(std::ceil(fraction * static_cast<double>(count_)));
  std::uint64_t seen = 0;
  for (std::size_t b = 0; b < kBuckets; ++b) {
    seen += buckets_[b];
    if (seen >= std::max<std::uint64_t>(rank, 1)) {
      return std::min(static_cast<std::int64_t>(upper_us(b)) * 1000 + 999, max_ns_);
    }
  }
  return max_ns_;
}

std::string ExportLatency::describe() const {
  if (count_ == 0) return "";
  return fmt::format("p50 {}, p99 {}, p99.9 {}, max {} over {} flow ends",
                     milliseconds(percentile_ns(0.5)), milliseconds(percentile_ns(0.99)),
                     milliseconds(percentile_ns(0.999)), milliseconds(max_ns_), count_);
}

std::string ExportLatency::histogram() const {
  std::string out;
  for (std::size_t b = 0; b < kBuckets; ++b) {
    if (buckets_[b] == 0) continue;
    if (!out.empty()) out += ' ';
    out += fmt::format("{}:{}", upper_us(b), buckets_[b]);
  }
  return out;
}

}  // namespace flowseal
