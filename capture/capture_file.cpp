#include "capture_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <pcap/pcap.h>

namespace flowseal::capture {
namespace {

constexpr std::uint32_t kPcapMicro = 0xa1b2c3d4;
constexpr std::uint32_t kPcapNano = 0xa1b23c4d;
constexpr std::uint32_t kPcapModified = 0xa1b2cd34;
constexpr std::uint32_t kPcapngSection = 0x0a0d0d0a;
constexpr std::uint32_t kPcapngByteOrder = 0x1a2b3c4d;
constexpr std::uint32_t kBlockInterface = 1;
constexpr std::uint32_t kBlockObsoletePacket = 2;
constexpr std::uint32_t kBlockSimplePacket = 3;
constexpr std::uint32_t kBlockEnhancedPacket = 6;
constexpr std::uint16_t kOptionEnd = 0;
constexpr std::uint16_t kOptionTsResol = 9;
constexpr std::uint16_t kOptionTsOffset = 14;
// libpcap's own bound on a pcapng block; a larger length is a damaged header.
constexpr std::uint32_t kMaxBlock = 16u << 20;

std::uint32_t load32(const std::uint8_t* p, bool swapped) {
  std::uint32_t v;
  std::memcpy(&v, p, 4);
  return swapped ? __builtin_bswap32(v) : v;
}

std::uint16_t load16(const std::uint8_t* p, bool swapped) {
  std::uint16_t v;
  std::memcpy(&v, p, 2);
  return swapped ? __builtin_bswap16(v) : v;
}

std::uint32_t pad4(std::uint32_t n) { return (n + 3u) & ~3u; }

}  // namespace

std::string link_type_name(int link_type) {
  // Files carry LINKTYPE_* numbers; libpcap names DLT_* ones, equal except for a few.
  constexpr int kLinktypeRaw = 101;
  const char* name = pcap_datalink_val_to_name(link_type == kLinktypeRaw ? DLT_RAW : link_type);
  return name != nullptr ? fmt::format("{} ({})", link_type, name) : std::to_string(link_type);
}

namespace {

// True if every page of the mapping is in the page cache (mincore), checked in chunks and
// stopping at the first page that is not: cheap for a file that is not cached.
bool wholly_cached(const std::uint8_t* data, std::size_t size) {
  static const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  constexpr std::size_t kChunkPages = 16384;
  std::vector<unsigned char> resident(std::min(kChunkPages, (size + page - 1) / page));
  for (std::size_t at = 0; at < size; at += kChunkPages * page) {
    const std::size_t length = std::min(size - at, kChunkPages * page);
    if (::mincore(const_cast<std::uint8_t*>(data) + at, length, resident.data()) != 0) {
      return false;
    }
    const std::size_t pages = (length + page - 1) / page;
    for (std::size_t i = 0; i < pages; ++i) {
      if ((resident[i] & 1) == 0) return false;
    }
  }
  return true;
}

}  // namespace

std::optional<MappedFile> MappedFile::open(const std::string& path, std::string& error,
                                           bool drop_cache) {
  UniqueFd file(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  const int fd = file.get();
  if (fd < 0) {
    error = fmt::format("cannot open: {}", std::strerror(errno));
    return std::nullopt;
  }
  struct stat st {};
  std::optional<MappedFile> result;
  if (::fstat(fd, &st) != 0) {
    error = fmt::format("cannot stat: {}", std::strerror(errno));
  } else if (!S_ISREG(st.st_mode)) {
    error = "not a regular file";
  } else if (st.st_size == 0) {
    result = MappedFile(nullptr, 0, UniqueFd(), false);  // empty: reported as not a capture
  } else {
    void* data =
        ::mmap(nullptr, static_cast<std::size_t>(st.st_size), PROT_READ, MAP_PRIVATE, fd, 0);
    if (data == MAP_FAILED) {
      error = fmt::format("cannot map: {}", std::strerror(errno));
    } else {
      const auto* bytes = static_cast<const std::uint8_t*>(data);
      const auto size = static_cast<std::size_t>(st.st_size);
      ::madvise(data, size, MADV_SEQUENTIAL);
      // A file wholly in the page cache was put there by someone who reads it (a replay of
      // the same capture, a benchmark): dropping it would make their next read go to disk and
      // free nobody's charge but theirs. Only what this run brings in is dropped.
      if (drop_cache && wholly_cached(bytes, size)) drop_cache = false;
      result = MappedFile(bytes, size, std::move(file), drop_cache);
    }
  }
  return result;
}

void MappedFile::release(std::uint64_t offset) {
  static const auto page = static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
  const std::uint64_t end = std::min<std::uint64_t>(offset, size_) / page * page;
  if (end <= released_ || data_ == nullptr) return;
  // Failures change nothing but memory use: the pages stay, reading goes on.
  ::madvise(const_cast<std::uint8_t*>(data_) + released_, end - released_, MADV_DONTNEED);
  if (drop_cache_) {
    ::posix_fadvise(fd_.get(), static_cast<off_t>(released_), static_cast<off_t>(end - released_),
                    POSIX_FADV_DONTNEED);
  }
  ::lseek(fd_.get(), static_cast<off_t>(end), SEEK_SET);
  released_ = end;
}

void MappedFile::populate(std::uint64_t offset) {
  static const auto page = static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
  if (data_ == nullptr || populated_ >= size_) return;
  const std::uint64_t from = std::max(populated_, offset / page * page);
  // Page-aligned, so that the next call starts where this one ended (madvise wants that).
  const std::uint64_t to =
      std::min<std::uint64_t>((offset + 2 * kReleaseStep) / page * page, size_);
  populated_ = to;
  if (from >= to) return;
  // A failure (a kernel before 5.14: EINVAL) changes nothing: the pages fault in as read.
  ::madvise(const_cast<std::uint8_t*>(data_) + from, to - from, MADV_POPULATE_READ);
}

void MappedFile::unmap() noexcept {
  if (data_ != nullptr) ::munmap(const_cast<std::uint8_t*>(data_), size_);
  data_ = nullptr;
}

MappedFile::MappedFile(MappedFile&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      fd_(std::move(other.fd_)),
      drop_cache_(other.drop_cache_),
      released_(std::exchange(other.released_, 0)),
      populated_(std::exchange(other.populated_, 0)) {}

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
  if (this != &other) {
    unmap();
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    fd_ = std::move(other.fd_);
    drop_cache_ = other.drop_cache_;
    released_ = std::exchange(other.released_, 0);
    populated_ = std::exchange(other.populated_, 0);
  }
  return *this;
}

MappedFile::~MappedFile() { unmap(); }

std::optional<std::int64_t> pcapng_time_ns(std::uint64_t units, bool pow2, std::uint8_t exp,
                                           std::int64_t offset_s) {
  __extension__ using u128 = unsigned __int128;
  __extension__ using i128 = __int128;
  // units < 2^64 and every factor below < 2^30, so nothing here can overflow 128 bits.
  u128 ns = 0;
  if (pow2) {
    ns = (u128{units} * 1'000'000'000u) >> (exp & 0x7f);  // exp < 128: a defined shift
  } else if (exp <= 9) {
    u128 scale = 1;
    for (int i = exp; i < 9; ++i) scale *= 10;
    ns = u128{units} * scale;
  } else if (exp - 9 <= 38) {  // 10^38 < 2^128; a larger divisor gives 0 anyway
    u128 scale = 1;
    for (int i = 9; i < exp; ++i) scale *= 10;
    ns = u128{units} / scale;
  }
  const i128 total = static_cast<i128>(ns) + i128{offset_s} * 1'000'000'000;
  if (total < 0 || total > kMaxPacketTimeNs) return std::nullopt;
  return static_cast<std::int64_t>(total);
}

std::optional<CaptureFileReader> CaptureFileReader::open(std::span<const std::uint8_t> file,
                                                         Reporter reporter,
                                                         LinkCheck link_supported) {
  CaptureFileReader reader(file, std::move(reporter), std::move(link_supported));
  if (file.size() < 4) {
    reader.problem(0,
                   fmt::format("not a capture file: {} bytes, too short for any capture "
                               "file header",
                               file.size()),
                   true);
    return std::nullopt;
  }
  const std::uint32_t magic = load32(file.data(), false);
  if (magic == kPcapngSection) {
    reader.format_ = Format::kPcapng;
    if (!reader.read_section_header(0)) return std::nullopt;
    return reader;
  }
  if (!reader.open_pcap()) return std::nullopt;
  return reader;
}

void CaptureFileReader::problem(std::uint64_t at, std::string what, bool fatal, bool warning) {
  if (report_) report_(FileProblem{record_, at, std::move(what), fatal, warning});
}

std::uint16_t CaptureFileReader::u16(std::uint64_t at) const {
  return load16(file_.data() + at, swapped_);
}

std::uint32_t CaptureFileReader::u32(std::uint64_t at) const {
  return load32(file_.data() + at, swapped_);
}

bool CaptureFileReader::open_pcap() {
  const std::uint32_t raw = load32(file_.data(), false);
  const std::uint32_t magic = __builtin_bswap32(raw);
  for (const bool swap : {false, true}) {
    const std::uint32_t m = swap ? magic : raw;
    if (m == kPcapMicro || m == kPcapNano || m == kPcapModified) {
      swapped_ = swap;
      nano_ = m == kPcapNano;
      record_header_ = m == kPcapModified ? 24 : 16;
      break;
    }
    if (swap) {
      return fail(0, fmt::format("not a pcap or pcapng file (magic number 0x{:08x})", raw));
    }
  }
  if (file_.size() < 24) {
    return fail(0, fmt::format("the pcap file header is cut short ({} of 24 bytes)", file_.size()));
  }
  const std::uint16_t major = u16(4);
  if (major != 2) {
    return fail(4, fmt::format("unsupported pcap version {}.{}", major, u16(6)));
  }
  Interface iface;
  iface.snaplen = u32(16);
  // The upper 16 bits carry FCS information (LINKTYPE_FCS_*), not the link type.
  iface.link_type = static_cast<int>(u32(20) & 0xffffu);
  iface.resolution_exp = nano_ ? 9 : 6;
  pos_ = 24;
  if (link_supported_ && !link_supported_(iface.link_type)) {
    return fail(20, fmt::format("link type {} is not supported", link_type_name(iface.link_type)));
  }
  interfaces_.push_back(iface);
  return true;
}

bool CaptureFileReader::accept(std::uint64_t at, std::uint32_t caplen, std::uint32_t wire_len,
                               std::uint32_t snaplen, std::uint64_t room) {
  if (caplen == 0) {
    problem(at,
            fmt::format("zero-length packet (caplen 0, wire length {}): record skipped", wire_len),
            false);
    ++skipped_;
    return false;
  }
  if (caplen > room) {
    problem(
        at,
        fmt::format("caplen {} exceeds the {} bytes its block holds: record skipped", caplen, room),
        false);
    ++skipped_;
    return false;
  }
  if (snaplen != 0 && caplen > snaplen) {
    problem(at, fmt::format("caplen {} exceeds snaplen {}: record skipped", caplen, snaplen),
            false);
    ++skipped_;
    return false;
  }
  return true;
}

bool CaptureFileReader::next(FileRecord& record) {
  if (ended_) return false;
  return format_ == Format::kPcap ? next_pcap(record) : next_pcapng(record);
}

bool CaptureFileReader::next_pcap(FileRecord& record) {
  const Interface& iface = interfaces_.front();
  for (;;) {
    if (left() == 0) {
      ended_ = true;
      return false;
    }
    const std::uint64_t at = pos_;
    ++record_;
    if (left() < record_header_) {
      return fail(at, fmt::format("the file stops mid-record: {} of {} record header bytes", left(),
                                  record_header_));
    }
    const std::uint32_t seconds = u32(at);
    const std::uint32_t fraction = u32(at + 4);
    const std::uint32_t caplen = u32(at + 8);
    const std::uint32_t wire_len = u32(at + 12);
    if (caplen > kMaxCaplen) {
      return fail(at, fmt::format("caplen {} exceeds the largest any capture can hold ({}); "
                                  "the record headers are damaged",
                                  caplen, kMaxCaplen));
    }
    const std::uint64_t room = left() - record_header_;
    if (caplen > room) {
      return fail(
          at, fmt::format("the file stops mid-record: caplen {} but {} bytes left", caplen, room));
    }
    pos_ = at + record_header_ + caplen;
    if (!accept(at, caplen, wire_len, iface.snaplen, room)) continue;
    record.bytes = file_.subspan(at + record_header_, caplen);
    record.wire_len = std::max(wire_len, caplen);
    record.ts_ns =
        std::int64_t{seconds} * 1'000'000'000 + std::int64_t{fraction} * (nano_ ? 1 : 1000);
    record.link_type = iface.link_type;
    record.interface = 0;
    return true;
  }
}

bool CaptureFileReader::read_section_header(std::uint64_t at) {
  if (file_.size() - at < 28) {
    return fail(at, fmt::format("the file stops mid-block: pcapng section header needs 28 "
                                "bytes, {} left",
                                file_.size() - at));
  }
  const std::uint32_t order = load32(file_.data() + at + 8, false);
  if (order == kPcapngByteOrder) {
    swapped_ = false;
  } else if (order == __builtin_bswap32(kPcapngByteOrder)) {
    swapped_ = true;
  } else {
    return fail(at,
                fmt::format("pcapng section header with a bad byte-order magic 0x{:08x}", order));
  }
  const std::uint16_t major = u16(at + 12);
  if (major != 1) {
    return fail(at, fmt::format("unsupported pcapng version {}.{}", major, u16(at + 14)));
  }
  interfaces_.clear();  // interface ids are per section
  return true;
}

void CaptureFileReader::read_interface(std::uint64_t at, std::span<const std::uint8_t> body) {
  Interface iface;
  if (body.size() < 8) {
    problem(at, "interface description block too short: its packets are skipped", false);
    iface.supported = false;
    interfaces_.push_back(iface);
    return;
  }
  iface.link_type = load16(body.data(), swapped_);
  iface.snaplen = load32(body.data() + 4, swapped_);
  for (std::size_t o = 8; o + 4 <= body.size();) {
    const std::uint16_t code = load16(body.data() + o, swapped_);
    const std::uint16_t length = load16(body.data() + o + 2, swapped_);
    if (code == kOptionEnd || o + 4 + length > body.size()) break;
    const std::uint8_t* value = body.data() + o + 4;
    if (code == kOptionTsResol && length >= 1) {
      iface.resolution_pow2 = (value[0] & 0x80) != 0;
      iface.resolution_exp = value[0] & 0x7f;
      // Finer than 10^-19 or 2^-63 s: a 64-bit timestamp could not count even one second.
      if (iface.resolution_exp > (iface.resolution_pow2 ? 63 : 19)) {
        problem(at,
                fmt::format("if_tsresol {}^-{} is out of range: 10^-6 assumed",
                            iface.resolution_pow2 ? 2 : 10, iface.resolution_exp),
                false);
        iface.resolution_pow2 = false;
        iface.resolution_exp = 6;
      }
    } else if (code == kOptionTsOffset && length >= 8) {
      const std::uint64_t lo = load32(value, swapped_);
      const std::uint64_t hi = load32(value + 4, swapped_);
      // Stored as one 64-bit integer in the section's byte order.
      iface.offset_s = static_cast<std::int64_t>(swapped_ ? (lo << 32 | hi) : (hi << 32 | lo));
    }
    o += 4 + pad4(length);
  }
  if (link_supported_ && !link_supported_(iface.link_type)) {
    problem(at,
            fmt::format("interface {}: link type {} is not supported: its packets are "
                        "skipped",
                        interfaces_.size(), link_type_name(iface.link_type)),
            false);
    iface.supported = false;
  }
  interfaces_.push_back(iface);
}

bool CaptureFileReader::next_pcapng(FileRecord& record) {
  for (;;) {
    if (left() == 0) {
      ended_ = true;
      return false;
    }
    const std::uint64_t at = pos_;
    if (left() < 12) {
      return fail(at,
                  fmt::format("the file stops mid-block: {} bytes left of a block header", left()));
    }
    const std::uint32_t raw_type = load32(file_.data() + at, false);
    if (raw_type == kPcapngSection && at != 0 && !read_section_header(at)) return false;
    const std::uint32_t type = u32(at);
    const std::uint32_t length = u32(at + 4);
    if (length < 12 || length % 4 != 0 || length > kMaxBlock) {
      return fail(at, fmt::format("pcapng block of type 0x{:x} has a bad length {}", type, length));
    }
    if (length > left()) {
      return fail(at, fmt::format("the file stops mid-block: block of type 0x{:x} is {} bytes, "
                                  "{} left",
                                  type, length, left()));
    }
    if (u32(at + length - 4) != length) {
      return fail(at, fmt::format("pcapng block of type 0x{:x}: trailing length {} differs "
                                  "from leading length {}",
                                  type, u32(at + length - 4), length));
    }
    pos_ = at + length;
    const auto body = file_.subspan(at + 8, length - 12);
    if (type == kBlockInterface) {
      read_interface(at, body);
    } else if (type == kBlockEnhancedPacket || type == kBlockSimplePacket ||
               type == kBlockObsoletePacket) {
      ++record_;
      if (packet_block(type, at, body, record)) return true;
    }
  }
}

bool CaptureFileReader::packet_block(std::uint32_t type, std::uint64_t at,
                                     std::span<const std::uint8_t> body, FileRecord& record) {
  std::uint32_t iface_id = 0, caplen = 0, wire_len = 0;
  std::uint64_t units = 0;
  std::size_t data_at = 0;
  bool has_time = true;
  const auto field = [&](std::size_t o) { return load32(body.data() + o, swapped_); };
  const std::size_t fixed = type == kBlockSimplePacket ? 4 : 20;
  if (body.size() < fixed) {
    problem(at,
            fmt::format("packet block of type {} too short ({} bytes): record skipped", type,
                        body.size()),
            false);
    ++skipped_;
    return false;
  }
  if (type == kBlockEnhancedPacket) {
    iface_id = field(0);
    units = std::uint64_t{field(4)} << 32 | field(8);
    caplen = field(12);
    wire_len = field(16);
    data_at = 20;
  } else if (type == kBlockObsoletePacket) {
    iface_id = load16(body.data(), swapped_);
    units = std::uint64_t{field(4)} << 32 | field(8);
    caplen = field(12);
    wire_len = field(16);
    data_at = 20;
  } else {
    wire_len = field(0);
    data_at = 4;
    has_time = false;
  }
  if (iface_id >= interfaces_.size()) {
    problem(at,
            fmt::format("packet on interface {} but the section describes {}: record "
                        "skipped",
                        iface_id, interfaces_.size()),
            false);
    ++skipped_;
    return false;
  }
  const Interface& iface = interfaces_[iface_id];
  const std::uint64_t room = body.size() - data_at;
  if (type == kBlockSimplePacket) {
    // The captured part is what the block holds, up to the interface's snaplen.
    caplen = static_cast<std::uint32_t>(std::min<std::uint64_t>(wire_len, room));
    if (iface.snaplen != 0) caplen = std::min(caplen, iface.snaplen);
  }
  if (!accept(at, caplen, wire_len, iface.snaplen, room)) return false;
  if (!iface.supported) {
    ++skipped_;  // reported once, when the interface was described
    return false;
  }
  record.bytes = body.subspan(data_at, caplen);
  record.wire_len = std::max(wire_len, caplen);
  if (has_time) {
    const auto ns =
        pcapng_time_ns(units, iface.resolution_pow2, iface.resolution_exp, iface.offset_s);
    if (!ns) {
      problem(
          at,
          fmt::format("packet time of {} units of {}^-{} s plus if_tsoffset {} s is not "
                      "between 1970 and 2116 (what 64-bit nanoseconds carry through the "
                      "pipeline): record dropped, counted as a bad time",
                      units, iface.resolution_pow2 ? 2 : 10, iface.resolution_exp, iface.offset_s),
          false, true);
      ++bad_times_;
      return false;
    }
    last_ts_ns_ = *ns;
  }
  record.ts_ns = last_ts_ns_;
  record.link_type = iface.link_type;
  record.interface = iface_id;
  return true;
}

}  // namespace flowseal::capture
