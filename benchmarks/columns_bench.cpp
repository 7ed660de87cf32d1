// The columnar batch encoding (common/segment/columns.h): records/s that writerd encodes
// (columns, then zstd -3 as SegmentWriter does) and that `cat`/`verify` decode, one core,
// 1024-record batches of flowd-shaped records whose uid and Community ID are derivable.
#include <cstring>
#include <random>
#include <vector>

#include <benchmark/benchmark.h>
#include <capnp/message.h>
#include <capnp/serialize.h>
#include <openssl/evp.h>
#include <zstd.h>

#include "flowseal.capnp.h"
#include "packet/flow_id.h"
#include "segment/columns.h"

namespace {

using namespace flowseal;

std::vector<capnp::word> sealed_batch(std::size_t records) {
  EVP_MD* sha1 = EVP_MD_fetch(nullptr, "SHA1", nullptr);
  std::mt19937_64 rng(1);
  capnp::MallocMessageBuilder message;
  auto batch = message.initRoot<schema::SealedBatch>();
  auto header = batch.initHeader();
  const std::uint8_t id[32] = {1, 2, 3};
  header.setStreamId({id, 16});
  header.setPrevRoot({id, 32});
  header.setMerkleRoot({id, 32});
  header.setKeyId({id, 32});
  header.setRecordCount(static_cast<std::uint32_t>(records));
  batch.setSignature({id, 32});
  auto list = batch.initRecords(static_cast<unsigned>(records));
  std::int64_t t = 1'700'000'000'000'000'000;
  for (auto e : list) {
    t += static_cast<std::int64_t>(rng() % 5000) * 1000;
    const std::uint8_t orig[4] = {10, 0, 0, static_cast<std::uint8_t>(rng() % 16)};
    const std::uint8_t resp[4] = {192, 168, 1, static_cast<std::uint8_t>(rng() % 64)};
    const auto orig_port = static_cast<std::uint16_t>(32768 + rng() % 28000);
    const std::uint16_t resp_port = rng() % 2 ? 443 : 53;
    const std::uint8_t proto = resp_port == 443 ? 6 : 17;
    packet::FlowKey key;
    std::memcpy(key.src.data(), orig, 4);
    std::memcpy(key.dst.data(), resp, 4);
    key.src_port = orig_port;
    key.dst_port = resp_port;
    key.proto = proto;
    key.ip_version = 4;
    const std::uint64_t uid = packet::flow_uid(packet::symmetric_hash64(key), t, 0);
    e.setUid(uid);
    e.setKind(rng() % 2 ? schema::EventKind::END : schema::EventKind::START);
    e.setEventNumber(e.getKind() == schema::EventKind::END ? 1 : 0);
    e.setProto(proto);
    e.setOrigAddr({orig, 4});
    e.setRespAddr({resp, 4});
    e.setOrigPort(orig_port);
    e.setRespPort(resp_port);
    e.setFirstTsNs(t);
    e.setLastTsNs(t + static_cast<std::int64_t>(rng() % 100000) * 1000);
    e.getOrig().setPkts(1 + rng() % 20);
    e.getOrig().setBytes(rng() % 3000);
    e.getOrig().setIpBytes(e.getOrig().getBytes() + 40 * e.getOrig().getPkts());
    e.getResp().setPkts(rng() % 20);
    e.getResp().setBytes(rng() % 30000);
    e.getResp().setIpBytes(e.getResp().getBytes() + 40 * e.getResp().getPkts());
    e.getOrig().setTcpFlags(0x1b);
    e.getResp().setTcpFlags(0x1b);
    e.setConnState(proto == 6 ? "SF" : "S0");
    e.setHistory(proto == 6 ? "ShADadFf" : "D");
    const packet::CommunityIdText cid =
        packet::community_id(sha1, 0, proto, {orig, 4}, {resp, 4}, orig_port, resp_port);
    e.setCommunityId({cid.chars.data(), cid.size});
    e.setFirstUid(uid);
    e.setLastUid(uid);
  }
  EVP_MD_free(sha1);
  const auto flat = capnp::messageToFlatArray(message);
  return {flat.begin(), flat.end()};
}

std::span<const std::byte> as_bytes(const std::vector<capnp::word>& words) {
  return {reinterpret_cast<const std::byte*>(words.data()), words.size() * sizeof(capnp::word)};
}

void BM_EncodeColumns(benchmark::State& state) {
  const auto message = sealed_batch(1024);
  segment::BatchCodec codec;
  std::vector<std::uint8_t> stored;
  for (auto _ : state) {
    codec.encode(as_bytes(message), stored);
    benchmark::DoNotOptimize(stored.data());
  }
  state.counters["records/s"] = benchmark::Counter(static_cast<double>(state.iterations() * 1024),
                                                   benchmark::Counter::kIsRate);
  state.counters["stored B/record"] = static_cast<double>(stored.size()) / 1024;
}
BENCHMARK(BM_EncodeColumns)->Unit(benchmark::kMicrosecond);

void BM_EncodeColumnsZstd3(benchmark::State& state) {
  const auto message = sealed_batch(1024);
  segment::BatchCodec codec;
  std::vector<std::uint8_t> stored, compressed;
  ZSTD_CCtx* cctx = ZSTD_createCCtx();
  std::size_t n = 0;
  for (auto _ : state) {
    codec.encode(as_bytes(message), stored);
    compressed.resize(ZSTD_compressBound(stored.size()));
    n = ZSTD_compressCCtx(cctx, compressed.data(), compressed.size(), stored.data(), stored.size(),
                          3);
    benchmark::DoNotOptimize(n);
  }
  ZSTD_freeCCtx(cctx);
  state.counters["records/s"] = benchmark::Counter(static_cast<double>(state.iterations() * 1024),
                                                   benchmark::Counter::kIsRate);
  state.counters["zstd B/record"] = static_cast<double>(n) / 1024;
}
BENCHMARK(BM_EncodeColumnsZstd3)->Unit(benchmark::kMicrosecond);

void BM_DecodeColumns(benchmark::State& state) {
  const auto message = sealed_batch(1024);
  segment::BatchCodec codec;
  std::vector<std::uint8_t> stored;
  codec.encode(as_bytes(message), stored);
  std::vector<std::uint64_t> out;
  std::size_t bytes = 0;
  for (auto _ : state) {
    if (codec.decode(stored, 1024, out, bytes)) state.SkipWithError("decode failed");
    benchmark::DoNotOptimize(out.data());
  }
  state.counters["records/s"] = benchmark::Counter(static_cast<double>(state.iterations() * 1024),
                                                   benchmark::Counter::kIsRate);
}
BENCHMARK(BM_DecodeColumns)->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
