// CommandError: an ordinary mistake or condition a command reports in one line with its own
// sysexits code (64 usage, 66 input missing or unreadable, 69 no such instance, 73 cannot
// create the output, 77 permission), rather than as an internal error (70). Thrown from a
// command; main (or the store command itself) prints the line and exits with the code.
#pragma once

#include <stdexcept>
#include <string>

namespace flowseal::supervisor {

class CommandError : public std::runtime_error {
 public:
  CommandError(int exit_code, const std::string& what)
      : std::runtime_error(what), exit_code_(exit_code) {}
  int exit_code() const { return exit_code_; }

 private:
  int exit_code_;
};

}  // namespace flowseal::supervisor
