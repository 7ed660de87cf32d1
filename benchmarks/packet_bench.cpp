// The packet edge, one packet at a time: decode() over real packets, and the PacketBatch
// message that carries them from capture to flowd (built by capture's PacketBatcher into a
// ring, read in place the way flowd reads it).
//
// Input: every capture in tests/data, read once with libpcap before timing starts (so the
// figures are decode and message costs, not file reading). items/s = packets.
#include <pcap/pcap.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>
#include <capnp/message.h>
#include <capnp/serialize.h>

#include "capnp_frame.h"
#include "flowseal.capnp.h"
#include "packet/decode.h"
#include "packet/flow_id.h"
#include "packet_batcher.h"
#include "ring.h"

namespace {

using namespace flowseal;
namespace fs = std::filesystem;

struct StoredPacket {
  std::vector<std::uint8_t> bytes;
  std::uint32_t wire_len = 0;
  std::int64_t ts_ns = 0;
  int link_type = 0;
};

// Every packet of every capture in tests/data, in file-name order.
const std::vector<StoredPacket>& test_packets() {
  static const std::vector<StoredPacket> packets = [] {
    std::vector<fs::path> files;
    for (const auto& entry : fs::directory_iterator(FLOWSEAL_BENCH_TEST_DATA)) {
      const auto ext = entry.path().extension();
      if (ext == ".pcap" || ext == ".pcapng") files.push_back(entry.path());
    }
    std::sort(files.begin(), files.end());
    std::vector<StoredPacket> out;
    char err[PCAP_ERRBUF_SIZE];
    for (const auto& file : files) {
      pcap_t* p =
          pcap_open_offline_with_tstamp_precision(file.c_str(), PCAP_TSTAMP_PRECISION_NANO, err);
      if (p == nullptr) continue;
      const int dlt = pcap_datalink(p);
      pcap_pkthdr* h = nullptr;
      const u_char* data = nullptr;
      while (pcap_next_ex(p, &h, &data) == 1) {
        out.push_back({{data, data + h->caplen},
                       h->len,
                       std::int64_t{h->ts.tv_sec} * 1'000'000'000 + h->ts.tv_usec,
                       dlt});
      }
      pcap_close(p);
    }
    if (out.empty()) std::abort();
    return out;
  }();
  return packets;
}

void BM_PacketDecode(benchmark::State& state) {
  const auto& packets = test_packets();
  packet::DecodedPacket decoded;
  std::size_t ok = 0;
  for (auto _ : state) {
    for (const auto& p : packets) {
      ok += packet::decode(p.link_type, p.bytes, p.wire_len, decoded) == packet::DecodeStatus::kOk;
      benchmark::DoNotOptimize(decoded.key);
    }
  }
  state.SetItemsProcessed(state.iterations() * static_cast<std::int64_t>(packets.size()));
  state.counters["packets"] = static_cast<double>(packets.size());
  state.counters["ok_share"] =
      static_cast<double>(ok) / static_cast<double>(state.iterations() * packets.size());
}
BENCHMARK(BM_PacketDecode);

// decode() plus the symmetric flow hash: what capture does per packet to choose the shard.
void BM_PacketDecodeHash(benchmark::State& state) {
  const auto& packets = test_packets();
  packet::DecodedPacket decoded;
  std::uint32_t sum = 0;
  for (auto _ : state) {
    for (const auto& p : packets) {
      if (packet::decode(p.link_type, p.bytes, p.wire_len, decoded) == packet::DecodeStatus::kOk)
        sum += packet::symmetric_hash(packet::flow_key(decoded.key));
    }
    benchmark::DoNotOptimize(sum);
  }
  state.SetItemsProcessed(state.iterations() * static_cast<std::int64_t>(packets.size()));
}
BENCHMARK(BM_PacketDecodeHash);

// A ring in private memory: the producer and the consumer are this one thread.
struct LocalRing {
  static constexpr std::size_t kCapacity = 4 << 20;
  explicit LocalRing()
      : bytes(ring_bytes(kCapacity)),
        memory(static_cast<std::byte*>(std::aligned_alloc(64, (bytes + 63) / 64 * 64))) {
    std::memset(memory.get(), 0, bytes);
    ring_format({memory.get(), bytes}, kCapacity);
  }
  std::span<std::byte> span() { return {memory.get(), bytes}; }
  struct Free {
    void operator()(std::byte* p) const { std::free(p); }
  };
  std::size_t bytes;
  std::unique_ptr<std::byte, Free> memory;
};

// capture's side: PacketBatcher::add per packet, flush() per batch into a ring (one Cap'n
// Proto message built in place). The frame is then skipped by a consumer in the same thread
// so that the ring never fills. Argument: packets per batch (capture's default is 256).
void BM_PacketBatchEncode(benchmark::State& state) {
  const auto& packets = test_packets();
  const auto batch_packets = static_cast<std::size_t>(state.range(0));
  LocalRing ring;
  RingProducer producer(ring.span());
  RingConsumer consumer(ring.span());
  capture::PacketBatcher batcher(1, batch_packets, 1 << 20);
  RingProducer* rings[] = {&producer};
  const auto never = [] { return false; };
  std::size_t i = 0;
  std::int64_t items = 0;
  for (auto _ : state) {
    bool full = false;
    while (!full) {
      const StoredPacket& p = packets[i];
      i = i + 1 == packets.size() ? 0 : i + 1;
      capture::Packet packet{p.bytes, p.wire_len, p.ts_ns, p.link_type, 0};
      full = batcher.add(0, packet, 0, 65535);
    }
    items += static_cast<std::int64_t>(batcher.pending_packets());
    if (!batcher.flush(rings, 1.0f, never)) state.SkipWithError("flush failed");
    while (consumer.next()) consumer.advance();
    consumer.commit();
  }
  state.SetItemsProcessed(items);
}
BENCHMARK(BM_PacketBatchEncode)->Arg(64)->Arg(256);

// flowd's side: open the frame in place (frame reader options), walk the index and take
// each packet's byte span, as flowd_stage does before decode().
void BM_PacketBatchDecode(benchmark::State& state) {
  const auto& packets = test_packets();
  const auto batch_packets = static_cast<std::size_t>(state.range(0));
  capnp::MallocMessageBuilder message;
  auto batch = message.initRoot<schema::PacketBatch>();
  std::size_t total = 0;
  for (std::size_t i = 0; i < batch_packets; ++i) total += packets[i % packets.size()].bytes.size();
  auto data = batch.initData(static_cast<unsigned>(total));
  auto index = batch.initIndex(static_cast<unsigned>(batch_packets));
  std::uint32_t offset = 0;
  for (unsigned i = 0; i < batch_packets; ++i) {
    const StoredPacket& p = packets[i % packets.size()];
    std::memcpy(data.begin() + offset, p.bytes.data(), p.bytes.size());
    auto ref = index[i];
    ref.setOffset(offset);
    ref.setCapLen(static_cast<std::uint32_t>(p.bytes.size()));
    ref.setWireLen(p.wire_len);
    ref.setTsNs(p.ts_ns);
    ref.setLinkType(static_cast<std::uint16_t>(p.link_type));
    offset += static_cast<std::uint32_t>(p.bytes.size());
  }
  const kj::Array<capnp::word> flat = capnp::messageToFlatArray(message);
  const std::span<const std::byte> frame(reinterpret_cast<const std::byte*>(flat.begin()),
                                         flat.size() * sizeof(capnp::word));
  std::uint64_t sum = 0;
  for (auto _ : state) {
    capnp::FlatArrayMessageReader reader(as_words(frame), frame_reader_options());
    auto b = reader.getRoot<schema::PacketBatch>();
    const auto bytes = b.getData();
    for (auto ref : b.getIndex()) {
      const std::uint64_t end = std::uint64_t{ref.getOffset()} + ref.getCapLen();
      if (end > bytes.size()) continue;
      sum += bytes[ref.getOffset()] + ref.getWireLen() + static_cast<std::uint64_t>(ref.getTsNs()) +
             ref.getLinkType();
    }
    benchmark::DoNotOptimize(sum);
  }
  state.SetItemsProcessed(state.iterations() * static_cast<std::int64_t>(batch_packets));
}
BENCHMARK(BM_PacketBatchDecode)->Arg(256);

// A flow's Community ID (flowd per new flow, writerd's column encoder per record): arg 0 the
// one-shot EVP_Digest (a context made and freed per call), 1 packet::Sha1's kept context.
void BM_CommunityId(benchmark::State& state) {
  packet::Sha1 sha1;
  if (!sha1.ok()) {
    state.SkipWithError("OpenSSL has no SHA-1");
    return;
  }
  const bool reused = state.range(0) == 1;
  std::uint8_t orig[4] = {10, 0, 0, 1}, resp[4] = {192, 168, 1, 7};
  std::uint16_t port = 1024;
  for (auto _ : state) {
    ++port;  // a new flow each time
    const packet::CommunityIdText id =
        reused ? packet::community_id(sha1, 0, packet::kProtoTcp, orig, resp, port, 443)
               : packet::community_id(sha1.md(), 0, packet::kProtoTcp, orig, resp, port, 443);
    benchmark::DoNotOptimize(id);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_CommunityId)->Arg(0)->Arg(1);

}  // namespace

BENCHMARK_MAIN();
