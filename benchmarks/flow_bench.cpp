// flowd's per-packet and per-record costs: the flow table updating flows that are already
// active (10 k and 1 M of them), and the FlowEvent encoding flowd writes / dedupd reads.
//
// Flow table: the table is filled with N UDP flows (one per source address), then every
// timed packet updates one of them, chosen in a scattered order so that a 1 M table is
// walked like real traffic walks it (cache misses on slots and buckets), with expire()
// every 256 packets as flowd calls it per batch. No flow ends during the run (packet time
// advances 1 us per packet, far from the 60 s UDP idle timeout). items/s = packets; the
// bytes_per_flow counter is the table's shared memory divided by its capacity.
// FlowTableUpdateJournaled does the same inside undo-journal steps of 256 packets, as flowd
// runs the table (every touched slot is saved once per step).
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include <benchmark/benchmark.h>
#include <capnp/message.h>
#include <capnp/serialize.h>

#include "event_encode.h"
#include "flow_table.h"
#include "flowseal.capnp.h"

namespace {

using namespace flowseal;
using namespace flowseal::flowd;

struct CountingSink final : EventSink {
  std::uint64_t events = 0;
  void on_event(const FlowEventData&) override { ++events; }
};

// Zero-filled memory as the supervisor's shared segment is (calloc: pages arrive zeroed).
struct TableMemory {
  explicit TableMemory(std::size_t capacity)
      : bytes(FlowTable::bytes_needed(capacity)),
        memory(static_cast<std::byte*>(std::calloc(bytes, 1))) {}
  struct Free {
    void operator()(std::byte* p) const { std::free(p); }
  };
  std::size_t bytes;
  std::unique_ptr<std::byte, Free> memory;
};

packet::DecodedPacket udp_packet(std::uint32_t flow, bool reply) {
  packet::DecodedPacket p;
  p.key.ip_version = 4;
  p.key.proto = 17;
  const std::array<std::uint8_t, 16> client = {10, static_cast<std::uint8_t>(flow >> 16),
                                               static_cast<std::uint8_t>(flow >> 8),
                                               static_cast<std::uint8_t>(flow)};
  const std::array<std::uint8_t, 16> server = {192, 168, 0, 53};
  p.key.src = reply ? server : client;
  p.key.dst = reply ? client : server;
  p.key.src_port = reply ? 53 : 40000;
  p.key.dst_port = reply ? 40000 : 53;
  p.has_ports = true;
  p.ip_bytes = 28 + 64;
  p.payload_bytes = 64;
  return p;
}

// `journaled`: as flowd runs the table, one undo-journal step per 256 packets (each flow's
// slot is saved once per step it is touched in).
void update_flows(benchmark::State& state, bool journaled) {
  const auto flows = static_cast<std::uint32_t>(state.range(0));
  // Capacity with headroom, as the budget plan leaves it: the table is not near full.
  const std::size_t capacity = flows + flows / 4;
  TableMemory memory(capacity);
  FlowTable table({memory.memory.get(), memory.bytes}, capacity, {});
  CountingSink sink;
  std::int64_t ts = 1'700'000'000'000'000'000;
  for (std::uint32_t f = 0; f < flows; ++f) table.on_packet(udp_packet(f, false), ts += 1000, sink);
  if (table.active() != flows) {
    state.SkipWithError("table did not take every flow");
    return;
  }
  // Scattered visiting order: multiplying by an odd constant modulo 2^k visits each flow of
  // a power-of-two range once per cycle; indices past `flows` are folded back.
  std::uint64_t i = 0;
  std::vector<packet::DecodedPacket> templates = {udp_packet(0, false), udp_packet(0, true)};
  if (journaled) table.begin_step();
  for (auto _ : state) {
    const auto f = static_cast<std::uint32_t>((i * 0x9E3779B1u) % flows);
    packet::DecodedPacket& p = templates[i & 1];
    auto& addr = (i & 1) ? p.key.dst : p.key.src;
    addr[1] = static_cast<std::uint8_t>(f >> 16);
    addr[2] = static_cast<std::uint8_t>(f >> 8);
    addr[3] = static_cast<std::uint8_t>(f);
    table.on_packet(p, ts += 1000, sink);
    if ((++i & 255) == 0) {
      table.expire(ts, sink);
      if (journaled) {
        table.commit_step();
        table.begin_step();
      }
    }
  }
  if (journaled) table.commit_step();
  state.SetItemsProcessed(state.iterations());
  state.counters["active"] = static_cast<double>(table.active());
  state.counters["bytes_per_flow"] =
      static_cast<double>(memory.bytes) / static_cast<double>(capacity);
  state.counters["events"] = static_cast<double>(sink.events);
}
void BM_FlowTableUpdate(benchmark::State& state) { update_flows(state, false); }
BENCHMARK(BM_FlowTableUpdate)->Arg(10'000)->Arg(1'000'000);
void BM_FlowTableUpdateJournaled(benchmark::State& state) { update_flows(state, true); }
BENCHMARK(BM_FlowTableUpdateJournaled)->Arg(10'000)->Arg(1'000'000);

// A finished TCP flow as flowd reports it.
FlowEventData sample_event(std::uint64_t i) {
  FlowEventData e;
  e.uid = i * 0x9E3779B97F4A7C15ull;
  e.kind = schema::EventKind::END;
  e.event_number = 1;
  e.end_reason = schema::EndReason::FIN;
  e.proto = 6;
  e.orig_addr = {10, 0, static_cast<std::uint8_t>(i >> 8), static_cast<std::uint8_t>(i)};
  e.resp_addr = {192, 168, 1, static_cast<std::uint8_t>(i % 7)};
  e.orig_port = static_cast<std::uint16_t>(30000 + i % 30000);
  e.resp_port = 443;
  e.first_ts_ns = 1'700'000'000'000'000'000 + static_cast<std::int64_t>(i) * 1'000'000;
  e.last_ts_ns = e.first_ts_ns + 250'000'000;
  e.orig.pkts = 12 + i % 5;
  e.orig.ip_bytes = 1400 + i % 300;
  e.orig.bytes = 800 + i % 300;
  e.resp.pkts = 10 + i % 3;
  e.resp.ip_bytes = 9000 + i % 900;
  e.resp.bytes = 8000 + i % 900;
  e.orig.tcp_flags = 0x1b;
  e.resp.tcp_flags = 0x1b;
  e.conn_state.assign("SF");
  e.history.assign("ShADadFf");
  e.community_id.assign("1:LQU9qZlK+B5F3KDmev6m5PMibrg=");
  return e;
}

constexpr unsigned kEventsPerBatch = 256;

// flowd's encode: FlowEventData -> FlowEvent inside a FlowEventBatch, first segment reused.
void BM_FlowEventEncode(benchmark::State& state) {
  std::vector<FlowEventData> events;
  for (unsigned i = 0; i < kEventsPerBatch; ++i) events.push_back(sample_event(i));
  std::vector<capnp::word> first_segment(kEventsPerBatch * 40 + 64);
  for (auto _ : state) {
    capnp::MallocMessageBuilder message(kj::arrayPtr(first_segment.data(), first_segment.size()));
    auto list = message.initRoot<schema::FlowEventBatch>().initEvents(kEventsPerBatch);
    for (unsigned i = 0; i < kEventsPerBatch; ++i) encode(events[i], list[i]);
    benchmark::DoNotOptimize(message.getSegmentsForOutput().size());
  }
  state.SetItemsProcessed(state.iterations() * kEventsPerBatch);
}
BENCHMARK(BM_FlowEventEncode);

// dedupd's / signerd's read: open the frame in place and read every field of every event.
void BM_FlowEventDecode(benchmark::State& state) {
  capnp::MallocMessageBuilder message;
  auto list = message.initRoot<schema::FlowEventBatch>().initEvents(kEventsPerBatch);
  for (unsigned i = 0; i < kEventsPerBatch; ++i) encode(sample_event(i), list[i]);
  const kj::Array<capnp::word> flat = capnp::messageToFlatArray(message);
  std::uint64_t sum = 0;
  for (auto _ : state) {
    capnp::FlatArrayMessageReader reader(flat);
    for (auto e : reader.getRoot<schema::FlowEventBatch>().getEvents()) {
      sum += e.getUid() + static_cast<unsigned>(e.getKind()) + e.getEventNumber() + e.getProto() +
             e.getOrigAddr().size() + e.getRespAddr().size() + e.getOrigPort() + e.getRespPort() +
             static_cast<std::uint64_t>(e.getFirstTsNs() + e.getLastTsNs()) +
             e.getOrig().getPkts() + e.getOrig().getIpBytes() + e.getOrig().getBytes() +
             e.getResp().getPkts() + e.getResp().getIpBytes() + e.getResp().getBytes() +
             e.getOrig().getTcpFlags() + e.getResp().getTcpFlags() + e.getConnState().size() +
             e.getHistory().size() + e.getCommunityId().size();
    }
    benchmark::DoNotOptimize(sum);
  }
  state.SetItemsProcessed(state.iterations() * kEventsPerBatch);
  state.counters["bytes_per_event"] =
      static_cast<double>(flat.size() * sizeof(capnp::word)) / kEventsPerBatch;
}
BENCHMARK(BM_FlowEventDecode);

}  // namespace

BENCHMARK_MAIN();
