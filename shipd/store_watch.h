// StoreWatch: wakes shipd when writerd writes to the store directory, instead of after a fixed
// nap. An output that has caught up polls the open `.part` for new frames; with a 20-ms nap
// that added 10 ms on average (up to 20) between a batch being durable and it being sent,
// the largest part of what shipping added to the flow-end-to-acked latency. inotify tells of
// the append (IN_MODIFY), a new segment (IN_CREATE) and a rename to its closed name
// (IN_MOVED_TO) at once; the nap stays as the upper bound, so a missed event (the queue
// overflowed, inotify unavailable) costs at most what it did before.
#pragma once

#include <chrono>
#include <filesystem>

#include "unique_fd.h"

namespace flowseal::shipd {

class StoreWatch {
 public:
  // Watches `dir`; if inotify cannot watch it, wait() just sleeps.
  explicit StoreWatch(const std::filesystem::path& dir);
  // Returns once the directory changed or `at_most` passed.
  void wait(std::chrono::milliseconds at_most);
  bool watching() const { return static_cast<bool>(fd_); }

 private:
  UniqueFd fd_;
};

}  // namespace flowseal::shipd
