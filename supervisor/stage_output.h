// StageOutput: while the progress bar is on a terminal, the stages' stderr goes through the
// supervisor, so that their log lines never land on the bar's row.
//
// The stages write to one pipe (a log line is a single write(2) under PIPE_BUF, so lines of
// different stages do not interleave); the supervisor forwards every complete line to its
// own stderr after clearing the bar. Without a terminal nothing of this exists and the stages
// write to the supervisor's stderr directly, unless the status page shows the log (then every
// line also goes to its LogTail). The read end is non-blocking; pump() never
// waits. A stage that logs while the supervisor is slow blocks only once 64 KiB are waiting,
// and stages log per event, never per packet.
#pragma once

#include <string>

#include "log_tail.h"
#include "progress.h"
#include "unique_fd.h"

namespace flowseal::supervisor {

class StageOutput {
 public:
  // Creates the pipe; throws std::runtime_error naming it if the system refuses. `tail`
  // (may be null) also gets every line.
  explicit StageOutput(LogTail* tail = nullptr);

  // What a stage gets as its stderr.
  int stage_fd() const { return write_end_.get(); }
  // The end the supervisor polls.
  int read_fd() const { return read_end_.get(); }
  // Forwards the complete lines waiting in the pipe through bar.print().
  void pump(ProgressBar& bar);
  // At the end: forwards what is left, a last line without its newline too.
  void finish(ProgressBar& bar);

 private:
  UniqueFd read_end_;
  UniqueFd write_end_;
  LogTail* tail_;
  std::string partial_;  // the start of a line whose end has not come yet
};

}  // namespace flowseal::supervisor
