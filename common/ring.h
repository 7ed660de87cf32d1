// The single-producer/single-consumer frame ring that joins two stages through shared memory.
//
// Layout (all in one caller-provided, 64-byte aligned memory block, normally a ShmSegment):
//
//   RingHeader (identity, then producer line, consumer line, wait lines, counter lines)
//   data area: `capacity` bytes, a power of two
//
// Positions are 64-bit byte counters that only grow (offset = position & (capacity - 1)), so
// full and empty are never ambiguous and a wrap is a plain subtraction. A frame is an 8-byte
// FrameHeader {length, length ^ kFrameCheck} followed by the payload, padded to 8 bytes; a
// frame is always contiguous (the producer writes a wrap marker and starts over at offset 0
// when the rest of the area is too short), so a consumer reads it in place — as a Cap'n
// Proto flat array, which needs exactly this 8-byte alignment.
//
// Who writes what: only the producer writes `head`, its counters and `producer_closed`; only
// the consumer writes `tail` and its counters. Each side keeps a private cached copy of the
// other's index and reloads it only when the cache says "full" or "empty".
//
// Commit-after-use: the consumer reads ahead with next()/advance() and moves the shared tail
// only with commit(), once everything those frames produced is safely in its own output. A
// consumer that dies therefore loses nothing: its successor starts again at `tail`, and at
// most the frames after the last commit are read twice. A frame header that fails its check
// or points outside published data is counted as bad and everything up to `head` is skipped
// — the ring never follows a corrupt length into memory it does not own.
//
// Waiting: an idle side sleeps on a futex word in the shared header (no CPU when idle); the
// other side wakes it only if it announced that it sleeps, so the fast path has no syscall,
// and no full fence either: the sleeper pays for the store-load ordering with membarrier(2)
// (futex.h), falling back to full fences where the kernel lacks it. A RingProducer or
// RingConsumer registers the process that constructs it for that fence: construct it in the
// process that uses it, not before a fork().
// Every wait takes a timeout so callers can also watch stop flags and heartbeats, and a
// sleeper re-checks at least every sleep slice (1 s by default) so that it notices a peer
// that died between announcing and delivering a wake. Tests set a long slice to prove that
// no wake is ever lost (a lost wake then shows as a timeout, not as a short delay).
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>

namespace flowseal {

inline constexpr std::size_t kCacheLine = 64;

struct RingCounters {
  // producer side
  std::uint64_t frames_in;
  std::uint64_t bytes_in;
  std::uint64_t full_waits;  // reserve() found the ring full and had to wait
  std::uint64_t drops;       // frames the producer gave up on (live capture, ring full)
  // consumer side
  std::uint64_t frames_out;
  std::uint64_t bytes_out;
  std::uint64_t bad_frames;  // headers that failed validation; their bytes were skipped
};

struct alignas(kCacheLine) RingHeader {
  static constexpr std::uint64_t kMagic = 0x31474E49'52534657ULL;  // "FWSRING1"
  static constexpr std::uint32_t kLayoutVersion = 1;

  // identity (written once by the creator)
  std::uint64_t magic;
  std::uint32_t layout_version;
  std::uint32_t header_bytes;
  std::uint64_t capacity;
  std::uint64_t max_frame;

  // producer line
  alignas(kCacheLine) std::atomic<std::uint64_t> head;
  std::atomic<std::uint32_t> producer_closed;  // 1: no more frames will come (drain)
  std::atomic<std::uint32_t> producer_pid;

  // consumer line
  alignas(kCacheLine) std::atomic<std::uint64_t> tail;
  std::atomic<std::uint32_t> consumer_pid;

  // futex words: bumped by the waker; a sleeper waits while the value is unchanged
  alignas(kCacheLine) std::atomic<std::uint32_t> data_seq;
  std::atomic<std::uint32_t> consumer_sleeping;
  alignas(kCacheLine) std::atomic<std::uint32_t> space_seq;
  std::atomic<std::uint32_t> producer_sleeping;

  // counters: producer's then consumer's, each on its own line
  alignas(kCacheLine) std::atomic<std::uint64_t> frames_in;
  std::atomic<std::uint64_t> bytes_in;
  std::atomic<std::uint64_t> full_waits;
  std::atomic<std::uint64_t> drops;
  alignas(kCacheLine) std::atomic<std::uint64_t> frames_out;
  std::atomic<std::uint64_t> bytes_out;
  std::atomic<std::uint64_t> bad_frames;
};
static_assert(std::is_standard_layout_v<RingHeader>);
static_assert(sizeof(RingHeader) % kCacheLine == 0);
static_assert(std::atomic<std::uint64_t>::is_always_lock_free);

struct FrameHeader {
  static constexpr std::uint32_t kCheck = 0x5EA1F10Du;
  static constexpr std::uint32_t kWrapMarker = 0xFFFFFFFFu;
  std::uint32_t length;  // payload bytes (not padded)
  std::uint32_t check;   // length ^ kCheck
};
static_assert(sizeof(FrameHeader) == 8);

// Bytes of shared memory a ring with `capacity` data bytes needs.
std::size_t ring_bytes(std::size_t capacity);

// Largest payload one frame of a ring with `capacity` data bytes carries (a quarter of it).
std::size_t ring_max_frame(std::size_t capacity);

// Formats a fresh ring in `memory` (which the caller zeroed). `capacity` must be a power of
// two of at least 4 KiB; `memory` must be ring_bytes(capacity) long and 64-byte aligned.
void ring_format(std::span<std::byte> memory, std::size_t capacity);

// Checks magic, layout version and capacity of a ring in `memory`; throws std::runtime_error
// saying what does not match (e.g. a mapping made by another flowseal version).
RingHeader& ring_attach(std::span<std::byte> memory);

RingCounters ring_counters(const RingHeader&);

class RingProducer {
 public:
  explicit RingProducer(std::span<std::byte> memory);

