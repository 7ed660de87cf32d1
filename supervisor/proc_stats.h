// What the kernel says about a process's and the system's memory, read from /proc. Used by
// the supervisor's once-a-second sampling and by `flowseal status`.
#pragma once

#include <sys/types.h>

#include <cstdint>

namespace flowseal::supervisor {

// Proportional set size in bytes (private pages plus a fair share of shared ones, which is
// how shared-memory rings and flow tables are counted once across processes); 0 if the
// process is gone.
std::uint64_t pss_bytes(pid_t pid);
// MemAvailable of /proc/meminfo in bytes; 0 if unreadable.
std::uint64_t mem_available_bytes();

// One read of /proc/PID/smaps_rollup: the whole PSS and two of its parts, anonymous (heap,
// stacks: what the process holds privately) and shmem (its share of the shared-memory
// segments). The rest is mapped files (program, libraries, input captures), page cache the
// kernel can drop. Zeros if the process is gone.
struct ProcessMemory {
  std::uint64_t pss = 0;
  std::uint64_t pss_anon = 0;
  std::uint64_t pss_shmem = 0;
  std::uint64_t held() const { return pss_anon + pss_shmem; }
};
ProcessMemory process_memory(pid_t pid);

// MemTotal and MemAvailable of /proc/meminfo in bytes; zeros if unreadable.
struct SystemMemory {
  std::uint64_t total = 0;
  std::uint64_t available = 0;
};
SystemMemory system_memory();

}  // namespace flowseal::supervisor
