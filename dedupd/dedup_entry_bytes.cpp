// Measures what one dedup engine entry costs: sizeof, and the allocator's own count
// (mallinfo2) of bytes in use per entry, for a flow entry holding a start and for a group
// entry holding a pending summary. Numbers go to docs/PERFORMANCE.md, "Memory per entry".
#include <malloc.h>

#include <cstdint>
#include <cstdio>
#include <string>

#include <capnp/message.h>

#include "dedup_engine.h"

namespace {

using flowseal::dedupd::DedupEngine;
namespace schema = flowseal::schema;

class Discard : public flowseal::dedupd::DedupSink {
 public:
  void emit(schema::FlowEvent::Reader) override {}
};

void feed(DedupEngine& engine, std::uint64_t uid, std::uint32_t group, schema::EventKind kind,
          std::int64_t t) {
  capnp::MallocMessageBuilder message;
  auto e = message.initRoot<schema::FlowEvent>();
  e.setUid(uid);
  e.setKind(kind);
  e.setEventNumber(kind == schema::EventKind::END ? 1 : 0);
  e.setProto(6);
  const std::uint8_t src[4] = {10, 0, 0, 1};
  const std::uint8_t dst[4] = {10, std::uint8_t(group >> 16), std::uint8_t(group >> 8),
                               std::uint8_t(group)};
  e.setOrigAddr(kj::arrayPtr(src, 4));
  e.setRespAddr(kj::arrayPtr(dst, 4));
  e.setOrigPort(40000);
  e.setRespPort(443);
  e.setFirstTsNs(t);
  e.setLastTsNs(t);
  e.getOrig().setPkts(1);
  e.getOrig().setIpBytes(60);
  e.setConnState("S0");
  e.setHistory("S");
  e.setCommunityId("1:LQU9qZlK+B5F3KDmev6m5PMibrg=");
  engine.on_event(e.asReader(), 0);
}

std::size_t in_use() {
  const auto m = mallinfo2();
  return m.uordblks + m.hblkhd;  // large blocks (bucket arrays) are mmapped
}

}  // namespace

int main() {
  constexpr std::size_t kN = 200000;
  Discard sink;
  flowseal::dedupd::DedupOptions o;
  o.max_entries = 2 * kN;
  o.burst = 0;
  {
    const std::size_t before = in_use();
    DedupEngine engine(o, sink);
    const std::size_t built = in_use();
    for (std::uint64_t i = 0; i < kN; ++i) feed(engine, i + 1, 0, schema::EventKind::START, 0);
    const std::size_t after = in_use();
    std::printf(
        "flow entry holding a start: sizeof %zu, allocator %.1f bytes/entry "
        "(engine itself %zu bytes)\n",
        DedupEngine::flow_entry_size(), double(after - built) / kN, built - before);
  }
  {
    DedupEngine engine(o, sink);
    const std::size_t built = in_use();
    for (std::uint64_t i = 0; i < kN; ++i) {
      const auto group = static_cast<std::uint32_t>(i);
      feed(engine, i + 1, group, schema::EventKind::START, 0);
      feed(engine, i + 1, group, schema::EventKind::END, 0);
    }
    const std::size_t after = in_use();
    std::printf(
        "group entry with a pending summary: sizeof %zu, allocator %.1f bytes/entry "
        "(%zu entries)\n",
        DedupEngine::group_entry_size(), double(after - built) / kN, engine.entries());
  }
  return 0;
}
