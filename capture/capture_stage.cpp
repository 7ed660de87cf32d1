#include "capture_stage.h"

#include <grp.h>
#include <pwd.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <optional>

#include <algorithm>
#include <array>
#include <vector>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "fragment_router.h"
#include "layout.h"
#include "packet/decode.h"
#include "pressure_level.h"
#include "packet_batcher.h"
#include "pass_rewrite.h"
#include "pcap_source.h"
#include "rate_limited_log.h"
#include "ring.h"
#include "ring_io.h"

namespace flowseal::capture {
namespace {

// Per-shard next sequence numbers sit after the named capture counters.
static_assert(capture_counter::kCount + kMaxShards <= kStageCounters);

void drop_privileges(const std::string& user) {
  if (user.empty()) return;
  const passwd* pw = getpwnam(user.c_str());
  if (pw == nullptr) {
    throw SourceStartError(exit_code::kConfig,
                           fmt::format("capture.user '{}': no such user", user));
  }
  // The bounding set first (that needs CAP_SETPCAP, which setuid takes away): afterwards no
  // exec can regain a capability either.
  for (int cap = 0; prctl(PR_CAPBSET_READ, cap, 0, 0, 0) >= 0; ++cap) {
    prctl(PR_CAPBSET_DROP, cap, 0, 0, 0);
  }
  // setuid from root to another user clears the permitted, effective and ambient sets
  // (no SECBIT_KEEP_CAPS here); the open capture socket keeps working without them.
  if (setgroups(0, nullptr) != 0 || setgid(pw->pw_gid) != 0 || setuid(pw->pw_uid) != 0) {
    throw SourceStartError(
        exit_code::kSoftware,
        fmt::format("capture.user '{}': cannot switch to it: {}", user, std::strerror(errno)));
  }
  if (setuid(0) == 0) {  // must be impossible now
    throw SourceStartError(exit_code::kSoftware,
                           fmt::format("capture.user '{}': could regain root", user));
  }
  prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
  spdlog::info("dropped privileges to {} (uid {}, gid {}, no capabilities)", user, pw->pw_uid,
               pw->pw_gid);
}

// Messages say "capture: FILE: ..." to stand alone; the stage's logger already names it.
std::string_view without_stage_prefix(std::string_view message) {
  constexpr std::string_view kPrefix = "capture: ";
  if (message.starts_with(kPrefix)) message.remove_prefix(kPrefix.size());
  return message;
}

PcapSource open_source(const CaptureConfig& config) {
  if (config.interface.empty())
    return PcapSource::offline(config.files, config.filter, config.loop);
  PcapSource source = PcapSource::live(config);
  drop_privileges(config.user);
  // The live test waits for this line: from here on packets on the interface are captured.
  spdlog::info("listening on {} (link type {}, snaplen {}, {})", config.interface,
               link_type_name(source.link_type()), config.snaplen,
               config.promiscuous ? "promiscuous" : "not promiscuous");
  return source;
}

}  // namespace

float sampling_rate_for(std::uint32_t level) {
  return pressure_effects(pressure_level_from(level)).sampling_rate;
}

std::size_t payload_keep_for(std::uint32_t level, std::size_t snaplen) {
  // LOW keeps everything captured; higher levels cut payload to bound ring use.
  return std::min(snaplen, pressure_effects(pressure_level_from(level)).payload_keep);
}

namespace {

// One shard ring per flowd shard, opened and reopened for a restarted producer.
class ShardRings {
 public:
  explicit ShardRings(StageRuntime& runtime) {
    const std::size_t shards = runtime.shards();
    segments_.reserve(shards);
    producers_.reserve(shards);
    for (std::size_t s = 0; s < shards; ++s) {
      segments_.push_back(runtime.open_ring(packet_edge(s)));
      producers_.emplace_back(segments_.back().bytes());
      producers_.back().reopen();
    }
    for (auto& p : producers_) rings_.push_back(&p);
  }

  std::span<RingProducer* const> rings() const { return rings_; }
  std::size_t max_frame() const { return producers_.front().max_frame(); }

  void count_drop() {
    for (auto* ring : rings_) ring->count_drop();
  }
  void close() {
    for (auto* ring : rings_) ring->close();
  }

