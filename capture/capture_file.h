// CaptureFileReader: records of one pcap or pcapng file, read from a read-only mapping.
//
// Why not libpcap for files: libpcap refuses a pcapng file whose interfaces have different
// link types, silently cuts a record whose caplen exceeds the snaplen, and cannot say at
// which byte offset a file went wrong. This reader handles
//   - pcap: microsecond and nanosecond magic, both byte orders, and the "modified" (Kuznetsov)
//     variant with its longer record header;
//   - pcapng: several sections (each with its own byte order), several interfaces each with
//     its own link type, snaplen, if_tsresol (10^-n or 2^-n) and if_tsoffset; enhanced,
//     simple and obsolete packet blocks; every other block is skipped by its length.
// Live capture still goes through libpcap (pcap_source.h).
//
// Guarantees: it never reads outside the mapping and never throws after open(); each problem
// goes to the Reporter once with the record number (1-based, counting packet records) and the
// byte offset of the record or block. A problem that leaves the framing intact (caplen over
// the snaplen, a zero-length packet, an unknown interface, an unsupported link type) skips
// that record and reading goes on; one that breaks the framing (the file stops mid-record,
// a block length that does not add up, a caplen no capture could produce) ends the file.
// Every record before the problem has been returned. Packet bytes are views into the mapping,
// valid while the reader lives. Not thread-safe; one reader per file.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "unique_fd.h"

namespace flowseal::capture {

// Largest caplen accepted at all (libpcap's own limit, MAXIMUM_SNAPLEN): a larger one means
// the record headers are garbage, not that the packet was big.
inline constexpr std::uint32_t kMaxCaplen = 262144;

// A read-only mapping of a whole file, unmapped on destruction.
//
// Bounded memory whatever the file's size: a sequential reader calls release_before() as
// its cursor moves on, and the pages behind it leave the process (madvise MADV_DONTNEED,
// so file-backed PSS stays at about 3 * kReleaseStep: behind the cursor and mapped ahead) and, when
// the file will not be read again, the page cache too (posix_fadvise POSIX_FADV_DONTNEED,
// so a cgroup is not charged for it). A view into a released range stays valid: touching
// it again faults the page back in from the file. The descriptor stays open for the
// fadvise calls, and its offset follows the released position, so tools that show how far
// a process has read a file (progress(1), /proc/PID/fdinfo) see the reader's progress.
class MappedFile {
 public:
  // Whole pages are released once the cursor is this far past the last release.
  static constexpr std::size_t kReleaseStep = std::size_t{4} << 20;

  // Maps `path`; on failure returns nullopt and sets `error` (what failed and why).
  // `drop_cache`: released pages may also leave the page cache (the file is read once),
  // unless the file is wholly in the page cache when it is opened.
  static std::optional<MappedFile> open(const std::string& path, std::string& error,
                                        bool drop_cache = true);
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  std::span<const std::uint8_t> bytes() const { return {data_, size_}; }

  // The reader is done with every byte before `offset`: release the whole pages there if
  // the cursor has moved kReleaseStep past the last release, and map the next kReleaseStep
  // ahead of the cursor in one call (cheap to call per record).
  void release_before(std::uint64_t offset) {
    if (offset >= released_ + kReleaseStep) release(offset);
    if (populated_ < size_ && offset + kReleaseStep > populated_) populate(offset);
  }
  std::uint64_t released() const { return released_; }
  bool drops_cache() const { return drop_cache_; }

 private:
  MappedFile(const std::uint8_t* data, std::size_t size, UniqueFd fd, bool drop_cache)
      : data_(data), size_(size), fd_(std::move(fd)), drop_cache_(drop_cache) {}
  void release(std::uint64_t offset);
  // Maps the pages from the cursor to 2 * kReleaseStep ahead of it (MADV_POPULATE_READ):
  // one system call instead of a page fault per few pages, each an exception into the
  // kernel that costs far more than the call's share (more so in a virtual machine).
  void populate(std::uint64_t offset);
  void unmap() noexcept;

  const std::uint8_t* data_ = nullptr;
  std::size_t size_ = 0;
  UniqueFd fd_;
  bool drop_cache_ = true;       // after open(): false for a file that was wholly cached
  std::uint64_t released_ = 0;   // page-aligned: bytes before it have been released
  std::uint64_t populated_ = 0;  // bytes before it have been mapped ahead of the reader
};

struct FileRecord {
  std::span<const std::uint8_t> bytes;  // captured bytes (caplen)
  std::uint32_t wire_len = 0;           // never less than caplen
  std::int64_t ts_ns = 0;               // since the epoch
  int link_type = 0;                    // LINKTYPE_* as the file says it
  std::uint32_t interface = 0;          // pcapng interface id; 0 for pcap
};

struct FileProblem {
  std::uint64_t record = 0;  // 1-based number of the packet record concerned
  std::uint64_t offset = 0;  // byte offset of that record or block in the file
  std::string what;          // "caplen 70000 exceeds snaplen 65535: record skipped"
  bool fatal = false;        // reading of this file ended here
  // The record was dropped for a reason the input may legitimately have (a time that 64-bit
  // nanoseconds since 1970 cannot hold): counted on its own, a warning rather than an error.
  bool warning = false;
};

class CaptureFileReader {
 public:
  using Reporter = std::function<void(const FileProblem&)>;
  using LinkCheck = std::function<bool(int link_type)>;
  enum class Format { kPcap, kPcapng };

