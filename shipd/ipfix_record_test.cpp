// The record -> IPFIX mapping (ipfix_record.h) and the libfixbuf session that sends it
// (ipfix_exporter.h): what a collector receives for each kind of stored record.
#include <unistd.h>

#include <filesystem>
#include <vector>

#include <capnp/message.h>
#include <catch2/catch.hpp>

#include "flowseal.capnp.h"
#include "record/direction.h"
#include "shipd/ipfix_exporter.h"
#include "shipd/ipfix_record.h"

namespace fs = std::filesystem;
using namespace flowseal;
using flowseal::shipd::IpfixMapper;
using flowseal::shipd::IpfixMode;
using flowseal::shipd::IpfixRecord;

namespace {

constexpr std::int64_t kSec = 1'000'000'000;
constexpr std::int64_t kT0 = 1'700'000'000 * kSec;

struct Event {
  capnp::MallocMessageBuilder message;
  schema::FlowEvent::Builder e = message.initRoot<schema::FlowEvent>();

  Event(schema::EventKind kind, std::uint64_t uid, std::uint32_t number, std::uint64_t orig_pkts,
        std::uint64_t resp_pkts, bool v6 = false) {
    e.setUid(uid);
    e.setKind(kind);
    e.setEventNumber(number);
    e.setEndReason(kind == schema::EventKind::END      ? schema::EndReason::FIN
                   : kind == schema::EventKind::UPDATE ? schema::EndReason::ACTIVE
                                                       : schema::EndReason::NONE);
    e.setProto(6);
    if (v6) {
      std::array<std::uint8_t, 16> a{}, b{};
      a[0] = 0x20, a[1] = 0x01, a[15] = 1;
      b[0] = 0x20, b[1] = 0x01, b[15] = 2;
      e.setOrigAddr(kj::arrayPtr(a.data(), a.size()));
      e.setRespAddr(kj::arrayPtr(b.data(), b.size()));
    } else {
      const std::uint8_t a[4] = {10, 0, 0, 1}, b[4] = {192, 168, 1, 2};
      e.setOrigAddr(kj::arrayPtr(a, 4));
      e.setRespAddr(kj::arrayPtr(b, 4));
    }
    e.setOrigPort(40000);
    e.setRespPort(443);
    e.setVlan(7);
    e.setFirstTsNs(kT0);
    e.setLastTsNs(kT0 + static_cast<std::int64_t>(number) * kSec + 500'000'000);
    record::DirectionStats orig, resp;
    orig.pkts = orig_pkts;
    orig.ip_bytes = orig_pkts * 100;
    orig.tcp_flags = 0x02 | 0x10;
    resp.pkts = resp_pkts;
    resp.ip_bytes = resp_pkts * 1000;
    resp.tcp_flags = 0x12;
    record::set_direction(e, record::Side::kOrig, orig);
    record::set_direction(e, record::Side::kResp, resp);
  }
  schema::FlowEvent::Reader reader() { return e.asReader(); }
};

std::vector<IpfixRecord> map_one(IpfixMapper& mapper, Event& event) {
  std::vector<IpfixRecord> out;
  mapper.map(event.reader(), out);
  mapper.commit();
  return out;
}

struct TempDir {
  fs::path path;
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "ipfix-test.XXXXXX").string();
    REQUIRE(::mkdtemp(pattern.data()) != nullptr);
    path = pattern;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

}  // namespace

TEST_CASE("a biflow record carries the flow's key, times and both directions") {
  IpfixMapper mapper(IpfixMode::kBiflow);
  Event end(schema::EventKind::END, 42, 1, 5, 3);
  const auto records = map_one(mapper, end);
  REQUIRE(records.size() == 1);
  const IpfixRecord& r = records[0];
  CHECK(r.source_v4 == 0x0a000001);
  CHECK(r.destination_v4 == 0xc0a80102);
  CHECK(r.source_port == 40000);
  CHECK(r.destination_port == 443);
  CHECK(r.protocol == 6);
  CHECK(r.vlan == 7);
  CHECK(r.packets == 5);
  CHECK(r.octets == 500);
  CHECK(r.reverse_packets == 3);
  CHECK(r.reverse_octets == 3000);
  CHECK(r.tcp_flags == 0x12);
  CHECK(r.reverse_tcp_flags == 0x12);
  CHECK(r.flow_start_ms == 1'700'000'000'000);
  CHECK(r.flow_end_ms == 1'700'000'001'500);
  CHECK(r.end_reason == 3);  // endOfFlowDetected
  CHECK(r.flow_count == 1);
  CHECK_FALSE(r.is_v6());
}

TEST_CASE("a start gives no record: its packets are in the flow's later records") {
  IpfixMapper mapper(IpfixMode::kBiflow);
  Event start(schema::EventKind::START, 42, 0, 1, 0);
  CHECK(map_one(mapper, start).empty());
}

