#include "dedup_engine.h"

#include <algorithm>
#include <cstdint>
#include <map>
#include <random>
#include <set>
#include <vector>

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <catch2/catch.hpp>

namespace {

using flowseal::dedupd::DedupEngine;
using flowseal::dedupd::DedupOptions;
using flowseal::dedupd::DedupSink;
namespace schema = flowseal::schema;

constexpr std::int64_t kS = 1'000'000'000;

// One input event, as a test writes it.
struct Ev {
  std::uint64_t uid = 1;
  schema::EventKind kind = schema::EventKind::START;
  std::uint32_t number = 0;
  std::uint32_t src = 0x0a000001, dst = 0x0a000002;
  std::uint16_t sport = 40000, dport = 53;
  std::uint8_t proto = 17;
  std::int64_t first = 0, last = 0;
  std::uint64_t opkts = 1, obytes = 60, rpkts = 1, rbytes = 100;
  const char* state = "SF";
  schema::EndReason reason = schema::EndReason::NONE;
};

Ev start(std::uint64_t uid, std::int64_t t) {
  Ev e;
  e.uid = uid;
  e.first = e.last = t;
  e.opkts = 1, e.obytes = 60, e.rpkts = 0, e.rbytes = 0;
  e.state = "S0";
  return e;
}

Ev end(std::uint64_t uid, std::int64_t first, std::int64_t last) {
  Ev e;
  e.uid = uid;
  e.kind = schema::EventKind::END;
  e.number = 1;
  e.first = first;
  e.last = last;
  e.reason = schema::EndReason::IDLE;
  return e;
}

Ev update(std::uint64_t uid, std::int64_t first, std::int64_t last, std::uint64_t bytes,
          const char* state = "S1") {
  Ev e;
  e.uid = uid;
  e.kind = schema::EventKind::UPDATE;
  e.number = 1;
  e.first = first;
  e.last = last;
  e.obytes = bytes;
  e.rbytes = 0;
  e.state = state;
  e.reason = schema::EndReason::ACTIVE;
  return e;
}

// Records everything the engine emits, copied.
class Collect : public DedupSink {
 public:
  void emit(schema::FlowEvent::Reader event) override { out.push_back(capnp::canonicalize(event)); }
  std::size_t size() const { return out.size(); }
  schema::FlowEvent::Reader operator[](std::size_t i) const {
    return capnp::readMessageUnchecked<schema::FlowEvent>(out[i].begin());
  }
  std::size_t count(schema::EventKind kind) const {
    std::size_t n = 0;
    for (std::size_t i = 0; i < size(); ++i) n += (*this)[i].getKind() == kind;
    return n;
  }
  std::vector<kj::Array<capnp::word>> out;
};

void feed(DedupEngine& engine, const Ev& ev, std::uint32_t source = 0) {
  capnp::MallocMessageBuilder message;
  auto e = message.initRoot<schema::FlowEvent>();
  e.setUid(ev.uid);
  e.setKind(ev.kind);
  e.setEventNumber(ev.number);
  e.setEndReason(ev.reason);
  e.setProto(ev.proto);
  const std::uint8_t src[4] = {std::uint8_t(ev.src >> 24), std::uint8_t(ev.src >> 16),
                               std::uint8_t(ev.src >> 8), std::uint8_t(ev.src)};
  const std::uint8_t dst[4] = {std::uint8_t(ev.dst >> 24), std::uint8_t(ev.dst >> 16),
                               std::uint8_t(ev.dst >> 8), std::uint8_t(ev.dst)};
  e.setOrigAddr(kj::arrayPtr(src, 4));
  e.setRespAddr(kj::arrayPtr(dst, 4));
  e.setOrigPort(ev.sport);
  e.setRespPort(ev.dport);
  e.setFirstTsNs(ev.first);
  e.setLastTsNs(ev.last);
  e.getOrig().setPkts(ev.opkts);
  e.getOrig().setIpBytes(ev.obytes);
  e.getOrig().setBytes(ev.obytes / 2);
  e.getResp().setPkts(ev.rpkts);
  e.getResp().setIpBytes(ev.rbytes);
  e.getResp().setBytes(ev.rbytes / 2);
  e.setConnState(ev.state);
  e.setHistory("Dd");
  e.setCommunityId("1:abc");
  engine.on_event(e.asReader(), source);
}

DedupOptions options() {
  DedupOptions o;
  o.report_interval_ns = 300 * kS;
  o.rate_change = 0.5;
  o.burst = 3;
  o.window_ns = 60 * kS;
  o.linger_ns = 60 * kS;
  o.max_entries = 1000;
  return o;
}

// n short flows of one group, one every `gap`, each ending 1 s after it starts.
void short_flows(DedupEngine& engine, std::uint64_t first_uid, int n, std::int64_t t0,
                 std::int64_t gap, std::uint32_t dst = 0x0a000002) {
  for (int i = 0; i < n; ++i) {
    const std::uint64_t uid = first_uid + static_cast<std::uint64_t>(i);
    const std::int64_t t = t0 + i * gap;
    Ev s = start(uid, t);
    s.dst = dst;
    Ev e = end(uid, t, t + kS);
    e.dst = dst;
    feed(engine, s);
    feed(engine, e);
  }
}

}  // namespace

