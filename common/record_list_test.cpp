#include "record_list.h"

#include <string>

#include <capnp/any.h>
#include <capnp/message.h>
#include <capnp/serialize.h>
#include <catch2/catch.hpp>
#include <kj/exception.h>

#include "capnp_frame.h"
#include "flowseal.capnp.h"

namespace flowseal {
namespace {

// The frame a hostile writer of the ring can make: a FlowEventBatch whose events are a list
// of Void, `count` elements in no bytes at all.
kj::Array<capnp::word> empty_record_frame(unsigned count) {
  capnp::MallocMessageBuilder message;
  auto batch = message.initRoot<schema::FlowEventBatch>();
  capnp::toAny(batch).getPointerSection()[0].initAsAnyList(capnp::ElementSize::VOID, count);
  return capnp::messageToFlatArray(message);
}

std::string refusal(capnp::List<schema::FlowEvent>::Reader list) {
  try {
    static_cast<void>(sized_records(list, "FlowEventBatch.events"));
  } catch (const kj::Exception& e) {
    return e.getDescription().cStr();
  }
  return "";
}

TEST_CASE("a list of a million empty records in a few bytes is refused, naming it") {
  const auto words = empty_record_frame(1'000'000);
  CHECK(words.size() < 8);  // the whole frame: under 64 bytes
  capnp::FlatArrayMessageReader reader(words, frame_reader_options());
  const auto events = reader.getRoot<schema::FlowEventBatch>().getEvents();
  REQUIRE(events.size() == 1'000'000);  // what Cap'n Proto itself accepts
  CHECK(refusal(events) == "FlowEventBatch.events claims 1000000 records of zero words each");
}

TEST_CASE("real records, an empty list and records of an older, smaller struct pass") {
  capnp::MallocMessageBuilder message;
  auto events = message.initRoot<schema::FlowEventBatch>().initEvents(3);
  events[1].setUid(7);
  const auto words = capnp::messageToFlatArray(message);
  capnp::FlatArrayMessageReader reader(words, frame_reader_options());
  const auto read = reader.getRoot<schema::FlowEventBatch>().getEvents();
  CHECK(refusal(read).empty());
  CHECK(sized_records(read, "events")[1].getUid() == 7);

  capnp::MallocMessageBuilder none;
  none.initRoot<schema::FlowEventBatch>().initEvents(0);
  const auto none_words = capnp::messageToFlatArray(none);
  capnp::FlatArrayMessageReader none_reader(none_words, frame_reader_options());
  CHECK(refusal(none_reader.getRoot<schema::FlowEventBatch>().getEvents()).empty());

  // One data word per element, as a writer with fewer fields would make: 1000 elements cost
  // 1000 words of the message, so they are read (defaults for what they lack).
  capnp::MallocMessageBuilder small;
  auto batch = small.initRoot<schema::FlowEventBatch>();
  capnp::toAny(batch).getPointerSection()[0].initAsAnyList(capnp::ElementSize::EIGHT_BYTES, 1000);
  const auto small_words = capnp::messageToFlatArray(small);
  capnp::FlatArrayMessageReader small_reader(small_words, frame_reader_options());
  CHECK(refusal(small_reader.getRoot<schema::FlowEventBatch>().getEvents()).empty());
}

}  // namespace
}  // namespace flowseal
