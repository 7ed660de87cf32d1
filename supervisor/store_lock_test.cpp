// StoreLock: /proc/locks parsing, and a second lock on a held directory refused at once
// while its holder (here: this process) lives.
#include "store_lock.h"

#include <stdlib.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <filesystem>
#include <string>

#include <catch2/catch.hpp>

#include "command_error.h"

namespace flowseal::supervisor {
namespace {

namespace fs = std::filesystem;

TEST_CASE("flock_holder finds the pid of a FLOCK on the device and inode, not a waiter's") {
  const std::string text =
      "1: POSIX  ADVISORY  WRITE 11 fe:00:42 0 EOF\n"
      "2: FLOCK  ADVISORY  WRITE 4242 fe:00:42 0 EOF\n"
      "2: -> FLOCK  ADVISORY  WRITE 5151 fe:00:42 0 EOF\n"
      "3: FLOCK  ADVISORY  WRITE 77 08:01:42 0 EOF\n";
  CHECK(flock_holder(text, makedev(0xfe, 0), 42) == 4242);
  CHECK(flock_holder(text, makedev(8, 1), 42) == 77);
  CHECK_FALSE(flock_holder(text, makedev(0xfe, 0), 43));
  CHECK_FALSE(flock_holder("garbage\n\n", makedev(0xfe, 0), 42));
}

TEST_CASE("a directory locked by a live run is refused at once with exit 75 naming its pid") {
  std::string pattern = (fs::temp_directory_path() / "store_lock_test.XXXXXX").string();
  REQUIRE(::mkdtemp(pattern.data()) != nullptr);
  const fs::path dir(pattern);
  {
    const StoreLock held = StoreLock::acquire(dir, std::chrono::milliseconds(0));
    try {
      static_cast<void>(StoreLock::acquire(dir, std::chrono::seconds(10)));
      FAIL("the second lock is refused");
    } catch (const CommandError& e) {
      CHECK(e.exit_code() == 75);
      CHECK(std::string(e.what()).find("pid " + std::to_string(getpid())) != std::string::npos);
    }
  }
  // Released with its owner: the directory can be locked again.
  CHECK_NOTHROW(StoreLock::acquire(dir, std::chrono::milliseconds(0)));
  fs::remove_all(dir);
}

}  // namespace
}  // namespace flowseal::supervisor
