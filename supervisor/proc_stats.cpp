#include "proc_stats.h"

#include <fstream>
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

}  // namespace

std::uint64_t pss_bytes(pid_t pid) {
  return kib_field(fmt::format("/proc/{}/smaps_rollup", pid), "Pss:");
}

std::uint64_t mem_available_bytes() { return kib_field("/proc/meminfo", "MemAvailable:"); }

}  // namespace flowseal::supervisor
