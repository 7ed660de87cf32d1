// libFuzzer target: the configuration loader (common/config.h) as `flowseal run -c FILE
// --set KEY=VALUE` uses it: load_config_file, apply_override, validate, dump_config. Bad input
// must come out as ConfigError (exit 78 with the key named); any other exception escaping is
// a finding (it would surface as an internal error), and so is a crash.
//
// Input: the first byte chooses the mode. 0..127: the rest is a YAML file. Otherwise the rest
// is a list of KEY=VALUE overrides, one per line.
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "config.h"

namespace {

// The loader reads a path; a memfd is a file without a directory to clean up.
int memfd() {
  static const int fd = memfd_create("fuzz-config.yaml", 0);
  if (fd < 0) std::abort();
  return fd;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  const std::string_view text(reinterpret_cast<const char*>(data) + 1, size - 1);
  flowseal::Config config;
  try {
    if (data[0] < 128) {
      const int fd = memfd();
      if (ftruncate(fd, 0) != 0 ||
          pwrite(fd, text.data(), text.size(), 0) != static_cast<ssize_t>(text.size())) {
        std::abort();
      }
      flowseal::load_config_file(config, "/proc/self/fd/" + std::to_string(fd));
    } else {
      std::size_t start = 0;
      while (start <= text.size()) {
        std::size_t end = text.find('\n', start);
        if (end == std::string_view::npos) end = text.size();
        flowseal::apply_override(config, text.substr(start, end - start));
        start = end + 1;
      }
    }
    flowseal::validate(config);
  } catch (const flowseal::ConfigError&) {
    return 0;
  }
  // A configuration that loaded and validated prints, and what it prints loads again.
  const std::string dumped = flowseal::dump_config(config, true);
  (void)flowseal::runs_shipd(config);
  const int fd = memfd();
  if (ftruncate(fd, 0) != 0 ||
      pwrite(fd, dumped.data(), dumped.size(), 0) != static_cast<ssize_t>(dumped.size())) {
    std::abort();
  }
  flowseal::Config again;
  flowseal::load_config_file(again, "/proc/self/fd/" + std::to_string(fd));  // must not throw
  if (flowseal::dump_config(again, true) != dumped) std::abort();
  return 0;
}
