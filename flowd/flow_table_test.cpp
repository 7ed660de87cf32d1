#include "flow_table.h"

#include <pcap/pcap.h>

#include <fstream>
#include <map>
#include <memory>
#include <regex>
#include <sstream>
#include <cstring>
#include <algorithm>
#include <string>
#include <limits>
#include <vector>

#include <arpa/inet.h>
#include <capnp/message.h>
#include <catch2/catch.hpp>

namespace {

using namespace flowseal;
using namespace flowseal::flowd;
using packet::DecodedPacket;
using schema::EndReason;
using schema::EventKind;

constexpr std::int64_t kMs = 1'000'000;
constexpr std::int64_t kSec = 1'000'000'000;
constexpr std::uint8_t kFin = 0x01, kSyn = 0x02, kRst = 0x04, kPsh = 0x08, kAck = 0x10;

struct Recorder final : EventSink {
  std::vector<FlowEventData> events;
  void on_event(const FlowEventData& e) override { events.push_back(e); }
  std::vector<FlowEventData> of_kind(EventKind kind) const {
    std::vector<FlowEventData> out;
    for (const auto& e : events) {
      if (e.kind == kind) out.push_back(e);
    }
    return out;
  }
};

// A table over its own zero-filled memory, as the supervisor creates it.
struct TestTable {
  explicit TestTable(std::size_t capacity, FlowTableOptions options = {})
      : memory(FlowTable::bytes_needed(capacity)),
        table(std::span<std::byte>(memory), capacity, options) {}
  std::vector<std::byte> memory;
  FlowTable table;
};

DecodedPacket v4(std::uint8_t proto, std::uint8_t src, std::uint16_t sport, std::uint8_t dst,
                 std::uint16_t dport, std::uint8_t flags = 0, std::uint32_t payload = 0) {
  DecodedPacket p;
  p.key.ip_version = 4;
  p.key.proto = proto;
  p.key.src = {10, 0, 0, src};
  p.key.dst = {10, 0, 0, dst};
  p.key.src_port = sport;
  p.key.dst_port = dport;
  p.has_ports = true;
  p.tcp_flags = flags;
  p.tcp_window = proto == 6 ? 29200 : 0;  // an open window (0 would be history w)
  const std::uint32_t header = proto == 6 ? 20 : 8;
  p.ip_bytes = 20 + header + payload;
  p.payload_bytes = payload;
  return p;
}

// Sequence numbers of a well-behaved connection: each side's next byte, restarted at its
// ISN by its SYN; every segment acknowledges all the peer sent.
constexpr std::uint32_t kClientIsn = 1000, kServerIsn = 0xFFFFFF00;  // the server's wraps
std::uint32_t g_next_seq[2] = {kClientIsn, kServerIsn};

DecodedPacket sequenced(DecodedPacket p, int side) {
  std::uint32_t& mine = g_next_seq[side];
  if ((p.tcp_flags & kSyn) != 0) mine = side == 0 ? kClientIsn : kServerIsn;
  p.tcp_seq = mine;
  p.tcp_ack = g_next_seq[1 - side];
  mine +=
      p.payload_bytes + ((p.tcp_flags & kSyn) != 0 ? 1 : 0) + ((p.tcp_flags & kFin) != 0 ? 1 : 0);
  return p;
}

// Client 10.0.0.1:40000 <-> server 10.0.0.2:80.
DecodedPacket c2s(std::uint8_t flags, std::uint32_t payload = 0) {
  return sequenced(v4(6, 1, 40000, 2, 80, flags, payload), 0);
}
DecodedPacket s2c(std::uint8_t flags, std::uint32_t payload = 0) {
  return sequenced(v4(6, 2, 80, 1, 40000, flags, payload), 1);
}

FlowTableOptions short_timeouts() {
  FlowTableOptions o;
  o.timeouts.tcp_established_idle_ns = 300 * kSec;
  o.timeouts.tcp_attempt_idle_ns = 5 * kSec;
  o.timeouts.tcp_closed_linger_ns = 5 * kSec;
  o.timeouts.udp_idle_ns = 60 * kSec;
  o.timeouts.icmp_idle_ns = 30 * kSec;
  o.timeouts.other_idle_ns = 20 * kSec;
  o.timeouts.active_timeout_ns = 1800 * kSec;
  return o;
}

void full_tcp_conversation(FlowTable& table, Recorder& sink, std::int64_t t0 = 0) {
  table.on_packet(c2s(kSyn), t0 + 0 * kMs, sink);
  table.on_packet(s2c(kSyn | kAck), t0 + 1 * kMs, sink);
  table.on_packet(c2s(kAck), t0 + 2 * kMs, sink);
  table.on_packet(c2s(kPsh | kAck, 100), t0 + 3 * kMs, sink);
  table.on_packet(s2c(kAck), t0 + 4 * kMs, sink);
  table.on_packet(s2c(kPsh | kAck, 200), t0 + 5 * kMs, sink);
  table.on_packet(c2s(kFin | kAck), t0 + 6 * kMs, sink);
  table.on_packet(s2c(kFin | kAck), t0 + 7 * kMs, sink);
  table.on_packet(c2s(kAck), t0 + 8 * kMs, sink);
}

}  // namespace

// A live flowd sleeps until next_due_ns() and then expires: each flow must end at the moment
// it is due, within a few wakes, however its list was requeued.
TEST_CASE("next_due_ns leads a sleeping flowd to each flow's end on time") {
  TestTable t(64, short_timeouts());
  Recorder sink;
  CHECK(t.table.next_due_ns() == std::numeric_limits<std::int64_t>::max());

  // Three UDP flows queued in order; the first is touched again later (its place in the
  // list is stale until expire() settles it), the second and third are not.
  t.table.on_packet(v4(17, 1, 1000, 2, 53), 0, sink);
  t.table.on_packet(v4(17, 3, 1000, 2, 53), 10 * kMs, sink);
  t.table.on_packet(v4(17, 4, 1000, 2, 53), 20 * kMs, sink);
  t.table.on_packet(v4(17, 2, 53, 1, 1000), 30 * kMs, sink);  // reply on the first flow
  full_tcp_conversation(t.table, sink, 40 * kMs);             // FIN-closed, lingers 5 s
  const std::int64_t udp_timeout = 60 * kSec, linger = 5 * kSec;
  // Each flow's due moment: last packet + its timeout + 1 ns (a closed TCP flow's last time
  // is its second FIN, 7 ms into the conversation, as Zeek's).
  std::vector<std::int64_t> due = {40 * kMs + 7 * kMs + linger + 1, 10 * kMs + udp_timeout + 1,
                                   20 * kMs + udp_timeout + 1, 30 * kMs + udp_timeout + 1};

  std::vector<std::int64_t> ended_at;
  std::int64_t now = 0;
  for (int wake = 0; wake < 20 && ended_at.size() < due.size(); ++wake) {
    const std::int64_t next = t.table.next_due_ns();
    REQUIRE(next != std::numeric_limits<std::int64_t>::max());
    REQUIRE(next >= now);  // never a wake in the past: no busy loop
    now = next;
    const std::size_t before = sink.of_kind(EventKind::END).size();
    t.table.expire(now, sink);
    for (std::size_t i = before; i < sink.of_kind(EventKind::END).size(); ++i) {
      ended_at.push_back(now);
    }
  }
  CHECK(ended_at == due);
  CHECK(t.table.next_due_ns() == std::numeric_limits<std::int64_t>::max());
}

TEST_CASE("a flow closed by FIN in both directions ends with reason fin after the linger") {
  TestTable t(64, short_timeouts());
  Recorder sink;
  full_tcp_conversation(t.table, sink);
  REQUIRE(sink.events.size() == 1);
  CHECK(sink.events[0].kind == EventKind::START);
  CHECK(sink.events[0].event_number == 0);

  // Both sides closed at the second FIN (7 ms): as in Zeek the last ACK is counted but does
  // not move the flow's last time, and the linger runs from there.
  t.table.expire(7 * kMs + 5 * kSec, sink);
  REQUIRE(sink.events.size() == 1);
  t.table.expire(7 * kMs + 5 * kSec + 1, sink);
  REQUIRE(sink.events.size() == 2);
  const FlowEventData& end = sink.events[1];
  CHECK(end.kind == EventKind::END);
  CHECK(end.end_reason == EndReason::FIN);
  CHECK(end.event_number == 1);
  CHECK(end.uid == sink.events[0].uid);
  CHECK(end.orig_addr[3] == 1);
  CHECK(end.resp_addr[3] == 2);
  CHECK(end.orig_port == 40000);
  CHECK(end.resp_port == 80);
  CHECK(end.orig.pkts == 5);
  CHECK(end.resp.pkts == 4);
  CHECK(end.orig.bytes == 100);
  CHECK(end.resp.bytes == 200);
  CHECK(end.orig.ip_bytes == 5 * 40 + 100);
  CHECK(end.resp.ip_bytes == 4 * 40 + 200);
  CHECK(end.orig.tcp_flags == (kSyn | kAck | kPsh | kFin));
  CHECK(end.resp.tcp_flags == (kSyn | kAck | kPsh | kFin));
  CHECK(end.first_ts_ns == 0);
  CHECK(end.last_ts_ns == 7 * kMs);
  CHECK(end.conn_state.view() == "SF");
  CHECK(end.history.view() == "ShADadFf");
  CHECK(end.community_id.view().substr(0, 2) == "1:");
  CHECK(t.table.active() == 0);
  const FlowTableStats stats = t.table.stats();
  CHECK(stats.flows_started == 1);
  CHECK(stats.flows_ended == 1);
  CHECK(stats.evictions == 0);
}

TEST_CASE("a flow already closed by FIN keeps reason fin when the table is flushed") {
  TestTable t(64, short_timeouts());
  Recorder sink;
  full_tcp_conversation(t.table, sink);
  t.table.on_packet(v4(17, 1, 5000, 3, 53, 0, 20), 9 * kMs, sink);
  t.table.flush(sink);
  const auto ends = sink.of_kind(EventKind::END);
  REQUIRE(ends.size() == 2);
  for (const auto& e : ends) {
    CHECK(e.end_reason == (e.proto == 6 ? EndReason::FIN : EndReason::SHUTDOWN));
  }
  CHECK(t.table.active() == 0);
}

TEST_CASE("a SYN answered by RST is rejected and ends with reason rst") {
  TestTable t(64, short_timeouts());
  Recorder sink;
  t.table.on_packet(c2s(kSyn), 0, sink);
  t.table.on_packet(s2c(kRst | kAck), 1 * kMs, sink);
  t.table.expire(1 * kMs + 5 * kSec + 1, sink);
  const auto ends = sink.of_kind(EventKind::END);
  REQUIRE(ends.size() == 1);
  CHECK(ends[0].end_reason == EndReason::RST);
  CHECK(ends[0].conn_state.view() == "REJ");
  CHECK(ends[0].history.view() == "Sr");
}

TEST_CASE("an established connection reset by the originator is RSTO") {
  TestTable t(64, short_timeouts());
  Recorder sink;
  t.table.on_packet(c2s(kSyn), 0, sink);
  t.table.on_packet(s2c(kSyn | kAck), 1 * kMs, sink);
  t.table.on_packet(c2s(kAck), 2 * kMs, sink);
  t.table.on_packet(c2s(kPsh | kAck, 10), 3 * kMs, sink);
  t.table.on_packet(c2s(kRst), 4 * kMs, sink);
  t.table.flush(sink);
  const auto ends = sink.of_kind(EventKind::END);
  REQUIRE(ends.size() == 1);
  CHECK(ends[0].end_reason == EndReason::RST);
  CHECK(ends[0].conn_state.view() == "RSTO");
  CHECK(ends[0].history.view() == "ShADR");
}

TEST_CASE("conn_state follows Zeek for unanswered and half-open connections") {
  TestTable t(64, short_timeouts());
  Recorder sink;
  t.table.on_packet(v4(6, 1, 1, 9, 22, kSyn), 0, sink);           // S0
  t.table.on_packet(v4(6, 3, 1, 9, 22, kSyn), 0, sink);           // SYN then own RST
  t.table.on_packet(v4(6, 3, 1, 9, 22, kRst), 1 * kMs, sink);     // -> RSTOS0
  t.table.on_packet(v4(6, 4, 1, 9, 22, kAck, 5), 0, sink);        // mid-stream, one side
  t.table.on_packet(v4(6, 9, 22, 4, 1, kAck, 5), 1 * kMs, sink);  // both sides -> OTH
  t.table.flush(sink);
  const auto ends = sink.of_kind(EventKind::END);
  REQUIRE(ends.size() == 3);
  for (const auto& e : ends) {
    INFO("orig " << int(e.orig_addr[3]) << " history " << e.history.view());
    if (e.orig_addr[3] == 1) CHECK(e.conn_state.view() == "S0");
    if (e.orig_addr[3] == 3) CHECK(e.conn_state.view() == "RSTOS0");
    if (e.orig_addr[3] == 4) CHECK(e.conn_state.view() == "OTH");
  }
}

