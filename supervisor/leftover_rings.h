// What a dead instance left in its rings: read before a new run of the same name removes its
// shared memory, so that what sat there (packets not yet in flows, records not yet sealed,
// sealed batches not yet stored) is counted, not silently discarded, and the sealed batches
// can be handed on (sealed_recovery.h).
//
// The objects are untrusted: anyone who could write them may have. Each is opened without
// following a link, checked on the open descriptor (a regular file, mode 0600, owned by this
// user or supervisor.user, the size its header's capacity gives) and read with pread into
// private memory, never mapped: a file truncated while it is read shortens a read, it cannot
// fault. Every header field is checked as RingConsumer checks it (magic, layout version,
// header size, capacity a power of two, max frame, tail <= head within one capacity, 8-byte
// positions), and frames are walked from the consumer's tail to the producer's head with the
// consumer's own checks; the first frame that fails stops the count and says where.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace flowseal::supervisor {

// One ring edge of the dead instance.
struct LeftoverRing {
  std::string edge;              // "capture-flowd0", ..., "signerd-writerd"
  std::uint64_t frames = 0;      // whole frames between the consumer's tail and the head
  std::uint64_t payload = 0;     // their payload bytes
  std::uint64_t span_bytes = 0;  // head - tail (payload, frame headers, padding, wrap)
  std::string problem;           // why the ring, or the rest of it, was not counted
  // With `keep_payloads`: each whole frame's payload, in ring order.
  std::vector<std::vector<std::byte>> payloads;
};

// Reads `length` bytes at `offset` of a ring object into `out`; false if it cannot (short).
using RingReadAt = std::function<bool(std::uint64_t offset, std::span<std::byte> out)>;

// Walks the ring whose object is `object_bytes` long through `read_at`: checks the header and
// counts the frames between tail and head. `problem` says what did not check (and then what
// was counted before it is all there is).
LeftoverRing count_leftover_frames(std::uint64_t object_bytes, const RingReadAt& read_at,
                                   bool keep_payloads);

// Every ring object of `instance` that exists in /dev/shm, counted (the sealed ring's
// payloads kept). `stage_user`: supervisor.user's uid, whose objects are also this run's.
std::vector<LeftoverRing> read_leftover_rings(const std::string& instance,
                                              std::optional<uid_t> stage_user);

// "capture-flowd0 3 frames (12.0 KiB)", or the edge and its problem; what the frames of the
// edge were ("packets not yet in flows") comes first.
std::string describe(const LeftoverRing& ring);

}  // namespace flowseal::supervisor