  // Largest payload a single frame can carry.
  std::size_t max_frame() const { return max_frame_; }

  // Space for a `length`-byte payload, contiguous and 8-byte aligned, or an empty span with
  // a null data() if the ring has no room now (a zero-length frame gets an empty span with a
  // non-null data()). Nothing is visible to the consumer until publish().
  std::span<std::byte> try_reserve(std::size_t length);
  // As try_reserve, but sleeps while the ring is full, up to `timeout`; empty on timeout.
  std::span<std::byte> reserve(std::size_t length, std::chrono::milliseconds timeout);
  // Seals the frame last reserved with its final payload length (<= the reserved length).
  // Without a reservation it does nothing.
  void commit(std::size_t length);
  // Makes every committed frame visible at once and wakes a sleeping consumer. Publishing a
  // batch of frames costs one release store, which is what makes small frames cheap.
  void publish();

  // Convenience: reserve + copy + commit + publish; false if no room within `timeout`.
  bool write(std::span<const std::byte> payload, std::chrono::milliseconds timeout);

  void count_drop() { header_->drops.fetch_add(1, std::memory_order_relaxed); }
  // The position up to which frames are published (the shared head when constructed).
  std::uint64_t published() const { return published_; }
  // The last frame published in [from, published()), read back from the data area as a
  // consumer would read it (every header checked, wrap markers followed): for a restarted
  // producer that must learn what its predecessor published after the position it recorded.
  // nullopt if there is none, if `from` is not a frame boundary within one capacity of the
  // head, or if any header fails its check (the bytes are then not what a producer wrote).
  std::optional<std::span<const std::byte>> last_published_since(std::uint64_t from) const;
  // Tells the consumer no more frames will come (after a final publish()).
  void close();
  // A restarted producer reopens a ring its predecessor may have closed.
  void reopen() { header_->producer_closed.store(0, std::memory_order_release); }
  std::size_t used_bytes() const;
  std::size_t capacity() const { return capacity_; }
  // Longest single futex sleep inside reserve() before the ring is looked at again.
  void set_sleep_slice(std::chrono::milliseconds slice) { sleep_slice_ = slice; }

 private:
  bool has_room(std::uint64_t need);

  RingHeader* header_;
  std::byte* data_;
  std::size_t capacity_;
  std::size_t max_frame_;
  std::uint64_t head_;         // private: committed but maybe unpublished
  std::uint64_t cached_tail_;  // private copy of the consumer's tail
  std::uint64_t published_;    // head as last stored in the header
  bool light_wake_check_;      // asymmetric fence registered: publish() needs no full fence
  std::uint64_t reserved_at_ = 0;
  std::size_t reserved_len_ = 0;
  bool reserved_ = false;
  std::uint64_t pending_frames_ = 0;
  std::uint64_t pending_bytes_ = 0;
  std::chrono::milliseconds sleep_slice_;
};

class RingConsumer {
 public:
  explicit RingConsumer(std::span<std::byte> memory);

  // The payload of the frame after the read cursor, read in place, or nullopt if none is
  // published (or the header was bad: then it is counted and skipped). Stays valid until
  // commit() passes it.
  std::optional<std::span<const std::byte>> next();
  // Moves the read cursor past the frame next() returned. Does not free it.
  void advance();
  // Frees everything before the read cursor for the producer: call only when all that it
  // produced is committed downstream.
  void commit();

  // Sleeps until a frame is published after the read cursor, or `timeout`. True if one is.
  bool wait(std::chrono::milliseconds timeout);
  // The same over several rings (a stage with several inputs: dedupd behind N flowd shards):
  // one futex_waitv(2) on all their wake words, so it sleeps as long as on one ring. True if
  // one has a frame. Where the kernel lacks futex_waitv, it looks at each every 2 ms.
  static bool wait_any(std::span<RingConsumer> consumers, std::chrono::milliseconds timeout);
  // True when the producer closed the ring and every frame was read.
  bool drained() const;
  // Frames read since the last commit (a crash would replay these).
  std::uint64_t uncommitted_frames() const { return uncommitted_; }
  std::size_t used_bytes() const;
  bool closed() const { return header_->producer_closed.load(std::memory_order_acquire) != 0; }
  // Reloads the producer's head: true if a frame is published after the read cursor.
  bool refresh_head() {
    cached_head_ = header_->head.load(std::memory_order_acquire);
    return cached_head_ != read_;
  }
  // Longest single futex sleep inside wait() before the ring is looked at again.
  void set_sleep_slice(std::chrono::milliseconds slice) { sleep_slice_ = slice; }

 private:
  RingHeader* header_;
  const std::byte* data_;
  std::size_t capacity_;
  std::uint64_t max_frame_;
  std::uint64_t read_;         // private read cursor (>= shared tail)
  std::uint64_t cached_head_;  // private copy of the producer's head
  bool light_wake_check_;      // asymmetric fence registered: commit() needs no full fence
  std::uint64_t current_end_ = 0;
  std::uint64_t current_length_ = 0;
  std::uint64_t uncommitted_ = 0;
  std::uint64_t pending_frames_ = 0;
  std::uint64_t pending_bytes_ = 0;
  std::chrono::milliseconds sleep_slice_;
};

}  // namespace flowseal