TEST_CASE("a single short flow passes with its start before its end") {
  Collect out;
  DedupEngine engine(options(), out);
  feed(engine, start(7, 0));
  CHECK(out.size() == 0);  // held until the flow is known not to be folded
  CHECK(engine.holds(0));
  feed(engine, end(7, 0, kS));
  REQUIRE(out.size() == 2);
  CHECK(out[0].getKind() == schema::EventKind::START);
  CHECK(out[1].getKind() == schema::EventKind::END);
  CHECK(out[1].getUid() == 7);
  CHECK_FALSE(engine.holds_any());
}

TEST_CASE("the first burst short flows of a window pass and the rest fold into one summary") {
  Collect out;
  DedupEngine engine(options(), out);
  short_flows(engine, 100, 10, 0, kS);
  CHECK(out.count(schema::EventKind::START) == 3);
  CHECK(out.count(schema::EventKind::END) == 3);
  CHECK(out.count(schema::EventKind::SUMMARY) == 0);  // pending until the window closes
  CHECK(engine.holds(0));
  engine.flush_all();
  REQUIRE(out.count(schema::EventKind::SUMMARY) == 1);
  auto s = out[out.size() - 1];
  CHECK(s.getKind() == schema::EventKind::SUMMARY);
  CHECK(s.getFlowCount() == 7);
  CHECK(s.getFirstUid() == 103);
  CHECK(s.getLastUid() == 109);
  CHECK(s.getUid() == 103);
  CHECK(s.getOrig().getPkts() == 7);
  CHECK(s.getOrig().getIpBytes() == 7 * 60);
  CHECK(s.getResp().getIpBytes() == 7 * 100);
  CHECK(s.getFirstTsNs() == 3 * kS);
  CHECK(s.getLastTsNs() == 9 * kS + kS);
  CHECK(s.getEndReason() == schema::EndReason::IDLE);
  CHECK(s.getRespPort() == 53);
  CHECK(s.getOrigAddr().size() == 4);
  CHECK_FALSE(engine.holds_any());
}

TEST_CASE("a short flow after the window closes emits the summary and passes") {
  Collect out;
  DedupEngine engine(options(), out);
  short_flows(engine, 100, 5, 0, kS);  // 3 pass, 2 folded
  CHECK(out.count(schema::EventKind::SUMMARY) == 0);
  short_flows(engine, 200, 1, 70 * kS, kS);
  CHECK(out.count(schema::EventKind::SUMMARY) == 1);
  CHECK(out.count(schema::EventKind::END) == 4);  // the new window's first flow passes
}

TEST_CASE("a summary is emitted when its window expires on packet time") {
  Collect out;
  DedupEngine engine(options(), out);
  short_flows(engine, 100, 5, 0, kS);
  // Unrelated traffic moves packet time past window + linger.
  short_flows(engine, 500, 1, 121 * kS, kS, 0x0a000099);
  CHECK(out.count(schema::EventKind::SUMMARY) == 1);
}

