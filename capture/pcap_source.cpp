#include "pcap_source.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <stdexcept>

#include <fmt/format.h>

namespace flowseal::capture {
namespace {

void apply_filter(pcap_t* handle, const std::string& filter, const std::string& what) {
  if (filter.empty()) return;
  bpf_program program{};
  if (pcap_compile(handle, &program, filter.c_str(), 1, PCAP_NETMASK_UNKNOWN) != 0) {
    throw std::runtime_error(fmt::format("capture: {}: bad filter '{}': {}", what, filter,
                                         pcap_geterr(handle)));
  }
  const int rc = pcap_setfilter(handle, &program);
  pcap_freecode(&program);
  if (rc != 0) {
    throw std::runtime_error(
        fmt::format("capture: {}: cannot apply filter: {}", what, pcap_geterr(handle)));
  }
}

std::int64_t timestamp_ns(const pcap_pkthdr& header, bool nano) {
  const std::int64_t sub = header.ts.tv_usec;
  return std::int64_t{header.ts.tv_sec} * 1'000'000'000 + (nano ? sub : sub * 1000);
}

}  // namespace

PcapSource PcapSource::offline(std::vector<std::string> files, std::int64_t snaplen,
                               const std::string& filter) {
  PcapSource source;
  source.files_ = std::move(files);
  source.snaplen_ = snaplen;
  source.filter_ = filter;
  for (const auto& file : source.files_) {
    std::error_code ec;
    const auto size = std::filesystem::file_size(file, ec);
    if (!ec) source.bytes_total_ += size;
  }
  return source;
}

PcapSource PcapSource::live(const CaptureConfig& config) {
  char errbuf[PCAP_ERRBUF_SIZE] = {};
  PcapHandle handle(pcap_create(config.interface.c_str(), errbuf));
  if (!handle) {
    throw std::runtime_error(fmt::format("capture: interface {}: {}", config.interface, errbuf));
  }
  pcap_t* h = handle.get();
  pcap_set_snaplen(h, static_cast<int>(config.snaplen));
  pcap_set_promisc(h, config.promiscuous ? 1 : 0);
  pcap_set_buffer_size(h, static_cast<int>(config.buffer_mb * 1024 * 1024));
  pcap_set_immediate_mode(h, config.immediate ? 1 : 0);
  pcap_set_timeout(h, static_cast<int>(config.batch_timeout_ms));
  pcap_set_tstamp_precision(h, PCAP_TSTAMP_PRECISION_NANO);
  const int rc = pcap_activate(h);
  if (rc < 0) {
    throw std::runtime_error(fmt::format("capture: interface {}: cannot start capture: {} ({})",
                                         config.interface, pcap_statustostr(rc),
                                         pcap_geterr(h)));
  }
  apply_filter(h, config.filter, fmt::format("interface {}", config.interface));
  PcapSource source;
  source.handle_ = std::move(handle);
  source.live_ = true;
  source.files_ = {config.interface};
  source.file_index_ = 1;
  source.snaplen_ = config.snaplen;
  return source;
}

bool PcapSource::open_next_file() {
  while (file_index_ < files_.size()) {
    const std::string& file = files_[file_index_++];
    record_ = 0;
    std::FILE* fp = std::fopen(file.c_str(), "rb");
    if (fp == nullptr) {
      errors_.push_back({fmt::format("capture: {}: cannot open: {}", file, std::strerror(errno))});
      continue;
    }
    char errbuf[PCAP_ERRBUF_SIZE] = {};
    // On success libpcap owns fp and closes it in pcap_close.
    PcapHandle handle(pcap_fopen_offline_with_tstamp_precision(fp, PCAP_TSTAMP_PRECISION_NANO,
                                                               errbuf));
    if (!handle) {
      std::fclose(fp);
      errors_.push_back({fmt::format("capture: {}: not a readable pcap or pcapng file: {}",
                                     file, errbuf)});
      std::error_code ec;
      bytes_done_ += std::filesystem::file_size(file, ec);
      continue;
    }
    try {
      apply_filter(handle.get(), filter_, file);
    } catch (const std::exception& e) {
      errors_.push_back({e.what()});
      continue;
    }
    handle_ = std::move(handle);
    return true;
  }
  return false;
}

PcapSource::Status PcapSource::next(Packet& packet) {
  for (;;) {
    if (!handle_ && !open_next_file()) return Status::kEnd;
    pcap_t* h = handle_.get();
    long offset = live_ ? 0 : std::ftell(pcap_file(h));
    pcap_pkthdr* header = nullptr;
    const u_char* data = nullptr;
    const int rc = pcap_next_ex(h, &header, &data);
    if (rc == 1) {
      ++record_;
      packet.bytes = {data, header->caplen};
      packet.wire_len = header->len;
      packet.link_type = pcap_datalink(h);
      packet.ts_ns = timestamp_ns(
          *header, pcap_get_tstamp_precision(h) == PCAP_TSTAMP_PRECISION_NANO);
      return Status::kPacket;
    }
    if (rc == 0) return Status::kIdle;  // live read timeout
    if (rc == PCAP_ERROR_BREAK) {       // offline end of file
      if (live_) return Status::kEnd;
      std::error_code ec;
      bytes_done_ += std::filesystem::file_size(files_[file_index_ - 1], ec);
      handle_.reset();
      continue;
    }
    // A damaged or truncated record: keep what came before, report where, go on.
    const std::string& file = files_[file_index_ - 1];
    errors_.push_back({fmt::format("capture: {}: record {} at offset {}: {}", file, record_ + 1,
                                   offset, pcap_geterr(h))});
    if (live_) return Status::kEnd;
    std::error_code ec;
    bytes_done_ += std::filesystem::file_size(file, ec);
    handle_.reset();
  }
}

KernelStats PcapSource::kernel_stats() const {
  KernelStats stats;
  if (!live_ || !handle_) return stats;
  pcap_stat ps{};
  if (pcap_stats(handle_.get(), &ps) == 0) {
    stats.received = ps.ps_recv;
    stats.dropped = ps.ps_drop;
    stats.if_dropped = ps.ps_ifdrop;
  }
  return stats;
}

std::uint64_t PcapSource::bytes_read() const {
  if (live_ || !handle_) return bytes_done_;
  const long pos = std::ftell(pcap_file(handle_.get()));
  return bytes_done_ + (pos > 0 ? static_cast<std::uint64_t>(pos) : 0);
}

const std::string& PcapSource::current_file() const {
  static const std::string kNone;
  return file_index_ == 0 ? kNone : files_[file_index_ - 1];
}

int PcapSource::selectable_fd() const {
  return live_ && handle_ ? pcap_get_selectable_fd(handle_.get()) : -1;
}

}  // namespace flowseal::capture
