#include "shm.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <utility>

#include <fmt/format.h>

namespace bip = boost::interprocess;

namespace flowseal {

ShmSegment::ShmSegment(std::string name, bip::mapped_region region, bool owns_name)
    : name_(std::move(name)), region_(std::move(region)), owns_name_(owns_name) {}

ShmSegment::ShmSegment(ShmSegment&& other) noexcept
    : name_(std::move(other.name_)),
      region_(std::move(other.region_)),
      owns_name_(std::exchange(other.owns_name_, false)) {}

ShmSegment& ShmSegment::operator=(ShmSegment&& other) noexcept {
  if (this != &other) {
    if (owns_name_) bip::shared_memory_object::remove(name_.c_str());
    name_ = std::move(other.name_);
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
    bip::shared_memory_object object(bip::create_only, name.c_str(), bip::read_write,
                                     owner_only);
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
    bip::shared_memory_object object(bip::open_only, name.c_str(), bip::read_write);
    bip::mapped_region region(object, bip::read_write);
    return ShmSegment(name, std::move(region), false);
  } catch (const bip::interprocess_exception& e) {
    throw std::runtime_error(fmt::format("cannot open shared memory {}: {}", name, e.what()));
  }
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