TEST_CASE("a SYN-ACK seen first makes its receiver the originator") {
  TestTable t(64, short_timeouts());
  Recorder sink;
  t.table.on_packet(s2c(kSyn | kAck), 0, sink);
  t.table.on_packet(c2s(kAck), 1 * kMs, sink);
  REQUIRE(sink.events.size() == 1);
  CHECK(sink.events[0].orig_addr[3] == 1);
  CHECK(sink.events[0].orig_port == 40000);
  CHECK(sink.events[0].resp.pkts == 1);
  CHECK(sink.events[0].orig.pkts == 0);
  t.table.flush(sink);
  CHECK(sink.events.back().history.view() == "^hA");
  CHECK(sink.events.back().orig.pkts == 1);
}

TEST_CASE("a UDP flow counts both directions") {
  TestTable t(64, short_timeouts());
  Recorder sink;
  t.table.on_packet(v4(17, 1, 5353, 2, 53, 0, 30), 0, sink);
  t.table.on_packet(v4(17, 2, 53, 1, 5353, 0, 120), 2 * kMs, sink);
  t.table.on_packet(v4(17, 1, 5353, 2, 53, 0, 30), 3 * kMs, sink);
  t.table.flush(sink);
  REQUIRE(sink.events.size() == 2);
  const FlowEventData& end = sink.events[1];
  CHECK(end.end_reason == EndReason::SHUTDOWN);
  CHECK(end.orig.pkts == 2);
  CHECK(end.resp.pkts == 1);
  CHECK(end.orig.bytes == 60);
  CHECK(end.resp.bytes == 120);
  CHECK(end.orig.ip_bytes == 2 * 58);
  CHECK(end.resp.ip_bytes == 148);
  CHECK(end.conn_state.view() == "SF");
  CHECK(end.history.view() == "Dd");
}

TEST_CASE("an ICMP echo request and its reply are one flow") {
  TestTable t(64, short_timeouts());
  Recorder sink;
  t.table.on_packet(v4(1, 1, 8, 2, 0, 0, 56), 0, sink);        // echo request: type 8 code 0
  t.table.on_packet(v4(1, 2, 0, 1, 0, 0, 56), 1 * kMs, sink);  // echo reply: type 0 code 0
  t.table.flush(sink);
  REQUIRE(sink.events.size() == 2);
  CHECK(sink.events[1].orig_port == 8);
  CHECK(sink.events[1].resp_port == 0);
  CHECK(sink.events[1].orig.pkts == 1);
  CHECK(sink.events[1].resp.pkts == 1);
}

TEST_CASE("idle flows end after their protocol's idle timeout") {
  TestTable t(64, short_timeouts());
  Recorder sink;
  t.table.on_packet(v4(17, 1, 1000, 2, 53), 0, sink);   // UDP: 60 s
  t.table.on_packet(v4(1, 1, 8, 2, 0), 0, sink);        // ICMP: 30 s
  t.table.on_packet(v4(47, 1, 0, 2, 0), 0, sink);       // GRE (other): 20 s
  t.table.on_packet(c2s(kSyn), 0, sink);                // TCP attempt: 5 s
  t.table.on_packet(v4(6, 5, 1, 6, 2, kSyn), 0, sink);  // TCP established: 300 s
  t.table.on_packet(v4(6, 6, 2, 5, 1, kSyn | kAck), 1, sink);
  t.table.on_packet(v4(6, 5, 1, 6, 2, kAck), 2, sink);
  REQUIRE(sink.events.size() == 5);

  auto ended_protos = [&] {
    std::vector<int> out;
    for (const auto& e : sink.of_kind(EventKind::END)) {
      CHECK(e.end_reason == EndReason::IDLE);
      out.push_back(e.proto);
    }
    return out;
  };
  t.table.expire(5 * kSec, sink);
  CHECK(ended_protos().empty());
  t.table.expire(5 * kSec + 1, sink);
  CHECK(ended_protos() == std::vector<int>{6});
  t.table.expire(20 * kSec + 1, sink);
  CHECK(ended_protos() == std::vector<int>{6, 47});
  t.table.expire(30 * kSec + 1, sink);
  CHECK(ended_protos() == std::vector<int>{6, 47, 1});
  t.table.expire(60 * kSec + 1, sink);
  CHECK(ended_protos() == std::vector<int>{6, 47, 1, 17});
  CHECK(t.table.active() == 1);
  t.table.expire(300 * kSec + 3, sink);
  CHECK(ended_protos() == std::vector<int>{6, 47, 1, 17, 6});
  CHECK(t.table.active() == 0);
}

TEST_CASE("a packet after the idle timeout starts a new flow even before expire runs") {
  TestTable t(64, short_timeouts());
  Recorder sink;
  t.table.on_packet(v4(17, 1, 1000, 2, 53), 0, sink);
  t.table.on_packet(v4(17, 1, 1000, 2, 53), 61 * kSec, sink);
  REQUIRE(sink.events.size() == 3);
  CHECK(sink.events[1].kind == EventKind::END);
  CHECK(sink.events[1].end_reason == EndReason::IDLE);
  CHECK(sink.events[2].kind == EventKind::START);
  CHECK(sink.events[2].uid != sink.events[0].uid);
}

TEST_CASE("a new SYN on a closed connection's ports starts a new flow") {
  TestTable t(64, short_timeouts());
  Recorder sink;
  full_tcp_conversation(t.table, sink);
  t.table.on_packet(c2s(kSyn), 1 * kSec, sink);
  REQUIRE(sink.events.size() == 3);
  CHECK(sink.events[1].end_reason == EndReason::FIN);
  CHECK(sink.events[2].kind == EventKind::START);
  CHECK(t.table.active() == 1);
}

TEST_CASE("a long flow emits an update at each active timeout and goes on") {
  FlowTableOptions o = short_timeouts();
  o.timeouts.active_timeout_ns = 30 * kSec;
  TestTable t(64, o);
  Recorder sink;
  for (int i = 0; i <= 10; ++i) {
    t.table.on_packet(v4(17, 1, 1000, 2, 53, 0, 10), i * 10 * kSec, sink);
    t.table.expire(i * 10 * kSec, sink);
  }
  const auto updates = sink.of_kind(EventKind::UPDATE);
  REQUIRE(updates.size() == 3);  // at 30, 60 and 90 s
  for (std::size_t i = 0; i < updates.size(); ++i) {
    CHECK(updates[i].end_reason == EndReason::ACTIVE);
    CHECK(updates[i].event_number == i + 1);
    CHECK(updates[i].uid == sink.events[0].uid);
  }
  CHECK(updates[0].orig.pkts == 4);
  CHECK(sink.of_kind(EventKind::END).empty());
  t.table.flush(sink);
  CHECK(sink.events.back().event_number == 4);
  CHECK(sink.events.back().orig.pkts == 11);
  CHECK(t.table.stats().updates == 3);
}

TEST_CASE("a quiet flow past the active timeout gets its update from expire") {
  FlowTableOptions o = short_timeouts();
  o.timeouts.active_timeout_ns = 30 * kSec;
  o.timeouts.udp_idle_ns = 100 * kSec;
  TestTable t(64, o);
  Recorder sink;
  t.table.on_packet(v4(17, 1, 1000, 2, 53), 0, sink);
  t.table.expire(29 * kSec, sink);
  CHECK(sink.events.size() == 1);
  t.table.expire(30 * kSec, sink);
  REQUIRE(sink.events.size() == 2);
  CHECK(sink.events[1].kind == EventKind::UPDATE);
  t.table.expire(59 * kSec, sink);
  CHECK(sink.events.size() == 2);
}

TEST_CASE("a full table evicts the least recently seen flow") {
  TestTable t(4, short_timeouts());
  Recorder sink;
  for (std::uint8_t i = 1; i <= 4; ++i) t.table.on_packet(v4(17, i, 1000, 100, 53), i, sink);
  t.table.on_packet(v4(17, 1, 1000, 100, 53), 10, sink);  // flow 1 is fresh again
  CHECK(t.table.active() == 4);
  t.table.on_packet(v4(17, 5, 1000, 100, 53), 11, sink);
  const auto ends = sink.of_kind(EventKind::END);
  REQUIRE(ends.size() == 1);
  CHECK(ends[0].end_reason == EndReason::EVICTION);
  CHECK(ends[0].orig_addr[3] == 2);
  CHECK(t.table.active() == 4);
  CHECK(t.table.stats().evictions == 1);
  for (std::uint8_t i = 6; i <= 20; ++i) t.table.on_packet(v4(17, i, 1000, 100, 53), 20 + i, sink);
  CHECK(t.table.active() == 4);
  CHECK(t.table.stats().evictions == 16);
  CHECK(sink.of_kind(EventKind::START).size() == 20);
}

TEST_CASE("evict_to ends the least recently seen flows down to the target") {
  TestTable t(10, short_timeouts());
  Recorder sink;
  for (std::uint8_t i = 1; i <= 8; ++i) t.table.on_packet(v4(17, i, 1000, 100, 53), i * kMs, sink);
  t.table.on_packet(v4(17, 1, 1000, 100, 53), 20 * kMs, sink);  // flow 1 is fresh again
  CHECK(t.table.evict_to(5, sink) == 3);
  CHECK(t.table.active() == 5);
  const auto ends = sink.of_kind(EventKind::END);
  REQUIRE(ends.size() == 3);
  // 2, 3 and 4 were seen least recently; flow 1 was touched after them.
  for (std::size_t k = 0; k < 3; ++k) {
    CHECK(ends[k].end_reason == EndReason::EVICTION);
    CHECK(ends[k].orig_addr[3] == 2 + k);
  }
  CHECK(t.table.stats().evictions == 3);
  CHECK(t.table.evict_to(5, sink) == 0);  // already there
  CHECK(t.table.evict_to(0, sink) == 5);
  CHECK(t.table.active() == 0);
  CHECK(sink.of_kind(EventKind::END).size() == 8);
}

TEST_CASE("shorter timeouts set under pressure end idle flows at the next expire") {
  TestTable t(10, short_timeouts());  // UDP idle 60 s
  Recorder sink;
  t.table.on_packet(v4(17, 1, 1000, 100, 53), 0, sink);
  t.table.expire(20 * kSec, sink);
  CHECK(t.table.active() == 1);
  FlowTimeouts scaled = t.table.timeouts();
  scaled.udp_idle_ns = 6 * kSec;  // x0.1, as at CRITICAL
  t.table.set_timeouts(scaled);
  t.table.expire(20 * kSec, sink);
  CHECK(t.table.active() == 0);
  const auto ends = sink.of_kind(EventKind::END);
  REQUIRE(ends.size() == 1);
  CHECK(ends[0].end_reason == EndReason::IDLE);
}

TEST_CASE("a table re-attached to the same memory resumes every active flow") {
  const FlowTableOptions o = short_timeouts();
  std::vector<std::byte> memory(FlowTable::bytes_needed(100));
  Recorder sink;
  std::uint64_t uid = 0;
  {
    FlowTable first(memory, 100, o);
    CHECK_FALSE(first.resumed());
    for (std::uint8_t i = 1; i <= 50; ++i) first.on_packet(v4(17, i, 1000, 200, 53), i, sink);
    first.on_packet(c2s(kSyn), 100, sink);
    first.on_packet(s2c(kSyn | kAck), 101, sink);
    uid = sink.events.back().uid;
    CHECK(first.active() == 51);
  }
  FlowTable second(memory, 100, o);
  CHECK(second.resumed());
  CHECK(second.active() == 51);
  CHECK(second.stats().flows_started == 51);
  const std::size_t before = sink.events.size();
  second.on_packet(c2s(kAck), 102, sink);
  second.on_packet(v4(17, 7, 1000, 200, 53), 103, sink);
  CHECK(sink.events.size() == before);  // known flows: no new start
  second.expire(5 * kSec + 50, sink);   // UDP flows are not idle yet, nothing ends
  CHECK(sink.events.size() == before);
  second.flush(sink);
  CHECK(sink.of_kind(EventKind::END).size() == 51);
  for (const auto& e : sink.of_kind(EventKind::END)) {
    if (e.uid == uid) {
      CHECK(e.history.view() == "ShA");
      CHECK(e.conn_state.view() == "S1");
      CHECK(e.orig.pkts == 2);
      CHECK(e.resp.pkts == 1);
      CHECK(e.event_number == 1);
    }
    if (e.proto == 17 && e.orig_addr[3] == 7) CHECK(e.orig.pkts == 2);
  }

  // Another capacity is another layout: the memory is formatted afresh.
  FlowTable other(memory, 50, o);
  CHECK_FALSE(other.resumed());
  CHECK(other.active() == 0);
}

