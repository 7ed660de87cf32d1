#include "record_list.h"

#include <capnp/any.h>
#include <kj/debug.h>
#include <kj/string.h>

namespace flowseal {

capnp::List<schema::FlowEvent>::Reader sized_records(capnp::List<schema::FlowEvent>::Reader list,
                                                     const char* what) {
  if (list.size() == 0) return list;
  // Every element of a struct list has the same size: the first one's is the list's.
  const auto first = capnp::AnyStruct::Reader(list[0]);
  if (first.getDataSection().size() == 0 && first.getPointerSection().size() == 0) {
    kj::throwFatalException(KJ_EXCEPTION(
        FAILED, kj::str(what, " claims ", list.size(), " records of zero words each")));
  }
  return list;
}

}  // namespace flowseal
