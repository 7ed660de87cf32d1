// Sealing throughput: records/s through BatchSealer (canonical encoding, RFC 6962 leaf hash,
// Merkle root, one Ed25519 signature per batch) on one core, and the verifier's rate.
// Target: >= 1,000,000 records/s sealed with 1024-record batches.
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>
#include <capnp/message.h>
#include <capnp/serialize.h>

#include "batch_sealer.h"
#include "bench_records.h"
#include "flowseal.capnp.h"
#include "seal/chain_verifier.h"
#include "seal/keys.h"

namespace {

namespace fs = std::filesystem;
using namespace flowseal;
using bench::fill;
using bench::Key;

void BM_SealRecords(benchmark::State& state) {
  const auto batch = static_cast<std::size_t>(state.range(0));
  Key key;
  capnp::MallocMessageBuilder input;
  auto events = input.initRoot<schema::FlowEventBatch>().initEvents(static_cast<unsigned>(batch));
  for (std::size_t i = 0; i < batch; ++i) fill(events[static_cast<unsigned>(i)], i);
  signerd::BatchSealer sealer(*key.key, {}, 0, {});
  std::vector<capnp::word> first_segment(batch * 32 + 1024);
  for (auto _ : state) {
    for (auto e : events.asReader()) sealer.add(e);
    capnp::MallocMessageBuilder out(kj::arrayPtr(first_segment.data(), first_segment.size()));
    sealer.seal(out);
    benchmark::DoNotOptimize(out.getSegmentsForOutput().size());
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * batch));
  state.counters["records/s"] = benchmark::Counter(static_cast<double>(state.iterations() * batch),
                                                   benchmark::Counter::kIsRate);
}
BENCHMARK(BM_SealRecords)->Arg(64)->Arg(1024)->Arg(4096)->Unit(benchmark::kMicrosecond);

void BM_VerifyRecords(benchmark::State& state) {
  const auto batch = static_cast<std::size_t>(state.range(0));
  Key key;
  capnp::MallocMessageBuilder input;
  auto events = input.initRoot<schema::FlowEventBatch>().initEvents(static_cast<unsigned>(batch));
  for (std::size_t i = 0; i < batch; ++i) fill(events[static_cast<unsigned>(i)], i);
  signerd::BatchSealer sealer(*key.key, {}, 0, {});
  for (auto e : events.asReader()) sealer.add(e);
  capnp::MallocMessageBuilder sealed;
  sealer.seal(sealed);
  const kj::Array<capnp::word> flat = capnp::messageToFlatArray(sealed);
  for (auto _ : state) {
    std::map<seal::Digest, seal::PublicKey> keys;
    keys.emplace(key.key->key_id(), seal::PublicKey::from_der(key.key->public_der()));
    seal::ChainVerifier verifier(std::move(keys));
    capnp::FlatArrayMessageReader reader(flat);
    benchmark::DoNotOptimize(verifier.check(reader.getRoot<schema::SealedBatch>()));
  }
  state.counters["records/s"] = benchmark::Counter(static_cast<double>(state.iterations() * batch),
                                                   benchmark::Counter::kIsRate);
}
BENCHMARK(BM_VerifyRecords)->Arg(1024)->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