TEST_CASE("uniflow gives one record per direction that sent, the responder's swapped") {
  IpfixMapper mapper(IpfixMode::kUniflow);
  Event end(schema::EventKind::END, 42, 1, 5, 3);
  const auto records = map_one(mapper, end);
  REQUIRE(records.size() == 2);
  CHECK(records[0].source_v4 == 0x0a000001);
  CHECK(records[0].packets == 5);
  CHECK(records[0].octets == 500);
  CHECK(records[0].reverse_packets == 0);
  CHECK(records[1].source_v4 == 0xc0a80102);
  CHECK(records[1].destination_v4 == 0x0a000001);
  CHECK(records[1].source_port == 443);
  CHECK(records[1].destination_port == 40000);
  CHECK(records[1].packets == 3);
  CHECK(records[1].octets == 3000);
  CHECK(records[1].tcp_flags == 0x12);

  Event one_way(schema::EventKind::END, 43, 1, 4, 0);
  CHECK(map_one(mapper, one_way).size() == 1);

  // An end right after an update: nothing new to count, no record.
  Event update(schema::EventKind::UPDATE, 44, 1, 4, 2);
  Event quiet_end(schema::EventKind::END, 44, 2, 4, 2);
  CHECK(map_one(mapper, update).size() == 2);
  CHECK(map_one(mapper, quiet_end).empty());
}