TEST_CASE("a resumed table still evicts in least-recently-seen order") {
  const FlowTableOptions o = short_timeouts();
  std::vector<std::byte> memory(FlowTable::bytes_needed(3));
  Recorder sink;
  {
    FlowTable first(memory, 3, o);
    first.on_packet(v4(17, 1, 1, 9, 53), 30, sink);
    first.on_packet(v4(17, 2, 1, 9, 53), 10, sink);
    first.on_packet(v4(17, 3, 1, 9, 53), 20, sink);
  }
  FlowTable second(memory, 3, o);
  second.on_packet(v4(17, 4, 1, 9, 53), 40, sink);
  const auto ends = sink.of_kind(EventKind::END);
  REQUIRE(ends.size() == 1);
  CHECK(ends[0].orig_addr[3] == 2);
}

TEST_CASE("a resumed slot's Community ID that is not base64 is dropped, a good one kept") {
  // The slot keeps the 28 base64 characters; memory found on resume is not trusted.
  const FlowTableOptions o = short_timeouts();
  std::vector<std::byte> memory(FlowTable::bytes_needed(4));
  Recorder sink;
  {
    FlowTable first(memory, 4, o);
    first.on_packet(v4(17, 1, 1000, 9, 53), 10, sink);
    first.on_packet(v4(17, 2, 1000, 9, 53), 20, sink);
  }
  const auto starts = sink.of_kind(EventKind::START);
  REQUIRE(starts.size() == 2);
  // The first flow's characters, found in the table's memory and spoiled.
  const std::string base64(starts[0].community_id.view().substr(2));
  REQUIRE(base64.size() == 28);
  const auto* bytes = reinterpret_cast<const char*>(memory.data());
  const auto at = std::search(bytes, bytes + memory.size(), base64.begin(), base64.end());
  REQUIRE(at != bytes + memory.size());
  reinterpret_cast<char*>(memory.data())[at - bytes + 5] = '\n';

  FlowTable second(memory, 4, o);
  REQUIRE(second.resumed());
  Recorder after;
  second.flush(after);
  const auto ends = after.of_kind(EventKind::END);
  REQUIRE(ends.size() == 2);
  for (const auto& end : ends) {
    if (end.orig_addr[3] == 1) {
      CHECK(end.community_id.view().empty());
    } else {
      CHECK(end.community_id.view() == starts[1].community_id.view());
    }
  }
}

TEST_CASE("a table another layout version left in the memory is formatted afresh, not read") {
  const FlowTableOptions o = short_timeouts();
  std::vector<std::byte> memory(FlowTable::bytes_needed(16));
  Recorder sink;
  {
    FlowTable first(memory, 16, o);
    full_tcp_conversation(first, sink);
    first.on_packet(v4(17, 1, 1000, 2, 53), 10 * kMs, sink);
    REQUIRE(first.active() == 2);
  }
  // The header's layout version (after the 8-byte magic) of an older flowd: its slots were
  // laid out otherwise, so none of them may be taken for a flow.
  const std::uint32_t older = 8;
  std::memcpy(memory.data() + 8, &older, sizeof older);
  FlowTable second(memory, 16, o);
  CHECK_FALSE(second.resumed());
  CHECK(second.active() == 0);
  CHECK(second.stats().flows_started == 0);
  Recorder after;
  second.on_packet(v4(17, 1, 1000, 2, 53), 20 * kMs, after);
  second.flush(after);
  REQUIRE(after.of_kind(EventKind::END).size() == 1);
  CHECK(after.of_kind(EventKind::END)[0].orig.pkts == 1);
}

TEST_CASE("a history keeps its first 23 letters") {
  TestTable t(16, short_timeouts());
  Recorder sink;
  t.table.on_packet(c2s(kSyn), 0, sink);
  // Each RST at another sequence number is marked again (Zeek's hist_last_RST).
  for (std::uint32_t i = 0; i < 30; ++i) {
    DecodedPacket rst = v4(6, 1, 40000, 2, 80, kRst);
    rst.tcp_seq = kClientIsn + 1 + i * 10;
    t.table.on_packet(rst, (i + 1) * kMs, sink);
  }
  t.table.flush(sink);
  const auto ends = sink.of_kind(EventKind::END);
  REQUIRE(ends.size() == 1);
  CHECK(ends[0].history.view() == "S" + std::string(22, 'R'));

  // A flipped connection's '^' is one of them.
  TestTable flipped(16, short_timeouts());
  Recorder flipped_sink;
  flipped.table.on_packet(v4(6, 2, 80, 1, 40000, kSyn | kAck), 0, flipped_sink);
  for (std::uint32_t i = 0; i < 30; ++i) {
    DecodedPacket rst = v4(6, 1, 40000, 2, 80, kRst);
    rst.tcp_seq = 5000 + i * 10;
    flipped.table.on_packet(rst, (i + 1) * kMs, flipped_sink);
  }
  flipped.table.flush(flipped_sink);
  const auto flipped_ends = flipped_sink.of_kind(EventKind::END);
  REQUIRE(flipped_ends.size() == 1);
  CHECK(flipped_ends[0].history.view() == "^h" + std::string(21, 'R'));
}

TEST_CASE("payload bytes count past 4 GiB") {
  TestTable t(16, short_timeouts());
  Recorder sink;
  constexpr std::uint32_t kPackets = 70'000, kPayload = 65'000;  // 4.55 GB one way
  for (std::uint32_t i = 0; i < kPackets; ++i) {
    t.table.on_packet(v4(17, 1, 1000, 2, 53, 0, kPayload), i * kMs, sink);
  }
  t.table.on_packet(v4(17, 2, 53, 1, 1000, 0, 7), kPackets * kMs, sink);
  t.table.flush(sink);
  const auto ends = sink.of_kind(EventKind::END);
  REQUIRE(ends.size() == 1);
  CHECK(ends[0].orig.bytes == std::uint64_t{kPackets} * kPayload);
  CHECK(ends[0].orig.pkts == kPackets);
  CHECK(ends[0].resp.bytes == 7);
}

