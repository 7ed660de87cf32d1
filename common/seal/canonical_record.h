// The canonical Cap'n Proto encoding of one FlowEvent (its Merkle leaf data), written
// straight into a caller's buffer.
//
// capnp::canonicalize() is general: it measures the struct, builds a fresh message, copies
// it and hands back a newly allocated array, per record. A FlowEvent's canonical form is
// simple enough to write directly: the root struct pointer, the data section without its
// trailing zero words, the pointer section without its trailing null pointers, then each
// byte list (two Data, four Text, the tunnel parents) and Direction struct in pointer order,
// padded to a word. That is what signerd
// hashes for every record, so it is worth doing without an allocation.
//
// Guarantee: append_canonical() either appends exactly capnp::canonicalize(record) (the
// test compares them on random records) or, for a shape it does not cover (a struct larger
// than the schema, a zero-length list, an all-zero record), appends nothing and returns false,
// and the caller uses capnp::canonicalize(). It throws kj::Exception where capnp would (a
// pointer of the wrong kind). Thread-safe.
#pragma once

#include <cstddef>
#include <vector>

#include <capnp/common.h>

#include "flowseal.capnp.h"

namespace flowseal::seal {

bool append_canonical(schema::FlowEvent::Reader record, std::vector<capnp::word>& out);

// Copies a record that append_canonical() wrote (`canonical`: the first word it appended)
// into a fresh, all-zero struct `to` of this schema's size, e.g. a list element just
// initialised: the data sections as bytes, each list through its typed setter, the pointers
// read straight from the canonical layout. The same field values as capnp's setWithCaveats()
// or newOrphanCopy(), which go through the general, kind-dispatching copy (and first zero the
// element): about a quarter of their cost. ONLY for append_canonical()'s output: nothing in
// it is checked.
void copy_canonical(const capnp::word* canonical, schema::FlowEvent::Builder to);

// The words copy_canonical(canonical, to) adds to `to`'s message beyond `to` itself (its lists
// and Direction structs, at the sizes the setters allocate): with the struct's own words, the
// exact size a message builder needs for the copy. Same precondition as copy_canonical().
std::size_t copied_words(const capnp::word* canonical);

}  // namespace flowseal::seal
