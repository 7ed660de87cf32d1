// Force-included into every file of the fuzz build (clang, tests/fuzz/meson.build).
//
// Cap'n Proto's `capnp::word` is copyable when compiled by GCC and not when compiled by clang
// (capnp/common.h: KJ_DISALLOW_COPY only `#if __GNUC__ < 8 || __clang__`), and flowseal keeps
// words in std::vector, whose growth needs a copy or move. The probe is built with GCC; to
// build the very same sources with clang for libFuzzer, `word` gets GCC's definition here:
// the macro is neutralised while capnp/common.h (include-guarded: later includes reuse this
// definition) is read, and restored at once, so no other class is affected. `word` is a
// trivial 8-byte type either way, so this changes no layout or ABI.
#pragma once
#include <kj/common.h>
#pragma push_macro("KJ_DISALLOW_COPY")
#undef KJ_DISALLOW_COPY
#define KJ_DISALLOW_COPY(classname) static_assert(true)
#include <capnp/common.h>
#pragma pop_macro("KJ_DISALLOW_COPY")
