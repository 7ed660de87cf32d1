#include "record_buffer.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#include <capnp/any.h>
#include <capnp/message.h>
#include <capnp/serialize.h>
#include <catch2/catch.hpp>

namespace {

namespace schema = flowseal::schema;
using flowseal::dedupd::canonical_copy;
using flowseal::dedupd::RecordBuffer;

std::vector<capnp::word> canonical(schema::FlowEvent::Reader record) {
  const kj::Array<capnp::word> words = capnp::canonicalize(record);
  return {words.begin(), words.end()};
}
bool same(const std::vector<capnp::word>& a, const std::vector<capnp::word>& b) {
  return a.size() == b.size() &&
         std::equal(a.begin(), a.end(), b.begin(), [](capnp::word x, capnp::word y) {
           return std::memcmp(&x, &y, sizeof x) == 0;
         });
}

// Records of every shape RecordBuffer copies: what flowd writes (direct path), and the ones
// append_canonical() declines or throws on (capnp's general path).
void fill(capnp::List<schema::FlowEvent>::Builder list) {
  const std::uint8_t a[4] = {10, 0, 0, 1}, b[4] = {10, 0, 0, 2};
  for (unsigned i = 0; i < list.size(); ++i) {
    auto e = list[i];
    switch (i % 5) {
      case 0:
      case 1: {  // flowd's shape
        e.setUid(1000 + i);
        e.setKind(schema::EventKind::END);
        e.setOrigAddr({a, 4});
        e.setRespAddr({b, 4});
        e.setConnState("SF");
        e.setHistory("ShADadFf");
        e.setCommunityId("1:LQU9qZlK+B5F3KDmev6m5PMibrg=");
        e.setFirstTsNs(i * 1000);
        e.setLastTsNs(i * 1000 + 5);
        e.getOrig().setPkts(3 + i);
        e.getOrig().setIatSumSqUs(2.5);
        e.getResp().setBytes(77);
        e.getResp().setLocal(schema::Locality::LOCAL);
        if (i % 5 == 1) {
          auto parents = e.initTunnelParents(2);
          parents.set(0, 0xAAAA);
          parents.set(1, i);
        }
        break;
      }
      case 2:  // all default: declined (a zero-sized struct)
        break;
      case 3: {  // tunnel parents as 4-byte elements: declined
        e.setUid(i);
        capnp::AnyStruct::Builder(kj::mv(e)).getPointerSection()[5].initAsAnyList(
            capnp::ElementSize::FOUR_BYTES, 2);
        break;
      }
      case 4: {  // origAddr a struct pointer: append_canonical throws, canonicalize copies it
        e.setUid(i);
        e.setConnState("S0");
        capnp::AnyStruct::Builder(kj::mv(e)).getPointerSection()[0].initAsAnyStruct(1, 0);
        break;
      }
    }
  }
}

}  // namespace

TEST_CASE("RecordBuffer writes every record as a list element's setWithCaveats would") {
  capnp::MallocMessageBuilder input;
  auto list = input.initRoot<schema::FlowEventBatch>().initEvents(23);
  fill(list);
  const auto records = list.asReader();

  RecordBuffer buffer;
  for (int pass = 0; pass < 2; ++pass) {  // the second after clear(): nothing left over
    for (const auto record : records) buffer.add(record);
    REQUIRE(buffer.size() == records.size());
    // Two messages, as publish() splits them: [0, 10) and [10, 23).
    for (const auto& [at, n] : {std::pair<std::size_t, std::size_t>{0, 10}, {10, 13}}) {
      capnp::MallocMessageBuilder message;
      buffer.build(at, n, message);
      const auto out = message.getRoot<schema::FlowEventBatch>().asReader().getEvents();
      REQUIRE(out.size() == n);
      capnp::MallocMessageBuilder reference;
      auto expect =
          reference.initRoot<schema::FlowEventBatch>().initEvents(static_cast<unsigned>(n));
      for (std::size_t i = 0; i < n; ++i) {
        expect.setWithCaveats(static_cast<unsigned>(i), records[static_cast<unsigned>(at + i)]);
        INFO("record " << at + i);
        CHECK(same(canonical(out[static_cast<unsigned>(i)]),
                   canonical(expect.asReader()[static_cast<unsigned>(i)])));
        // Each element at the list's full struct size, as setWithCaveats leaves it.
        CHECK(capnp::AnyStruct::Reader(out[static_cast<unsigned>(i)]).getDataSection().size() ==
              schema::FlowEvent::_capnpPrivate::dataWordSize * sizeof(capnp::word));
      }
    }
    buffer.clear();
    CHECK(buffer.size() == 0);
  }
}

