#include <cstring>
#include <random>
#include <vector>

#include <capnp/any.h>
#include <capnp/message.h>
#include <capnp/serialize.h>
#include <catch2/catch.hpp>

#include "flowseal.capnp.h"
#include "seal/canonical_record.h"

using namespace flowseal;

namespace {

std::vector<std::uint8_t> bytes_of(const capnp::word* words, std::size_t count) {
  const auto* p = reinterpret_cast<const std::uint8_t*>(words);
  return {p, p + count * sizeof(capnp::word)};
}

// Random records: each field set or left at its default, texts and data null, empty or of any
// length up to a few words, so every truncation and padding case comes up.
void fill(schema::FlowEvent::Builder e, std::mt19937_64& rng) {
  auto maybe = [&] { return rng() % 3 == 0; };
  auto blob = [&](std::size_t max) {
    std::string s(rng() % (max + 1), '\0');
    for (auto& c : s) c = static_cast<char>('a' + rng() % 26);
    return s;
  };
  if (maybe()) e.setUid(rng());
  if (maybe()) e.setKind(static_cast<schema::EventKind>(rng() % 4));
  if (maybe()) e.setEventNumber(static_cast<std::uint32_t>(rng()));
  if (maybe()) e.setSamplingRate(0.5f);
  if (maybe()) e.setProto(static_cast<std::uint8_t>(rng()));
  if (maybe()) {
    const std::string a = blob(17);
    e.setOrigAddr({reinterpret_cast<const std::uint8_t*>(a.data()), a.size()});
  }
  if (maybe()) {
    const std::string a = blob(17);
    e.setRespAddr({reinterpret_cast<const std::uint8_t*>(a.data()), a.size()});
  }
  if (maybe()) e.setOrigPort(static_cast<std::uint16_t>(rng()));
  if (maybe()) e.setFirstTsNs(static_cast<std::int64_t>(rng()));
  if (maybe()) e.getResp().setBytes(rng());
  if (maybe()) e.setConnState(blob(9));
  if (maybe()) e.setHistory(blob(20));
  if (maybe()) e.setCommunityId(blob(30));
  if (maybe()) e.setFlowCount(static_cast<std::uint32_t>(rng() % 3));
  if (maybe()) e.setFirstUid(rng());
  if (maybe()) e.setLastUid(rng());
  if (maybe()) e.getOrig().setSizeMax(static_cast<std::uint32_t>(rng()));
  if (maybe()) e.getOrig().setIatSumSqUs(static_cast<double>(rng() % 1000000));
  if (maybe()) e.getResp().setIatMaxUs(rng());
  if (maybe()) e.getResp().setRexmits(static_cast<std::uint32_t>(rng()));
  if (maybe()) e.initOrig();  // an empty Direction: a zero-sized struct
  if (maybe()) e.getResp().setLocal(schema::Locality::LOCAL);
  if (maybe()) e.setMissedBytes(rng());
  if (maybe()) e.setService(blob(12));
  if (maybe()) e.setLegacyOrigPkts(rng());  // a record sealed in segment format 2
  if (maybe()) {
    // Mostly one or two uids; an empty list (declined: zero-sized) now and then.
    auto parents =
        e.initTunnelParents(rng() % 16 == 0 ? 0u : 1u + static_cast<unsigned>(rng() % 2));
    for (unsigned i = 0; i < parents.size(); ++i) parents.set(i, rng());
  }
}

}  // namespace

TEST_CASE("append_canonical writes what capnp::canonicalize writes, or declines") {
  std::mt19937_64 rng(42);
  std::size_t written = 0, declined = 0;
  std::vector<capnp::word> out;
  for (int round = 0; round < 200; ++round) {
    capnp::MallocMessageBuilder message;
    auto list = message.initRoot<schema::FlowEventBatch>().initEvents(50);
    for (auto e : list) fill(e, rng);
    for (const auto record : list.asReader()) {
      const kj::Array<capnp::word> expect = capnp::canonicalize(record);
      out.assign(3, capnp::word());  // appends after what is there
      if (seal::append_canonical(record, out)) {
        ++written;
        REQUIRE(bytes_of(out.data() + 3, out.size() - 3) ==
                bytes_of(expect.begin(), expect.size()));
      } else {
        ++declined;
        CHECK(out.size() == 3);
      }
    }
  }
  // Only the zero-sized shapes are declined: an all-default record, an empty Data or list.
  CHECK(written > 9 * declined);
}

