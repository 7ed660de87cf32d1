// Sealing throughput: records/s through BatchSealer (canonical encoding, RFC 6962 leaf hash,
// Merkle root, one Ed25519 signature per batch) on one core, and the verifier's rate.
// Target (issue 5): >= 1,000,000 records/s sealed with 1024-record batches.
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>
#include <capnp/message.h>
#include <capnp/serialize.h>

#include "batch_sealer.h"
#include "flowseal.capnp.h"
#include "seal/chain_verifier.h"
#include "seal/keys.h"

namespace {

namespace fs = std::filesystem;
using namespace flowseal;

// Records shaped like flowd's: addresses, ports, counters, Zeek state text, Community ID.
void fill(schema::FlowEvent::Builder e, std::uint64_t i) {
  e.setUid(i * 0x9E3779B97F4A7C15ull);
  e.setKind(schema::EventKind::END);
  e.setEventNumber(1);
  e.setEndReason(schema::EndReason::FIN);
  e.setProto(6);
  const std::uint8_t orig[4] = {10, 0, static_cast<std::uint8_t>(i >> 8), static_cast<std::uint8_t>(i)};
  const std::uint8_t resp[4] = {192, 168, 1, static_cast<std::uint8_t>(i % 7)};
  e.setOrigAddr({orig, 4});
  e.setRespAddr({resp, 4});
  e.setOrigPort(static_cast<std::uint16_t>(30000 + i % 30000));
  e.setRespPort(443);
  e.setFirstTsNs(1'700'000'000'000'000'000 + static_cast<std::int64_t>(i) * 1'000'000);
  e.setLastTsNs(1'700'000'000'000'000'000 + static_cast<std::int64_t>(i) * 1'000'000 + 250'000'000);
  e.setOrigPkts(12 + i % 5);
  e.setOrigIpBytes(1400 + i % 300);
  e.setOrigBytes(800 + i % 300);
  e.setRespPkts(10 + i % 3);
  e.setRespIpBytes(9000 + i % 900);
  e.setRespBytes(8000 + i % 900);
  e.setOrigTcpFlags(0x1b);
  e.setRespTcpFlags(0x1b);
  e.setConnState("SF");
  e.setHistory("ShADadFf");
  e.setCommunityId("1:LQU9qZlK+B5F3KDmev6m5PMibrg=");
}

struct Key {
  fs::path dir;
  std::unique_ptr<seal::PrivateKey> key;
  Key() {
    std::string pattern = (fs::temp_directory_path() / "seal-bench.XXXXXX").string();
    if (::mkdtemp(pattern.data()) == nullptr) std::abort();
    dir = pattern;
    seal::generate_key_pair(seal::Algorithm::kEd25519, dir / "k.key", dir / "k.pub");
    key = std::make_unique<seal::PrivateKey>(seal::PrivateKey::load(dir / "k.key"));
  }
  ~Key() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
};

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
  state.counters["records/s"] = benchmark::Counter(
      static_cast<double>(state.iterations() * batch), benchmark::Counter::kIsRate);
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
  state.counters["records/s"] = benchmark::Counter(
      static_cast<double>(state.iterations() * batch), benchmark::Counter::kIsRate);
}
BENCHMARK(BM_VerifyRecords)->Arg(1024)->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
