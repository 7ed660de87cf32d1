#include "store_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <thread>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "command_error.h"
#include "stage_runtime.h"

namespace flowseal::supervisor {
namespace {

// A zombie (exited, not yet reaped by its parent) holds nothing any more.
bool process_alive(pid_t pid) {
  if (pid <= 0) return false;
  std::ifstream stat(fmt::format("/proc/{}/stat", pid));
  std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  const auto paren = text.rfind(')');
  return paren != std::string::npos && paren + 2 < text.size() && text[paren + 2] != 'Z';
}

std::optional<pid_t> holder_of(const struct stat& st) {
  std::ifstream in("/proc/locks");
  std::stringstream text;
  text << in.rdbuf();
  return flock_holder(text.str(), st.st_dev, st.st_ino);
}

}  // namespace

std::optional<pid_t> flock_holder(std::string_view proc_locks, dev_t device, ino_t inode) {
  // "1: FLOCK  ADVISORY  WRITE 4242 fe:00:11247630 0 EOF"; blocked waiters ("1: -> FLOCK
  // ...") hold nothing.
  std::istringstream in{std::string(proc_locks)};
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string number, kind, mode, access, id;
    long pid = 0;
    if (!(fields >> number >> kind >> mode >> access >> pid >> id) || kind != "FLOCK") continue;
    unsigned major = 0, minor = 0;
    unsigned long long ino = 0;
    if (std::sscanf(id.c_str(), "%x:%x:%llu", &major, &minor, &ino) != 3) continue;
    if (makedev(major, minor) == device && ino == inode && pid > 0) return static_cast<pid_t>(pid);
  }
  return std::nullopt;
}

StoreLock StoreLock::acquire(const std::filesystem::path& dir,
                             std::chrono::milliseconds orphan_wait) {
  // Not O_CLOEXEC: the stages inherit the lock (see the header).
  UniqueFd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW));
  if (!fd) {
    throw CommandError(exit_code::kCantCreate, fmt::format("writer.dir {}: cannot open it: {}",
                                                           dir.string(), std::strerror(errno)));
  }
  struct stat st {};
  ::fstat(fd.get(), &st);
  const auto deadline = std::chrono::steady_clock::now() + orphan_wait;
  bool said = false;
  for (;;) {
    if (::flock(fd.get(), LOCK_EX | LOCK_NB) == 0) return StoreLock(std::move(fd));
    if (errno != EWOULDBLOCK && errno != EINTR) {
      throw CommandError(exit_code::kCantCreate, fmt::format("writer.dir {}: cannot lock it: {}",
                                                             dir.string(), std::strerror(errno)));
    }
    const std::optional<pid_t> holder = holder_of(st);
    if (holder && process_alive(*holder)) {
      throw CommandError(
          exit_code::kTempFail,
          fmt::format("writer.dir {} is in use by another flowseal run (pid {}): one run at a "
                      "time writes a directory; stop that run or choose another writer.dir",
                      dir.string(), *holder));
    }
    const std::string who = holder ? fmt::format("whose supervisor (pid {}) is gone", *holder)
                                   : std::string("whose supervisor is unknown");
    if (std::chrono::steady_clock::now() >= deadline) {
      throw CommandError(
          exit_code::kTempFail,
          fmt::format("writer.dir {} is still locked by processes of a run {}; they did not "
                      "leave within {} s. Find them with `fuser -v {}`",
                      dir.string(), who, orphan_wait.count() / 1000, dir.string()));
    }
    if (!said) {
      spdlog::info("writer.dir {}: waiting for the stages of a run {} to leave it", dir.string(),
                   who);
      said = true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

}  // namespace flowseal::supervisor