TEST_CASE("a flowd-shaped record is encoded directly") {
  capnp::MallocMessageBuilder message;
  auto e = message.initRoot<schema::FlowEvent>();
  const std::uint8_t a[4] = {10, 0, 0, 1}, b[4] = {10, 0, 0, 2};
  e.setUid(0x1234);
  e.setOrigAddr({a, 4});
  e.setRespAddr({b, 4});
  e.setConnState("S0");
  e.setHistory("");
  e.setCommunityId("1:LQU9qZlK+B5F3KDmev6m5PMibrg=");
  e.setFirstUid(0x1234);
  e.setLastUid(0x1234);
  std::vector<capnp::word> out;
  REQUIRE(seal::append_canonical(e.asReader(), out));
  const kj::Array<capnp::word> expect = capnp::canonicalize(e.asReader());
  CHECK(bytes_of(out.data(), out.size()) == bytes_of(expect.begin(), expect.size()));

  // A flow inside a tunnel: its parents are part of the leaf, so changing one changes it.
  auto parents = e.initTunnelParents(2);
  parents.set(0, 0xAAAA);
  parents.set(1, 0xBBBB);
  out.clear();
  REQUIRE(seal::append_canonical(e.asReader(), out));
  const kj::Array<capnp::word> with_parents = capnp::canonicalize(e.asReader());
  CHECK(bytes_of(out.data(), out.size()) == bytes_of(with_parents.begin(), with_parents.size()));
  CHECK(with_parents.size() > expect.size());
  parents.set(1, 0xBBBC);
  std::vector<capnp::word> changed;
  REQUIRE(seal::append_canonical(e.asReader(), changed));
  CHECK(bytes_of(changed.data(), changed.size()) != bytes_of(out.data(), out.size()));
}

TEST_CASE("a tunnel parent list of another element size is left to capnp::canonicalize") {
  capnp::MallocMessageBuilder message;
  auto e = message.initRoot<schema::FlowEvent>();
  e.setUid(1);
  // Written as a list of 4-byte elements: readable as List(UInt64) only by upgrade rules,
  // and canonicalize() keeps its shape, which the direct encoder does not write.
  auto any = capnp::AnyStruct::Builder(kj::mv(e)).getPointerSection()[5];
  any.initAsAnyList(capnp::ElementSize::FOUR_BYTES, 2);
  std::vector<capnp::word> out;
  CHECK_FALSE(seal::append_canonical(message.getRoot<schema::FlowEvent>().asReader(), out));
  CHECK(out.empty());
}

TEST_CASE("copy_canonical copies what setWithCaveats copies") {
  std::mt19937_64 rng(7);
  std::size_t copied = 0;
  std::vector<capnp::word> out;
  for (int round = 0; round < 50; ++round) {
    capnp::MallocMessageBuilder message;
    auto list = message.initRoot<schema::FlowEventBatch>().initEvents(50);
    for (auto e : list) fill(e, rng);
    capnp::MallocMessageBuilder general, direct;
    auto expect = general.initRoot<schema::FlowEventBatch>().initEvents(list.size());
    auto got = direct.initRoot<schema::FlowEventBatch>().initEvents(list.size());
    for (unsigned i = 0; i < list.size(); ++i) {
      const auto record = list.asReader()[i];
      expect.setWithCaveats(i, record);
      out.clear();
      if (!seal::append_canonical(record, out)) continue;
      seal::copy_canonical(out.data(), got[i]);
      ++copied;
      // The same fields (canonical forms), and the same data section, format-2 slots included.
      const kj::Array<capnp::word> want = capnp::canonicalize(expect.asReader()[i]);
      const kj::Array<capnp::word> have = capnp::canonicalize(got.asReader()[i]);
      REQUIRE(bytes_of(have.begin(), have.size()) == bytes_of(want.begin(), want.size()));
      const auto want_data = capnp::AnyStruct::Reader(expect.asReader()[i]).getDataSection();
      const auto have_data = capnp::AnyStruct::Reader(got.asReader()[i]).getDataSection();
      CHECK(std::vector<std::uint8_t>(have_data.begin(), have_data.end()) ==
            std::vector<std::uint8_t>(want_data.begin(), want_data.end()));
    }
  }
  CHECK(copied > 2000);
}