// dedupd builds each frame in its ring slot at this size (ring_message.h): too small and the
// frame is built aside and copied, too large and the slot is zeroed for nothing.
TEST_CASE("RecordBuffer::words is the exact size of a built batch of direct records") {
  capnp::MallocMessageBuilder input;
  auto list = input.initRoot<schema::FlowEventBatch>().initEvents(40);
  fill(list);
  RecordBuffer direct, mixed;
  for (unsigned i = 0; i < list.size(); ++i) {
    if (i % 5 <= 1) direct.add(list.asReader()[i]);  // flowd's shape, with and without parents
    mixed.add(list.asReader()[i]);
  }
  // An IPv6 record, texts of 7, 8 and 9 bytes (with their NUL: one or two words), no history.
  auto more = list[0];
  const std::uint8_t v6[16] = {0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
  more.setOrigAddr({v6, 16});
  more.setRespAddr({v6, 16});
  for (const char* text : {"SHADADF", "SHADADFF", "SHADADFFR"}) {
    more.setHistory(text);
    more.setConnState(text);
    direct.add(more.asReader());
  }
  more.disownHistory();
  direct.add(more.asReader());
  auto built = [](const RecordBuffer& buffer, std::size_t at, std::size_t n) {
    std::vector<capnp::word> first(buffer.words(at, n));
    capnp::MallocMessageBuilder message(kj::arrayPtr(first.data(), first.size()));
    buffer.build(at, n, message);
    const auto segments = message.getSegmentsForOutput();
    REQUIRE(segments.size() == 1);
    return segments[0].size();
  };
  for (std::size_t n = 1; n <= direct.size(); ++n) {
    INFO(n << " records");
    CHECK(built(direct, 0, n) == direct.words(0, n));
    CHECK(built(direct, direct.size() - n, n) == direct.words(direct.size() - n, n));
  }
  // With records capnp's general path copies: still one segment, never more than said.
  for (std::size_t n = 1; n <= mixed.size(); n += 7) CHECK(built(mixed, 0, n) <= mixed.words(0, n));
}

TEST_CASE("canonical_copy is capnp::canonicalize's form, direct or not") {
  capnp::MallocMessageBuilder input;
  auto list = input.initRoot<schema::FlowEventBatch>().initEvents(10);
  fill(list);
  for (const auto record : list.asReader()) {
    const kj::Array<capnp::word> copy = canonical_copy(record);
    CHECK(same({copy.begin(), copy.end()}, canonical(record)));
  }
}

TEST_CASE("a record added as canonical_copy's form builds as the record itself would") {
  capnp::MallocMessageBuilder input;
  auto list = input.initRoot<schema::FlowEventBatch>().initEvents(15);
  fill(list);
  const auto records = list.asReader();
  RecordBuffer from_readers, from_copies;
  std::vector<kj::Array<capnp::word>> copies;
  unsigned direct_count = 0;
  for (const auto record : records) {
    from_readers.add(record);
    bool direct = false;
    copies.push_back(canonical_copy(record, &direct));
    direct_count += direct ? 1 : 0;
    from_copies.add_canonical(copies.back().asPtr(), direct);
  }
  CHECK(direct_count == 6);  // the two of flowd's shape in every five
  REQUIRE(from_copies.size() == records.size());
  CHECK(from_copies.words(0, records.size()) == from_readers.words(0, records.size()));
  capnp::MallocMessageBuilder a, b;
  from_readers.build(0, records.size(), a);
  from_copies.build(0, records.size(), b);
  const auto x = a.getRoot<schema::FlowEventBatch>().asReader().getEvents();
  const auto y = b.getRoot<schema::FlowEventBatch>().asReader().getEvents();
  REQUIRE(x.size() == y.size());
  for (unsigned i = 0; i < x.size(); ++i) {
    INFO("record " << i);
    CHECK(same(canonical(x[i]), canonical(y[i])));
  }
}
