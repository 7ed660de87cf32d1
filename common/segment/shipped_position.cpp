#include "segment/shipped_position.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <sstream>

#include <fmt/format.h>

#include "unique_fd.h"
#include "segment/writer.h"

namespace flowseal::segment {

std::optional<ShippedPosition> load_shipped_position(const std::filesystem::path& dir,
                                                     std::string& why) {
  why.clear();
  const std::filesystem::path file = dir / kShippedFileName;
  UniqueFd fd(::open(file.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
  if (!fd) {
    if (errno != ENOENT) why = fmt::format("{}: {}", file.string(), std::strerror(errno));
    return std::nullopt;
  }
  char buffer[256];
  std::size_t used = 0;
  for (;;) {
    const ssize_t n = ::read(fd.get(), buffer + used, sizeof buffer - used);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      why = fmt::format("{}: read failed: {}", file.string(), std::strerror(errno));
      return std::nullopt;
    }
    if (n == 0 || used + static_cast<std::size_t>(n) == sizeof buffer) {
      used += static_cast<std::size_t>(n);
      break;
    }
    used += static_cast<std::size_t>(n);
  }
  std::istringstream in(std::string(buffer, used));
  std::string magic, version, stream_word, stream_hex, seq_word;
  std::uint64_t seq = 0;
  ShippedPosition position;
  bool ok = static_cast<bool>(in >> magic >> version >> stream_word >> stream_hex >> seq_word >> seq) &&
            magic == "flowseal-shipped" && version == "1" && stream_word == "stream" &&
            seq_word == "seq" && stream_hex.size() == 2 * position.stream.size();
  for (std::size_t i = 0; ok && i < position.stream.size(); ++i) {
    unsigned value = 0;
    ok = std::sscanf(stream_hex.c_str() + 2 * i, "%2x", &value) == 1 &&
         std::isxdigit(static_cast<unsigned char>(stream_hex[2 * i])) &&
         std::isxdigit(static_cast<unsigned char>(stream_hex[2 * i + 1]));
    position.stream[i] = static_cast<std::uint8_t>(value);
  }
  if (!ok) {
    why = fmt::format("{}: not a shipped position (want 'flowseal-shipped 1', 'stream HEX', "
                      "'seq N')",
                      file.string());
    return std::nullopt;
  }
  position.seq = seq;
  return position;
}

bool save_shipped_position(const std::filesystem::path& dir, const ShippedPosition& position,
                           std::string& why) {
  const std::filesystem::path file = dir / kShippedFileName;
  const std::filesystem::path temp = dir / (std::string(kShippedFileName) + ".tmp");
  const std::string text = fmt::format("flowseal-shipped 1\nstream {}\nseq {}\n",
                                       to_hex(position.stream), position.seq);
  ::unlink(temp.c_str());  // a leftover of a crash; O_EXCL below refuses anything planted since
  UniqueFd fd(::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644));
  if (!fd) {
    why = fmt::format("{}: cannot create: {}", temp.string(), std::strerror(errno));
    return false;
  }
  std::size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd.get(), text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      why = fmt::format("{}: write failed: {}", temp.string(), std::strerror(errno));
      ::unlink(temp.c_str());
      return false;
    }
    done += static_cast<std::size_t>(n);
  }
  if (::fsync(fd.get()) != 0) {
    why = fmt::format("{}: fsync failed: {}", temp.string(), std::strerror(errno));
    ::unlink(temp.c_str());
    return false;
  }
  fd.reset();
  if (::rename(temp.c_str(), file.c_str()) != 0) {
    why = fmt::format("{}: rename to {} failed: {}", temp.string(), file.string(),
                      std::strerror(errno));
    ::unlink(temp.c_str());
    return false;
  }
  const IoStatus synced = sync_directory(dir);
  if (!synced.ok()) {
    why = synced.what;
    return false;
  }
  return true;
}

}  // namespace flowseal::segment