TEST_CASE("updates and the end of a long flow add up to its totals, never more") {
  IpfixMapper mapper(IpfixMode::kBiflow);
  Event update1(schema::EventKind::UPDATE, 42, 1, 10, 4);
  Event update2(schema::EventKind::UPDATE, 42, 2, 25, 9);
  Event end(schema::EventKind::END, 42, 3, 30, 10);
  const auto a = map_one(mapper, update1);
  const auto b = map_one(mapper, update2);
  const auto c = map_one(mapper, end);
  REQUIRE((a.size() == 1 && b.size() == 1 && c.size() == 1));
  CHECK(a[0].end_reason == 2);  // activeTimeout
  CHECK(a[0].packets + b[0].packets + c[0].packets == 30);
  CHECK(a[0].reverse_octets + b[0].reverse_octets + c[0].reverse_octets == 10'000);
  CHECK(b[0].packets == 15);
  CHECK(b[0].flow_start_ms == a[0].flow_end_ms);  // each record covers its own slice
  CHECK(c[0].packets == 5);
  CHECK(mapper.tracked() == 0);  // the end forgets the flow
}

TEST_CASE("a dedup summary is one record with its flow count and summed figures") {
  IpfixMapper mapper(IpfixMode::kBiflow);
  Event summary(schema::EventKind::SUMMARY, 100, 0, 12, 6);
  summary.e.setFlowCount(6);
  const auto records = map_one(mapper, summary);
  REQUIRE(records.size() == 1);
  CHECK(records[0].flow_count == 6);
  CHECK(records[0].packets == 12);
  CHECK(records[0].reverse_packets == 6);
}

TEST_CASE("an event stored twice is exported once") {
  IpfixMapper mapper(IpfixMode::kBiflow);
  Event end(schema::EventKind::END, 42, 1, 5, 3);
  CHECK(map_one(mapper, end).size() == 1);
  CHECK(map_one(mapper, end).empty());
  CHECK(mapper.repeats() == 1);
}

TEST_CASE("a rolled-back batch is mapped again the same way") {
  IpfixMapper mapper(IpfixMode::kBiflow);
  Event update(schema::EventKind::UPDATE, 42, 1, 10, 4);
  Event end(schema::EventKind::END, 42, 2, 30, 10);
  map_one(mapper, update);
  std::vector<IpfixRecord> first;
  mapper.map(end.reader(), first);
  mapper.rollback();  // the send failed: the batch goes again
  std::vector<IpfixRecord> second;
  mapper.map(end.reader(), second);
  mapper.commit();
  REQUIRE((first.size() == 1 && second.size() == 1));
  CHECK(first[0].packets == 20);
  CHECK(second[0].packets == 20);
  CHECK(mapper.repeats() == 0);
}

TEST_CASE("the per-flow state survives save and load, and a bad line is refused") {
  IpfixMapper mapper(IpfixMode::kBiflow);
  Event update(schema::EventKind::UPDATE, 42, 1, 10, 4);
  map_one(mapper, update);
  IpfixMapper restarted(IpfixMode::kBiflow);
  std::string why;
  REQUIRE(restarted.load(mapper.save(), why));
  CHECK(restarted.tracked() == 1);
  Event end(schema::EventKind::END, 42, 2, 30, 10);
  const auto records = map_one(restarted, end);
  REQUIRE(records.size() == 1);
  CHECK(records[0].packets == 20);  // not 30: the update's 10 went out before the restart

  IpfixMapper bad(IpfixMode::kBiflow);
  CHECK_FALSE(bad.load("flow 42 1 2 3\n", why));
  CHECK(why.find("line 1") != std::string::npos);
  CHECK(bad.tracked() == 0);
}

TEST_CASE("a record with an address of a wrong length is skipped and counted") {
  IpfixMapper mapper(IpfixMode::kBiflow);
  Event end(schema::EventKind::END, 42, 1, 5, 3);
  const std::uint8_t three[3] = {1, 2, 3};
  end.e.setOrigAddr(kj::arrayPtr(three, 3));
  CHECK(map_one(mapper, end).empty());
  CHECK(mapper.malformed() == 1);
}

TEST_CASE("ICMP type and code go in the destination port as type * 256 + code") {
  IpfixMapper mapper(IpfixMode::kUniflow);
  Event end(schema::EventKind::END, 42, 1, 1, 1);
  end.e.setProto(1);
  end.e.setOrigPort(8);  // echo request, code 0
  end.e.setRespPort(0);
  const auto records = map_one(mapper, end);
  REQUIRE(records.size() == 2);
  CHECK(records[0].source_port == 0);
  CHECK(records[0].destination_port == 8 * 256);
  CHECK(records[1].destination_port == 8 * 256);
}

// What libfixbuf writes is read back by libfixbuf's collector: the templates on the wire
// carry every mapped field, the reverse elements in biflow mode only.
TEST_CASE("records sent through libfixbuf decode to the same fields") {
  for (const IpfixMode mode : {IpfixMode::kBiflow, IpfixMode::kUniflow}) {
    TempDir dir;
    const fs::path file = dir.path / "out.ipfix";
    IpfixMapper mapper(mode);
    std::vector<IpfixRecord> sent;
    Event v4(schema::EventKind::END, 1, 1, 5, 3);
    Event v6(schema::EventKind::END, 2, 1, 7, 2, /*v6=*/true);
    mapper.map(v4.reader(), sent);
    mapper.map(v6.reader(), sent);
    mapper.commit();
    {
      std::string why;
      auto sender = shipd::IpfixSender::to_file(file, mode, 77, why);
      REQUIRE(sender);
      for (const IpfixRecord& r : sent) REQUIRE(sender->append(r, why));
      REQUIRE(sender->emit(why));
    }
    fbInfoModel_t* model = fbInfoModelAlloc();
    fbSession_t* session = fbSessionAlloc(model);
    fbTemplate_t* internal = fbTemplateAlloc(model);
    GError* error = nullptr;
    REQUIRE(fbTemplateAppendSpecArray(internal, shipd::kIpfixSpec, UINT32_MAX, &error));
    REQUIRE(fbSessionAddTemplate(session, TRUE, shipd::kIpfixInternalTid, internal, &error));
    fbCollector_t* collector = fbCollectorAllocFile(nullptr, file.c_str(), &error);
    REQUIRE(collector != nullptr);
    fBuf_t* buffer = fBufAllocForCollection(session, collector);
    REQUIRE(fBufSetInternalTemplate(buffer, shipd::kIpfixInternalTid, &error));
    std::vector<IpfixRecord> received;
    for (;;) {
      IpfixRecord r;
      std::size_t size = sizeof r;
      if (!fBufNext(buffer, reinterpret_cast<std::uint8_t*>(&r), &size, &error)) break;
      received.push_back(r);
    }
    REQUIRE(error != nullptr);  // end of file, not a decode error
    CHECK(g_error_matches(error, FB_ERROR_DOMAIN, FB_ERROR_EOF));
    g_clear_error(&error);
    fBufFree(buffer);
    fbInfoModelFree(model);

    REQUIRE(received.size() == sent.size());
    for (std::size_t i = 0; i < sent.size(); ++i) {
      INFO("mode " << (mode == IpfixMode::kBiflow ? "biflow" : "uniflow") << ", record " << i);
      CHECK(received[i].source_v4 == sent[i].source_v4);
      CHECK(received[i].destination_v4 == sent[i].destination_v4);
      CHECK(received[i].source_v6 == sent[i].source_v6);
      CHECK(received[i].destination_v6 == sent[i].destination_v6);
      CHECK(received[i].source_port == sent[i].source_port);
      CHECK(received[i].destination_port == sent[i].destination_port);
      CHECK(received[i].packets == sent[i].packets);
      CHECK(received[i].octets == sent[i].octets);
      CHECK(received[i].flow_start_ms == sent[i].flow_start_ms);
      CHECK(received[i].flow_end_ms == sent[i].flow_end_ms);
      CHECK(received[i].end_reason == sent[i].end_reason);
      CHECK(received[i].flow_count == sent[i].flow_count);
      CHECK(received[i].vlan == sent[i].vlan);
      CHECK(received[i].tcp_flags == sent[i].tcp_flags);
      // Uniflow templates have no reverse elements: they read back as zero.
      CHECK(received[i].reverse_packets == sent[i].reverse_packets);
      CHECK(received[i].reverse_octets == sent[i].reverse_octets);
    }
    CHECK(received.back().is_v6());
    CHECK_FALSE(received.front().is_v6());
  }
}
