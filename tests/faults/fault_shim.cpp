// fault_shim: an LD_PRELOAD library (tests only) that makes a program's file I/O fail the way a
// sick disk does, so that writerd's handling of it can be tested through the real binaries.
//
// It acts only in the program named by FLOWSEAL_FAULT_PROGRAM (default flowseal-writerd; the
// supervisor passes its environment to every stage, so the other stages load the shim and it
// stays inert there) and only on files whose path contains FLOWSEAL_FAULT_PATH (the fds opened
// on them are tracked until closed). FLOWSEAL_FAULT picks the fault:
//   enospc      write/pwrite/writev fail with ENOSPC, nothing written
//   eio         the same with EIO
//   short       each write writes half of what it was asked (a short count, no error)
//   torn        a write writes half, the next write fails with ENOSPC (a disk that fills
//               mid-frame: the torn bytes stay in the file unless the writer cuts them off)
//   fsync-eio   fsync/fdatasync fail with EIO
//   rename-eio  rename/renameat/renameat2 of a matching path fail with EIO
//   open-enospc creating (O_CREAT) a matching file fails with ENOSPC
//   ftruncate-eio  ftruncate of a tracked file fails with EIO (cutting a torn frame or a
//               .part's tail back)
//   torn-ftruncate a torn write (as `torn`), and then ftruncate fails with EIO: the torn
//               bytes cannot be cut off (COUNT counts the torn writes; each one's cut fails)
//   unlink-eio  unlink/unlinkat/remove of a matching path fail with EIO (retention)
//   slow-read   read/pread of a tracked file succeed, each after FLOWSEAL_FAULT_DELAY_MS
//               (default 5) ms: a slow or busy disk under writerd's start-up recovery
// FLOWSEAL_FAULT_AFTER=N lets the first N matching calls through, FLOWSEAL_FAULT_COUNT=M fails
// the M calls after them (default 1; -1: all). Counts are per process: a restarted writerd
// starts again at zero, unless FLOWSEAL_FAULT_ONCE=FILE is set: the first process that injects a
// fault creates FILE, and a process started while FILE exists injects none (a fault that a
// restarted writerd must get past). Each injected fault is appended as a line to FLOWSEAL_FAULT_LOG
// (if set), so a test can tell that the fault it asked for happened. Both names of each call are
// defined here (open and open64, ...): glibc's redirection of the first to the second is turned
// off.
#undef _FILE_OFFSET_BITS
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <atomic>

