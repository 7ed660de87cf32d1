#include "proc_stats.h"

#include <array>
#include <fstream>
#include <string_view>
#include <string>

#include <fmt/format.h>

namespace flowseal::supervisor {
namespace {

// The value in kB after `key` in a "Key:   123 kB" file, in bytes.
std::uint64_t kib_field(const std::string& file, const std::string& key) {
  std::ifstream in(file);
  std::string word;
  std::uint64_t kib = 0;
  while (in >> word) {
    if (word == key) {
      in >> kib;
      return kib * 1024;
    }
    in.ignore(1 << 16, '\n');
  }
  return 0;
}

// Several "Key:   123 kB" fields of one file in one pass, in bytes (0 for a missing key).
template <std::size_t N>
std::array<std::uint64_t, N> kib_fields(const std::string& file,
                                        const std::array<std::string_view, N>& keys) {
  std::array<std::uint64_t, N> values{};
  std::ifstream in(file);
  std::string word;
  while (in >> word) {
    for (std::size_t i = 0; i < N; ++i) {
      if (word == keys[i]) {
        std::uint64_t kib = 0;
        in >> kib;
        values[i] = kib * 1024;
      }
    }
    in.ignore(1 << 16, '\n');
  }
  return values;
}

}  // namespace

ProcessMemory process_memory(pid_t pid) {
  const auto v =
      kib_fields<3>(fmt::format("/proc/{}/smaps_rollup", pid), {"Pss:", "Pss_Anon:", "Pss_Shmem:"});
  return {v[0], v[1], v[2]};
}

SystemMemory system_memory() {
  const auto v = kib_fields<2>("/proc/meminfo", {"MemTotal:", "MemAvailable:"});
  return {v[0], v[1]};
}

std::uint64_t pss_bytes(pid_t pid) {
  return kib_field(fmt::format("/proc/{}/smaps_rollup", pid), "Pss:");
}

std::uint64_t mem_available_bytes() { return kib_field("/proc/meminfo", "MemAvailable:"); }

}  // namespace flowseal::supervisor
