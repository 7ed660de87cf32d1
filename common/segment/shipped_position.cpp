#include "segment/shipped_position.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <sstream>

#include <fmt/format.h>

#include "unique_fd.h"
#include "segment/writer.h"

namespace flowseal::segment {

namespace {

// "MAGIC 1 / stream HEX / seq N" at the head of `text`, the magic one of `magics`.
std::optional<ShippedPosition> parse_position(const std::string& text,
                                              std::initializer_list<std::string_view> magics,
                                              const std::filesystem::path& file, std::string& why) {
  std::istringstream in(text);
  std::string magic, version, stream_word, stream_hex, seq_word;
  ShippedPosition position;
  const bool ok = static_cast<bool>(in >> magic >> version >> stream_word >> stream_hex >>
                                    seq_word >> position.seq) &&
                  std::find(magics.begin(), magics.end(), magic) != magics.end() &&
                  version == "1" && stream_word == "stream" && seq_word == "seq" &&
                  parse_stream_id(stream_hex, position.stream);
  if (!ok) {
    why = fmt::format("{}: not a position (want '{} 1', 'stream HEX', 'seq N')", file.string(),
                      *magics.begin());
    return std::nullopt;
  }
  return position;
}

}  // namespace

std::optional<ShippedPosition> load_shipped_position(const std::filesystem::path& dir,
                                                     std::string& why, const char* name) {
  const std::optional<std::string> text = read_small_file(dir, name, 256, why);
  if (!text) return std::nullopt;
  return parse_position(*text, {"flowseal-shipped"}, dir / name, why);
}

std::optional<ShippedPosition> load_output_position(const std::filesystem::path& dir,
                                                    const std::string& name, std::string& why) {
  const std::optional<std::string> head = read_file_head(dir, name, 256, why);
  if (!head) return std::nullopt;
  return parse_position(*head, {"flowseal-shipped", "flowseal-ipfix-exported"}, dir / name, why);
}

bool parse_stream_id(std::string_view hex, StreamId& out) {
  if (hex.size() != 2 * out.size()) return false;
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  for (std::size_t i = 0; i < out.size(); ++i) {
    const int high = nibble(hex[2 * i]), low = nibble(hex[2 * i + 1]);
    if (high < 0 || low < 0) return false;
    out[i] = static_cast<std::uint8_t>(high << 4 | low);
  }
  return true;
}

bool save_shipped_position(const std::filesystem::path& dir, const ShippedPosition& position,
                           std::string& why, const char* name) {
  return write_file_atomically(
      dir, name,
      fmt::format("flowseal-shipped 1\nstream {}\nseq {}\n", to_hex(position.stream), position.seq),
      why);
}

bool append_given_up(const std::filesystem::path& dir, const GivenUp& entry, std::string& why) {
  const std::filesystem::path file = dir / kGivenUpFileName;
  struct stat before {};
  const bool existed = ::lstat(file.c_str(), &before) == 0;
  UniqueFd fd(::open(file.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0644));
  struct stat st {};
  if (!fd || ::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode)) {
    why = fmt::format("{}: cannot append: {}", file.string(),
                      fd ? "not a regular file" : std::strerror(errno));
    return false;
  }
  const std::string line = fmt::format("given-up {} {} {} {} {}\n", to_hex(entry.stream),
                                       entry.first_seq, entry.last_seq, entry.records, entry.at_ns);
  // One write: O_APPEND puts it whole at the end; a short write is a full disk.
  const ssize_t n = ::write(fd.get(), line.data(), line.size());
  if (n != static_cast<ssize_t>(line.size())) {
    why = fmt::format("{}: write failed: {}", file.string(),
                      n < 0 ? std::strerror(errno) : "short write (disk full?)");
    return false;
  }
  if (::fsync(fd.get()) != 0) {
    why = fmt::format("{}: fsync failed: {}", file.string(), std::strerror(errno));
    return false;
  }
  if (!existed) {
    const IoStatus synced = sync_directory(dir);
    if (!synced.ok()) {
      why = synced.what;
      return false;
    }
  }
  return true;
}

std::vector<GivenUp> parse_given_up(std::string_view text, std::size_t& consumed,
                                    std::vector<std::string>& problems) {
  std::vector<GivenUp> entries;
  consumed = 0;
  std::size_t line_number = 0;
  while (consumed < text.size()) {
    const std::size_t end = text.find('\n', consumed);
    if (end == std::string_view::npos) break;
    const std::string line(text.substr(consumed, end - consumed));
    consumed = end + 1;
    ++line_number;
    // Six words, the numbers plain decimal digits (no sign, no spaces inside): what writerd
    // writes, and nothing a hostile writer could make read as another value.
    std::vector<std::string_view> words;
    for (std::size_t at = 0; at < line.size();) {
      const std::size_t end_word = std::min(line.find(' ', at), line.size());
      if (end_word > at) words.push_back(std::string_view(line).substr(at, end_word - at));
      at = end_word + 1;
    }
    GivenUp entry;
    const auto number = [](std::string_view word, auto& out) {
      if (word.empty() || word.size() > 20 ||
          !std::all_of(word.begin(), word.end(), [](char c) { return c >= '0' && c <= '9'; })) {
        return false;
      }
      const auto [end_number, error] = std::from_chars(word.data(), word.data() + word.size(), out);
      return error == std::errc() && end_number == word.data() + word.size();
    };
    const bool ok = words.size() == 6 && words[0] == "given-up" &&
                    parse_stream_id(words[1], entry.stream) && number(words[2], entry.first_seq) &&
                    number(words[3], entry.last_seq) && number(words[4], entry.records) &&
                    number(words[5], entry.at_ns) && entry.first_seq <= entry.last_seq &&
                    entry.last_seq != ~std::uint64_t{0};
    if (!ok) {
      problems.push_back(fmt::format("line {}: not 'given-up STREAM FIRST LAST RECORDS NS': {:.80}",
                                     line_number, line));
      continue;
    }
    entries.push_back(entry);
  }
  return entries;
}

bool write_file_atomically(const std::filesystem::path& dir, const std::string& name,
                           std::string_view text, std::string& why) {
  const std::filesystem::path file = dir / name;
  const std::filesystem::path temp = dir / (name + ".tmp");
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

std::optional<std::string> read_small_file(const std::filesystem::path& dir,
                                           const std::string& name, std::size_t max_bytes,
                                           std::string& why) {
  std::optional<std::string> text = read_file_head(dir, name, max_bytes + 1, why);
  if (text && text->size() > max_bytes) {
    why = fmt::format("{}: larger than {} bytes", (dir / name).string(), max_bytes);
    return std::nullopt;
  }
  return text;
}

std::optional<std::string> read_file_head(const std::filesystem::path& dir, const std::string& name,
                                          std::size_t max_bytes, std::string& why) {
  why.clear();
  const std::filesystem::path file = dir / name;
  UniqueFd fd(::open(file.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
  if (!fd) {
    if (errno != ENOENT) why = fmt::format("{}: {}", file.string(), std::strerror(errno));
    return std::nullopt;
  }
  std::string text;
  char buffer[65536];
  while (text.size() < max_bytes) {
    const std::size_t want = std::min(sizeof buffer, max_bytes - text.size());
    const ssize_t n = ::read(fd.get(), buffer, want);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      why = fmt::format("{}: read failed: {}", file.string(), std::strerror(errno));
      return std::nullopt;
    }
    if (n == 0) break;
    text.append(buffer, static_cast<std::size_t>(n));
  }
  return text;
}

}  // namespace flowseal::segment
