#include "export_latency.h"

#include <sstream>

#include <capnp/message.h>
#include <catch2/catch.hpp>

namespace {

using namespace flowseal;
using flowseal::ExportLatency;

constexpr std::int64_t kMs = 1'000'000;
constexpr std::int64_t kSec = 1'000'000'000;

struct Record {
  capnp::MallocMessageBuilder message;
  schema::FlowEvent::Builder e = message.initRoot<schema::FlowEvent>();
  Record(schema::EventKind kind, schema::EndReason reason, std::uint8_t proto, std::int64_t last_ts,
         std::uint64_t resp_pkts = 1) {
    e.setKind(kind);
    e.setEndReason(reason);
    e.setProto(proto);
    e.setLastTsNs(last_ts);
    e.getOrig().setPkts(1);
    e.getResp().setPkts(resp_pkts);
  }
};

}  // namespace

TEST_CASE("an end's latency counts from its last packet plus the timeout that ended it") {
  FlowdConfig timeouts;  // defaults: closed linger 5 s, UDP 60 s, TCP attempt 5 s
  ExportLatency latency(timeouts);
  const std::int64_t t = 1'700'000'000 * kSec;
  Record fin(schema::EventKind::END, schema::EndReason::FIN, 6, t);
  latency.add(fin.e.asReader(), t + 5 * kSec + 3 * kMs);
  REQUIRE(latency.count() == 1);
  CHECK(latency.percentile_ns(0.5) >= 3 * kMs);
  CHECK(latency.percentile_ns(0.5) <= 3 * kMs + 3 * kMs / 16);

  Record udp(schema::EventKind::END, schema::EndReason::IDLE, 17, t);
  latency.add(udp.e.asReader(), t + 60 * kSec + 40 * kMs);
  Record attempt(schema::EventKind::END, schema::EndReason::IDLE, 6, t, 0);
  attempt.e.setHistory("S");
  latency.add(attempt.e.asReader(), t + 5 * kSec + 20 * kMs);
  REQUIRE(latency.count() == 3);
  CHECK(latency.percentile_ns(1.0) == 40 * kMs);  // the maximum, exactly
  CHECK(latency.percentile_ns(0.6) >= 20 * kMs);
  CHECK(latency.percentile_ns(0.6) < 40 * kMs);
}

TEST_CASE("a one-sided TCP flow that is no attempt waits for the established timeout") {
  // flowd gives a flow seen from one side without a SYN (mid-stream pickup, asymmetric
  // routing) the established timeout, as Zeek does; its due time is not 5 s after it.
  FlowdConfig timeouts;  // TCP established idle 300 s
  ExportLatency latency(timeouts);
  const std::int64_t t = 1'700'000'000 * kSec;
  Record midstream(schema::EventKind::END, schema::EndReason::IDLE, 6, t, 0);
  midstream.e.setHistory("D");
  CHECK(latency.due_ns(midstream.e.asReader()) == t + 300 * kSec);
  Record attempt(schema::EventKind::END, schema::EndReason::IDLE, 6, t, 0);
  attempt.e.setHistory("S");
  CHECK(latency.due_ns(attempt.e.asReader()) == t + 5 * kSec);
}

TEST_CASE("starts, updates, evictions and shutdown ends are not export latencies") {
  ExportLatency latency(FlowdConfig{});
  Record start(schema::EventKind::START, schema::EndReason::NONE, 6, 0);
  Record update(schema::EventKind::UPDATE, schema::EndReason::ACTIVE, 6, 0);
  Record evicted(schema::EventKind::END, schema::EndReason::EVICTION, 6, 0);
  Record shutdown(schema::EventKind::END, schema::EndReason::SHUTDOWN, 17, 0);
  for (auto* r : {&start, &update, &evicted, &shutdown}) latency.add(r->e.asReader(), kSec);
  CHECK(latency.count() == 0);
  CHECK(latency.describe().empty());
}

TEST_CASE("percentiles are within a sixteenth of the true value over the whole range") {
  ExportLatency latency(FlowdConfig{});
  std::vector<std::int64_t> values;
  for (std::int64_t us = 1; us < 100'000'000; us = us * 21 / 20 + 1) values.push_back(us * 1000);
  for (auto v : values) latency.add_latency_ns(v);
  for (double f : {0.1, 0.5, 0.9, 0.99, 0.999}) {
    const auto rank = static_cast<std::size_t>(std::ceil(f * static_cast<double>(values.size())));
    const std::int64_t truth = values[rank - 1];
    const std::int64_t got = latency.percentile_ns(f);
    CHECK(got >= truth);
    CHECK(static_cast<double>(got) <= static_cast<double>(truth) * (1 + 1.0 / 16) + 1000);
  }
  latency.add_latency_ns(-5 * kMs);  // a clock that stepped back counts as no delay
  CHECK(latency.histogram().substr(0, 4) == "0:1 ");  // it went to the zero bucket
  std::uint64_t total = 0;
  std::istringstream buckets(latency.histogram());
  for (std::string entry; buckets >> entry;)
    total += std::stoull(entry.substr(entry.find(':') + 1));
  CHECK(total == values.size() + 1);
  CHECK(latency.count() == values.size() + 1);
  CHECK(latency.describe().find("over " + std::to_string(values.size() + 1) + " flow ends") !=
        std::string::npos);
}
