// Futex wait/wake on a 32-bit word in *shared* memory (no FUTEX_PRIVATE_FLAG: the waiter and
// the waker are different processes mapping the word at different addresses), and the
// asymmetric fence that lets a waker check "does my peer sleep?" without a full fence.
//
// The sleep handshake is Dekker's pattern: the waker stores data then loads the sleeper's
// flag; the sleeper stores its flag then loads the data. Each side needs a store-load barrier
// between the two, or both can miss the other and a wake is lost. The waker runs this on
// every publish, the sleeper only when it is about to sleep, so the sleeper pays for both:
// membarrier(2) GLOBAL_EXPEDITED runs a full barrier on every CPU that is running a process
// registered with asymmetric_fence_register(), and a descheduled process passed one when it
// was switched out. A registered waker then needs only a compiler barrier.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <span>

namespace flowseal {

// Sleeps while `*word == expected`, at most `timeout`. Returns on wake, timeout, signal or
// if the value already differs; callers re-check their condition in every case.
void futex_wait(std::atomic<std::uint32_t>& word, std::uint32_t expected,
                std::chrono::nanoseconds timeout) noexcept;
void futex_wake_all(std::atomic<std::uint32_t>& word) noexcept;
// Sleeps while every `*words[i] == expected[i]` (at most 128 words), at most `timeout`:
// returns on a wake of any of them, timeout, signal or if a value already differs (callers
// re-check). False if the kernel has no futex_waitv(2) (before 5.16): nothing was waited
// for, and the caller must poll instead.
bool futex_wait_any(std::span<std::atomic<std::uint32_t>* const> words,
                    std::span<const std::uint32_t> expected,
                    std::chrono::nanoseconds timeout) noexcept;

// Registers this process to receive asymmetric_fence_heavy() barriers (idempotent). True if
// the kernel supports it: only then may this process use the light side.
bool asymmetric_fence_register() noexcept;
// The light side: orders this thread's earlier stores before its later loads against any
// thread that runs asymmetric_fence_heavy(). Valid only after a successful registration.
inline void asymmetric_fence_light() noexcept {
  std::atomic_signal_fence(std::memory_order_seq_cst);
}
// The heavy side: a full barrier here and on every CPU running a registered process. False
// if the kernel refused; the caller must then not rely on it (e.g. sleep in short slices).
bool asymmetric_fence_heavy() noexcept;

}  // namespace flowseal
