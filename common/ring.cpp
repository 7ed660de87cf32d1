#include "ring.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cstring>
#include <new>
#include <stdexcept>
#include <thread>

#include <fmt/format.h>

#include "futex.h"

namespace flowseal {
namespace {

constexpr std::uint64_t pad8(std::uint64_t n) { return (n + 7) & ~std::uint64_t{7}; }
constexpr std::uint64_t frame_bytes(std::uint64_t payload) {
  return sizeof(FrameHeader) + pad8(payload);
}

// A sleeper is woken by its peer's futex wake, by close(), or by a signal (a stage's stop);
// the slice only bounds how long it sleeps if a peer died between announcing and delivering
// a wake. Stages wait at most a second at a time anyway (their heartbeat, ring_io.h), so the
// slice must not be shorter: each extra wake is a futex call and a membarrier IPI to every
// CPU, and at 250 ms these were most of an idle pipeline's CPU.
constexpr auto kDefaultSleepSlice = std::chrono::milliseconds(1000);

// Frame lengths are 32-bit and 0xFFFFFFFF marks a wrap, so a quarter of the ring must fit.
constexpr std::uint64_t kMaxCapacity = std::uint64_t{1} << 32;
constexpr std::uint64_t kMinCapacity = 4096;

constexpr std::uint64_t max_frame_for(std::uint64_t capacity) {
  // A quarter of the ring per frame keeps a producer from starving behind one huge frame.
  return capacity / 4 - sizeof(FrameHeader);
}

// If the kernel refuses the heavy side of the asymmetric fence, a sleeper cannot be sure a
// light-fenced peer sees it, so it re-checks this often instead of trusting a wake.
constexpr auto kUnfencedSleepSlice = std::chrono::milliseconds(1);

std::byte* data_of(std::span<std::byte> memory) { return memory.data() + sizeof(RingHeader); }

// Each counter has a single writer (one side of one ring), so a plain load and store suffice:
// no locked read-modify-write on the hot path.
void add_single_writer(std::atomic<std::uint64_t>& counter, std::uint64_t n) {
  counter.store(counter.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
}

// The waker's half of the sleep handshake (see futex.h): a store to the ring index, then a
// load of the peer's "sleeping" flag.
void waker_fence(bool light) {
  if (light) {
    asymmetric_fence_light();
  } else {
    std::atomic_thread_fence(std::memory_order_seq_cst);
  }
}

// The sleeper's half: after announcing sleep, before re-checking. Returns the longest safe
// sleep slice.
std::chrono::milliseconds sleeper_fence(std::chrono::milliseconds slice) {
  return asymmetric_fence_heavy() ? slice : std::min(slice, kUnfencedSleepSlice);
}

}  // namespace

std::size_t ring_max_frame(std::size_t capacity) { return max_frame_for(capacity); }

std::size_t ring_bytes(std::size_t capacity) { return sizeof(RingHeader) + capacity; }

void ring_format(std::span<std::byte> memory, std::size_t capacity) {
  if (!std::has_single_bit(capacity) || capacity < kMinCapacity || capacity > kMaxCapacity) {
    throw std::invalid_argument(
        fmt::format("ring capacity {} is not a power of two between {} and {}", capacity,
                    kMinCapacity, kMaxCapacity));
  }
  if (memory.size() < ring_bytes(capacity)) {
    throw std::invalid_argument(
        fmt::format("ring memory of {} bytes is smaller than the {} "
                    "a {}-byte ring needs",
                    memory.size(), ring_bytes(capacity), capacity));
  }
  if (reinterpret_cast<std::uintptr_t>(memory.data()) % kCacheLine != 0) {
    throw std::invalid_argument("ring memory is not 64-byte aligned");
  }
  auto* header = new (memory.data()) RingHeader{};
  header->layout_version = RingHeader::kLayoutVersion;
  header->header_bytes = sizeof(RingHeader);
  header->capacity = capacity;
  header->max_frame = max_frame_for(capacity);
  std::atomic_thread_fence(std::memory_order_release);
  header->magic = RingHeader::kMagic;
}

RingHeader& ring_attach(std::span<std::byte> memory) {
  if (memory.size() < sizeof(RingHeader)) {
    throw std::runtime_error(
        fmt::format("ring mapping of {} bytes is too small for a header", memory.size()));
  }
  auto* header = std::launder(reinterpret_cast<RingHeader*>(memory.data()));
  if (header->magic != RingHeader::kMagic) {
    throw std::runtime_error(
        fmt::format("ring magic {:#x} is not flowseal's {:#x} "
                    "(uninitialised or foreign memory)",
                    header->magic, RingHeader::kMagic));
  }
  if (header->layout_version != RingHeader::kLayoutVersion ||
      header->header_bytes != sizeof(RingHeader)) {
    throw std::runtime_error(fmt::format(
        "ring layout version {} (header {} bytes) does not match this build's {} ({} bytes)",
        header->layout_version, header->header_bytes, RingHeader::kLayoutVersion,
        sizeof(RingHeader)));
  }
  if (!std::has_single_bit(header->capacity) || header->capacity < kMinCapacity ||
      header->capacity > kMaxCapacity || ring_bytes(header->capacity) > memory.size()) {
    throw std::runtime_error(fmt::format("ring capacity {} does not fit its {}-byte mapping",
                                         header->capacity, memory.size()));
  }
  if (header->max_frame != max_frame_for(header->capacity)) {
    throw std::runtime_error(fmt::format("ring max frame {} does not match its capacity {}",
                                         header->max_frame, header->capacity));
  }
  return *header;
}

RingCounters ring_counters(const RingHeader& h) {
  constexpr auto r = std::memory_order_relaxed;
  return {h.frames_in.load(r),  h.bytes_in.load(r),  h.full_waits.load(r), h.drops.load(r),
          h.frames_out.load(r), h.bytes_out.load(r), h.bad_frames.load(r)};
}

// ---------------------------------------------------------------------------- producer

RingProducer::RingProducer(std::span<std::byte> memory)
    : header_(&ring_attach(memory)),
      data_(data_of(memory)),
      capacity_(header_->capacity),
      max_frame_(header_->max_frame),
      head_(header_->head.load(std::memory_order_acquire)),
      cached_tail_(header_->tail.load(std::memory_order_acquire)),
      published_(head_),
      light_wake_check_(asymmetric_fence_register()),
      sleep_slice_(kDefaultSleepSlice) {
  // The producer resumes at the shared head: frames only ever move it by multiples of 8 and
  // never past a full ring. One that does not fit (a crashed or hostile writer of the mapping)
  // would place a wrap marker up to 7 bytes past the data area.
  if (head_ % 8 != 0 || head_ - cached_tail_ > capacity_) {
    throw std::runtime_error(
        fmt::format("ring head {} does not fit its tail {} and capacity {} (damaged shared memory)",
                    head_, cached_tail_, capacity_));
  }
}

std::optional<std::span<const std::byte>> RingProducer::last_published_since(
    std::uint64_t from) const {
  if (from >= published_ || from % sizeof(FrameHeader) != 0 || published_ - from > capacity_) {
    return std::nullopt;
  }
  std::optional<std::span<const std::byte>> last;
  for (std::uint64_t at = from; at < published_;) {
    const std::uint64_t offset = at & (capacity_ - 1);
    const std::uint64_t available = published_ - at;
    FrameHeader frame;
    std::memcpy(&frame, data_ + offset, sizeof frame);
    if (frame.length == FrameHeader::kWrapMarker &&
        frame.check == (FrameHeader::kWrapMarker ^ FrameHeader::kCheck) &&
        capacity_ - offset <= available) {
      at += capacity_ - offset;
      continue;
    }
    const std::uint64_t need = frame_bytes(frame.length);
    if (frame.check != (frame.length ^ FrameHeader::kCheck) || frame.length > max_frame_ ||
        offset + need > capacity_ || need > available) {
      return std::nullopt;
    }
    last = std::span<const std::byte>(data_ + offset + sizeof(FrameHeader), frame.length);
    at += need;
  }
  return last;
}

bool RingProducer::has_room(std::uint64_t need) {
  if (head_ + need - cached_tail_ <= capacity_) return true;
  cached_tail_ = header_->tail.load(std::memory_order_acquire);
  return head_ + need - cached_tail_ <= capacity_;
}

std::span<std::byte> RingProducer::try_reserve(std::size_t length) {
  if (length > max_frame_) return {};
  const std::uint64_t need = frame_bytes(length);
  const std::uint64_t offset = head_ & (capacity_ - 1);
  const std::uint64_t to_end = capacity_ - offset;
  if (need > to_end) {
    // The frame must be contiguous: mark the rest of the area as skipped and start at 0.
    if (!has_room(to_end + need)) return {};
    const FrameHeader wrap{FrameHeader::kWrapMarker,
                           FrameHeader::kWrapMarker ^ FrameHeader::kCheck};
    std::memcpy(data_ + offset, &wrap, sizeof wrap);
    head_ += to_end;
  } else if (!has_room(need)) {
    return {};
  }
  reserved_at_ = head_;
  reserved_len_ = length;
  reserved_ = true;
  return {data_ + (head_ & (capacity_ - 1)) + sizeof(FrameHeader), length};
}

std::span<std::byte> RingProducer::reserve(std::size_t length, std::chrono::milliseconds timeout) {
  if (auto slot = try_reserve(length); slot.data() != nullptr || length > max_frame_) {
    return slot;
  }
  // Let the consumer see what we have before we wait for it to make room.
  publish();
  header_->full_waits.fetch_add(1, std::memory_order_relaxed);
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    const std::uint32_t seq = header_->space_seq.load(std::memory_order_acquire);
    header_->producer_sleeping.store(1, std::memory_order_relaxed);
    // Pairs with RingConsumer::commit(): either it sees us sleeping or we see its new tail.
    const auto slice = sleeper_fence(sleep_slice_);
    if (auto slot = try_reserve(length); slot.data() != nullptr) {
      header_->producer_sleeping.store(0, std::memory_order_relaxed);
      return slot;
    }
    const auto now = std::chrono::steady_clock::now();
    if (now >= deadline) {
      header_->producer_sleeping.store(0, std::memory_order_relaxed);
      return {};
    }
    futex_wait(header_->space_seq, seq, std::min<std::chrono::nanoseconds>(deadline - now, slice));
    header_->producer_sleeping.store(0, std::memory_order_relaxed);
  }
}

void RingProducer::commit(std::size_t length) {
  // A stale reservation would rewrite a frame already committed.
  if (!reserved_) return;
  reserved_ = false;
  length = std::min(length, reserved_len_);
  const FrameHeader frame{static_cast<std::uint32_t>(length),
                          static_cast<std::uint32_t>(length) ^ FrameHeader::kCheck};
  std::memcpy(data_ + (reserved_at_ & (capacity_ - 1)), &frame, sizeof frame);
  head_ = reserved_at_ + frame_bytes(length);
  reserved_len_ = 0;
  ++pending_frames_;
  pending_bytes_ += length;
}

void RingProducer::publish() {
  if (head_ == published_) return;
  add_single_writer(header_->frames_in, pending_frames_);
  add_single_writer(header_->bytes_in, pending_bytes_);
  pending_frames_ = pending_bytes_ = 0;
  published_ = head_;
  header_->head.store(head_, std::memory_order_release);
  // Pairs with the consumer's "sleeping" store and head re-check in wait(): one of the two
  // sides always sees the other, so a wake is never lost. The light fence keeps a full
  // fence (which would wait for the consumer's copy of the head line) off every publish.
  waker_fence(light_wake_check_);
  if (header_->consumer_sleeping.load(std::memory_order_relaxed)) {
    header_->data_seq.fetch_add(1, std::memory_order_release);
    futex_wake_all(header_->data_seq);
  }
}

bool RingProducer::write(std::span<const std::byte> payload, std::chrono::milliseconds timeout) {
  auto slot = reserve(payload.size(), timeout);
  if (slot.data() == nullptr) return false;
  if (!payload.empty()) std::memcpy(slot.data(), payload.data(), payload.size());
  commit(payload.size());
  publish();
  return true;
}

void RingProducer::close() {
  publish();
  header_->producer_closed.store(1, std::memory_order_release);
  std::atomic_thread_fence(std::memory_order_seq_cst);
  header_->data_seq.fetch_add(1, std::memory_order_release);
  futex_wake_all(header_->data_seq);
}

std::size_t RingProducer::used_bytes() const {
  return head_ - header_->tail.load(std::memory_order_acquire);
}

// ---------------------------------------------------------------------------- consumer

RingConsumer::RingConsumer(std::span<std::byte> memory)
    : header_(&ring_attach(memory)),
      data_(data_of(memory)),
      capacity_(header_->capacity),
      max_frame_(header_->max_frame),
      read_(header_->tail.load(std::memory_order_acquire)),
      cached_head_(header_->head.load(std::memory_order_acquire)),
      light_wake_check_(asymmetric_fence_register()),
      sleep_slice_(kDefaultSleepSlice) {}

std::optional<std::span<const std::byte>> RingConsumer::next() {
  for (;;) {
    if (read_ == cached_head_) {
      cached_head_ = header_->head.load(std::memory_order_acquire);
      if (read_ == cached_head_) return std::nullopt;
    }
    const std::uint64_t offset = read_ & (capacity_ - 1);
    if (read_ % sizeof(FrameHeader) != 0) {
      // Frames start 8-byte aligned, so a header never runs past the end of the area; a tail
      // that is not (left by a crashed or hostile writer of the mapping) would read past it.
      header_->bad_frames.fetch_add(1, std::memory_order_relaxed);
      read_ = cached_head_;
      return std::nullopt;
    }
    const std::uint64_t available = cached_head_ - read_;
    if (available > capacity_) {
      // More published than the area holds: a head no producer wrote. Without this, a wrap
      // marker at offset 0 would be skipped to itself again and again, up to 2^64 bytes.
      header_->bad_frames.fetch_add(1, std::memory_order_relaxed);
      read_ = cached_head_;
      return std::nullopt;
    }
    FrameHeader frame;
    std::memcpy(&frame, data_ + offset, sizeof frame);
    if (frame.length == FrameHeader::kWrapMarker &&
        frame.check == (FrameHeader::kWrapMarker ^ FrameHeader::kCheck) &&
        capacity_ - offset <= available) {
      read_ += capacity_ - offset;
      continue;
    }
    const std::uint64_t need = frame_bytes(frame.length);
    const bool valid = frame.check == (frame.length ^ FrameHeader::kCheck) &&
                       frame.length <= max_frame_ && offset + need <= capacity_ &&
                       need <= available;
    if (!valid) {
      // The length cannot be trusted, so neither can any later header in this stretch:
      // skip all that is published and let commit() hand it back to the producer.
      header_->bad_frames.fetch_add(1, std::memory_order_relaxed);
      read_ = cached_head_;
      return std::nullopt;
    }
    current_end_ = read_ + need;
    current_length_ = frame.length;
    return std::span<const std::byte>(data_ + offset + sizeof(FrameHeader), frame.length);
  }
}

void RingConsumer::advance() {
  if (current_end_ <= read_) return;
  pending_bytes_ += current_length_;  // payload bytes, as the producer counts them
  ++pending_frames_;
  ++uncommitted_;
  read_ = current_end_;
}

void RingConsumer::commit() {
  uncommitted_ = 0;
  if (header_->tail.load(std::memory_order_relaxed) == read_) return;
  add_single_writer(header_->frames_out, pending_frames_);
  add_single_writer(header_->bytes_out, pending_bytes_);
  pending_frames_ = pending_bytes_ = 0;
  header_->tail.store(read_, std::memory_order_release);
  // Pairs with the producer's "sleeping" store and re-check in reserve().
  waker_fence(light_wake_check_);
  if (header_->producer_sleeping.load(std::memory_order_relaxed)) {
    header_->space_seq.fetch_add(1, std::memory_order_release);
    futex_wake_all(header_->space_seq);
  }
}

bool RingConsumer::wait(std::chrono::milliseconds timeout) {
  auto has_data = [this] {
    cached_head_ = header_->head.load(std::memory_order_acquire);
    return cached_head_ != read_;
  };
  if (has_data()) return true;
  // A short spin catches the next batch of a busy producer without a syscall.
  for (int i = 0; i < 64; ++i) {
#if defined(__x86_64__)
    __builtin_ia32_pause();
#endif
    if (has_data()) return true;
  }
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    const std::uint32_t seq = header_->data_seq.load(std::memory_order_acquire);
    header_->consumer_sleeping.store(1, std::memory_order_relaxed);
    // Pairs with RingProducer::publish(): either the producer sees us sleeping or we see its
    // new head. close() wakes unconditionally after setting the flag.
    const auto slice = sleeper_fence(sleep_slice_);
    if (has_data() || closed()) {
      header_->consumer_sleeping.store(0, std::memory_order_relaxed);
      return cached_head_ != read_;
    }
    const auto now = std::chrono::steady_clock::now();
    if (now >= deadline) {
      header_->consumer_sleeping.store(0, std::memory_order_relaxed);
      return false;
    }
    futex_wait(header_->data_seq, seq, std::min<std::chrono::nanoseconds>(deadline - now, slice));
    header_->consumer_sleeping.store(0, std::memory_order_relaxed);
    // Timed out: one look and back to the caller, without announcing sleep (and paying
    // its membarrier) again only to find the deadline passed.
    if (std::chrono::steady_clock::now() >= deadline) return has_data();
  }
}

