// StoreLock: one `flowseal run` at a time per output directory (writer.dir).
//
// An exclusive flock(2) on the directory itself, opened O_DIRECTORY|O_NOFOLLOW, taken before
// anything reads or writes the store and held for the whole run. Its descriptor is the one
// the supervisor does not mark close-on-exec: every stage it starts inherits it, so the lock
// is released only when the last process of the run has gone. A stage orphaned by a
// SIGKILLed supervisor (it leaves within a few seconds, common/stage_runtime.cpp) may still
// be writing the store; while it lives, the next run waits for it rather than read a store
// that is still changing.
//
// Who holds the lock comes from /proc/locks, which names the process that took it (the
// supervisor of the run, even after the stages inherited it and it died).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <optional>
#include <string_view>

#include "unique_fd.h"

namespace flowseal::supervisor {

class StoreLock {
 public:
  // Locks `dir` (which exists). Throws CommandError 75 (temporary) if another run holds it:
  // at once while the process that took the lock lives; if that process is gone (only what
  // it left behind holds the lock), after waiting up to `orphan_wait` for them to leave.
  // CommandError 73 if the directory cannot be opened.
  static StoreLock acquire(const std::filesystem::path& dir, std::chrono::milliseconds orphan_wait);

  int fd() const { return fd_.get(); }

 private:
  explicit StoreLock(UniqueFd fd) : fd_(std::move(fd)) {}
  UniqueFd fd_;
};

// The pid that took a FLOCK lock on (device, inode), from the text of /proc/locks; nullopt
// if no line names one.
std::optional<pid_t> flock_holder(std::string_view proc_locks, dev_t device, ino_t inode);

}  // namespace flowseal::supervisor
