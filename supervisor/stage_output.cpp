#include "stage_output.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

#include <fmt/format.h>

namespace flowseal::supervisor {

StageOutput::StageOutput(LogTail* tail) : tail_(tail) {
  int fds[2];
  // Both ends close-on-exec: a stage gets the write end as its stderr through dup2, which
  // clears the flag on the copy only.
  if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) != 0) {
    throw std::runtime_error(
        fmt::format("cannot create the pipe for the stages' log lines: {}", std::strerror(errno)));
  }
  read_end_.reset(fds[0]);
  write_end_.reset(fds[1]);
  // A stage writing a log line must wait rather than lose it: only the read end is
  // non-blocking.
  fcntl(fds[1], F_SETFL, fcntl(fds[1], F_GETFL) & ~O_NONBLOCK);
}

void StageOutput::pump(ProgressBar& bar) {
  char buf[16384];
  for (;;) {
    const ssize_t n = ::read(read_end_.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    partial_.append(buf, static_cast<std::size_t>(n));
  }
  const auto end = partial_.rfind('\n');
  if (end == std::string::npos) return;
  const std::string_view complete = std::string_view(partial_).substr(0, end + 1);
  bar.print(complete);
  if (tail_ != nullptr) {
    for (std::size_t at = 0; at < complete.size();) {
      const std::size_t eol = complete.find('\n', at);
      tail_->add(complete.substr(at, eol - at));
      at = eol + 1;
    }
  }
  partial_.erase(0, end + 1);
}

void StageOutput::finish(ProgressBar& bar) {
  pump(bar);
  if (!partial_.empty()) {
    bar.print(partial_ + "\n");
    if (tail_ != nullptr) tail_->add(partial_);
  }
  partial_.clear();
}

}  // namespace flowseal::supervisor
