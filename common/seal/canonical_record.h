// The canonical Cap'n Proto encoding of one FlowEvent (its Merkle leaf data), written
// straight into a caller's buffer.
//
// capnp::canonicalize() is general: it measures the struct, builds a fresh message, copies
// it and hands back a newly allocated array, per record. A FlowEvent's canonical form is
// simple enough to write directly: the root struct pointer, the data section without its
// trailing zero words, the pointer section without its trailing null pointers, then each
// byte list (two Data, three Text) in pointer order, padded to a word. That is what signerd
// hashes for every record, so it is worth doing without an allocation.
//
// Guarantee: append_canonical() either appends exactly capnp::canonicalize(record) (the
// test compares them on random records) or, for a shape it does not cover (a struct larger
// than the schema, a zero-length list, an all-zero struct), appends nothing and returns false,
// and the caller uses capnp::canonicalize(). It throws kj::Exception where capnp would (a
// pointer of the wrong kind). Thread-safe.
#pragma once

#include <vector>

#include <capnp/common.h>

#include "flowseal.capnp.h"

namespace flowseal::seal {

bool append_canonical(schema::FlowEvent::Reader record, std::vector<capnp::word>& out);

}  // namespace flowseal::seal
