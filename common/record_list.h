// Record lists read from untrusted bytes (ring frames, stored segments).
//
// A list of structs whose elements hold no words at all is valid Cap'n Proto (a list of
// Void reads as such a list), and the reader's traversal limit charges it one word per
// element however many it claims: a forged message of a few hundred bytes can claim
// millions of records, each of which a stage would hash, fold, store or print (found by
// fuzz_capnp_batch: one 538-byte frame made signerd's sealer take 2 GiB). Every record any
// flowseal version has written carries fields, so such a list is refused as malformed
// before anything is done per element; a list of N real records needs at least N words of
// the message, so what a reader does stays proportional to what it was given.
#pragma once

#include <capnp/list.h>

#include "flowseal.capnp.h"

namespace flowseal {

// Returns `list` unchanged, or throws kj::Exception (what every reader of a frame or batch
// already catches for a malformed message) naming `what` when its elements are empty.
capnp::List<schema::FlowEvent>::Reader sized_records(capnp::List<schema::FlowEvent>::Reader list,
                                                     const char* what);

}  // namespace flowseal
