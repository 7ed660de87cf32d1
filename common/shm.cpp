#include "shm.h"

#include <fcntl.h>
#include <pwd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <utility>
#include <vector>

#include <fmt/format.h>

namespace bip = boost::interprocess;

namespace flowseal {

namespace {

ShmInfo info_of(const struct stat& st) {
  ShmInfo info;
  info.uid = st.st_uid;
  info.gid = st.st_gid;
  info.mode = st.st_mode;
  info.size = static_cast<std::uint64_t>(st.st_size);
  info.device = st.st_dev;
  info.inode = st.st_ino;
  return info;
}

}  // namespace

bool ShmInfo::regular() const { return S_ISREG(mode); }

std::string ShmInfo::owner() const { return describe_user(uid); }

std::string describe_user(uid_t uid) {
  std::vector<char> buf(16384);
  passwd pw{};
  passwd* found = nullptr;
  if (::getpwuid_r(uid, &pw, buf.data(), buf.size(), &found) == 0 && found != nullptr) {
    return fmt::format("user {} (uid {})", found->pw_name, uid);
  }
  return fmt::format("uid {}", uid);
}

ShmSegment::ShmSegment(std::string name, bip::mapped_region region, bool owns_name, ShmInfo info)
    : name_(std::move(name)), info_(info), region_(std::move(region)), owns_name_(owns_name) {}

ShmSegment::ShmSegment(ShmSegment&& other) noexcept
    : name_(std::move(other.name_)),
      info_(other.info_),
      region_(std::move(other.region_)),
      owns_name_(std::exchange(other.owns_name_, false)) {}

ShmSegment& ShmSegment::operator=(ShmSegment&& other) noexcept {
  if (this != &other) {
    if (owns_name_) bip::shared_memory_object::remove(name_.c_str());
    name_ = std::move(other.name_);
    info_ = other.info_;
    region_ = std::move(other.region_);
    owns_name_ = std::exchange(other.owns_name_, false);
  }
  return *this;
}

ShmSegment::~ShmSegment() {
  if (owns_name_) bip::shared_memory_object::remove(name_.c_str());
}

ShmSegment ShmSegment::create(const std::string& name, std::size_t bytes,
                              std::optional<FileOwner> owner) {
  try {
    bip::permissions owner_only(0600);
    bip::shared_memory_object object(bip::create_only, name.c_str(), bip::read_write, owner_only);
    if (owner && ::fchown(object.get_mapping_handle().handle, owner->uid, owner->gid) != 0) {
      const int err = errno;
      bip::shared_memory_object::remove(name.c_str());
      throw std::runtime_error(fmt::format("cannot give shared memory {} to uid {} gid {}: {}",
                                           name, owner->uid, owner->gid, std::strerror(err)));
    }
    object.truncate(static_cast<bip::offset_t>(bytes));
    bip::mapped_region region(object, bip::read_write);
    // ftruncate gives zero pages already; this only documents that layouts start zeroed.
    return ShmSegment(name, std::move(region), true);
  } catch (const bip::interprocess_exception& e) {
    if (e.get_error_code() == bip::already_exists_error) {
      throw std::runtime_error(fmt::format(
          "shared memory {} already exists: another flowseal instance with this name is "
          "running, or one crashed (remove it with `flowseal cleanup`)",
          name));
    }
    throw std::runtime_error(
        fmt::format("cannot create shared memory {} ({} bytes): {}", name, bytes, e.what()));
  }
}

ShmSegment ShmSegment::open(const std::string& name) {
  try {
    // shm_open adds O_NOFOLLOW: a symlink planted at the name is not followed.
    bip::shared_memory_object object(bip::open_only, name.c_str(), bip::read_write);
    struct stat st {};
    if (::fstat(object.get_mapping_handle().handle, &st) != 0) {
      throw std::runtime_error(
          fmt::format("cannot fstat shared memory {}: {}", name, std::strerror(errno)));
    }
    const ShmInfo info = info_of(st);
    if (!info.regular() || info.size == 0) {
      throw std::runtime_error(
          fmt::format("shared memory {} is not a mappable object (mode "
                      "{:o}, {} bytes, {})",
                      path_of(name), info.mode, info.size, info.owner()));
    }
    bip::mapped_region region(object, bip::read_write);
    return ShmSegment(name, std::move(region), false, info);
  } catch (const bip::interprocess_exception& e) {
    throw std::runtime_error(fmt::format("cannot open shared memory {}: {}", name, e.what()));
  }
}

std::optional<ShmInfo> ShmSegment::inspect(const std::string& name) {
  const int fd = ::shm_open(name.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0);
  if (fd < 0) {
    if (errno == ENOENT) return std::nullopt;
    // Exists but cannot be opened (another user's 0600 object): ask the directory entry.
    struct stat st {};
    if (::lstat(path_of(name).c_str(), &st) == 0) return info_of(st);
    return std::nullopt;
  }
  struct stat st {};
  const int rc = ::fstat(fd, &st);
  ::close(fd);
  if (rc != 0) return std::nullopt;
  return info_of(st);
}

bool ShmSegment::remove(const std::string& name) {
  return bip::shared_memory_object::remove(name.c_str());
}

bool ShmSegment::exists(const std::string& name) {
  try {
    bip::shared_memory_object object(bip::open_only, name.c_str(), bip::read_only);
    return true;
  } catch (const bip::interprocess_exception&) {
    return false;
  }
}

}  // namespace flowseal
