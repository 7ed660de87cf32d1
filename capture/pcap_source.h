// PcapSource: packets from libpcap, offline (pcap/pcapng files, read in order) or live.
//
// One object owns one pcap handle at a time (RAII). Offline, it opens each file with
// nanosecond timestamp precision (libpcap scales microsecond files), reports every read
// error with the file, the record number and the byte offset of the record, and moves on to
// the next file: the good packets before a damaged record are kept, and `errors()` says what
// was lost so the caller can exit with "data error". Live, it opens the interface with the
// configured snaplen, promiscuity, buffer, immediate mode and BPF filter, and returns kIdle
// when the read timeout passes without a packet, so the caller can flush partial batches.
#pragma once

#include <pcap/pcap.h>

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

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
};

struct SourceError {
  std::string message;  // "capture: trace.pcap: record 1841 at offset 1203380: ..."
};

struct KernelStats {
  std::uint64_t received = 0;
  std::uint64_t dropped = 0;    // ps_drop: no room in the kernel buffer
  std::uint64_t if_dropped = 0; // ps_ifdrop: dropped by the interface/driver
};

class PcapSource {
 public:
  enum class Status { kPacket, kIdle, kEnd };

  static PcapSource offline(std::vector<std::string> files, std::int64_t snaplen,
                            const std::string& filter);
  // Throws std::runtime_error naming the interface when it cannot be opened or filtered.
  static PcapSource live(const CaptureConfig& config);

  Status next(Packet& packet);

  bool is_live() const { return live_; }
  const std::vector<SourceError>& errors() const { return errors_; }
  KernelStats kernel_stats() const;
  // Offline progress: bytes consumed of all files, and their total size.
  std::uint64_t bytes_read() const;
  std::uint64_t bytes_total() const { return bytes_total_; }
  const std::string& current_file() const;

  // Live: the file descriptor to poll (libpcap's selectable fd), -1 offline.
  int selectable_fd() const;

 private:
  PcapSource() = default;
  bool open_next_file();

  PcapHandle handle_;
  bool live_ = false;
  std::vector<std::string> files_;
  std::size_t file_index_ = 0;  // index of the file after the open one
  std::string filter_;
  std::int64_t snaplen_ = 65535;
  std::uint64_t record_ = 0;       // 1-based record number in the current file
  std::uint64_t bytes_done_ = 0;   // bytes of the files already finished
  std::uint64_t bytes_total_ = 0;
  std::vector<SourceError> errors_;
};

}  // namespace flowseal::capture