namespace {

enum class Fault {
  kNone,
  kEnospc,
  kEio,
  kShort,
  kTorn,
  kFsyncEio,
  kRenameEio,
  kOpenEnospc,
  kFtruncateEio,
  kTornFtruncate,
  kUnlinkEio,
  kSlowRead,
};

constexpr int kMaxFds = 4096;

struct State {
  Fault fault = Fault::kNone;
  const char* path = nullptr;
  const char* log = nullptr;
  const char* once = nullptr;
  long after = 0;
  long count = 1;
  long delay_ms = 5;  // slow-read
  std::atomic<long> calls{0};
  std::atomic<bool> torn_pending{false};
  std::atomic<bool> cut_pending{false};  // torn-ftruncate: the next ftruncate fails
  std::atomic<bool> tracked[kMaxFds] = {};
};

State state;

Fault parse(const char* name) {
  if (!name) return Fault::kNone;
  if (!strcmp(name, "enospc")) return Fault::kEnospc;
  if (!strcmp(name, "eio")) return Fault::kEio;
  if (!strcmp(name, "short")) return Fault::kShort;
  if (!strcmp(name, "torn")) return Fault::kTorn;
  if (!strcmp(name, "fsync-eio")) return Fault::kFsyncEio;
  if (!strcmp(name, "rename-eio")) return Fault::kRenameEio;
  if (!strcmp(name, "open-enospc")) return Fault::kOpenEnospc;
  if (!strcmp(name, "ftruncate-eio")) return Fault::kFtruncateEio;
  if (!strcmp(name, "torn-ftruncate")) return Fault::kTornFtruncate;
  if (!strcmp(name, "unlink-eio")) return Fault::kUnlinkEio;
  if (!strcmp(name, "slow-read")) return Fault::kSlowRead;
  return Fault::kNone;
}

__attribute__((constructor)) void init() {
  const char* program = getenv("FLOWSEAL_FAULT_PROGRAM");
  if (strcmp(program_invocation_short_name, program ? program : "flowseal-writerd") != 0) return;
  state.path = getenv("FLOWSEAL_FAULT_PATH");
  if (!state.path || !*state.path) return;
  state.fault = parse(getenv("FLOWSEAL_FAULT"));
  state.log = getenv("FLOWSEAL_FAULT_LOG");
  state.once = getenv("FLOWSEAL_FAULT_ONCE");
  if (state.once && access(state.once, F_OK) == 0) state.fault = Fault::kNone;
  if (const char* a = getenv("FLOWSEAL_FAULT_AFTER")) state.after = atol(a);
  if (const char* c = getenv("FLOWSEAL_FAULT_COUNT")) state.count = atol(c);
  if (const char* d = getenv("FLOWSEAL_FAULT_DELAY_MS")) state.delay_ms = atol(d);
}

template <typename F>
F next(const char* name) {
  return reinterpret_cast<F>(dlsym(RTLD_NEXT, name));
}

bool matches(const char* path) { return path && state.path && strstr(path, state.path); }
bool tracked(int fd) { return fd >= 0 && fd < kMaxFds && state.tracked[fd].load(); }

// Whether this matching call is one to fail (counts it).
bool hit() {
  const long n = state.calls.fetch_add(1) + 1;
  return n > state.after && (state.count < 0 || n <= state.after + state.count);
}

void note(const char* call, int fd, const char* what) {
  static auto real_open = next<int (*)(const char*, int, ...)>("open");
  if (state.once) {
    const int marker = real_open(state.once, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (marker >= 0) close(marker);
  }
  if (!state.log) return;
  static auto real_write = next<ssize_t (*)(int, const void*, size_t)>("write");
  char line[256];
  const int n = snprintf(line, sizeof line, "pid %d: %s fd %d: %s\n", getpid(), call, fd, what);
  const int log = real_open(state.log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (log < 0) return;
  if (n > 0) (void)real_write(log, line, static_cast<size_t>(n));
  close(log);
}

// For the write family: -1 with errno set if the call fails here; 0 to go on with `*size`
// (maybe cut to half for a short or torn write).
int write_fault(const char* call, int fd, size_t* size) {
  if (!tracked(fd)) return 0;
  if (state.torn_pending.exchange(false)) {
    note(call, fd, "ENOSPC (after the torn write)");
    errno = ENOSPC;
    return -1;
  }
  switch (state.fault) {
    case Fault::kEnospc:
    case Fault::kEio:
      if (!hit()) return 0;
      note(call, fd, state.fault == Fault::kEio ? "EIO" : "ENOSPC");
      errno = state.fault == Fault::kEio ? EIO : ENOSPC;
      return -1;
    case Fault::kShort:
    case Fault::kTorn:
    case Fault::kTornFtruncate: {
      if (*size < 2 || !hit()) return 0;
      *size /= 2;
      const bool torn = state.fault != Fault::kShort;
      note(call, fd, torn ? "torn (half written)" : "short (half written)");
      if (torn) state.torn_pending = true;
      if (state.fault == Fault::kTornFtruncate) state.cut_pending = true;
      return 0;
    }
    default: return 0;
  }
}

int track(int fd, const char* path) {
  if (fd >= 0 && fd < kMaxFds) state.tracked[fd] = matches(path);
  return fd;
}

bool open_fault(const char* path, int flags) {
  if (state.fault != Fault::kOpenEnospc || !(flags & O_CREAT) || !matches(path) || !hit()) {
    return false;
  }
  note("open", -1, "ENOSPC");
  errno = ENOSPC;
  return true;
}

mode_t mode_of(int flags, va_list args) {
  return (flags & (O_CREAT | O_TMPFILE)) ? static_cast<mode_t>(va_arg(args, int)) : 0;
}

}  // namespace

extern "C" {

int open(const char* path, int flags, ...) {
  static auto real = next<int (*)(const char*, int, ...)>("open");
  va_list args;
  va_start(args, flags);
  const mode_t mode = mode_of(flags, args);
  va_end(args);
  if (open_fault(path, flags)) return -1;
  return track(real(path, flags, mode), path);
}

int open64(const char* path, int flags, ...) {
  static auto real = next<int (*)(const char*, int, ...)>("open64");
  va_list args;
  va_start(args, flags);
  const mode_t mode = mode_of(flags, args);
  va_end(args);
  if (open_fault(path, flags)) return -1;
  return track(real(path, flags, mode), path);
}

int openat(int dir, const char* path, int flags, ...) {
  static auto real = next<int (*)(int, const char*, int, ...)>("openat");
  va_list args;
  va_start(args, flags);
  const mode_t mode = mode_of(flags, args);
  va_end(args);
  if (open_fault(path, flags)) return -1;
  return track(real(dir, path, flags, mode), path);
}

int openat64(int dir, const char* path, int flags, ...) {
  static auto real = next<int (*)(int, const char*, int, ...)>("openat64");
  va_list args;
  va_start(args, flags);
  const mode_t mode = mode_of(flags, args);
  va_end(args);
  if (open_fault(path, flags)) return -1;
  return track(real(dir, path, flags, mode), path);
}

int close(int fd) {
  static auto real = next<int (*)(int)>("close");
  if (fd >= 0 && fd < kMaxFds) state.tracked[fd] = false;
  return real(fd);
}

ssize_t write(int fd, const void* buf, size_t size) {
  static auto real = next<ssize_t (*)(int, const void*, size_t)>("write");
  if (write_fault("write", fd, &size) != 0) return -1;
  return real(fd, buf, size);
}

ssize_t pwrite(int fd, const void* buf, size_t size, off_t offset) {
  static auto real = next<ssize_t (*)(int, const void*, size_t, off_t)>("pwrite");
  if (write_fault("pwrite", fd, &size) != 0) return -1;
  return real(fd, buf, size, offset);
}

ssize_t pwrite64(int fd, const void* buf, size_t size, off_t offset) {
  static auto real = next<ssize_t (*)(int, const void*, size_t, off_t)>("pwrite64");
  if (write_fault("pwrite64", fd, &size) != 0) return -1;
  return real(fd, buf, size, offset);
}

ssize_t writev(int fd, const struct iovec* iov, int iovcnt) {
  static auto real = next<ssize_t (*)(int, const struct iovec*, int)>("writev");
  size_t size = 0;
  for (int i = 0; i < iovcnt; ++i) size += iov[i].iov_len;
  const size_t asked = size;
  if (write_fault("writev", fd, &size) != 0) return -1;
  if (size == asked || iovcnt < 1) return real(fd, iov, iovcnt);
  // Short: the first iovec only, cut to the short size.
  struct iovec first = iov[0];
  if (first.iov_len > size) first.iov_len = size;
  return real(fd, &first, 1);
}

int fsync(int fd) {
  static auto real = next<int (*)(int)>("fsync");
  if (state.fault == Fault::kFsyncEio && tracked(fd) && hit()) {
    note("fsync", fd, "EIO");
    errno = EIO;
    return -1;
  }
  return real(fd);
}

int fdatasync(int fd) {
  static auto real = next<int (*)(int)>("fdatasync");
  if (state.fault == Fault::kFsyncEio && tracked(fd) && hit()) {
    note("fdatasync", fd, "EIO");
    errno = EIO;
    return -1;
  }
  return real(fd);
}

static bool ftruncate_fault(int fd) {
  if (!tracked(fd)) return false;
  const bool fails = state.fault == Fault::kFtruncateEio    ? hit()
                     : state.fault == Fault::kTornFtruncate ? state.cut_pending.exchange(false)
                                                            : false;
  if (!fails) return false;
  note("ftruncate", fd, "EIO");
  errno = EIO;
  return true;
}

int ftruncate(int fd, off_t length) {
  static auto real = next<int (*)(int, off_t)>("ftruncate");
  if (ftruncate_fault(fd)) return -1;
  return real(fd, length);
}

int ftruncate64(int fd, off_t length) {
  static auto real = next<int (*)(int, off_t)>("ftruncate64");
  if (ftruncate_fault(fd)) return -1;
  return real(fd, length);
}

// slow-read: sleeps before a read of a tracked file (noted once per process: a recovery
// makes thousands).
static void read_delay(const char* call, int fd) {
  if (state.fault != Fault::kSlowRead || !tracked(fd) || !hit()) return;
  static std::atomic<bool> noted{false};
  if (!noted.exchange(true)) note(call, fd, "slow (each read delayed)");
  const struct timespec delay = {state.delay_ms / 1000, (state.delay_ms % 1000) * 1000000};
  nanosleep(&delay, nullptr);
}

ssize_t read(int fd, void* buf, size_t size) {
  static auto real = next<ssize_t (*)(int, void*, size_t)>("read");
  read_delay("read", fd);
  return real(fd, buf, size);
}

ssize_t pread(int fd, void* buf, size_t size, off_t offset) {
  static auto real = next<ssize_t (*)(int, void*, size_t, off_t)>("pread");
  read_delay("pread", fd);
  return real(fd, buf, size, offset);
}

ssize_t pread64(int fd, void* buf, size_t size, off_t offset) {
  static auto real = next<ssize_t (*)(int, void*, size_t, off_t)>("pread64");
  read_delay("pread64", fd);
  return real(fd, buf, size, offset);
}

static bool unlink_fault(const char* call, const char* path) {
  if (state.fault != Fault::kUnlinkEio || !matches(path) || !hit()) return false;
  note(call, -1, "EIO");
  errno = EIO;
  return true;
}

int unlink(const char* path) {
  static auto real = next<int (*)(const char*)>("unlink");
  if (unlink_fault("unlink", path)) return -1;
  return real(path);
}

int unlinkat(int dir, const char* path, int flags) {
  static auto real = next<int (*)(int, const char*, int)>("unlinkat");
  if (unlink_fault("unlinkat", path)) return -1;
  return real(dir, path, flags);
}

int remove(const char* path) {
  static auto real = next<int (*)(const char*)>("remove");
  if (unlink_fault("remove", path)) return -1;
  return real(path);
}

static bool rename_fault(const char* call, const char* from, const char* to) {
  if (state.fault != Fault::kRenameEio || !(matches(from) || matches(to)) || !hit()) return false;
  note(call, -1, "EIO");
  errno = EIO;
  return true;
}

int rename(const char* from, const char* to) {
  static auto real = next<int (*)(const char*, const char*)>("rename");
  if (rename_fault("rename", from, to)) return -1;
  return real(from, to);
}

int renameat(int from_dir, const char* from, int to_dir, const char* to) {
  static auto real = next<int (*)(int, const char*, int, const char*)>("renameat");
  if (rename_fault("renameat", from, to)) return -1;
  return real(from_dir, from, to_dir, to);
}

int renameat2(int from_dir, const char* from, int to_dir, const char* to, unsigned flags) {
  static auto real = next<int (*)(int, const char*, int, const char*, unsigned)>("renameat2");
  if (rename_fault("renameat2", from, to)) return -1;
  return real(from_dir, from, to_dir, to, flags);
}

}  // extern "C"
