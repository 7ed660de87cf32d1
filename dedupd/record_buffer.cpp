#include "record_buffer.h"

#include <cstring>

#include <capnp/serialize.h>
#include <kj/exception.h>

#include "seal/canonical_record.h"

namespace flowseal::dedupd {
namespace {

// append_canonical() where it covers the record; false (nothing appended) where it does not,
// or where it throws: a pointer of an unexpected kind, which canonicalize() copies as it is.
bool try_append_canonical(schema::FlowEvent::Reader record, std::vector<capnp::word>& out) {
  try {
    return seal::append_canonical(record, out);
  } catch (const kj::Exception&) {
    return false;  // it appends nothing before it throws
  }
}

void append_words(kj::ArrayPtr<const capnp::word> words, std::vector<capnp::word>& out) {
  const std::size_t start = out.size();
  out.resize(start + words.size());
  std::memcpy(out.data() + start, words.begin(), words.asBytes().size());
}

}  // namespace

kj::Array<capnp::word> canonical_copy(schema::FlowEvent::Reader record, bool* direct) {
  thread_local std::vector<capnp::word> scratch;
  scratch.clear();
  const bool written = try_append_canonical(record, scratch);
  if (direct != nullptr) *direct = written;
  if (!written) return capnp::canonicalize(record);
  auto out = kj::heapArray<capnp::word>(scratch.size());
  std::memcpy(out.begin(), scratch.data(), scratch.size() * sizeof(capnp::word));
  return out;
}

bool canonical_into(schema::FlowEvent::Reader record, std::vector<capnp::word>& out) {
  out.clear();
  if (try_append_canonical(record, out)) return true;
  append_words(capnp::canonicalize(record), out);
  return false;
}

void RecordBuffer::add(schema::FlowEvent::Reader record) {
  const std::size_t start = words_.size();
  const bool direct = try_append_canonical(record, words_);
  if (!direct) append_words(capnp::canonicalize(record), words_);
  offsets_.push_back(start);
  direct_.push_back(direct ? 1 : 0);
  // capnp's general copy of a canonical form adds at most the form's own words.
  extra_.push_back(direct ? seal::copied_words(words_.data() + start) : words_.size() - start);
}

void RecordBuffer::add_canonical(kj::ArrayPtr<const capnp::word> canonical, bool direct) {
  const std::size_t start = words_.size();
  append_words(canonical, words_);
  offsets_.push_back(start);
  direct_.push_back(direct ? 1 : 0);
  extra_.push_back(direct ? seal::copied_words(words_.data() + start) : canonical.size());
}

std::size_t RecordBuffer::words(std::size_t at, std::size_t n) const {
  using Batch = schema::FlowEventBatch::_capnpPrivate;
  using Event = schema::FlowEvent::_capnpPrivate;
  // Root pointer, the batch struct, the list's tag word, the elements, what they point to.
  std::size_t words = 1 + Batch::dataWordSize + Batch::pointerCount + 1 +
                      n * (Event::dataWordSize + Event::pointerCount);
  for (std::size_t i = at; i < at + n; ++i) words += extra_[i];
  return words;
}

void RecordBuffer::build(std::size_t at, std::size_t n, capnp::MessageBuilder& message) const {
  auto events = message.initRoot<schema::FlowEventBatch>().initEvents(static_cast<unsigned>(n));
  for (std::size_t i = 0; i < n; ++i) {
    const capnp::word* canonical = words_.data() + offsets_[at + i];
    if (direct_[at + i] != 0) {
      seal::copy_canonical(canonical, events[static_cast<unsigned>(i)]);
    } else {
      // A canonical form is one segment with the root pointer first, and our own: it is
      // read unchecked.
      events.setWithCaveats(static_cast<unsigned>(i),
                            capnp::readMessageUnchecked<schema::FlowEvent>(canonical));
    }
  }
}

void RecordBuffer::clear() {
  words_.clear();
  offsets_.clear();
  direct_.clear();
  extra_.clear();
}

}  // namespace flowseal::dedupd