 private:
  std::vector<ShmSegment> segments_;
  std::vector<RingProducer> producers_;
  std::vector<RingProducer*> rings_;
};

// The stage's loop over an open source: decode, hash, sample, batch, publish, count.
class CaptureLoop {
 public:
  CaptureLoop(StageRuntime& runtime, PcapSource& source, ShardRings& rings)
      : runtime_(runtime),
        config_(runtime.config().capture),
        source_(source),
        rings_(rings),
        shards_(runtime.shards()),
        live_(source.is_live()),
        batcher_(shards_, static_cast<std::size_t>(config_.batch_packets),
                 std::min<std::size_t>(rings.max_frame() / 2, 4u << 20)),
        resume_seq_(shards_),
        seen_in_shard_(shards_, 0),
        shard_seq_(shards_, 0),
        writer_stalled_since_(runtime.control()
                                  .slots[slot_index(StageKind::kWriterd, 0, shards_)]
                                  .counters[record_counter::kStalledSinceNs]) {
    // Loop mode rewrites addresses in a copy: the file mapping is read-only.
    if (config_.loop > 1) rewritten_.resize(kMaxCaplen);
    resume();
  }

  // Runs until the source ends or a stop is requested; returns the number published.
  std::uint64_t run();

 private:
  std::atomic<std::uint64_t>& counter(std::size_t i) { return runtime_.counter(i); }
  void resume();
  void read_pressure();
  // Hashes, samples and stages one packet; true when a batch is full.
  bool take(Packet& packet);
  // Takes an 802.11 A-MSDU frame's subframes as packets of their own; false if the frame
  // is malformed (see split_amsdu) and goes on whole.
  bool take_amsdu(const Packet& frame);
  void publish_counters(bool final);
  void flush();

  // Resume after a restart: each shard's next sequence number says how many of its packets
  // flowd has (or will get from the ring), so a packet is skipped when its shard already
  // had it. Per shard, because the counters are stored one by one: a kill between two
  // stores must not skip a packet nobody got, nor give two packets one number.
  static constexpr std::size_t kShardSeqCounter = capture_counter::kCount;

