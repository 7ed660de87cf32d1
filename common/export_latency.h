// Export latency: how long after a flow ended its end record got somewhere.
//
// A flow ends at a packet or a timer: flowd emits the end once the flow has been idle (or
// closed and lingering) for its timeout, so the moment the end was due is the record's last
// packet time plus that timeout. Two stages measure (now - due) for every end record:
// flowd when it has published the record to its output ring (flowd's figure: its
// expiry tick and its batching), writerd when it has stored it (the whole path: also the
// rings, dedupd, sealing and the write, durable when writer.fsync is "batch"). Packet time
// is wall time only on a live capture, so the figure means something only there; evictions
// and shutdown ends have no natural due time and are left out.
//
// The histogram has 16 sub-buckets per power of two of microseconds, so a percentile is
// within 1/16 (6 %) of the true value, in constant memory and with no allocation per record.
// Not thread-safe; one per stage.
#pragma once

#include <array>
#include <cstdint>
#include <string>

#include "config.h"
#include "flowseal.capnp.h"

namespace flowseal {

class ExportLatency {
 public:
  explicit ExportLatency(const FlowdConfig& timeouts) : timeouts_(timeouts) {}

  // Accounts `record` if it is a flow end with a due time, stored at `stored_ns` (realtime).
  void add(schema::FlowEvent::Reader record, std::int64_t stored_ns);
  // When `record`'s end was due (realtime ns), or -1 if it is not an end with a due time.
  std::int64_t due_ns(schema::FlowEvent::Reader record) const;
  // Accounts one latency directly (negative: clock skew, counted as zero).
  void add_latency_ns(std::int64_t latency_ns);

  std::uint64_t count() const { return count_; }
  std::uint64_t sum_us() const { return sum_us_; }
  // Upper bounds (s) of the coarse cumulative histogram the supervisor exports to
  // Prometheus; coarse_at_most(i): ends whose latency was at most kCoarseBoundsS[i] (exact,
  // counted as they come, not read from the 6 % buckets).
  // Seven: they fill writerd's slot after its record counters (common/control_block.h).
  static constexpr std::array<double, 7> kCoarseBoundsS = {0.005, 0.025, 0.1, 0.5, 2.5, 10, 60};
  std::uint64_t coarse_at_most(std::size_t i) const { return coarse_[i]; }
  // The latency (ns, the upper edge of its bucket) below which `fraction` of the ends fall.
  std::int64_t percentile_ns(double fraction) const;
  // "p50 1.2 ms, p99 8.0 ms, p99.9 15 ms, max 21 ms over 1234 flow ends", or "" if none.
  std::string describe() const;
  // The non-empty buckets as "upper_us:count ..." in rising order (for a CDF plot).
  std::string histogram() const;

 private:
  static constexpr std::size_t kSubBuckets = 16;
  static constexpr std::size_t kBuckets = kSubBuckets * 44;  // up to 2^44 us (~200 days)
  static std::size_t bucket_of(std::uint64_t us);
  static std::uint64_t upper_us(std::size_t bucket);

  FlowdConfig timeouts_;
  std::array<std::uint64_t, kBuckets> buckets_{};
  std::uint64_t count_ = 0;
  std::uint64_t sum_us_ = 0;
  std::array<std::uint64_t, kCoarseBoundsS.size()> coarse_{};
  std::int64_t max_ns_ = 0;
};

}  // namespace flowseal
