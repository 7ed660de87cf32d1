// Futex wait/wake on a 32-bit word in *shared* memory (no FUTEX_PRIVATE_FLAG: the waiter and
// the waker are different processes mapping the word at different addresses).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>

namespace flowseal {

// Sleeps while `*word == expected`, at most `timeout`. Returns on wake, timeout, signal or
// if the value already differs; callers re-check their condition in every case.
void futex_wait(std::atomic<std::uint32_t>& word, std::uint32_t expected,
                std::chrono::nanoseconds timeout) noexcept;
void futex_wake_all(std::atomic<std::uint32_t>& word) noexcept;

}  // namespace flowseal
