// Records copied out of short-lived readers and written out later as FlowEventBatch
// messages: what dedupd's engine emits between two publishes (dedup_stage.cpp's FrameSink,
// and tests/perfgate's copy of it).
//
// Each record is kept as its canonical bytes, written directly by seal::append_canonical()
// into one growing buffer, and copied into the batch's list element field by field
// (seal::copy_canonical()). capnp's general copies (an orphan copy per record, then the list
// element's setWithCaveats(), which zeroes the element first) cost about twice as much, more
// so since every record carries two Direction structs (segment format 3). A record
// append_canonical() does not cover (a struct larger than the schema, an empty list, a
// pointer of an unexpected kind) takes capnp's general path, canonicalize() and
// setWithCaveats(): the records written are the same field for field either way.
//
// Not thread-safe. add() never throws for a record that capnp::canonicalize() can copy.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include <capnp/common.h>
#include <capnp/message.h>
#include <kj/array.h>

#include "flowseal.capnp.h"

namespace flowseal::dedupd {

// The canonical form of `record` (exactly capnp::canonicalize()'s bytes), built without
// capnp's general path where seal::append_canonical() covers the record (then `*direct`,
// if given, is set: what RecordBuffer::add_canonical() needs to know).
kj::Array<capnp::word> canonical_copy(schema::FlowEvent::Reader record, bool* direct = nullptr);
// The same form written into `out` (cleared first); returns whether append_canonical() wrote
// it (`direct`). Throws kj::Exception for a malformed record, having traversed all of it.
bool canonical_into(schema::FlowEvent::Reader record, std::vector<capnp::word>& out);

class RecordBuffer {
 public:
  void add(schema::FlowEvent::Reader record);
  // Adds a record given as canonical_copy()'s output, without traversing it again. ONLY for
  // canonical_copy()'s output (`direct` as it set it): nothing in it is checked.
  void add_canonical(kj::ArrayPtr<const capnp::word> canonical, bool direct);
  std::size_t size() const { return offsets_.size(); }
  // The words of the message build(at, n, ...) makes: exact when every record took the
  // direct path, an upper bound otherwise (a builder's first segment of this size holds it).
  std::size_t words(std::size_t at, std::size_t n) const;
  // Makes `message`'s root a FlowEventBatch of records [at, at + n) in the order added.
  void build(std::size_t at, std::size_t n, capnp::MessageBuilder& message) const;
  // Forgets every record; keeps the buffers' capacity.
  void clear();

 private:
  std::vector<capnp::word> words_;    // the records' canonical forms, one after another
  std::vector<std::size_t> offsets_;  // where each starts in words_
  std::vector<std::uint8_t> direct_;  // 1: written by append_canonical()
  std::vector<std::size_t> extra_;    // words of each record's copy beyond its list element
};

}  // namespace flowseal::dedupd