TEST_CASE("with burst 0 every repeated short flow is folded") {
  auto o = options();
  o.burst = 0;
  Collect out;
  DedupEngine engine(o, out);
  short_flows(engine, 100, 4, 0, kS);
  CHECK(out.size() == 0);
  engine.flush_all();
  REQUIRE(out.size() == 1);
  CHECK(out[0].getFlowCount() == 4);
}

TEST_CASE("short flows of different destination ports are not grouped") {
  Collect out;
  DedupEngine engine(options(), out);
  for (std::uint64_t i = 0; i < 10; ++i) {
    Ev s = start(i, static_cast<std::int64_t>(i) * kS);
    Ev e = end(i, s.first, s.first + kS);
    s.dport = e.dport = static_cast<std::uint16_t>(1000 + i);
    feed(engine, s);
    feed(engine, e);
  }
  engine.flush_all();
  CHECK(out.count(schema::EventKind::SUMMARY) == 0);
  CHECK(out.count(schema::EventKind::END) == 10);
}

TEST_CASE("a flow longer than the window is never folded") {
  auto o = options();
  o.burst = 0;
  Collect out;
  DedupEngine engine(o, out);
  feed(engine, start(1, 0));
  feed(engine, end(1, 0, 61 * kS));
  REQUIRE(out.size() == 2);
  CHECK(out[0].getKind() == schema::EventKind::START);
  CHECK(out[1].getKind() == schema::EventKind::END);
}

TEST_CASE("a held start is released when its hold time passes, and its end then passes") {
  auto o = options();
  o.burst = 0;
  Collect out;
  DedupEngine engine(o, out);
  feed(engine, start(1, 0));
  feed(engine, start(2, 121 * kS));  // packet time now past 0 + window + linger
  REQUIRE(out.size() == 1);
  CHECK(out[0].getUid() == 1);
  CHECK(out[0].getKind() == schema::EventKind::START);
  CHECK(engine.holds(0));  // flow 2's start is held
  feed(engine, end(1, 0, 30 * kS));
  REQUIRE(out.size() == 2);
  CHECK(out[1].getKind() == schema::EventKind::END);
}