  // Reads the file header. A file that is not a capture, or whose header is cut short,
  // is reported (fatal, offset 0) and gives nullopt. `link_supported` decides which link
  // types can be returned; records of any other are reported (once per interface) and
  // skipped.
  static std::optional<CaptureFileReader> open(std::span<const std::uint8_t> file,
                                               Reporter reporter, LinkCheck link_supported);

  // The next packet record; false at the end of the file or after a fatal problem.
  bool next(FileRecord& record);

  Format format() const { return format_; }
  std::uint64_t offset() const { return pos_; }       // bytes consumed so far
  std::uint64_t records() const { return record_; }   // packet records seen so far
  std::uint64_t skipped() const { return skipped_; }  // packet records not returned
  // Of the records not returned, not counted in skipped(): those whose time lies outside
  // [1970, kMaxPacketTimeNs] once if_tsresol and if_tsoffset are applied.
  std::uint64_t bad_times() const { return bad_times_; }

 private:
  struct Interface {
    int link_type = 0;
    std::uint32_t snaplen = 0;  // 0: no limit
    bool resolution_pow2 = false;
    std::uint8_t resolution_exp = 6;  // 10^-6 s unless if_tsresol says otherwise
    std::int64_t offset_s = 0;        // if_tsoffset
    bool supported = true;
  };

  CaptureFileReader(std::span<const std::uint8_t> file, Reporter reporter, LinkCheck check)
      : file_(file), report_(std::move(reporter)), link_supported_(std::move(check)) {}

  bool open_pcap();
  bool next_pcap(FileRecord& record);
  bool next_pcapng(FileRecord& record);
  bool read_section_header(std::uint64_t at);
  void read_interface(std::uint64_t at, std::span<const std::uint8_t> body);
  bool packet_block(std::uint32_t type, std::uint64_t at, std::span<const std::uint8_t> body,
                    FileRecord& record);
  // Applies the per-record checks shared by both formats; false if the record is skipped.
  bool accept(std::uint64_t at, std::uint32_t caplen, std::uint32_t wire_len, std::uint32_t snaplen,
              std::uint64_t room);

  std::uint16_t u16(std::uint64_t at) const;
  std::uint32_t u32(std::uint64_t at) const;
  std::uint64_t left() const { return file_.size() - pos_; }
  void problem(std::uint64_t at, std::string what, bool fatal, bool warning = false);
  bool fail(std::uint64_t at, std::string what) {
    problem(at, std::move(what), true);
    ended_ = true;
    return false;
  }

  std::span<const std::uint8_t> file_;
  Reporter report_;
  LinkCheck link_supported_;
  Format format_ = Format::kPcap;
  bool swapped_ = false;
  bool ended_ = false;
  std::uint64_t pos_ = 0;
  std::uint64_t record_ = 0;
  std::uint64_t skipped_ = 0;
  std::uint64_t bad_times_ = 0;
  // pcap
  std::size_t record_header_ = 16;  // 24 in the modified format
  bool nano_ = false;
  // pcapng: the interfaces of the current section
  std::vector<Interface> interfaces_;
  std::int64_t last_ts_ns_ = 0;  // simple packet blocks carry no time
};

// "1 (EN10MB)": a link type's number and, where libpcap knows it, its name.
std::string link_type_name(int link_type);

// The latest packet time accepted, 2^62 ns after 1970 (in 2116): far past any real capture,
// and far enough below the end of int64 nanoseconds (2262) that the stages can add timeouts
// and windows of up to a year to any packet time without overflow.
inline constexpr std::int64_t kMaxPacketTimeNs = std::int64_t{1} << 62;

// Nanoseconds since 1970 of a pcapng timestamp: `units` at a resolution of 10^-exp or 2^-exp
// seconds (any exp 0..127) plus `offset_s` seconds (if_tsoffset). Exact integer arithmetic,
// no overflow for any input; nullopt when the time is before 1970 or after kMaxPacketTimeNs.
std::optional<std::int64_t> pcapng_time_ns(std::uint64_t units, bool pow2, std::uint8_t exp,
                                           std::int64_t offset_s = 0);

}  // namespace flowseal::capture
