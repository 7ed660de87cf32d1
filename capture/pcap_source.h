// PcapSource: the packets of one run, from capture files (read in order, optionally in
// several passes) or from a live interface through libpcap.
//
// Offline, each file goes through CaptureFileReader (capture_file.h): pcap and pcapng, with
// every problem recorded as "capture: FILE: record N at offset O: what" and reading going on
// where the framing allows (the records before a problem are always delivered). `errors()`
// lists what was lost so the caller can exit with "data error" (65). A BPF filter is applied
// per packet with a program compiled once per link type. Memory stays bounded whatever the
// files' size: the pages behind the read cursor are released as reading goes on (see
// MappedFile), and a packet's bytes are valid until the next call of next().
//
// Loop mode (capture.loop = N, for benchmarks) reads the files N times. Pass p (0-based)
// shifts every timestamp by p × (span of pass 0 + 1 s), so packet time keeps going forward
// and flows of one pass expire before the next pass's copies start; the caller rewrites the
// addresses (see capture_stage.h) so that each pass's flows are new flows. Problems are
// reported on pass 0 only.
//
// Live, it opens the interface with the configured snaplen, promiscuity, buffer, immediate
// mode and BPF filter, refuses a link type the packet decoder does not know, and returns
// kIdle when the read timeout passes without a packet, so the caller can flush partial
// batches. Not thread-safe; one source per capture process.
#pragma once

#include <pcap/pcap.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "capture_file.h"
#include "config.h"

namespace flowseal::capture {

struct PcapCloser {
  void operator()(pcap_t* handle) const noexcept { pcap_close(handle); }
};
using PcapHandle = std::unique_ptr<pcap_t, PcapCloser>;

struct Packet {
  std::span<const std::uint8_t> bytes;  // captured bytes (caplen)
  std::uint32_t wire_len = 0;
  std::int64_t ts_ns = 0;
  int link_type = 0;
  std::uint32_t pass = 0;  // loop mode: which pass over the files (0 first)
};

struct SourceError {
  std::string message;  // "capture: trace.pcap: record 1841 at offset 1203380: ..."
};

// A source that cannot start; carries the exit code that says why (sysexits style).
struct SourceStartError : std::runtime_error {
  SourceStartError(int code, const std::string& message)
      : std::runtime_error(message), exit_code(code) {}
  int exit_code;
};

struct KernelStats {
  std::uint64_t received = 0;
  std::uint64_t dropped = 0;     // ps_drop: no room in the kernel buffer
  std::uint64_t if_dropped = 0;  // ps_ifdrop: dropped by the interface/driver
};

// True when the packet decoder knows `link_type` (a LINKTYPE_/DLT_ number).
bool link_type_supported(int link_type);

class PcapSource {
 public:
  enum class Status { kPacket, kIdle, kEnd };

  // Throws SourceStartError (exit 78) when the filter does not compile.
  static PcapSource offline(std::vector<std::string> files, const std::string& filter,
                            std::int64_t loop = 1);
  // Throws SourceStartError naming the interface when it cannot be opened or filtered, or
  // when its link type is not supported (exit 65).
  static PcapSource live(const CaptureConfig& config);

  // Movable only before the first next(): an open file's reader reports to this object.
  PcapSource(PcapSource&&) noexcept;
  PcapSource& operator=(PcapSource&&) = delete;
  ~PcapSource();

  Status next(Packet& packet);

  bool is_live() const { return live_; }
  int link_type() const;  // live: the interface's; offline: of the last packet
  const std::vector<SourceError>& errors() const { return errors_; }
  // Offline: records read from the files but not delivered (each one reported).
  std::uint64_t skipped() const { return skipped_; }
  // Offline: records dropped because their time cannot be carried (CaptureFileReader::
  // bad_times); each is logged as a warning, not an error, and they are not in skipped().
  std::uint64_t bad_times() const { return bad_times_ + (reader_ ? reader_->bad_times() : 0); }
  KernelStats kernel_stats() const;
  // Offline progress: bytes consumed of all files over all passes, and their total.
  std::uint64_t bytes_read() const;
  std::uint64_t bytes_total() const { return bytes_total_; }
  const std::string& current_file() const;

  // Live: the file descriptor to poll (libpcap's selectable fd), -1 offline.
  int selectable_fd() const;
  // Live: how long an idle next() waits for a packet before it returns kIdle. A short wait
  // (capture.batch_timeout_ms) while a partial batch waits to be published; a long one
  // when nothing is pending (the stage's heartbeat interval), so that an idle capture wakes
  // about once a second, not a hundred times.
  void set_idle_wait(std::chrono::milliseconds wait) {
    poll_timeout_ms_ = static_cast<int>(wait.count());
  }
  // Live: a descriptor polled beside libpcap's (the stage's wake fd): when it is readable,
  // next() empties it (an eventfd) and returns kIdle at once, so a stop is seen without
  // waiting out the idle wait. -1: none.
  void set_wake_fd(int fd) { wake_fd_ = fd; }
  std::chrono::milliseconds batch_wait() const {
    return std::chrono::milliseconds(batch_timeout_ms_);
  }

 private:
  struct Filter;  // a BPF program compiled for one link type

  PcapSource();
  bool open_next_file();
  void close_file();
  void report(const std::string& file, const FileProblem& problem);
  bool passes_filter(const FileRecord& record);

  PcapHandle handle_;  // live
  bool live_ = false;
  int poll_timeout_ms_ = 10;  // live: an idle read returns kIdle after this long
  int batch_timeout_ms_ = 10;
  int wake_fd_ = -1;
  std::vector<std::string> files_;
  std::size_t file_index_ = 0;  // index of the file after the open one
  std::string filter_;
  std::int64_t loop_ = 1;
  std::uint32_t pass_ = 0;
  std::int64_t first_ts_ns_ = 0, last_ts_ns_ = 0;  // of pass 0, for the loop time shift
  bool have_ts_ = false;
  std::int64_t pass_shift_ns_ = 0;
  std::optional<MappedFile> mapped_;
  std::optional<CaptureFileReader> reader_;
  std::uint64_t file_problems_ = 0;  // of the open file
  std::uint64_t file_warnings_ = 0;  // of the open file
  std::uint64_t bad_times_ = 0;      // of the files closed
  int last_link_type_ = 0;
  std::vector<std::unique_ptr<Filter>> filters_;
  std::uint64_t skipped_ = 0;
  std::uint64_t bytes_done_ = 0;  // bytes of the files already finished
  std::uint64_t bytes_total_ = 0;
  std::vector<SourceError> errors_;
};

}  // namespace flowseal::capture