  StageRuntime& runtime_;
  const CaptureConfig& config_;
  PcapSource& source_;
  ShardRings& rings_;
  const std::size_t shards_;
  const bool live_;
  PacketBatcher batcher_;
  std::vector<std::uint64_t> resume_seq_, seen_in_shard_;
  std::vector<std::uint64_t> shard_seq_;  // each shard's next seq as last stored
  std::uint64_t already_published_ = 0;
  std::uint64_t published_ = 0;
  // Only packets read in this run that are past the resume point are counted.
  std::uint64_t received_ = 0, sampled_out_ = 0, truncated_ = 0, ring_dropped_ = 0;
  std::uint64_t stalled_dropped_ = 0;  // of ring_dropped_: while writerd could not write
  // writerd says when its writes fail (a full disk): every ring behind it fills and a live
  // capture drops; the drops are counted and logged with that cause.
  const std::atomic<std::uint64_t>& writer_stalled_since_;
  RateLimitedLog log_;
  // libpcap's stats open and read sysfs files (if_dropped): idle, at every wake they were
  // most of capture's syscalls. Read at most once a second, and at the end.
  std::chrono::steady_clock::time_point kernel_stats_at_{};
  float rate_ = 1.0f;
  std::size_t keep_ = 0;
  packet::DecodedPacket decoded_;
  FragmentRouter router_;  // all pieces of a datagram to its flow's shard
  std::vector<std::uint8_t> rewritten_;
  packet::AmsduSplit amsdu_split_;
  std::vector<std::uint8_t> amsdu_copy_;                // one subframe's packet at a time
  std::uint64_t amsdu_frames_ = 0, amsdu_packets_ = 0;  // this run's, for its last log line
};

void CaptureLoop::resume() {
  for (std::size_t s = 0; s < shards_; ++s) {
    resume_seq_[s] = counter(kShardSeqCounter + s).load();
    shard_seq_[s] = resume_seq_[s];
    already_published_ += resume_seq_[s];
    batcher_.set_next_seq(s, resume_seq_[s]);
  }
  published_ = already_published_;
  if (already_published_ > 0) {
    spdlog::info("resuming after {} packets already published", already_published_);
  }
}

void CaptureLoop::read_pressure() {
  // Offline, pressure never costs a packet: a file waits for the pipeline, so sampling would
  // buy nothing but a result that depends on how busy the machine was, and a restarted capture
  // could not tell which packets it had left out before. flowd's shorter timeouts and held
  // table (flows ended early, every packet kept) and dedupd's cap bound the memory instead.
  // So offline, capture reads every level as LOW.
  const std::uint32_t level =
      live_ ? runtime_.control().pressure_level.load(std::memory_order_relaxed) : 0;
  rate_ = sampling_rate_for(level);
  keep_ = payload_keep_for(level, static_cast<std::size_t>(config_.snaplen));
}

void CaptureLoop::publish_counters(bool final) {
  namespace cc = capture_counter;
  constexpr auto kKernelStatsEvery = std::chrono::seconds(1);
  counter(cc::kReceived).store(already_published_ + received_);
  counter(cc::kSampledOut).fetch_add(std::exchange(sampled_out_, 0));
  counter(cc::kTruncated).fetch_add(std::exchange(truncated_, 0));
  counter(cc::kRingFullDropped).fetch_add(std::exchange(ring_dropped_, 0));
  counter(cc::kWriterStalledDropped).fetch_add(std::exchange(stalled_dropped_, 0));
  counter(cc::kBytesRead).store(source_.bytes_read());
  const auto now = std::chrono::steady_clock::now();
  if (live_ && (final || now - kernel_stats_at_ >= kKernelStatsEvery)) {
    kernel_stats_at_ = now;
    const KernelStats k = source_.kernel_stats();
    counter(cc::kKernelDropped).store(k.dropped + k.if_dropped);
  }
  runtime_.heartbeat();
}

void CaptureLoop::flush() {
  const std::size_t pending = batcher_.pending_packets();
  if (pending == 0) return;
  // Offline: wait for room (backpressure, nothing dropped). Live: a full ring drops.
  auto give_up = [&] {
    runtime_.heartbeat();  // waiting on a full ring is alive, not hung
    return live_;
  };
  // Each shard's resume point, and with it the published total (the sum of the shards'
  // seqs), is stored as soon as its frame is out, and only there: a capture killed while it
  // waits for room in the next shard's ring (downstream restarting) leaves no published frame
  // uncounted. Only a kill between a publish and this store leaves one: its successor resumes
  // a frame early (flowd skips the repeats) and status shows flowd ahead for a while. The
  // publish's wake of flowd widens that window: flowd may preempt capture right there.
  const auto published = [this](std::size_t shard, std::uint64_t next_seq) {
    counter(kShardSeqCounter + shard).store(next_seq);
    published_ += next_seq - shard_seq_[shard];
    shard_seq_[shard] = next_seq;
    counter(capture_counter::kPublished).store(published_);
  };
  // Live: not a moment's sleep on a full ring, or the kernel's buffer overflows meanwhile.
  if (!batcher_.flush(rings_.rings(), rate_, give_up,
                      live_ ? std::chrono::milliseconds(0) : std::chrono::milliseconds(50),
                      published)) {
    const std::size_t lost = batcher_.discard();
    ring_dropped_ += lost;
    if (writer_stalled_since_.load(std::memory_order_relaxed) != 0) {
      stalled_dropped_ += lost;
      log_.warn("writer stalled",
                "dropping packets: the rings are full because writerd cannot write "
                "(its log says why); counted as dropped, ring full (writer stalled), "
                "until writing works again");
    } else {
      log_.rearm("writer stalled");  // the next stall is logged at once
    }
    rings_.count_drop();
  }
}

bool CaptureLoop::take(Packet& packet) {
  std::uint32_t hash = 0;
  // A packet flowd cannot decode goes whole (up to the payload cut), so that flowd counts it
  // by the same cause; a decoded one goes as the headers decode() read, which decode the same.
  std::size_t keep = keep_;
  const bool truncated = packet.bytes.size() < packet.wire_len;  // by the capture, not by us
  const packet::DecodeStatus status =
      packet::decode(packet.link_type, packet.bytes, packet.wire_len, decoded_);
  if (status == packet::DecodeStatus::kOk) {
    keep = std::min<std::size_t>(keep, decoded_.header_bytes);
    if (packet.pass > 0) {
      // Only the headers go on, and the addresses to rewrite lie in them: copy just those.
      const std::size_t headers = decoded_.header_bytes;
      std::copy_n(packet.bytes.begin(), headers, rewritten_.begin());
      const std::span<std::uint8_t> copy(rewritten_.data(), headers);
      if (rewrite_for_pass(copy, decoded_, packet.pass)) packet.bytes = copy;
    }
    hash = router_.route(decoded_, packet::symmetric_hash(decoded_.key));
  } else if (status == packet::DecodeStatus::kBadAmsdu && take_amsdu(packet)) {
    return false;  // its subframes were taken (and flushed when a batch filled)
  }
  // Sample whole flows, not packets: a flow is kept or left out as a unit, so the flows
  // that are kept stay exact (and carry their sampling rate).
  const bool sampled = rate_ < 1.0f && static_cast<float>(hash % 10000) >= rate_ * 10000.0f;
  const std::size_t shard = hash % shards_;
  if (!live_ && !sampled && seen_in_shard_[shard]++ < resume_seq_[shard]) {
    return false;  // published before a restart
  }
  ++received_;
  if (sampled) {
    ++sampled_out_;
    return false;
  }
  if (truncated) ++truncated_;
  return batcher_.add(shard, packet, hash, keep);
}

// An A-MSDU frame carries several packets, of different flows (and shards) as often as not,
// so each subframe goes on as a packet of its own: the frame's bytes before the first
// subframe (outer layers and 802.11 header) with the A-MSDU bit cleared, then that
// subframe's MSDU. That is a plain 802.11 frame, which decode() reads as any other here
// and in flowd, so nothing after capture knows about A-MSDU. Counting follows: each
// subframe is one packet received (and processed, sampled out or dropped), so a frame of
// N subframes counts N. An outer layer that is a flow of its own (a UDP tunnel around an
// Aruba tunnel) counts once per subframe too, where Zeek counts that datagram once.
bool CaptureLoop::take_amsdu(const Packet& frame) {
  // A subframe's packet with an A-MSDU inside (802.11 in GRE in 802.11) is not split again:
  // it would be split from the buffer its pieces are copied into. It goes on as malformed.
  if (frame.bytes.data() == amsdu_copy_.data()) return false;
  if (!packet::split_amsdu(frame.link_type, frame.bytes, frame.wire_len, amsdu_split_)) {
    return false;
  }
  // Every subframe lies inside the frame's captured bytes, so a copy is never longer.
  if (amsdu_copy_.size() < frame.bytes.size()) amsdu_copy_.resize(frame.bytes.size());
  const std::size_t prefix = amsdu_split_.prefix;
  std::copy_n(frame.bytes.begin(), prefix, amsdu_copy_.begin());
  amsdu_copy_[amsdu_split_.amsdu_bit_at] &= 0x7F;
  ++amsdu_frames_;
  amsdu_packets_ += amsdu_split_.subframes.size();
  for (const packet::AmsduSubframe& sub : amsdu_split_.subframes) {
    std::copy_n(frame.bytes.begin() + sub.offset, sub.length, amsdu_copy_.begin() + prefix);
    Packet packet = frame;
    packet.bytes = std::span<const std::uint8_t>(amsdu_copy_.data(), prefix + sub.length);
    packet.wire_len = static_cast<std::uint32_t>(packet.bytes.size());
    if (take(packet)) flush();
  }
  return true;
}

std::uint64_t CaptureLoop::run() {
  Packet packet;
  read_pressure();
  std::uint64_t since_check = 0;
  for (;;) {
    if (++since_check >= 4096) {
      since_check = 0;
      publish_counters(false);
      read_pressure();
      if (runtime_.stop_requested()) break;
    }
    // Live, nothing waiting to be published: a read waits the stage's idle slice (its
    // heartbeat interval, 1 s by default) for the next packet; the pressure level is seen
    // that often. A stop wakes it at once: the supervisor sends kLookAtControl, whose handler
    // makes the wake fd readable. The kernel's block timeout wakes the poll as soon as packets
    // arrive, so a long wait with nothing pending delays no packet.
    if (live_) {
      source_.set_idle_wait(batcher_.pending_packets() > 0 ? source_.batch_wait()
                                                           : runtime_.idle_slice());
    }
    const auto status = source_.next(packet);
    if (status == PcapSource::Status::kEnd) break;
    if (status == PcapSource::Status::kIdle) {
      flush();
      publish_counters(false);
      if (runtime_.stop_requested()) break;
      continue;
    }
    if (take(packet)) flush();
  }
  flush();
  publish_counters(true);
  rings_.close();
  if (amsdu_frames_ > 0) {  // why more packets were received than the capture had records
    spdlog::info("{} 802.11 A-MSDU frames split into {} packets", amsdu_frames_, amsdu_packets_);
  }
  return published_;
}

}  // namespace

int run_capture(StageRuntime& runtime) {
  namespace cc = capture_counter;
  ShardRings rings(runtime);
  std::optional<PcapSource> opened;
  try {
    opened.emplace(open_source(runtime.config().capture));
  } catch (const SourceStartError& e) {
    spdlog::error("{}", without_stage_prefix(e.what()));
    return e.exit_code;
  }
  PcapSource& source = *opened;
  source.set_wake_fd(StageRuntime::wake_fd());  // a stop or a signal ends its idle poll at once
  runtime.counter(cc::kBytesTotal).store(source.bytes_total());
  runtime.heartbeat();  // the first from here on marks capture ready: its source is open

  const std::uint64_t published = CaptureLoop(runtime, source, rings).run();
  runtime.set_state(StageState::kDraining);

  for (const auto& error : source.errors())
    spdlog::error("{}", without_stage_prefix(error.message));
  runtime.counter(cc::kBadRecords).store(source.skipped());
  runtime.counter(cc::kBadTime).store(source.bad_times());
  spdlog::info("{} packets received, {} published to {} shard(s)",
               runtime.counter(cc::kReceived).load(), published, runtime.shards());
  return source.errors().empty() ? exit_code::kOk : exit_code::kDataError;
}

}  // namespace flowseal::capture