TEST_CASE("uids are the same on a replay and differ between shards") {
  auto uids = [](std::uint32_t shard) {
    FlowTableOptions o = short_timeouts();
    o.shard = shard;
    TestTable t(64, o);
    Recorder sink;
    full_tcp_conversation(t.table, sink, 1'700'000'000 * kSec);
    t.table.on_packet(v4(17, 1, 1000, 2, 53), 1'700'000'001 * kSec, sink);
    std::vector<std::uint64_t> out;
    for (const auto& e : sink.events) out.push_back(e.uid);
    return out;
  };
  const auto a = uids(0);
  REQUIRE(a.size() == 2);
  CHECK(a[0] != a[1]);
  CHECK(uids(0) == a);
  CHECK(uids(1) != a);
}

TEST_CASE("bytes_needed grows with capacity and the constructor rejects too little memory") {
  std::size_t last = 0;
  for (std::size_t c = 1; c < 5000; c += 7) {
    CHECK(FlowTable::bytes_needed(c) >= last);
    last = FlowTable::bytes_needed(c);
  }
  std::vector<std::byte> small(FlowTable::bytes_needed(10) - 1);
  CHECK_THROWS_AS(FlowTable(small, 10, {}), std::invalid_argument);
  CHECK_THROWS_AS(FlowTable(small, 0, {}), std::invalid_argument);
}

TEST_CASE("weird packets are counted by kind") {
  TestTable t(8);
  t.table.count_weird(packet::DecodeStatus::kTruncatedIp);
  t.table.count_weird(packet::DecodeStatus::kTruncatedIp);
  t.table.count_weird(packet::DecodeStatus::kBadTransport);
  const auto stats = t.table.stats();
  CHECK(stats.weird[static_cast<std::size_t>(packet::DecodeStatus::kTruncatedIp)] == 2);
  CHECK(stats.weird[static_cast<std::size_t>(packet::DecodeStatus::kBadTransport)] == 1);
}

TEST_CASE("event_batch_words is the exact size of an encoded FlowEventBatch") {
  TestTable t(8);
  Recorder sink;
  full_tcp_conversation(t.table, sink);
  t.table.flush(sink);
  std::vector<FlowEventData> events(sink.events.begin(), sink.events.end());
  // Variants: IPv6, empty and full texts, tunnel parents.
  for (int i = 0; i < 12; ++i) {
    FlowEventData e = events[static_cast<std::size_t>(i) % sink.events.size()];
    if (i % 2 == 1) e.ip_version = 6;
    e.history.assign(std::string(static_cast<std::size_t>(i * 3 % 32), 'D'));
    e.conn_state.assign(i % 3 == 0 ? std::string()
                                   : std::string(static_cast<std::size_t>(i % 8), 'S'));
    if (i % 4 == 2) e.community_id.assign(std::string());
    for (std::size_t p = 0; p < e.tunnel_parents.size(); ++p) {
      e.tunnel_parents[p] = p < static_cast<std::size_t>(i % 3) ? 100 + p : 0;
    }
    events.push_back(e);
  }
  for (std::size_t n = 1; n <= events.size(); n += 3) {
    const std::span<const FlowEventData> batch(events.data(), n);
    const std::size_t words = event_batch_words(batch);
    std::vector<capnp::word> first(words);
    capnp::MallocMessageBuilder message(kj::arrayPtr(first.data(), first.size()));
    auto list = message.initRoot<schema::FlowEventBatch>().initEvents(static_cast<unsigned>(n));
    for (unsigned i = 0; i < n; ++i) encode(batch[i], list[i]);
    const auto segments = message.getSegmentsForOutput();
    REQUIRE(segments.size() == 1);
    CHECK(segments[0].size() == words);
  }
}

TEST_CASE("an event encodes into a FlowEvent with every field") {
  TestTable t(8);
  Recorder sink;
  full_tcp_conversation(t.table, sink);
  t.table.flush(sink);
  const FlowEventData& e = sink.events.back();
  capnp::MallocMessageBuilder message;
  auto builder = message.initRoot<schema::FlowEvent>();
  encode(e, builder);
  auto r = builder.asReader();
  CHECK(r.getUid() == e.uid);
  CHECK(r.getKind() == EventKind::END);
  CHECK(r.getEventNumber() == 1);
  CHECK(r.getEndReason() == EndReason::FIN);
  CHECK(r.getProto() == 6);
  REQUIRE(r.getOrigAddr().size() == 4);
  CHECK(r.getOrigAddr()[3] == 1);
  CHECK(r.getRespAddr()[3] == 2);
  CHECK(r.getOrigPort() == 40000);
  CHECK(r.getRespPort() == 80);
  CHECK(r.getOrig().getPkts() == 5);
  CHECK(r.getResp().getBytes() == 200);
  CHECK(r.getLastTsNs() == 7 * kMs);  // the second FIN: Zeek's clock stops there
  CHECK(std::string(r.getConnState().cStr()) == "SF");
  CHECK(std::string(r.getHistory().cStr()) == "ShADadFf");
  CHECK(std::string(r.getCommunityId().cStr()) == std::string(e.community_id.view()));
  CHECK(r.getFlowCount() == 1);
  CHECK(r.getSamplingRate() == 1.0f);
}

namespace {

struct PcapCloser {
  void operator()(pcap_t* p) const { pcap_close(p); }
};

std::string testdata(const std::string& name) {
  return std::string(FLOWSEAL_FLOWD_TESTDATA) + "/" + name;
}

// Feeds a capture to the table; returns the decoded packets' count.
int feed_pcap(FlowTable& table, const std::string& name, EventSink& sink) {
  char error[PCAP_ERRBUF_SIZE] = {};
  std::unique_ptr<pcap_t, PcapCloser> handle(pcap_open_offline(testdata(name).c_str(), error));
  INFO(name << ": " << error);
  REQUIRE(handle);
  pcap_pkthdr* header = nullptr;
  const u_char* data = nullptr;
  int fed = 0;
  while (pcap_next_ex(handle.get(), &header, &data) == 1) {
    DecodedPacket p;
    if (packet::decode(pcap_datalink(handle.get()), {data, header->caplen}, header->len, p) !=
        packet::DecodeStatus::kOk) {
      continue;
    }
    const std::int64_t ts = std::int64_t{header->ts.tv_sec} * kSec + header->ts.tv_usec * 1000;
    table.on_packet(p, ts, sink);
    ++fed;
  }
  return fed;
}

std::array<std::uint8_t, 16> parse_addr(const std::string& text) {
  std::array<std::uint8_t, 16> out{};
  if (text.find(':') != std::string::npos) {
    REQUIRE(inet_pton(AF_INET6, text.c_str(), out.data()) == 1);
  } else {
    REQUIRE(inet_pton(AF_INET, text.c_str(), out.data()) == 1);
  }
  return out;
}

void check_community_ids(const std::string& baseline, std::uint16_t seed) {
  FlowTableOptions o;
  o.community_id_seed = seed;
  TestTable t(1024, o);
  Recorder sink;
  int fed = 0;
  for (const char* pcap :
       {"icmp.pcap", "icmp6.pcap", "ipv6.pcap", "rsvp.pcap", "sctp.pcap", "tcp.pcap", "udp.pcap"}) {
    fed += feed_pcap(t.table, pcap, sink);
  }
  CHECK(fed > 30);
  std::ifstream in(testdata(baseline));
  REQUIRE(in);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string json = ss.str();
  const std::regex entry(
      R"re(\{"proto": (\d+), "saddr": "([^"]+)", "daddr": "([^"]+)", "sport": (\d+|null), "dport": (\d+|null), "communityid": "([^"]+)"\})re");
  int checked = 0;
  for (auto it = std::sregex_iterator(json.begin(), json.end(), entry);
       it != std::sregex_iterator(); ++it) {
    const auto& m = *it;
    const int proto = std::stoi(m[1]);
    const auto saddr = parse_addr(m[2]);
    const auto daddr = parse_addr(m[3]);
    const bool ports = m[4] != "null";
    const int sport = ports ? std::stoi(m[4]) : 0;
    const int dport = ports ? std::stoi(m[5]) : 0;
    INFO(m[0]);
    bool found = false;
    for (const auto& e : sink.of_kind(EventKind::START)) {
      if (e.proto != proto) continue;
      const bool forward = e.orig_addr == saddr && e.resp_addr == daddr &&
                           (!ports || (e.orig_port == sport && e.resp_port == dport));
      const bool backward = e.orig_addr == daddr && e.resp_addr == saddr &&
                            (!ports || (e.orig_port == dport && e.resp_port == sport));
      if (forward || backward) {
        CHECK(std::string(e.community_id.view()) == m[6].str());
        found = true;
      }
    }
    CHECK(found);
    ++checked;
  }
  CHECK(checked >= 20);
}

}  // namespace

TEST_CASE("Community IDs equal the spec's golden values with seed 0") {
  check_community_ids("baseline_deflt.json", 0);
}

TEST_CASE("Community IDs equal the spec's golden values with seed 1") {
  check_community_ids("baseline_seed1.json", 1);
}

TEST_CASE("a packet in a UDP tunnel counts to the tunnel's flow and to the inner flow") {
  TestTable t(64, short_timeouts());
  Recorder sink;
  DecodedPacket inner = c2s(kSyn);
  const DecodedPacket outer = v4(17, 7, 50000, 8, 4789, 0, 8 + 14 + inner.ip_bytes);
  inner.outer[0] = packet::OuterFlow{outer.key, outer.ip_bytes, outer.payload_bytes};
  inner.outer_count = 1;
  t.table.on_packet(inner, 0, sink);
  t.table.flush(sink);
  const auto ends = sink.of_kind(EventKind::END);
  REQUIRE(ends.size() == 2);
  const auto& tunnel = ends[0].proto == 17 ? ends[0] : ends[1];
  const auto& tcp = ends[0].proto == 17 ? ends[1] : ends[0];
  CHECK(tunnel.orig.pkts == 1);
  CHECK(tunnel.orig.ip_bytes == outer.ip_bytes);
  CHECK(tunnel.resp_port == 4789);
  CHECK(tcp.orig.pkts == 1);
  CHECK(tcp.orig.ip_bytes == inner.ip_bytes);
  CHECK(t.table.stats().packets == 1);
}

TEST_CASE("a UDP datagram first seen from a server port makes its receiver the originator") {
  TestTable t(64, short_timeouts());
  Recorder sink;
  t.table.on_packet(v4(17, 2, 53, 1, 40000, 0, 0), 0, sink);
  t.table.flush(sink);
  const auto ends = sink.of_kind(EventKind::END);
  REQUIRE(ends.size() == 1);
  CHECK(ends[0].orig_port == 40000);
  CHECK(ends[0].resp.pkts == 1);
  CHECK(ends[0].history.view() == "^d");
  CHECK(ends[0].conn_state.view() == "SHR");
}

TEST_CASE("a TCP segment whose header the snaplen cut after the ports still counts to its flow") {
  TestTable t(64, short_timeouts());
  Recorder sink;
  t.table.on_packet(c2s(kSyn), 0, sink);
  DecodedPacket cut = s2c(0, 100);
  cut.ports_cut = true;
  t.table.on_packet(cut, kMs, sink);
  t.table.flush(sink);
  const auto ends = sink.of_kind(EventKind::END);
  REQUIRE(ends.size() == 1);
  CHECK(ends[0].resp.pkts == 1);
  CHECK(ends[0].resp.ip_bytes == cut.ip_bytes);
  CHECK(ends[0].history.view() == "S");  // flags unknown: no letter, no state change
}

TEST_CASE("TCP payload bytes come from sequence numbers, as Zeek counts them") {
  TestTable t(64, short_timeouts());
  Recorder sink;
  t.table.on_packet(c2s(kSyn), 0, sink);
  t.table.on_packet(s2c(kSyn | kAck), 1 * kMs, sink);
  t.table.on_packet(c2s(kAck), 2 * kMs, sink);
  t.table.on_packet(c2s(kPsh | kAck, 100), 3 * kMs, sink);
  // 300 bytes the probe never saw, then 50 more it did: the peer's ack covers all of them.
  g_next_seq[0] += 300;
  t.table.on_packet(c2s(kPsh | kAck, 50), 4 * kMs, sink);
  t.table.on_packet(s2c(kAck), 5 * kMs, sink);
  t.table.on_packet(c2s(kFin | kAck), 6 * kMs, sink);
  t.table.on_packet(s2c(kFin | kAck), 7 * kMs, sink);
  t.table.on_packet(c2s(kAck), 8 * kMs, sink);
  t.table.flush(sink);
  const auto ends = sink.of_kind(EventKind::END);
  REQUIRE(ends.size() == 1);
  CHECK(ends[0].orig.bytes == 450);              // by sequence numbers, the missed 300 included
  CHECK(ends[0].orig.ip_bytes == 6 * 40 + 150);  // by what was seen
  CHECK(ends[0].resp.bytes == 0);                // only its SYN-ACK, ACK and FIN
  CHECK(ends[0].orig.rexmits == 0);
  CHECK(ends[0].history.view() == "ShADaFf");
}

TEST_CASE("retransmissions are counted and marked t/T at the 1st, 10th and 100th") {
  TestTable t(64, short_timeouts());
  Recorder sink;
  t.table.on_packet(c2s(kSyn), 0, sink);
  t.table.on_packet(s2c(kSyn | kAck), 1 * kMs, sink);
  t.table.on_packet(c2s(kAck), 2 * kMs, sink);
  t.table.on_packet(s2c(kPsh | kAck, 500), 3 * kMs, sink);
  std::int64_t now = 4 * kMs;
  for (int i = 0; i < 100; ++i) {
    g_next_seq[1] -= 500;  // the same 500 bytes again
    t.table.on_packet(s2c(kPsh | kAck, 500), now += kMs, sink);
  }
  // A zero-length ACK at an old sequence number is not a retransmission.
  g_next_seq[0] -= 1;
  t.table.on_packet(c2s(kAck), now += kMs, sink);
  g_next_seq[0] += 1;
  t.table.on_packet(c2s(kPsh | kAck, 10), now += kMs, sink);
  g_next_seq[0] -= 10;
  t.table.on_packet(c2s(kPsh | kAck, 10), now += kMs, sink);
  t.table.flush(sink);
  const auto ends = sink.of_kind(EventKind::END);
  REQUIRE(ends.size() == 1);
  CHECK(ends[0].resp.rexmits == 100);
  CHECK(ends[0].orig.rexmits == 1);
  CHECK(ends[0].resp.bytes == 500);
  CHECK(ends[0].orig.bytes == 10);
  CHECK(ends[0].history.view() == "ShAdtttDT");
}

TEST_CASE("packet sizes and inter-arrival times are summed per direction") {
  TestTable t(64, short_timeouts());
  Recorder sink;
  // Client: 3 datagrams of IP size 28+10, 28+100, 28+40 at 0, 10 ms, 40 ms.
  t.table.on_packet(v4(17, 1, 5000, 2, 53, 0, 10), 0, sink);
  t.table.on_packet(v4(17, 1, 5000, 2, 53, 0, 100), 10 * kMs, sink);
  t.table.on_packet(v4(17, 2, 53, 1, 5000, 0, 200), 15 * kMs, sink);
  t.table.on_packet(v4(17, 1, 5000, 2, 53, 0, 40), 40 * kMs, sink);
  t.table.flush(sink);
  const auto ends = sink.of_kind(EventKind::END);
  REQUIRE(ends.size() == 1);
  const auto& o = ends[0].orig;
  CHECK(o.size_min == 38);
  CHECK(o.size_max == 128);
  CHECK(o.size_sumsq == 38u * 38 + 128u * 128 + 68u * 68);
  CHECK(o.iat_min_us == 10'000);
  CHECK(o.iat_max_us == 30'000);
  CHECK(o.iat_sum_us == 40'000);
  CHECK(o.iat_sumsq_us == Approx(1e8 + 9e8));
  const auto& r = ends[0].resp;
  CHECK(r.size_min == 228);
  CHECK(r.size_max == 228);
  CHECK(r.iat_sum_us == 0);  // one packet: no gap
  CHECK(r.iat_min_us == 0);
  CHECK(r.iat_max_us == 0);
}

TEST_CASE(
    "evicting thousands of flows in one journaled step cuts the step instead of overflowing") {
  struct Syncing final : EventSink {
    std::size_t ends = 0, syncs = 0;
    void on_event(const FlowEventData& e) override { ends += e.kind == EventKind::END; }
    void sync() override { ++syncs; }
  };
  TestTable t(8192, short_timeouts());
  Syncing sink;
  for (std::uint32_t i = 0; i < 6000; ++i) {
    t.table.on_packet(v4(17, static_cast<std::uint8_t>(i),
                         static_cast<std::uint16_t>(1000 + i / 256), 200, 53, 0, 10),
                      static_cast<std::int64_t>(i) * kMs, sink);
  }
  REQUIRE(t.table.active() == 6000);
  t.table.begin_step();
  CHECK(t.table.evict_to(100, sink) == 5900);  // used to abort: the journal holds 1024 entries
  t.table.commit_step();
  CHECK(sink.ends == 5900);
  CHECK(sink.syncs > 0);
  CHECK(t.table.active() == 100);
}

TEST_CASE("a flow touched just after it was queued still ends when its timeout runs out") {
  // Lazily requeued at the tail it would wait behind every flow queued since and end up to a
  // whole timeout late (seen live: closed flows ended 10 s after their last packet, not 5).
  TestTable t(256, short_timeouts());  // TCP attempt timeout 5 s
  Recorder sink;
  t.table.on_packet(v4(6, 1, 1000, 200, 80, kSyn), 0, sink);
  t.table.on_packet(v4(6, 1, 1000, 200, 80, kSyn), 1 * kMs, sink);  // a SYN retransmitted
  for (std::uint8_t i = 2; i < 42; ++i) {
    t.table.on_packet(v4(6, i, 1000, 200, 80, kSyn), i * 100 * kMs, sink);
  }
  t.table.expire(5 * kSec + 2 * kMs, sink);
  const auto ends = sink.of_kind(EventKind::END);
  REQUIRE(ends.size() == 1);
  CHECK(ends[0].orig_addr[3] == 1);
  CHECK(ends[0].end_reason == EndReason::IDLE);
  CHECK(ends[0].orig.pkts == 2);
  // The others follow, each when its own 5 s are over, in order.
  t.table.expire(10 * kSec, sink);
  const auto later = sink.of_kind(EventKind::END);
  REQUIRE(later.size() == 1 + 40);
  for (std::size_t k = 1; k < later.size(); ++k) CHECK(later[k].orig_addr[3] == k + 1);
}

// ------------------------------------------------------------------ IP fragments

namespace {

using Bytes = std::vector<std::uint8_t>;

void put16(Bytes& b, std::uint16_t v) {
  b.push_back(static_cast<std::uint8_t>(v >> 8));
  b.push_back(static_cast<std::uint8_t>(v));
}

// A UDP datagram (header + `data` bytes) from port `sport` to `dport`.
Bytes udp_datagram(std::uint16_t sport, std::uint16_t dport, std::size_t data) {
  Bytes b;
  put16(b, sport);
  put16(b, dport);
  put16(b, static_cast<std::uint16_t>(8 + data));
  put16(b, 0);
  b.resize(b.size() + data, 0x5A);
  return b;
}

// Bytes [offset, offset + len) of `datagram` (an IP payload) as an IPv4 fragment from
// 10.0.0.src to 10.0.0.dst, decoded as flowd would see it. "More fragments" is set unless
// the piece ends the datagram.
DecodedPacket v4_fragment(std::uint8_t src, std::uint8_t dst, std::uint16_t id,
                          const Bytes& datagram, std::size_t offset, std::size_t len) {
  REQUIRE(offset % 8 == 0);
  Bytes b{0x45, 0};
  put16(b, static_cast<std::uint16_t>(20 + len));
  put16(b, id);
  const bool more = offset + len < datagram.size();
  put16(b, static_cast<std::uint16_t>((more ? 0x2000 : 0) | offset / 8));
  b.insert(b.end(), {64, 17, 0, 0, 10, 0, 0, src, 10, 0, 0, dst});
  b.insert(b.end(), datagram.begin() + static_cast<std::ptrdiff_t>(offset),
           datagram.begin() + static_cast<std::ptrdiff_t>(offset + len));
  DecodedPacket p;
  REQUIRE(packet::decode(packet::kDltRaw, b, static_cast<std::uint32_t>(b.size()), p) ==
          packet::DecodeStatus::kOk);
  REQUIRE(p.fragment);
  return p;
}

// The same as IPv6 (fe80::src -> fe80::dst, a fragment header, no other extension).
DecodedPacket v6_fragment(std::uint8_t src, std::uint8_t dst, std::uint32_t id,
                          const Bytes& datagram, std::size_t offset, std::size_t len) {
  Bytes b{0x60, 0, 0, 0};
  put16(b, static_cast<std::uint16_t>(8 + len));
  b.insert(b.end(), {44, 64});
  for (std::uint8_t host : {src, dst}) {
    b.insert(b.end(), {0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, host});
  }
  const bool more = offset + len < datagram.size();
  b.insert(b.end(), {17, 0});
  put16(b, static_cast<std::uint16_t>(offset | (more ? 1 : 0)));
  put16(b, static_cast<std::uint16_t>(id >> 16));
  put16(b, static_cast<std::uint16_t>(id));
  b.insert(b.end(), datagram.begin() + static_cast<std::ptrdiff_t>(offset),
           datagram.begin() + static_cast<std::ptrdiff_t>(offset + len));
  DecodedPacket p;
  REQUIRE(packet::decode(packet::kDltRaw, b, static_cast<std::uint32_t>(b.size()), p) ==
          packet::DecodeStatus::kOk);
  REQUIRE(p.fragment);
  return p;
}

}  // namespace

TEST_CASE("a fragmented datagram counts once to its flow, with its whole length, when complete") {
  TestTable t(64, short_timeouts());
  Recorder sink;
  const Bytes dns = udp_datagram(5000, 53, 3000);  // 3008 bytes: pieces of 1480, 1480, 48
  t.table.on_packet(v4_fragment(1, 2, 7, dns, 0, 1480), 0, sink);
  t.table.on_packet(v4_fragment(1, 2, 7, dns, 1480, 1480), kMs, sink);
  CHECK(sink.events.empty());  // nothing counted before the datagram is whole
  CHECK(t.table.fragments_in_flight() == 1);
  t.table.on_packet(v4_fragment(1, 2, 7, dns, 2960, 48), 2 * kMs, sink);
  CHECK(t.table.fragments_in_flight() == 0);
  // The answer, in two pieces, counts to the same flow's responder.
  const Bytes answer = udp_datagram(53, 5000, 1600);
  t.table.on_packet(v4_fragment(2, 1, 9, answer, 0, 1480), 3 * kMs, sink);
  t.table.on_packet(v4_fragment(2, 1, 9, answer, 1480, 128), 4 * kMs, sink);
  t.table.flush(sink);
  const auto ends = sink.of_kind(EventKind::END);
  REQUIRE(ends.size() == 1);
  CHECK(ends[0].orig_port == 5000);
  CHECK(ends[0].resp_port == 53);
  CHECK(ends[0].orig.pkts == 1);
  CHECK(ends[0].orig.ip_bytes == 20 + 3008);
  CHECK(ends[0].orig.bytes == 3000);
  CHECK(ends[0].resp.pkts == 1);
  CHECK(ends[0].resp.ip_bytes == 20 + 1608);
  CHECK(ends[0].resp.bytes == 1600);
  CHECK(ends[0].first_ts_ns == 2 * kMs);  // a datagram's time is its last piece's
  CHECK(ends[0].last_ts_ns == 4 * kMs);
  CHECK(t.table.stats().packets == 5);  // every piece was processed
  CHECK(t.table.fragment_stats().fragments == 5);
  CHECK(t.table.fragment_stats().datagrams == 2);
}

TEST_CASE("a forged last piece ending inside the first makes no datagram and no huge count") {
  TestTable t(64, short_timeouts());
  Recorder sink;
  const Bytes dns = udp_datagram(5000, 53, 3000);
  t.table.on_packet(v4_fragment(1, 2, 7, dns, 0, 1480), 0, sink);  // more fragments set
  const Bytes stub = udp_datagram(5000, 53, 8);                    // 16 bytes
  t.table.on_packet(v4_fragment(1, 2, 7, stub, 8, 8), kMs, sink);  // "last": ends at 16
  t.table.flush(sink);
  CHECK(sink.of_kind(EventKind::END).empty());  // no flow was made of it
  CHECK(t.table.fragment_stats().datagrams == 0);
  CHECK(t.table.fragment_stats().overlapping == 1);
  CHECK(t.table.fragments_in_flight() == 0);
}

TEST_CASE("pieces that come before the first are held and counted when it arrives") {
  TestTable t(64, short_timeouts());
  Recorder sink;
  const Bytes dns = udp_datagram(5000, 53, 3000);
  t.table.on_packet(v4_fragment(1, 2, 7, dns, 2960, 48), 0, sink);
  t.table.on_packet(v4_fragment(1, 2, 7, dns, 1480, 1480), kMs, sink);
  CHECK(sink.events.empty());
  t.table.on_packet(v4_fragment(1, 2, 7, dns, 0, 1480), 2 * kMs, sink);
  t.table.flush(sink);
  const auto ends = sink.of_kind(EventKind::END);
  REQUIRE(ends.size() == 1);
  CHECK(ends[0].orig.pkts == 1);
  CHECK(ends[0].orig.ip_bytes == 20 + 3008);
  CHECK(t.table.fragment_stats().datagrams == 1);
}

TEST_CASE("an IPv6 datagram counts without its fragment headers, as Zeek reassembles it") {
  TestTable t(64, short_timeouts());
  Recorder sink;
  const Bytes dns = udp_datagram(5353, 5353, 2000);
  t.table.on_packet(v6_fragment(1, 2, 0xC0FFEE, dns, 0, 1232), 0, sink);
  t.table.on_packet(v6_fragment(1, 2, 0xC0FFEE, dns, 1232, 776), kMs, sink);
  t.table.flush(sink);
  const auto ends = sink.of_kind(EventKind::END);
  REQUIRE(ends.size() == 1);
  CHECK(ends[0].ip_version == 6);
  CHECK(ends[0].orig.pkts == 1);
  CHECK(ends[0].orig.ip_bytes == 40 + 2008);
  CHECK(ends[0].orig.bytes == 2000);
}

TEST_CASE("pieces of different datagrams are kept apart by addresses and IP id") {
  TestTable t(64, short_timeouts());
  Recorder sink;
  const Bytes a = udp_datagram(5000, 53, 2000), b = udp_datagram(5001, 53, 2000);
  t.table.on_packet(v4_fragment(1, 2, 7, a, 0, 1480), 0, sink);
  t.table.on_packet(v4_fragment(1, 2, 8, b, 0, 1480), 0, sink);
  t.table.on_packet(v4_fragment(1, 3, 7, a, 1480, 528), 0, sink);  // other destination
  CHECK(t.table.fragments_in_flight() == 3);
  t.table.on_packet(v4_fragment(1, 2, 8, b, 1480, 528), kMs, sink);
  t.table.on_packet(v4_fragment(1, 2, 7, a, 1480, 528), kMs, sink);
  CHECK(t.table.fragments_in_flight() == 1);
  t.table.flush(sink);
  const auto ends = sink.of_kind(EventKind::END);
  REQUIRE(ends.size() == 2);
  for (const auto& e : ends) {
    CHECK(e.orig.pkts == 1);
    CHECK(e.orig.ip_bytes == 20 + 2008);
  }
  CHECK(t.table.fragment_stats().without_first == 1);  // the stray piece to 10.0.0.3
}

TEST_CASE("a datagram that never completes is not counted and expires as a weird kind") {
  FlowTableOptions o = short_timeouts();
  o.fragments.timeout_ns = 30 * kSec;
  TestTable t(64, o);
  Recorder sink;
  const Bytes dns = udp_datagram(5000, 53, 3000);
  t.table.on_packet(v4_fragment(1, 2, 7, dns, 0, 1480), 0, sink);     // last piece lost
  t.table.on_packet(v4_fragment(1, 2, 8, dns, 1480, 1480), 0, sink);  // first piece lost
  t.table.expire(30 * kSec, sink);
  CHECK(t.table.fragments_in_flight() == 2);  // not yet past the timeout
  t.table.expire(30 * kSec + 1, sink);
  CHECK(t.table.fragments_in_flight() == 0);
  CHECK(t.table.fragment_stats().incomplete == 1);
  CHECK(t.table.fragment_stats().without_first == 1);
  // The rest of datagram 7 after its expiry starts over and cannot complete either.
  t.table.on_packet(v4_fragment(1, 2, 7, dns, 2960, 48), 31 * kSec, sink);
  t.table.flush(sink);
  CHECK(sink.events.empty());
  CHECK(t.table.fragment_stats().datagrams == 0);
  CHECK(t.table.fragment_stats().without_first == 2);
}

TEST_CASE("a full fragment table evicts the least recently touched datagram and counts it") {
  FlowTableOptions o = short_timeouts();
  o.fragments.capacity = 2;
  TestTable t(64, o);
  Recorder sink;
  const Bytes dns = udp_datagram(5000, 53, 2000);
  t.table.on_packet(v4_fragment(1, 2, 1, dns, 0, 1480), 0, sink);
  t.table.on_packet(v4_fragment(1, 2, 2, dns, 0, 1480), kMs, sink);
  t.table.on_packet(v4_fragment(1, 2, 1, dns, 1480, 8), 2 * kMs, sink);  // 1 is touched (not whole)
  t.table.on_packet(v4_fragment(1, 2, 3, dns, 0, 1480), 3 * kMs, sink);  // evicts 2
  CHECK(t.table.fragment_stats().evicted == 1);
  CHECK(t.table.fragments_in_flight() == 2);
  t.table.on_packet(v4_fragment(1, 2, 1, dns, 1488, 520), 4 * kMs, sink);  // 1 is whole
  CHECK(t.table.fragment_stats().datagrams == 1);
  t.table.on_packet(v4_fragment(1, 2, 2, dns, 1480, 528), 5 * kMs, sink);  // 2 starts over
  t.table.on_packet(v4_fragment(1, 2, 4, dns, 0, 1480), 6 * kMs, sink);    // evicts 3
  CHECK(t.table.fragment_stats().evicted == 2);
  t.table.flush(sink);
  CHECK(t.table.fragment_stats().without_first == 1);  // 2's last piece, its first evicted
  CHECK(t.table.fragment_stats().incomplete == 1);     // 4
  const auto ends = sink.of_kind(EventKind::END);
  REQUIRE(ends.size() == 1);
  CHECK(ends[0].orig.pkts == 1);
  CHECK(ends[0].orig.ip_bytes == 20 + 2008);
}

// ------------------------------------------------------------------ fragments across restarts

namespace {

// The fragment slots of a table over `memory` (they end the table's memory; fresh slots are
// taken from index 0 up).
detail::FragmentSlot* fragment_slots(std::vector<std::byte>& memory, std::size_t capacity) {
  const std::size_t bytes = FragmentTable::bytes_needed(FlowTable::fragment_capacity_for(capacity));
  return reinterpret_cast<detail::FragmentSlot*>(memory.data() + FlowTable::bytes_needed(capacity) -
                                                 bytes);
}

struct SyncCounter final : EventSink {
  std::vector<FlowEventData> events;
  std::size_t syncs = 0;
  void on_event(const FlowEventData& e) override { events.push_back(e); }
  void sync() override { ++syncs; }
};

}  // namespace

TEST_CASE("a datagram whose pieces straddle a flowd restart is counted whole, once") {
  const FlowTableOptions o = short_timeouts();
  std::vector<std::byte> memory(FlowTable::bytes_needed(64));
  Recorder sink;
  const Bytes dns = udp_datagram(5000, 53, 3000);  // pieces of 1480, 1480, 48
  const Bytes ping = udp_datagram(5001, 53, 2000);
  {
    FlowTable first(memory, 64, o);
    first.begin_step();
    first.on_packet(v4_fragment(1, 2, 7, dns, 1480, 1480), 0, sink);
    first.on_packet(v4_fragment(1, 2, 7, dns, 0, 1480), kMs, sink);
    first.on_packet(v4_fragment(1, 2, 8, ping, 1480, 528), kMs, sink);  // its first never comes
    first.commit_step();  // the frame holding these pieces is committed: never read again
    CHECK(first.fragments_in_flight() == 2);
  }  // killed
  FlowTable second(memory, 64, o);
  CHECK(second.resumed());
  CHECK(second.fragments_in_flight() == 2);
  CHECK(second.fragment_stats().fragments == 3);
  second.on_packet(v4_fragment(1, 2, 7, dns, 2960, 48), 2 * kMs, sink);
  CHECK(second.fragments_in_flight() == 1);
  second.flush(sink);
  const auto ends = sink.of_kind(EventKind::END);
  REQUIRE(ends.size() == 1);
  CHECK(ends[0].orig.pkts == 1);
  CHECK(ends[0].orig.ip_bytes == 20 + 3008);
  CHECK(ends[0].orig.bytes == 3000);
  CHECK(second.fragment_stats().datagrams == 1);
  CHECK(second.fragment_stats().without_first == 1);
  CHECK(second.fragment_stats().corrupt == 0);
}

TEST_CASE("a step killed after it completed a datagram is undone for its fragments too") {
  const FlowTableOptions o = short_timeouts();
  std::vector<std::byte> memory(FlowTable::bytes_needed(64));
  Recorder sink;
  const Bytes dns = udp_datagram(5000, 53, 3000);
  {
    FlowTable first(memory, 64, o);
    first.begin_step();
    first.on_packet(v4_fragment(1, 2, 7, dns, 0, 1480), 0, sink);
    first.on_packet(v4_fragment(1, 2, 7, dns, 1480, 1480), kMs, sink);
    first.commit_step();
    // The next frame completes the datagram, starts its flow, and is killed before commit.
    first.begin_step();
    first.on_packet(v4_fragment(1, 2, 7, dns, 2960, 48), 2 * kMs, sink);
    CHECK(first.fragments_in_flight() == 0);
    CHECK(first.active() == 1);
  }
  FlowTable second(memory, 64, o);
  CHECK(second.rolled_back());
  CHECK(second.active() == 0);
  CHECK(second.fragments_in_flight() == 1);  // as the last commit left it
  CHECK(second.fragment_stats().fragments == 2);
  second.begin_step();
  second.on_packet(v4_fragment(1, 2, 7, dns, 2960, 48), 2 * kMs, sink);  // replayed
  second.commit_step();
  second.flush(sink);
  const auto ends = sink.of_kind(EventKind::END);
  REQUIRE(ends.size() == 1);
  CHECK(ends[0].orig.pkts == 1);
  CHECK(ends[0].orig.ip_bytes == 20 + 3008);
  CHECK(second.fragment_stats().datagrams == 1);
  CHECK(second.fragment_stats().fragments == 3);
}

TEST_CASE("the first piece's decode comes back from its slot exactly as stored") {
  const Bytes dns = udp_datagram(5000, 53, 3000);
  for (const DecodedPacket& p :
       {v4_fragment(1, 2, 7, dns, 0, 1480), v6_fragment(1, 2, 0xC0FFEE, dns, 0, 1232)}) {
    detail::FragmentSlot slot{};
    slot.in_use = 1;
    slot.have_first = 1;
    slot.src = p.frag.src;
    slot.dst = p.frag.dst;
    slot.id = p.frag.id;
    slot.vlan = p.frag.vlan;
    slot.proto = p.frag.proto;
    slot.ip_version = p.frag.ip_version;
    FragmentTable::store_first(slot, p);
    CHECK(FragmentTable::valid(slot));
    DecodedPacket back;
    REQUIRE(FragmentTable::load_first(slot, back));
    CHECK(back.key == p.key);
    CHECK(back.ip_bytes == p.ip_bytes);
    CHECK(back.payload_bytes == p.payload_bytes);
    CHECK(back.has_ports == p.has_ports);
    CHECK(back.fragment);
    CHECK(back.outer_count == p.outer_count);
    CHECK(back.frag.src == p.frag.src);
    CHECK(back.frag.id == p.frag.id);
    CHECK(back.frag.length == p.frag.length);
    CHECK(back.frag.header_len == p.frag.header_len);
    CHECK(back.frag.more == p.frag.more);
    CHECK(back.frag.layer == p.frag.layer);
    CHECK(back.frag.outer_before == p.frag.outer_before);
    CHECK(back.frag.ip_version == p.frag.ip_version);
  }
}

TEST_CASE("fragment slots that are invalid in shared memory are dropped and counted on attach") {
  const FlowTableOptions o = short_timeouts();
  std::vector<std::byte> memory(FlowTable::bytes_needed(64));
  Recorder sink;
  const Bytes dns = udp_datagram(5000, 53, 3000);
  {
    FlowTable first(memory, 64, o);
    for (std::uint16_t id = 1; id <= 6; ++id) {
      first.on_packet(v4_fragment(1, 2, id, dns, 0, 1480), id * kMs, sink);  // slots 0..5
    }
  }
  detail::FragmentSlot* slots = fragment_slots(memory, 64);
  REQUIRE(slots[0].in_use == 1);
  REQUIRE(slots[0].id == 1);
  slots[0].in_use = 7;         // neither free nor used
  slots[1].have_first = 2;     // not a flag
  slots[2].outer_count = 200;  // more tunnels than a packet can have
  slots[3].ip_version = 5;
  slots[4].frag_layer = 3;  // a layer that is not there
  slots[6] = slots[5];      // a second slot for one datagram
  FlowTable second(memory, 64, o);
  CHECK(second.resumed());
  CHECK(second.fragments_in_flight() == 1);
  CHECK(second.fragment_stats().corrupt == 6);
  // What is left works: the surviving datagram (id 6) completes.
  second.on_packet(v4_fragment(1, 2, 6, dns, 1480, 1480), 10 * kMs, sink);
  second.on_packet(v4_fragment(1, 2, 6, dns, 2960, 48), 11 * kMs, sink);
  second.flush(sink);
  REQUIRE(sink.of_kind(EventKind::END).size() == 1);
  CHECK(sink.of_kind(EventKind::END)[0].orig.ip_bytes == 20 + 3008);
}

TEST_CASE("any single bit flipped in a fragment slot is rejected or harmless") {
  const FlowTableOptions o = short_timeouts();
  const Bytes dns = udp_datagram(5000, 53, 3000);
  std::vector<std::byte> pristine(FlowTable::bytes_needed(8));
  {
    Recorder sink;
    FlowTable first(pristine, 8, o);
    first.on_packet(v4_fragment(1, 2, 7, dns, 0, 1480), 0, sink);
    first.on_packet(v4_fragment(1, 2, 7, dns, 1480, 1480), kMs, sink);
  }
  std::size_t rejected = 0;
  for (std::size_t bit = 0; bit < sizeof(detail::FragmentSlot) * 8; ++bit) {
    std::vector<std::byte> memory = pristine;
    auto* bytes = reinterpret_cast<std::uint8_t*>(fragment_slots(memory, 8));
    bytes[bit / 8] ^= static_cast<std::uint8_t>(1u << (bit % 8));
    Recorder sink;
    FlowTable table(memory, 8, o);
    rejected += table.fragment_stats().corrupt;
    // Whatever the slot now says, the rest of the datagram and the shutdown run cleanly.
    table.on_packet(v4_fragment(1, 2, 7, dns, 2960, 48), 2 * kMs, sink);
    table.expire(100 * kSec, sink);
    table.flush(sink);
    CHECK(table.fragments_in_flight() == 0);
    for (const auto& e : sink.of_kind(EventKind::END)) CHECK(e.orig.pkts <= 1);
  }
  CHECK(rejected > 0);
}

TEST_CASE("a flood of fragments stays within the table's slots, evicting and counting") {
  TestTable t(64, short_timeouts());
  Recorder sink;
  const Bytes dns = udp_datagram(5000, 53, 3000);
  const std::size_t slots = FlowTable::fragment_capacity_for(64);
  CHECK(t.table.fragment_capacity() == slots);
  for (std::uint32_t i = 0; i < 10'000; ++i) {
    t.table.on_packet(v4_fragment(1, 2, static_cast<std::uint16_t>(i), dns, 0, 1480), i, sink);
    CHECK(t.table.fragments_in_flight() <= slots);
  }
  CHECK(t.table.fragments_in_flight() == slots);
  CHECK(t.table.fragment_stats().evicted == 10'000 - slots);
}

TEST_CASE("expiring thousands of datagrams in one step checkpoints instead of overflowing") {
  // 4096 fragment slots: more than the undo journal holds, in one step.
  constexpr std::size_t kFlows = 65536;
  std::vector<std::byte> memory(FlowTable::bytes_needed(kFlows));
  FlowTableOptions o = short_timeouts();
  o.fragments.timeout_ns = 30 * kSec;
  const Bytes dns = udp_datagram(5000, 53, 3000);
  SyncCounter sink;
  {
    FlowTable first(memory, kFlows, o);
    REQUIRE(first.fragment_capacity() == 4096);
    first.begin_step();
    for (std::uint32_t i = 0; i < 4096; ++i) {
      first.on_packet(v4_fragment(1, static_cast<std::uint8_t>(2 + i % 200),
                                  static_cast<std::uint16_t>(i), dns, 0, 1480),
                      0, sink);
    }
    first.commit_step();
    CHECK(sink.syncs > 0);  // the packets alone outgrew one journal
    CHECK(first.fragments_in_flight() == 4096);
    const std::size_t before = sink.syncs;
    first.begin_step();
    first.expire(31 * kSec, sink);
    CHECK(sink.syncs > before);
    CHECK(first.fragments_in_flight() == 0);
    CHECK(first.fragment_stats().incomplete == 4096);
    // Killed before this step's commit: only its last part (since the last checkpoint) is
    // undone, and the table stays consistent.
  }
  FlowTable second(memory, kFlows, o);
  CHECK(second.rolled_back());
  CHECK(second.fragments_in_flight() > 0);
  CHECK(second.fragments_in_flight() < 4096);
  CHECK(second.fragment_stats().incomplete + second.fragments_in_flight() == 4096);
  CHECK(second.fragment_stats().corrupt == 0);
  Recorder rest;
  second.expire(31 * kSec, rest);
  CHECK(second.fragments_in_flight() == 0);
  CHECK(second.fragment_stats().incomplete == 4096);
}

TEST_CASE("a repeated piece completes a datagram counted once and as overlapping") {
  TestTable t(64, short_timeouts());
  Recorder sink;
  const Bytes dns = udp_datagram(5000, 53, 2000);
  t.table.on_packet(v4_fragment(1, 2, 7, dns, 1480, 528), 0, sink);
  t.table.on_packet(v4_fragment(1, 2, 7, dns, 1480, 528), 0, sink);
  t.table.on_packet(v4_fragment(1, 2, 7, dns, 0, 1480), 0, sink);
  t.table.flush(sink);
  const auto ends = sink.of_kind(EventKind::END);
  REQUIRE(ends.size() == 1);
  CHECK(ends[0].orig.pkts == 1);
  CHECK(t.table.fragment_stats().overlapping == 1);
}

// ------------------------------------------------------------------ tunnel parents

TEST_CASE("a tunnelled flow names the tunnel connections around it, each once, at most two") {
  TestTable t(64, short_timeouts());
  Recorder sink;
  auto in_tunnel = [](DecodedPacket inner, std::uint8_t tunnel_src, std::uint16_t sport) {
    const DecodedPacket outer = v4(17, tunnel_src, sport, 8, 2152, 0, 8 + inner.ip_bytes);
    inner.outer[0] = packet::OuterFlow{outer.key, outer.ip_bytes, outer.payload_bytes};
    inner.outer_count = 1;
    return inner;
  };
  // Uplink and downlink in two GTP-U tunnels (as core.tunnels.gtp.different_dl_and_ul).
  t.table.on_packet(in_tunnel(c2s(kSyn), 7, 2152), 0, sink);
  t.table.on_packet(in_tunnel(s2c(kSyn | kAck), 9, 5906), kMs, sink);
  t.table.on_packet(in_tunnel(c2s(kAck), 7, 2152), 2 * kMs, sink);
  t.table.on_packet(in_tunnel(c2s(kAck), 11, 2152), 3 * kMs, sink);  // a third: not kept
  t.table.on_packet(c2s(kAck), 4 * kMs, sink);  // not in a tunnel: no parent added
  t.table.flush(sink);
  const auto ends = sink.of_kind(EventKind::END);
  REQUIRE(ends.size() == 4);
  std::map<std::uint8_t, std::uint64_t> tunnel_uid;  // by tunnel source host
  const FlowEventData* tcp = nullptr;
  for (const auto& e : ends) {
    if (e.proto == 17) {
      tunnel_uid[e.orig_addr[3]] = e.uid;
      CHECK(e.tunnel_parents == std::array<std::uint64_t, 2>{});  // not itself tunnelled
    } else {
      tcp = &e;
    }
  }
  REQUIRE(tcp != nullptr);
  REQUIRE(tunnel_uid.size() == 3);
  CHECK(tcp->tunnel_parents[0] == tunnel_uid[7]);
  CHECK(tcp->tunnel_parents[1] == tunnel_uid[9]);
  // The start event already names the first parent.
  const auto starts = sink.of_kind(EventKind::START);
  for (const auto& s : starts) {
    if (s.proto == 6) CHECK(s.tunnel_parents[0] == tunnel_uid[7]);
  }

  capnp::MallocMessageBuilder message;
  auto r = message.initRoot<schema::FlowEvent>();
  encode(*tcp, r);
  REQUIRE(r.getTunnelParents().size() == 2);
  CHECK(r.getTunnelParents()[0] == tunnel_uid[7]);
  encode(ends[0].proto == 17 ? ends[0] : ends[1], message.initRoot<schema::FlowEvent>());
  CHECK_FALSE(message.getRoot<schema::FlowEvent>().hasTunnelParents());  // null, not empty
}

TEST_CASE("a tunnel inside a tunnel is the parent of the flow inside it") {
  TestTable t(64, short_timeouts());
  Recorder sink;
  DecodedPacket inner = v4(17, 1, 36872, 2, 53, 0, 40);
  const DecodedPacket geneve = v4(17, 5, 11803, 6, 6081, 0, 200);
  const DecodedPacket vxlan = v4(17, 3, 26383, 4, 4789, 0, 150);
  inner.outer[0] = packet::OuterFlow{geneve.key, geneve.ip_bytes, geneve.payload_bytes};
  inner.outer[1] = packet::OuterFlow{vxlan.key, vxlan.ip_bytes, vxlan.payload_bytes};
  inner.outer_count = 2;
  t.table.on_packet(inner, 0, sink);
  t.table.flush(sink);
  std::map<std::uint16_t, FlowEventData> by_port;
  for (const auto& e : sink.of_kind(EventKind::END)) by_port[e.resp_port] = e;
  REQUIRE(by_port.size() == 3);
  CHECK(by_port[6081].tunnel_parents[0] == 0);
  CHECK(by_port[4789].tunnel_parents[0] == by_port[6081].uid);
  CHECK(by_port[53].tunnel_parents[0] == by_port[4789].uid);
  CHECK(by_port[53].tunnel_parents[1] == 0);
}

TEST_CASE("a datagram fragmented inside a whole tunnel packet counts each piece to the tunnel") {
  TestTable t(64, short_timeouts());
  Recorder sink;
  const Bytes dns = udp_datagram(5000, 53, 2000);
  const DecodedPacket tunnel = v4(17, 7, 2152, 8, 2152, 0, 0);
  auto through_tunnel = [&](DecodedPacket piece) {
    piece.outer[0] = packet::OuterFlow{tunnel.key, 28 + 8 + piece.ip_bytes, 8 + piece.ip_bytes};
    piece.outer_count = 1;
    piece.frag.outer_before = 1;  // as decode() marks a fragment inside a whole tunnel packet
    return piece;
  };
  t.table.on_packet(through_tunnel(v4_fragment(1, 2, 7, dns, 0, 1480)), 0, sink);
  t.table.on_packet(through_tunnel(v4_fragment(1, 2, 7, dns, 1480, 528)), kMs, sink);
  t.table.flush(sink);
  std::map<std::uint16_t, FlowEventData> by_port;
  for (const auto& e : sink.of_kind(EventKind::END)) by_port[e.resp_port] = e;
  REQUIRE(by_port.size() == 2);
  CHECK(by_port[2152].orig.pkts == 2);  // the tunnel carried two packets
  CHECK(by_port[2152].orig.ip_bytes == (28 + 8 + 1500) + (28 + 8 + 548));
  CHECK(by_port[53].orig.pkts == 1);  // the inner datagram is one
  CHECK(by_port[53].orig.ip_bytes == 20 + 2008);
  CHECK(by_port[53].tunnel_parents[0] == by_port[2152].uid);
}

// --- Zeek's TCP state machine, originator choice and history ---

TEST_CASE("a connection attempt ends 5 s after its SYN however busy the originator is") {
  // Zeek's attempt timer counts from the SYN: a client seen alone (half-duplex capture) that
  // goes on sending is an attempt (S0) for 5 s, and what it sends later a new connection.
  TestTable t(64, short_timeouts());
  Recorder sink;
  t.table.on_packet(c2s(kSyn), 0, sink);
  t.table.on_packet(c2s(kAck), 1 * kSec, sink);
  t.table.on_packet(c2s(kPsh | kAck, 20), 2 * kSec, sink);
  t.table.on_packet(c2s(kPsh | kAck, 20), 4 * kSec, sink);  // under 5 s since the last: no
  t.table.on_packet(c2s(kPsh | kAck, 20), 6 * kSec, sink);  // idle timeout, but 6 s since SYN
  t.table.on_packet(c2s(kFin | kAck), 7 * kSec, sink);
  t.table.flush(sink);
  const auto ends = sink.of_kind(EventKind::END);
  REQUIRE(ends.size() == 2);
  CHECK(ends[0].end_reason == EndReason::IDLE);
  CHECK(ends[0].conn_state.view() == "S0");
  CHECK(ends[0].history.view() == "SAD");
  CHECK(ends[0].orig.pkts == 4);
  CHECK(ends[0].last_ts_ns == 4 * kSec);
  CHECK(ends[1].uid != ends[0].uid);
  CHECK(ends[1].orig_port == 40000);  // still the client: the server port decides
  CHECK(ends[1].conn_state.view() == "SH");
  CHECK(ends[1].history.view() == "DF");
  CHECK(ends[1].orig.pkts == 2);
}

TEST_CASE("a flow seen from one side only, not an attempt, waits for the established timeout") {
  // Zeek times out only attempts (and closed connections) early: a server seen alone
  // (half-duplex capture) keeps its one connection across gaps of over 5 s.
  TestTable t(64, short_timeouts());
  Recorder sink;
  t.table.on_packet(s2c(kSyn | kAck), 0, sink);
  t.table.on_packet(s2c(kPsh | kAck, 100), 1 * kSec, sink);
  t.table.expire(7 * kSec, sink);
  t.table.on_packet(s2c(kPsh | kAck, 100), 8 * kSec, sink);
  t.table.expire(8 * kSec + 300 * kSec, sink);
  CHECK(sink.of_kind(EventKind::END).empty());
  t.table.expire(8 * kSec + 300 * kSec + 1, sink);
  const auto ends = sink.of_kind(EventKind::END);
  REQUIRE(ends.size() == 1);
  CHECK(ends[0].end_reason == EndReason::IDLE);
  CHECK(ends[0].resp.pkts == 3);
  CHECK(ends[0].history.view() == "^hd");
  CHECK(ends[0].conn_state.view() == "OTH");
}

TEST_CASE("the responder's SYN-ACK establishes it, so a missed SYN still gives S1") {
  TestTable t(64, short_timeouts());
  Recorder sink;
  t.table.on_packet(s2c(kSyn | kAck), 0, sink);
  t.table.on_packet(c2s(kAck), 1 * kMs, sink);
  t.table.on_packet(c2s(kPsh | kAck, 110), 2 * kMs, sink);
  t.table.on_packet(s2c(kPsh | kAck, 90), 3 * kMs, sink);
  t.table.flush(sink);
  const auto ends = sink.of_kind(EventKind::END);
  REQUIRE(ends.size() == 1);
  CHECK(ends[0].conn_state.view() == "S1");
  CHECK(ends[0].history.view() == "^hADd");
}

TEST_CASE("a RST after both sides' FINs leaves the close orderly: SF") {
  TestTable t(64, short_timeouts());
  Recorder sink;
  full_tcp_conversation(t.table, sink);
  t.table.on_packet(s2c(kRst), 9 * kMs, sink);
  t.table.flush(sink);
  const auto ends = sink.of_kind(EventKind::END);
  REQUIRE(ends.size() == 1);
  CHECK(ends[0].conn_state.view() == "SF");
  CHECK(ends[0].history.view() == "ShADadFfr");
  CHECK(ends[0].end_reason == EndReason::FIN);
}

TEST_CASE("a FIN answering the peer's FIN and RST turns that RST back into a close: SF") {
  TestTable t(64, short_timeouts());
  Recorder sink;
  t.table.on_packet(c2s(kSyn), 0, sink);
  t.table.on_packet(s2c(kSyn | kAck), 1 * kMs, sink);
  t.table.on_packet(c2s(kAck), 2 * kMs, sink);
  t.table.on_packet(s2c(kFin | kAck), 3 * kMs, sink);
  t.table.on_packet(s2c(kRst), 4 * kMs, sink);         // the server: FIN, then RST
  t.table.on_packet(c2s(kFin | kAck), 5 * kMs, sink);  // the client closes too
  t.table.flush(sink);
  const auto ends = sink.of_kind(EventKind::END);
  REQUIRE(ends.size() == 1);
  CHECK(ends[0].conn_state.view() == "SF");
  CHECK(ends[0].history.view() == "ShAfrF");
}

TEST_CASE("history: SYN with FIN or RST is q, FIN with RST is i, a FIN carrying data is f") {
  TestTable t(64, short_timeouts());
  Recorder sink;
  t.table.on_packet(v4(6, 3, 1000, 9, 80, kSyn | kFin), 0, sink);
  t.table.on_packet(v4(6, 2, 1000, 9, 80, kSyn), 0, sink);
  t.table.on_packet(v4(6, 9, 80, 2, 1000, kSyn | kAck), 1, sink);
  t.table.on_packet(v4(6, 2, 1000, 9, 80, kFin | kRst | kAck), 2, sink);
  t.table.on_packet(c2s(kSyn), 0, sink);
  t.table.on_packet(s2c(kSyn | kAck), 1, sink);
  t.table.on_packet(c2s(kAck), 2, sink);
  t.table.on_packet(c2s(kFin | kPsh | kAck, 10), 3, sink);
  t.table.flush(sink);
  const auto ends = sink.of_kind(EventKind::END);
  REQUIRE(ends.size() == 3);
  for (const auto& e : ends) {
    INFO("orig " << int(e.orig_addr[3]) << " history " << e.history.view());
    if (e.orig_addr[3] == 3) CHECK(e.history.view() == "Q");
    if (e.orig_addr[3] == 2) CHECK(e.history.view() == "ShI");
    if (e.orig_port == 40000) {
      CHECK(e.history.view() == "ShAF");
      CHECK(e.orig.bytes == 10);
    }
  }
}

TEST_CASE("a new SYN after one side's FIN starts a new connection") {
  // Zeek: a SYN on a connection either side has closed is a reuse of the port pair.
  TestTable t(64, short_timeouts());
  Recorder sink;
  t.table.on_packet(c2s(kSyn), 0, sink);
  t.table.on_packet(s2c(kSyn | kAck), 1 * kMs, sink);
  t.table.on_packet(c2s(kAck), 2 * kMs, sink);
  t.table.on_packet(c2s(kFin | kAck), 3 * kMs, sink);
  t.table.on_packet(c2s(kSyn), 1 * kSec, sink);
  const auto ends = sink.of_kind(EventKind::END);
  REQUIRE(ends.size() == 1);
  CHECK(ends[0].conn_state.view() == "S2");
  CHECK(ends[0].end_reason == EndReason::IDLE);  // half-closed: no FIN both ways to report
  CHECK(sink.of_kind(EventKind::START).size() == 2);
}

TEST_CASE("a FIN from one side with nothing from the other lingers as closed: SH") {
  TestTable t(64, short_timeouts());
  Recorder sink;
  t.table.on_packet(c2s(kPsh | kAck, 10), 0, sink);
  t.table.on_packet(c2s(kFin | kAck), 1 * kMs, sink);
  t.table.expire(1 * kMs + 5 * kSec, sink);
  CHECK(sink.of_kind(EventKind::END).empty());
  t.table.expire(1 * kMs + 5 * kSec + 1, sink);
  const auto ends = sink.of_kind(EventKind::END);
  REQUIRE(ends.size() == 1);
  CHECK(ends[0].end_reason == EndReason::FIN);
  CHECK(ends[0].conn_state.view() == "SH");
  CHECK(ends[0].history.view() == "DF");
}

TEST_CASE("a datagram to the IPv4 broadcast address keeps its sender as originator") {
  // Zeek does not flip a connection to 255.255.255.255 (a DHCP server's broadcast reply).
  TestTable t(64, short_timeouts());
  Recorder sink;
  DecodedPacket offer = v4(17, 2, 67, 0, 68, 0, 300);
  offer.key.dst = {255, 255, 255, 255};
  t.table.on_packet(offer, 0, sink);
  t.table.on_packet(v4(17, 2, 67, 1, 68, 0, 300), 0, sink);  // unicast: flipped as before
  t.table.flush(sink);
  const auto ends = sink.of_kind(EventKind::END);
  REQUIRE(ends.size() == 2);
  for (const auto& e : ends) {
    if (e.resp_addr[0] == 255 || e.orig_addr[0] == 255) {
      CHECK(e.resp_addr[0] == 255);
      CHECK(e.orig_port == 67);
      CHECK(e.history.view() == "D");
      CHECK(e.conn_state.view() == "S0");
    } else {
      CHECK(e.orig_port == 68);
      CHECK(e.history.view() == "^d");
    }
  }
}

TEST_CASE("a transport flowseal does not know reports no payload bytes, as Zeek") {
  TestTable t(64, short_timeouts());
  Recorder sink;
  const DecodedPacket unknown = v4(99, 1, 0, 2, 0, 0, 6);
  t.table.on_packet(unknown, 0, sink);
  t.table.on_packet(v4(132, 1, 5000, 2, 5001, 0, 16), 0, sink);  // SCTP: known, counted
  t.table.flush(sink);
  const auto ends = sink.of_kind(EventKind::END);
  REQUIRE(ends.size() == 2);
  for (const auto& e : ends) {
    if (e.proto == 99) {
      CHECK(e.orig.bytes == 0);
      CHECK(e.orig.ip_bytes == unknown.ip_bytes);
    } else {
      CHECK(e.orig.bytes == 16);
    }
  }
}

TEST_CASE("the TCP states and attempt timer survive a restart and a rolled-back step") {
  const FlowTableOptions o = short_timeouts();
  std::vector<std::byte> memory(FlowTable::bytes_needed(16));
  Recorder sink;
  {
    FlowTable first(memory, 16, o);
    first.on_packet(c2s(kSyn), 0, sink);
    first.on_packet(s2c(kSyn | kAck), 1 * kMs, sink);
    first.on_packet(c2s(kAck), 2 * kMs, sink);
    first.on_packet(s2c(kFin | kAck), 3 * kMs, sink);
    first.on_packet(v4(6, 5, 1000, 6, 22, kSyn), 0, sink);  // an attempt
    // Killed in the middle of a step: the server's RST (FIN then RST) is undone.
    first.begin_step();
    first.on_packet(s2c(kRst), 4 * kMs, sink);
  }
  {
    FlowTable second(memory, 16, o);
    CHECK(second.rolled_back());
    second.begin_step();
    second.on_packet(s2c(kRst), 4 * kMs, sink);  // replayed: prev state closed again
    second.on_packet(c2s(kFin | kAck), 5 * kMs, sink);
    second.commit_step();
  }
  FlowTable third(memory, 16, o);
  CHECK_FALSE(third.rolled_back());
  third.on_packet(v4(6, 5, 1000, 6, 22, kAck, 10), 6 * kSec, sink);  // past the attempt
  third.flush(sink);
  const auto ends = sink.of_kind(EventKind::END);
  REQUIRE(ends.size() == 3);
  for (const auto& e : ends) {
    INFO("orig " << int(e.orig_addr[3]) << " history " << e.history.view());
    if (e.orig_port == 40000) CHECK(e.conn_state.view() == "SF");
    if (e.orig_addr[3] == 5 && e.history.view() == "S") CHECK(e.conn_state.view() == "S0");
    if (e.orig_addr[3] == 5 && e.history.view() != "S") CHECK(e.history.view() == "D");
  }
}

TEST_CASE("zero windows are marked w/W at the 1st, 10th and 100th, not after a FIN or RST") {
  TestTable t(64, short_timeouts());
  Recorder sink;
  t.table.on_packet(c2s(kSyn), 0, sink);
  t.table.on_packet(s2c(kSyn | kAck), 1 * kMs, sink);
  t.table.on_packet(c2s(kAck), 2 * kMs, sink);
  std::int64_t now = 3 * kMs;
  for (int i = 0; i < 100; ++i) {  // the client's receive buffer is full: window 0
    DecodedPacket full = c2s(kAck);
    full.tcp_window = 0;
    t.table.on_packet(full, now += kMs, sink);
  }
  t.table.on_packet(s2c(kFin | kAck), now += kMs, sink);
  DecodedPacket after_fin = c2s(kAck);  // after the peer's FIN: no window matters
  after_fin.tcp_window = 0;
  t.table.on_packet(after_fin, now += kMs, sink);
  DecodedPacket rst = s2c(kRst);  // with a RST: not news either
  rst.tcp_window = 0;
  t.table.on_packet(rst, now += kMs, sink);
  t.table.flush(sink);
  const auto ends = sink.of_kind(EventKind::END);
  REQUIRE(ends.size() == 1);
  CHECK(ends[0].history.view() == "ShAWWWfr");
}

TEST_CASE("a RST at another sequence number than the side's last one is marked again") {
  TestTable t(64, short_timeouts());
  Recorder sink;
  t.table.on_packet(c2s(kSyn), 0, sink);
  t.table.on_packet(s2c(kSyn | kAck), 1 * kMs, sink);
  t.table.on_packet(c2s(kAck), 2 * kMs, sink);
  t.table.on_packet(s2c(kRst | kAck), 3 * kMs, sink);
  t.table.on_packet(s2c(kRst | kAck), 4 * kMs, sink);  // the same seq: not again
  g_next_seq[1] += 1000;
  t.table.on_packet(s2c(kRst), 5 * kMs, sink);  // another seq: r again
  t.table.flush(sink);
  const auto ends = sink.of_kind(EventKind::END);
  REQUIRE(ends.size() == 1);
  CHECK(ends[0].history.view() == "ShArr");
  CHECK(ends[0].conn_state.view() == "RSTR");
}

TEST_CASE("a SYN with another initial sequence number on an open connection starts a new one") {
  // Zeek's IsReuse: the client reused its port for a new connection; a retransmitted SYN
  // (the same ISN) is the same attempt.
  TestTable t(64, short_timeouts());
  Recorder sink;
  t.table.on_packet(c2s(kSyn), 0, sink);
  t.table.on_packet(c2s(kSyn), 1 * kSec, sink);  // retransmitted: the same ISN
  DecodedPacket again = c2s(kSyn);
  again.tcp_seq += 123456;
  t.table.on_packet(again, 2 * kSec, sink);
  t.table.flush(sink);
  const auto ends = sink.of_kind(EventKind::END);
  REQUIRE(ends.size() == 2);
  CHECK(ends[0].orig.pkts == 2);
  CHECK(ends[0].history.view() == "S");
  CHECK(ends[0].end_reason == EndReason::IDLE);
  CHECK(ends[1].orig.pkts == 1);
  CHECK(ends[1].conn_state.view() == "S0");
}

TEST_CASE("once both sides have closed, later packets count but do not extend the flow's time") {
  // Zeek's duration ends at the last packet before both sides had sent a FIN or RST; a late
  // ACK or RST is counted, and a packet after the linger starts a new flow.
  TestTable t(64, short_timeouts());
  Recorder sink;
  full_tcp_conversation(t.table, sink);          // second FIN at 7 ms, last ACK at 8 ms
  t.table.on_packet(s2c(kRst), 3 * kSec, sink);  // a late RST: counted, time unchanged
  t.table.on_packet(c2s(kAck), 7 * kMs + 5 * kSec + 1, sink);  // past the linger: a new flow
  t.table.flush(sink);
  const auto ends = sink.of_kind(EventKind::END);
  REQUIRE(ends.size() == 2);
  CHECK(ends[0].last_ts_ns == 7 * kMs);
  CHECK(ends[0].orig.pkts == 5);
  CHECK(ends[0].resp.pkts == 5);
  CHECK(ends[0].conn_state.view() == "SF");
  CHECK(ends[0].history.view() == "ShADadFfr");
  CHECK(ends[1].history.view() == "A");
  // A flow with only one side closed keeps its clock running.
  TestTable u(64, short_timeouts());
  Recorder half;
  u.table.on_packet(c2s(kSyn), 0, half);
  u.table.on_packet(s2c(kSyn | kAck), 1 * kMs, half);
  u.table.on_packet(c2s(kFin | kAck), 2 * kMs, half);
  u.table.on_packet(s2c(kPsh | kAck, 10), 3 * kMs, half);
  u.table.flush(half);
  REQUIRE(half.of_kind(EventKind::END).size() == 1);
  CHECK(half.of_kind(EventKind::END)[0].last_ts_ns == 3 * kMs);
}

TEST_CASE("a killed step restores the flows its packets touched many times, ended and reopened") {
  // A step saves a slot once, before its first change (FlowSlot::journal_step). Here one
  // step's packets touch a connection forty times, end it, and start a new connection on
  // the same ports, which reuses its slot; killed before the commit, the step must leave the
  // table exactly as before it, so that its replay gives the events of a run never killed.
  const FlowTableOptions o = short_timeouts();
  std::vector<std::pair<DecodedPacket, std::int64_t>> before{
      {c2s(kSyn), 0}, {s2c(kSyn | kAck), 1 * kMs}, {c2s(kAck), 2 * kMs}};
  std::vector<std::pair<DecodedPacket, std::int64_t>> step;
  std::int64_t now = 3 * kMs;
  for (int i = 0; i < 20; ++i) {
    step.emplace_back(c2s(kPsh | kAck, 100), now += kMs);
    step.emplace_back(s2c(kAck, 50), now += kMs);
  }
  step.emplace_back(c2s(kFin | kAck), now += kMs);
  step.emplace_back(s2c(kFin | kAck), now += kMs);
  step.emplace_back(c2s(kAck), now += kMs);
  step.emplace_back(v4(6, 1, 40000, 2, 80, kSyn), now += 10 * kSec);  // a new connection
  step.emplace_back(v4(6, 2, 80, 1, 40000, kSyn | kAck), now += kMs);

  // `kills` lives end in the middle of the step; the next life replays it.
  const auto events_after = [&](int kills) {
    std::vector<std::byte> memory(FlowTable::bytes_needed(16));
    Recorder earlier_lives;
    {
      FlowTable table(memory, 16, o);
      table.begin_step();
      for (const auto& [packet, ts] : before) table.on_packet(packet, ts, earlier_lives);
      table.commit_step();
    }
    for (int life = 0; life < kills; ++life) {
      FlowTable table(memory, 16, o);
      CHECK(table.rolled_back() == (life > 0));
      table.begin_step();
      for (const auto& [packet, ts] : step) table.on_packet(packet, ts, earlier_lives);
    }
    Recorder sink;
    FlowTable table(memory, 16, o);
    CHECK(table.rolled_back() == (kills > 0));
    table.begin_step();
    for (const auto& [packet, ts] : step) table.on_packet(packet, ts, sink);
    table.commit_step();
    table.flush(sink);
    return sink.events;
  };
  const std::vector<FlowEventData> undisturbed = events_after(0);
  // Twice: the second life's step must not take the first's step number (its slots carry it).
  const std::vector<FlowEventData> replayed = events_after(2);
  REQUIRE(undisturbed.size() == replayed.size());
  REQUIRE(std::count_if(undisturbed.begin(), undisturbed.end(),
                        [](const FlowEventData& e) { return e.kind == EventKind::END; }) == 2);
  for (std::size_t i = 0; i < undisturbed.size(); ++i) {
    const FlowEventData& a = undisturbed[i];
    const FlowEventData& b = replayed[i];
    INFO("event " << i << " history " << a.history.view() << " / " << b.history.view());
    CHECK(a.kind == b.kind);
    CHECK(a.uid == b.uid);
    CHECK(a.event_number == b.event_number);
    CHECK(a.history.view() == b.history.view());
    CHECK(a.conn_state.view() == b.conn_state.view());
    CHECK(a.orig.pkts == b.orig.pkts);
    CHECK(a.orig.ip_bytes == b.orig.ip_bytes);
    CHECK(a.resp.pkts == b.resp.pkts);
    CHECK(a.resp.ip_bytes == b.resp.ip_bytes);
  }
}
