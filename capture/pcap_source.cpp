#include "pcap_source.h"

#include <poll.h>

#include <algorithm>
#include <filesystem>
#include <limits>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "packet/decode.h"
#include "stage_runtime.h"

namespace flowseal::capture {
namespace {

// Per file, the problems kept word for word; the rest are only counted (a damaged file can
// have a problem per record, and each message is kept until the end of the run).
constexpr std::uint64_t kProblemsPerFile = 20;

int dlt_of(int link_type) {
  constexpr int kLinktypeRaw = 101;  // files say LINKTYPE_RAW; libpcap compiles for DLT_RAW
  return link_type == kLinktypeRaw ? DLT_RAW : link_type;
}

}  // namespace

bool link_type_supported(int link_type) {
  // Ask the decoder itself, so this list cannot drift from what it handles: an empty packet
  // of a known link type is "truncated", of an unknown one "unsupported".
  packet::DecodedPacket decoded;
  return packet::decode(link_type, {}, 0, decoded) != packet::DecodeStatus::kUnsupportedLink;
}

struct PcapSource::Filter {
  int link_type = 0;
  bool usable = false;
  bpf_program program{};
  Filter() = default;
  Filter(const Filter&) = delete;
  Filter& operator=(const Filter&) = delete;
  ~Filter() {
    if (usable) pcap_freecode(&program);
  }
};

PcapSource::PcapSource() = default;
PcapSource::PcapSource(PcapSource&&) noexcept = default;
PcapSource::~PcapSource() = default;

PcapSource PcapSource::offline(std::vector<std::string> files, const std::string& filter,
                               std::int64_t loop) {
  PcapSource source;
  source.files_ = std::move(files);
  source.filter_ = filter;
  source.loop_ = std::max<std::int64_t>(loop, 1);
  for (const auto& file : source.files_) {
    std::error_code ec;
    const auto size = std::filesystem::file_size(file, ec);
    if (!ec) source.bytes_total_ += size * static_cast<std::uint64_t>(source.loop_);
  }
  if (!filter.empty()) {
    // Check the expression once at start (for Ethernet), so a typo is a config error.
    PcapHandle dead(pcap_open_dead(DLT_EN10MB, static_cast<int>(kMaxCaplen)));
    bpf_program program{};
    if (pcap_compile(dead.get(), &program, filter.c_str(), 1, PCAP_NETMASK_UNKNOWN) != 0) {
      throw SourceStartError(exit_code::kConfig, fmt::format("capture.filter '{}': {}", filter,
                                                             pcap_geterr(dead.get())));
    }
    pcap_freecode(&program);
  }
  return source;
}

PcapSource PcapSource::live(const CaptureConfig& config) {
  char errbuf[PCAP_ERRBUF_SIZE] = {};
  const std::string& name = config.interface;
  PcapHandle handle(pcap_create(name.c_str(), errbuf));
  if (!handle) {
    throw SourceStartError(exit_code::kNoInput,
                           fmt::format("capture: interface {}: {}", name, errbuf));
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
    // No such device or no permission will not get better by retrying; a link that is down
    // may come up, so the supervisor's restart with backoff is the right answer to it.
    const int code = rc == PCAP_ERROR_IFACE_NOT_UP ? exit_code::kTempFail
                     : rc == PCAP_ERROR_NO_SUCH_DEVICE || rc == PCAP_ERROR_PERM_DENIED
                         ? exit_code::kNoInput
                         : exit_code::kSoftware;
    const std::string status = pcap_statustostr(rc);
    const std::string detail = pcap_geterr(h);
    throw SourceStartError(
        code,
        fmt::format("capture: interface {}: cannot start capture: {}{}", name, status,
                    detail.empty() || detail == status ? std::string() : " (" + detail + ")"));
  }
  const int link = pcap_datalink(h);
  if (!link_type_supported(link)) {
    throw SourceStartError(exit_code::kDataError,
                           fmt::format("capture: interface {}: link type {} is not supported", name,
                                       link_type_name(link)));
  }
  if (!config.filter.empty()) {
    bpf_program program{};
    if (pcap_compile(h, &program, config.filter.c_str(), 1, PCAP_NETMASK_UNKNOWN) != 0) {
      throw SourceStartError(exit_code::kConfig,
                             fmt::format("capture: interface {}: bad filter '{}': {}", name,
                                         config.filter, pcap_geterr(h)));
    }
    const int set = pcap_setfilter(h, &program);
    pcap_freecode(&program);
    if (set != 0) {
      throw SourceStartError(
          exit_code::kSoftware,
          fmt::format("capture: interface {}: cannot apply filter: {}", name, pcap_geterr(h)));
    }
  }
  // Non-blocking, and we poll with our own timeout: with TPACKET_V3 the kernel retires a
  // block only once it holds a packet, so a blocking read on an idle link never times out
  // (no heartbeat, no partial-batch flush, no reaction to a stop request).
  if (pcap_setnonblock(h, 1, errbuf) != 0) {
    throw SourceStartError(
        exit_code::kSoftware,
        fmt::format("capture: interface {}: cannot make it non-blocking: {}", name, errbuf));
  }
  PcapSource source;
  source.poll_timeout_ms_ = static_cast<int>(std::max<std::int64_t>(config.batch_timeout_ms, 1));
  source.batch_timeout_ms_ = source.poll_timeout_ms_;
  source.handle_ = std::move(handle);
  source.live_ = true;
  source.files_ = {name};
  source.file_index_ = 1;
  source.last_link_type_ = link;
  return source;
}

void PcapSource::report(const std::string& file, const FileProblem& problem) {
  if (pass_ > 0) return;  // the same problems again on every pass
  if (problem.warning) {
    // Counted by the caller; logged now, as a warning: the run goes on and ends well.
    if (++file_warnings_ <= kProblemsPerFile) {
      spdlog::warn("capture: {}: record {} at offset {}: {}", file, problem.record, problem.offset,
                   problem.what);
    }
    return;
  }
  ++file_problems_;
  if (file_problems_ > kProblemsPerFile) return;
  const std::string where =
      problem.record == 0 ? fmt::format("offset {}", problem.offset)
                          : fmt::format("record {} at offset {}", problem.record, problem.offset);
  errors_.push_back({fmt::format("capture: {}: {}: {}", file, where, problem.what)});
}

void PcapSource::close_file() {
  const std::string& file = files_[file_index_ - 1];
  if (pass_ == 0 && file_problems_ > kProblemsPerFile) {
    errors_.push_back({fmt::format("capture: {}: {} more problems not shown", file,
                                   file_problems_ - kProblemsPerFile)});
  }
  if (pass_ == 0 && file_warnings_ > kProblemsPerFile) {
    spdlog::warn("capture: {}: {} more records dropped for their time, not shown", file,
                 file_warnings_ - kProblemsPerFile);
  }
  if (reader_) skipped_ += reader_->skipped();
  if (reader_) bad_times_ += reader_->bad_times();
  std::error_code ec;
  bytes_done_ += std::filesystem::file_size(file, ec);
  reader_.reset();
  mapped_.reset();
}

bool PcapSource::open_next_file() {
  for (;;) {
    if (file_index_ == files_.size()) {
      // Another pass only if the last one delivered something: a loop over nothing ends.
      if (pass_ + 1 >= static_cast<std::uint64_t>(loop_) || !have_ts_) return false;
      // Each pass is moved past the one before by the input's span of packet time (+1 s).
      // Inputs years apart (tests/data spans 2000..2024) fit only a few passes into int64
      // nanoseconds, which end in April 2262: a shift past that wrapped around and gave
      // records times near -9.2e9 s. Looping stops at the last pass that fits, and says so.
      __extension__ using Wide = __int128;  // GCC's 128-bit integer, not ISO C++
      const Wide shift = static_cast<Wide>(pass_ + 1) *
                         (static_cast<Wide>(last_ts_ns_) - first_ts_ns_ + 1'000'000'000);
      if (shift + last_ts_ns_ > std::numeric_limits<std::int64_t>::max()) {
        errors_.push_back({fmt::format(
            "capture: loop mode: stopped after {} of {} passes: the input's packet times span "
            "{:.1f} days, and pass {} would move them past 2262-04-11, the end of 64-bit "
            "nanosecond time (loop over captures closer together in time, or fewer times)",
            pass_ + 1, loop_, static_cast<double>(last_ts_ns_ - first_ts_ns_) / 86400e9,
            pass_ + 2)});
        return false;
      }
      ++pass_;
      pass_shift_ns_ = static_cast<std::int64_t>(shift);
      file_index_ = 0;
    }
    const std::string& file = files_[file_index_++];
    file_problems_ = 0;
    file_warnings_ = 0;
    std::string error;
    // Looping reads each file again: its pages may leave this process but not the cache.
    mapped_ = MappedFile::open(file, error, /*drop_cache=*/loop_ <= 1);
    if (!mapped_) {
      if (pass_ == 0) errors_.push_back({fmt::format("capture: {}: {}", file, error)});
      continue;
    }
    // The reporter outlives this call: it holds the file name by value. It also holds
    // `this`, which is why a source must not be moved once reading has begun.
    reader_ = CaptureFileReader::open(
        mapped_->bytes(),
        [this, name = file](const FileProblem& problem) { report(name, problem); },
        link_type_supported);
    if (!reader_) {
      close_file();
      continue;
    }
    return true;
  }
}

bool PcapSource::passes_filter(const FileRecord& record) {
  if (filter_.empty()) return true;
  auto found = std::find_if(filters_.begin(), filters_.end(),
                            [&](const auto& f) { return f->link_type == record.link_type; });
  if (found == filters_.end()) {
    auto filter = std::make_unique<Filter>();
    filter->link_type = record.link_type;
    PcapHandle dead(pcap_open_dead(dlt_of(record.link_type), static_cast<int>(kMaxCaplen)));
    if (pcap_compile(dead.get(), &filter->program, filter_.c_str(), 1, PCAP_NETMASK_UNKNOWN) == 0) {
      filter->usable = true;
    } else {
      errors_.push_back({fmt::format(
          "capture: {}: filter '{}' does not apply to link type {} "
          "({}): its packets are skipped",
          current_file(), filter_, link_type_name(record.link_type), pcap_geterr(dead.get()))});
    }
    filters_.push_back(std::move(filter));
    found = filters_.end() - 1;
  }
  if (!(*found)->usable) {
    ++skipped_;
    return false;
  }
  pcap_pkthdr header{};
  header.caplen = static_cast<bpf_u_int32>(record.bytes.size());
  header.len = record.wire_len;
  return pcap_offline_filter(&(*found)->program, &header, record.bytes.data()) != 0;
}

PcapSource::Status PcapSource::next(Packet& packet) {
  if (live_) {
    pcap_pkthdr* header = nullptr;
    const u_char* data = nullptr;
    int rc = pcap_next_ex(handle_.get(), &header, &data);
    if (rc == 0) {
      pollfd fds[2] = {{pcap_get_selectable_fd(handle_.get()), POLLIN, 0},
                       {wake_fd_, POLLIN, 0}};  // poll skips fd -1
      if (::poll(fds, 2, poll_timeout_ms_) <= 0) return Status::kIdle;
      if (fds[1].revents != 0) {  // an eventfd: one read empties it
        std::uint64_t count = 0;
        [[maybe_unused]] const ssize_t n = ::read(wake_fd_, &count, sizeof count);
      }
      if (fds[0].revents == 0) return Status::kIdle;
      rc = pcap_next_ex(handle_.get(), &header, &data);
      if (rc == 0) return Status::kIdle;
    }
    if (rc != 1) {
      errors_.push_back(
          {fmt::format("capture: interface {}: {}", files_.front(), pcap_geterr(handle_.get()))});
      return Status::kEnd;
    }
    const bool nano = pcap_get_tstamp_precision(handle_.get()) == PCAP_TSTAMP_PRECISION_NANO;
    packet.bytes = {data, header->caplen};
    packet.wire_len = header->len;
    packet.link_type = last_link_type_;
    packet.ts_ns = std::int64_t{header->ts.tv_sec} * 1'000'000'000 +
                   std::int64_t{header->ts.tv_usec} * (nano ? 1 : 1000);
    packet.pass = 0;
    return Status::kPacket;
  }
  FileRecord record;
  for (;;) {
    if (!reader_ && !open_next_file()) return Status::kEnd;
    // The packet returned last is done with: the pages behind the cursor can go.
    mapped_->release_before(reader_->offset());
    if (!reader_->next(record)) {
      close_file();
      continue;
    }
    if (!passes_filter(record)) continue;
    if (pass_ == 0) {
      if (!have_ts_) first_ts_ns_ = last_ts_ns_ = record.ts_ns;
      have_ts_ = true;
      first_ts_ns_ = std::min(first_ts_ns_, record.ts_ns);
      last_ts_ns_ = std::max(last_ts_ns_, record.ts_ns);
    }
    packet.bytes = record.bytes;
    packet.wire_len = record.wire_len;
    packet.link_type = record.link_type;
    packet.ts_ns = record.ts_ns + pass_shift_ns_;
    packet.pass = pass_;
    last_link_type_ = record.link_type;
    return Status::kPacket;
  }
}

int PcapSource::link_type() const { return last_link_type_; }

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
  return bytes_done_ + (reader_ ? reader_->offset() : 0);
}

const std::string& PcapSource::current_file() const {
  static const std::string kNone;
  return file_index_ == 0 ? kNone : files_[file_index_ - 1];
}

int PcapSource::selectable_fd() const {
  return live_ && handle_ ? pcap_get_selectable_fd(handle_.get()) : -1;
}

}  // namespace flowseal::capture