TEST_CASE("an update releases the held start and suppressed updates wait for the interval") {
  Collect out;
  DedupEngine engine(options(), out);
  feed(engine, start(1, 0));
  // Constant rate, same state: 1000 bytes/s.
  feed(engine, update(1, 0, 60 * kS, 60'000, "S1"));  // state S0 -> S1: passes
  REQUIRE(out.size() == 2);
  CHECK(out[0].getKind() == schema::EventKind::START);
  CHECK(out[1].getKind() == schema::EventKind::UPDATE);
  for (int k = 2; k <= 5; ++k) {
    feed(engine, update(1, 0, k * 60 * kS, std::uint64_t(k) * 60'000, "S1"));
  }
  CHECK(out.size() == 2);  // 120..300 s: within the report interval of the update at 60 s
  feed(engine, update(1, 0, 360 * kS, 360'000, "S1"));
  CHECK(out.size() == 3);  // 300 s after the last passed update
  CHECK(engine.stats().updates_suppressed == 4);
}

TEST_CASE("an update with a new conn_state passes at once") {
  Collect out;
  DedupEngine engine(options(), out);
  feed(engine, start(1, 0));
  feed(engine, update(1, 0, 60 * kS, 60'000, "S1"));
  feed(engine, update(1, 0, 120 * kS, 120'000, "S1"));
  CHECK(out.size() == 2);
  feed(engine, update(1, 0, 180 * kS, 180'000, "S2"));
  CHECK(out.size() == 3);
  CHECK(std::string(out[2].getConnState().cStr()) == "S2");
}

TEST_CASE("an update whose byte rate changed by more than rate_change passes") {
  Collect out;
  DedupEngine engine(options(), out);
  feed(engine, start(1, 0));
  feed(engine, update(1, 0, 60 * kS, 60'000, "S1"));    // passes (state); rate 1000 B/s
  feed(engine, update(1, 0, 120 * kS, 130'000, "S1"));  // 1166 B/s: +17%, suppressed
  CHECK(out.size() == 2);
  feed(engine, update(1, 0, 180 * kS, 250'000, "S1"));  // 2000 B/s: +100%, passes
  CHECK(out.size() == 3);
  feed(engine, update(1, 0, 240 * kS, 251'000, "S1"));  // ~17 B/s: -99%, passes
  CHECK(out.size() == 4);
}

TEST_CASE("an end always passes, even of a flow the engine never saw") {
  Collect out;
  DedupEngine engine(options(), out);
  feed(engine, end(42, 0, kS));
  feed(engine, update(43, 0, kS, 10));
  REQUIRE(out.size() == 2);
  CHECK(out[0].getUid() == 42);
  CHECK(out[1].getUid() == 43);
}

TEST_CASE("eviction emits the pending summary") {
  auto o = options();
  o.max_entries = 4;
  Collect out;
  DedupEngine engine(o, out);
  short_flows(engine, 100, 6, 0, kS);  // group A: 3 pass, 3 folded, pending
  CHECK(out.count(schema::EventKind::SUMMARY) == 0);
  // Four other groups push group A out of a 4-entry cap.
  for (std::uint32_t g = 0; g < 4; ++g)
    short_flows(engine, 1000 + g, 1, 10 * kS, kS, 0x0b000000 + g);
  REQUIRE(out.count(schema::EventKind::SUMMARY) == 1);
  CHECK(engine.stats().evictions >= 1);
  CHECK(engine.entries() <= 4);
  for (std::size_t i = 0; i < out.size(); ++i) {
    if (out[i].getKind() == schema::EventKind::SUMMARY) CHECK(out[i].getFlowCount() == 3);
  }
}

TEST_CASE("a cap shrunk under pressure evicts at once and emits what the entries held") {
  Collect out;
  DedupEngine engine(options(), out);
  short_flows(engine, 100, 6, 0, kS);  // group A: 3 pass, 3 folded, pending
  feed(engine, start(900, 2 * kS));    // a held start
  const std::size_t before = engine.entries();
  REQUIRE(before >= 2);
  CHECK(out.count(schema::EventKind::SUMMARY) == 0);
  engine.set_entry_cap(1);
  CHECK(engine.entries() == 1);
  CHECK(engine.entry_cap() == 1);
  CHECK(engine.stats().evictions == before - 1);
  // Group A was used least recently: its three folded flows come out as one summary.
  REQUIRE(out.count(schema::EventKind::SUMMARY) == 1);
  engine.set_entry_cap(1'000'000);  // clamped to max_entries
  CHECK(engine.entry_cap() == options().max_entries);
  engine.flush_all();
  CHECK(out.count(schema::EventKind::START) == 3 + 1);
}

TEST_CASE("eviction releases a held start") {
  auto o = options();
  o.max_entries = 2;
  Collect out;
  DedupEngine engine(o, out);
  feed(engine, start(1, 0));
  feed(engine, start(2, kS));
  CHECK(out.size() == 0);
  feed(engine, start(3, 2 * kS));
  REQUIRE(out.size() == 1);
  CHECK(out[0].getUid() == 1);
  CHECK(engine.entries() == 2);
}

TEST_CASE("shutdown flushes every held start and pending summary") {
  Collect out;
  DedupEngine engine(options(), out);
  short_flows(engine, 100, 8, 0, kS);
  feed(engine, start(900, 9 * kS), 1);
  feed(engine, start(901, 9 * kS), 2);
  CHECK(engine.holds(0));
  CHECK(engine.holds(1));
  CHECK(engine.holds(2));
  engine.flush_all();
  CHECK_FALSE(engine.holds_any());
  CHECK(engine.entries() == 0);
  CHECK(out.count(schema::EventKind::SUMMARY) == 1);
  CHECK(out.count(schema::EventKind::START) == 3 + 2);
}

TEST_CASE("holds tells which input still has facts in the engine") {
  Collect out;
  DedupEngine engine(options(), out);
  feed(engine, start(1, 0), 3);
  CHECK(engine.holds(3));
  CHECK_FALSE(engine.holds(0));
  feed(engine, end(1, 0, kS), 3);
  CHECK_FALSE(engine.holds(3));
}

namespace {

struct Totals {
  std::uint64_t v[6] = {};
  void add(schema::FlowEvent::Reader e) {
    v[0] += e.getOrig().getPkts(), v[1] += e.getOrig().getIpBytes(), v[2] += e.getOrig().getBytes();
    v[3] += e.getResp().getPkts(), v[4] += e.getResp().getIpBytes(), v[5] += e.getResp().getBytes();
  }
  void add(const Ev& e) {
    v[0] += e.opkts, v[1] += e.obytes, v[2] += e.obytes / 2;
    v[3] += e.rpkts, v[4] += e.rbytes, v[5] += e.rbytes / 2;
  }
  bool operator==(const Totals& o) const { return std::equal(v, v + 6, o.v); }
};

// Random traffic: a few groups (so repetition happens), short and long flows, updates,
// ends reported late (as flowd's idle timeouts do), three sources; events in emission order.
struct Scenario {
  std::vector<std::pair<Ev, std::uint32_t>> events;
  std::map<std::uint64_t, Ev> ends;  // by uid
};

Scenario random_scenario(std::uint32_t seed, int flows) {
  std::mt19937_64 rng(seed);
  struct Timed {
    std::int64_t at;
    std::uint64_t order;
    Ev ev;
    std::uint32_t source;
  };
  std::vector<Timed> timed;
  Scenario sc;
  std::int64_t t = 0;
  std::uint64_t order = 0;
  for (int f = 0; f < flows; ++f) {
    t += static_cast<std::int64_t>(rng() % (3 * kS));
    const std::uint64_t uid = rng() | 1;  // random like flowd's
    const std::uint32_t group = static_cast<std::uint32_t>(rng() % 12);
    const std::uint32_t source = static_cast<std::uint32_t>(rng() % 3);
    Ev s = start(uid, t);
    s.dst = 0x0a000100 + group % 6;
    s.dport = group < 6 ? 53 : 443;
    s.proto = group < 6 ? 17 : 6;
    s.sport = static_cast<std::uint16_t>(rng());
    const bool long_lived = rng() % 8 == 0;
    const std::int64_t duration = long_lived ? static_cast<std::int64_t>(rng() % (2000 * kS))
                                             : static_cast<std::int64_t>(rng() % (70 * kS));
    timed.push_back({t, order++, s, source});
    std::uint64_t bytes = 60;
    for (std::int64_t u = t + 200 * kS; u < t + duration; u += 200 * kS) {
      bytes += rng() % 100000;
      Ev up = update(uid, t, u, bytes, rng() % 4 == 0 ? "S2" : "S1");
      up.src = s.src, up.dst = s.dst, up.dport = s.dport, up.proto = s.proto;
      timed.push_back({u, order++, up, source});
    }
    Ev e = end(uid, t, t + duration);
    e.src = s.src, e.dst = s.dst, e.dport = s.dport, e.proto = s.proto, e.sport = s.sport;
    e.opkts = 1 + rng() % 50;
    e.obytes = bytes + rng() % 5000;
    e.rpkts = rng() % 50;
    e.rbytes = rng() % 90000;
    e.reason = rng() % 2 ? schema::EndReason::FIN : schema::EndReason::IDLE;
    const std::int64_t report_delay = static_cast<std::int64_t>(rng() % (65 * kS));
    timed.push_back({t + duration + report_delay, order++, e, source});
    sc.ends[uid] = e;
  }
  std::stable_sort(timed.begin(), timed.end(), [](const Timed& a, const Timed& b) {
    return a.at < b.at || (a.at == b.at && a.order < b.order);
  });
  for (auto& x : timed) sc.events.emplace_back(x.ev, x.source);
  return sc;
}

void check_exact(const Scenario& sc, const Collect& out) {
  Totals in_totals, out_totals;
  for (auto& [uid, e] : sc.ends) in_totals.add(e);
  std::set<std::uint64_t> ended, started, folded_uids;
  std::map<std::uint64_t, std::size_t> start_at, end_at;
  std::uint64_t folded = 0;
  std::map<std::pair<std::uint32_t, std::uint16_t>, Totals> summary_by_group;
  std::set<std::uint64_t> summary_ids;
  for (std::size_t i = 0; i < out.size(); ++i) {
    auto e = out[i];
    switch (e.getKind()) {
      case schema::EventKind::END:
        REQUIRE(sc.ends.count(e.getUid()) == 1);
        REQUIRE(ended.insert(e.getUid()).second);  // no end twice
        end_at[e.getUid()] = i;
        out_totals.add(e);
        break;
      case schema::EventKind::START:
        REQUIRE(started.insert(e.getUid()).second);  // no start twice
        start_at[e.getUid()] = i;
        break;
      case schema::EventKind::SUMMARY: {
        out_totals.add(e);
        folded += e.getFlowCount();
        REQUIRE(summary_ids.insert(e.getUid()).second);
        const auto d = e.getRespAddr();
        const std::uint32_t dst =
            std::uint32_t(d[0]) << 24 | std::uint32_t(d[1]) << 16 | std::uint32_t(d[2]) << 8 | d[3];
        summary_by_group[{dst, e.getRespPort()}].add(e);
        REQUIRE(sc.ends.count(e.getFirstUid()) == 1);
        REQUIRE(sc.ends.count(e.getLastUid()) == 1);
        folded_uids.insert(e.getFirstUid());
        folded_uids.insert(e.getLastUid());
        break;
      }
      default: break;
    }
  }
  CHECK(out_totals == in_totals);
  // Every input flow either ended in the output or is counted in a summary, exactly once.
  CHECK(ended.size() + folded == sc.ends.size());
  std::map<std::pair<std::uint32_t, std::uint16_t>, Totals> folded_by_group;
  for (auto& [uid, e] : sc.ends) {
    if (ended.count(uid)) {
      CHECK(folded_uids.count(uid) == 0);
      REQUIRE(start_at.count(uid) == 1);   // a passed flow's start passed ...
      CHECK(start_at[uid] < end_at[uid]);  // ... before its end
    } else {
      CHECK(started.count(uid) == 0);  // a folded flow's start is dropped with it
      folded_by_group[{e.dst, e.dport}].add(e);
    }
  }
  CHECK(folded_by_group == summary_by_group);
}

}  // namespace

TEST_CASE("a cap that shrinks and grows under pressure keeps every fact exactly once") {
  for (std::uint32_t seed : {4u, 5u, 6u}) {
    SECTION("seed " + std::to_string(seed)) {
      auto o = options();
      o.max_entries = 400;
      const Scenario sc = random_scenario(seed, 3000);
      Collect out;
      DedupEngine engine(o, out);
      // The pressure levels' caps (x1, x0.75, x0.5, x0.25), changing every 100 events.
      const std::size_t caps[] = {400, 300, 200, 100, 200, 400, 100, 300};
      std::size_t i = 0;
      for (auto& [ev, source] : sc.events) {
        if (i % 100 == 0) engine.set_entry_cap(caps[(i / 100) % std::size(caps)]);
        feed(engine, ev, source);
        REQUIRE(engine.entries() <= engine.entry_cap());
        ++i;
      }
      engine.flush_all();
      CHECK(engine.stats().records_out == out.size());
      check_exact(sc, out);
    }
  }
}

TEST_CASE("randomized traffic keeps every packet and byte and every flow exactly once") {
  struct Case {
    const char* what;
    std::size_t max_entries;
    std::uint32_t burst;
  };
  const Case cases[] = {{"roomy cap", 100000, 3},
                        {"tiny cap: constant eviction", 8, 3},
                        {"burst 0", 100000, 0},
                        {"burst 1, small cap", 64, 1}};
  for (const Case& c : cases) {
    for (std::uint32_t seed : {1u, 2u, 3u}) {
      SECTION(std::string(c.what) + ", seed " + std::to_string(seed)) {
        auto o = options();
        o.max_entries = c.max_entries;
        o.burst = c.burst;
        const Scenario sc = random_scenario(seed, 3000);
        Collect out;
        DedupEngine engine(o, out);
        std::size_t in = 0;
        for (auto& [ev, source] : sc.events) {
          feed(engine, ev, source);
          ++in;
          REQUIRE(engine.entries() <= o.max_entries);
        }
        engine.flush_all();
        CHECK_FALSE(engine.holds_any());
        CHECK(engine.stats().records_in == in);
        CHECK(engine.stats().records_out == out.size());
        check_exact(sc, out);
        if (c.max_entries > 1000) CHECK(out.size() < in);  // it does reduce
      }
    }
  }
}