bool RingConsumer::wait_any(std::span<RingConsumer> consumers, std::chrono::milliseconds timeout) {
  if (consumers.size() == 1) return consumers.front().wait(timeout);
  auto any_frame = [&] {
    bool any = false;
    for (auto& c : consumers) any |= c.refresh_head();
    return any;
  };
  if (any_frame()) return true;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  constexpr std::size_t kMaxWords = 64;  // kMaxShards inputs at most, in practice
  std::array<std::atomic<std::uint32_t>*, kMaxWords> words{};
  std::array<std::uint32_t, kMaxWords> seqs{};
  const std::size_t n = std::min(consumers.size(), kMaxWords);
  auto stop_sleeping = [&] {
    for (auto& c : consumers) c.header_->consumer_sleeping.store(0, std::memory_order_relaxed);
  };
  bool vectored = consumers.size() <= kMaxWords;
  while (vectored) {
    // As wait(), for each ring: announce sleep, one fence for all, then look once more.
    for (std::size_t i = 0; i < n; ++i) {
      RingHeader& h = *consumers[i].header_;
      seqs[i] = h.data_seq.load(std::memory_order_acquire);
      h.consumer_sleeping.store(1, std::memory_order_relaxed);
      words[i] = &h.data_seq;
    }
    const auto slice = sleeper_fence(consumers.front().sleep_slice_);
    bool closed = false;
    for (auto& c : consumers) closed |= c.closed();
    if (any_frame() || closed) {
      stop_sleeping();
      return any_frame();
    }
    const auto now = std::chrono::steady_clock::now();
    if (now >= deadline) {
      stop_sleeping();
      return false;
    }
    vectored = futex_wait_any({words.data(), n}, {seqs.data(), n},
                              std::min<std::chrono::nanoseconds>(deadline - now, slice));
    stop_sleeping();
    if (std::chrono::steady_clock::now() >= deadline) return any_frame();
  }
  // No futex_waitv: look at each ring briefly, sleeping on the first in short slices.
  while (std::chrono::steady_clock::now() < deadline) {
    if (any_frame()) return true;
    consumers.front().wait(std::chrono::milliseconds(2));
  }
  return any_frame();
}

bool RingConsumer::drained() const {
  if (!closed()) return false;
  return header_->head.load(std::memory_order_acquire) == read_;
}

std::size_t RingConsumer::used_bytes() const {
  return header_->head.load(std::memory_order_acquire) -
         header_->tail.load(std::memory_order_acquire);
}

}  // namespace flowseal
