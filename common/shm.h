// ShmSegment: one named POSIX shared-memory object, mapped read-write, owned by RAII.
//
// The supervisor creates every segment (mode 0600, exclusive: an existing name is an error,
// so a second instance cannot attach to a half-initialised one by accident); stages open
// them. The creator's object removes the name on destruction unless release_name() was
// called; a mapping never outlives its ShmSegment. Nothing stored in a segment may be a
// pointer: every process maps it at its own address.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>

#include <boost/interprocess/mapped_region.hpp>
#include <boost/interprocess/shared_memory_object.hpp>

namespace flowseal {

// Who owns a segment's name when that is not its creator (stages running as supervisor.user).
struct FileOwner {
  uid_t uid = 0;
  gid_t gid = 0;
};

// What fstat says of an opened segment: anyone who can create a name in /dev/shm can plant
// one, so a reader that did not create it checks these before it believes a byte of it.
struct ShmInfo {
  uid_t uid = 0;
  gid_t gid = 0;
  mode_t mode = 0;  // type and permission bits
  std::uint64_t size = 0;
  dev_t device = 0;
  ino_t inode = 0;
  bool regular() const;
  // "user alice (uid 1001)", or "uid 1001" for a uid without a name.
  std::string owner() const;
};
// "user alice (uid 1001)" for any uid.
std::string describe_user(uid_t uid);

class ShmSegment {
 public:
  // Creates `name` with `bytes` zero-filled bytes and mode 0600, owned by `owner` if given
  // (the mode stays 0600: only that user and root open it). Throws std::runtime_error naming
  // the segment if it exists already or cannot be created.
  static ShmSegment create(const std::string& name, std::size_t bytes,
                           std::optional<FileOwner> owner = std::nullopt);
  // Opens an existing segment read-write (never through a symlink) and records what fstat
  // says of it in info(). Throws naming the segment if it is missing or cannot be opened.
  // It checks nothing else: a caller that did not create the name checks info() before
  // reading the mapping (owner, mode, size), and then every field it reads.
  static ShmSegment open(const std::string& name);
  // fstat of an existing name without mapping it; nullopt if there is none.
  static std::optional<ShmInfo> inspect(const std::string& name);
  // Removes a name left behind by a crashed instance; false if there was none.
  static bool remove(const std::string& name);
  static bool exists(const std::string& name);

  ShmSegment(ShmSegment&&) noexcept;
  ShmSegment& operator=(ShmSegment&&) noexcept;
  ShmSegment(const ShmSegment&) = delete;
  ShmSegment& operator=(const ShmSegment&) = delete;
  ~ShmSegment();

  std::span<std::byte> bytes() const {
    return {static_cast<std::byte*>(region_.get_address()), region_.get_size()};
  }
  const std::string& name() const { return name_; }
  const ShmInfo& info() const { return info_; }
  // "/dev/shm/flowseal.x.control": where operators see the name.
  static std::string path_of(const std::string& name) { return "/dev/shm" + name; }
  // The creator keeps the name alive past its own lifetime (e.g. for a child to open).
  void release_name() { owns_name_ = false; }

 private:
  ShmSegment(std::string name, boost::interprocess::mapped_region region, bool owns_name,
             ShmInfo info = {});

  std::string name_;
  ShmInfo info_;
  boost::interprocess::mapped_region region_;
  bool owns_name_ = false;
};

}  // namespace flowseal
