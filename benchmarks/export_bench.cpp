// The record as the exports write it (common/record/record_json.h): the JSON line Kafka sends
// for every record (with its seal position) and the Zeek TSV row of `cat --tsv`, one core,
// flowd-shaped records with every per-direction figure set. Prints records/s.
#include <array>
#include <cstdint>
#include <vector>

#include <benchmark/benchmark.h>
#include <capnp/message.h>

#include "bench_records.h"
#include "flowseal.capnp.h"
#include "record/direction.h"
#include "record/record_json.h"

namespace {

using namespace flowseal;

constexpr unsigned kRecords = 1024;

// A batch's records as bench::fill makes them, plus the spread figures (sizes, inter-arrival
// times, retransmissions) a real flow has, so that every number of the line is written.
struct Records {
  capnp::MallocMessageBuilder message;
  capnp::List<schema::FlowEvent>::Reader list;
  Records() {
    auto records = message.initRoot<schema::SealedBatch>().initRecords(kRecords);
    for (unsigned i = 0; i < kRecords; ++i) {
      auto e = records[i];
      bench::fill(e, i);
      for (const record::Side side : record::kSides) {
        record::DirectionStats d = record::direction(e.asReader(), side);
        d.size_min = 40 + i % 20;
        d.size_max = 1500;
        d.size_sumsq = d.ip_bytes * 700;
        d.iat_min_us = 12 + i % 9;
        d.iat_max_us = 250'000 + i;
        d.iat_sum_us = 400'000 + 17ull * i;
        d.iat_sumsq_us = 1.3e11 + i;
        d.rexmits = i % 3;
        record::set_direction(e, side, d);
      }
    }
    list = message.getRoot<schema::SealedBatch>().asReader().getRecords();
  }
};

void BM_JsonLineSealed(benchmark::State& state) {
  const Records records;
  const std::array<std::uint8_t, 16> stream{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  std::size_t bytes = 0;
  for (auto _ : state) {
    for (unsigned i = 0; i < kRecords; ++i) {
      const std::string line = record::to_json_line(records.list[i], {stream, 7, i});
      bytes += line.size();
      benchmark::DoNotOptimize(line.data());
    }
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()) * kRecords);
  state.SetBytesProcessed(static_cast<std::int64_t>(bytes));
}
BENCHMARK(BM_JsonLineSealed);

void BM_TsvLine(benchmark::State& state) {
  const Records records;
  for (auto _ : state) {
    for (unsigned i = 0; i < kRecords; ++i) {
      const std::string line = record::to_tsv_line(records.list[i]);
      benchmark::DoNotOptimize(line.data());
    }
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()) * kRecords);
}
BENCHMARK(BM_TsvLine);

}  // namespace

BENCHMARK_MAIN();
