// dedupd's decision per record: DedupEngine::on_event over a stream shaped like the
// benchmark capture's: every flow a start and an end (the end 16 flows later), 70 % of the
// flows unique (they pass: held start released with the end), 30 % repeated short DNS
// flows from 8 clients to one resolver (folded into summaries after the first 3 per window).
// Packet time advances 100 us per flow. The engine's cap is the default budget's (~34 k
// entries). items/s = records in; records_out_share = what passed.
//
// The stream is built once (Cap'n Proto records, as they arrive from the ring); when the
// timed loop reaches its end it starts over with a fresh engine (outside the timing).
#include <memory>
#include <vector>

#include <benchmark/benchmark.h>
#include <capnp/message.h>

#include "dedup_engine.h"
#include "flowseal.capnp.h"

namespace {

using namespace flowseal;

struct CountingSink final : dedupd::DedupSink {
  std::uint64_t out = 0;
  void emit(schema::FlowEvent::Reader) override { ++out; }
};

constexpr unsigned kFlows = 65536;
constexpr unsigned kEndLag = 16;
constexpr std::int64_t kT0 = 1'700'000'000'000'000'000;
constexpr std::int64_t kFlowSpacingNs = 100'000;

void fill(schema::FlowEvent::Builder e, unsigned flow, bool end) {
  const bool repeated = flow % 10 < 3;
  e.setUid(0x1234567ull + flow * 0x9E3779B97F4A7C15ull);
  e.setKind(end ? schema::EventKind::END : schema::EventKind::START);
  e.setEventNumber(end ? 1 : 0);
  e.setEndReason(end ? (repeated ? schema::EndReason::IDLE : schema::EndReason::FIN)
                     : schema::EndReason::NONE);
  e.setProto(repeated ? 17 : 6);
  const std::uint8_t orig_unique[4] = {10, static_cast<std::uint8_t>(flow >> 16),
                                       static_cast<std::uint8_t>(flow >> 8),
                                       static_cast<std::uint8_t>(flow)};
  const std::uint8_t orig_repeat[4] = {10, 255, 0, static_cast<std::uint8_t>(flow % 8)};
  const std::uint8_t resp_unique[4] = {192, 168, 0, static_cast<std::uint8_t>(flow % 200)};
  const std::uint8_t resp_repeat[4] = {192, 168, 255, 53};
  e.setOrigAddr({repeated ? orig_repeat : orig_unique, 4});
  e.setRespAddr({repeated ? resp_repeat : resp_unique, 4});
  e.setOrigPort(static_cast<std::uint16_t>(20000 + flow % 40000));
  e.setRespPort(repeated ? 53 : 443);
  const std::int64_t first = kT0 + static_cast<std::int64_t>(flow) * kFlowSpacingNs;
  e.setFirstTsNs(first);
  e.setLastTsNs(end ? first + 1'000'000 : first);
  e.getOrig().setPkts(end ? (repeated ? 1 : 12) : 1);
  e.getOrig().setIpBytes(end ? (repeated ? 74 : 1400) : 60);
  e.getOrig().setBytes(end ? (repeated ? 46 : 800) : 0);
  e.getResp().setPkts(end ? (repeated ? 1 : 10) : 0);
  e.getResp().setIpBytes(end ? (repeated ? 120 : 9000) : 0);
  e.getResp().setBytes(end ? (repeated ? 92 : 8000) : 0);
  e.setConnState(end ? (repeated ? "SF" : "SF") : "S0");
  e.setHistory(end ? (repeated ? "Dd" : "ShADadFf") : (repeated ? "D" : "S"));
  e.setCommunityId("1:LQU9qZlK+B5F3KDmev6m5PMibrg=");
}

void BM_DedupDecision(benchmark::State& state) {
  capnp::MallocMessageBuilder stream;
  auto events = stream.initRoot<schema::FlowEventBatch>().initEvents(2 * kFlows);
  unsigned n = 0;
  for (unsigned f = 0; f < kFlows + kEndLag; ++f) {
    if (f < kFlows) fill(events[n++], f, false);
    if (f >= kEndLag) fill(events[n++], f - kEndLag, true);
  }
  const auto reader = events.asReader();
  dedupd::DedupOptions options;
  options.max_entries = 34'000;
  CountingSink sink;
  auto engine = std::make_unique<dedupd::DedupEngine>(options, sink);
  unsigned i = 0;
  std::uint64_t in = 0;
  for (auto _ : state) {
    engine->on_event(reader[i]);
    ++in;
    if (++i == reader.size()) {
      state.PauseTiming();
      engine->flush_all();
      engine = std::make_unique<dedupd::DedupEngine>(options, sink);
      i = 0;
      state.ResumeTiming();
    }
  }
  state.SetItemsProcessed(state.iterations());
  state.counters["records_out_share"] = static_cast<double>(sink.out) / static_cast<double>(in);
}
BENCHMARK(BM_DedupDecision);

}  // namespace

BENCHMARK_MAIN();
