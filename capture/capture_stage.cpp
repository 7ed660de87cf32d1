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

namespace cc = capture_counter;

// Per-shard next sequence numbers sit after the named capture counters.
constexpr std::size_t kShardSeqCounter = cc::kCount;
static_assert(kShardSeqCounter + kMaxShards <= kStageCounters);

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

int run_capture(StageRuntime& runtime) {
  const CaptureConfig& config = runtime.config().capture;
  const std::size_t shards = runtime.shards();

  std::vector<ShmSegment> segments;
  std::vector<RingProducer> producers;
  std::vector<RingProducer*> rings;
  segments.reserve(shards);
  producers.reserve(shards);
  for (std::size_t s = 0; s < shards; ++s) {
    segments.push_back(runtime.open_ring(packet_edge(s)));
    producers.emplace_back(segments.back().bytes());
    producers.back().reopen();
  }
  for (auto& p : producers) rings.push_back(&p);

  std::optional<PcapSource> opened;
  try {
    opened.emplace(open_source(config));
  } catch (const SourceStartError& e) {
    spdlog::error("{}", without_stage_prefix(e.what()));
    return e.exit_code;
  }
  PcapSource& source = *opened;

  auto counter = [&](std::size_t i) -> std::atomic<std::uint64_t>& { return runtime.counter(i); };
  counter(cc::kBytesTotal).store(source.bytes_total());
  runtime.heartbeat();  // the first from here on marks capture ready: its source is open

  const std::size_t max_frame = producers.front().max_frame();
  PacketBatcher batcher(shards, static_cast<std::size_t>(config.batch_packets),
                        std::min<std::size_t>(max_frame / 2, 4u << 20));
  // Resume after a restart: each shard's next sequence number says how many of its packets
  // flowd has (or will get from the ring), so a packet is skipped when its shard already
  // had it. Per shard, because the counters are stored one by one: a kill between two
  // stores must not skip a packet nobody got, nor give two packets one number.
  std::vector<std::uint64_t> resume_seq(shards), seen_in_shard(shards, 0);
  std::uint64_t already_published = 0;
  for (std::size_t s = 0; s < shards; ++s) {
    resume_seq[s] = counter(kShardSeqCounter + s).load();
    already_published += resume_seq[s];
    batcher.set_next_seq(s, resume_seq[s]);
  }
  if (already_published > 0) {
    spdlog::info("resuming after {} packets already published", already_published);
  }
  // Only packets read in this run that are past the resume point are counted.
  std::uint64_t received = 0, sampled_out = 0, truncated = 0, ring_dropped = 0;
  std::uint64_t stalled_dropped = 0;  // of ring_dropped: while writerd could not write
  // writerd says when its writes fail (a full disk): every ring behind it fills and a live
  // capture drops; the drops are counted and logged with that cause.
  const auto& writer_stalled_since = runtime.control()
                                         .slots[slot_index(StageKind::kWriterd, 0, shards)]
                                         .counters[record_counter::kStalledSinceNs];
  RateLimitedLog log;
  std::uint64_t published = already_published;

  const bool live = source.is_live();
  // libpcap's stats open and read sysfs files (if_dropped): idle, at every wake they were
  // most of capture's syscalls. Read at most once a second, and at the end.
  constexpr auto kKernelStatsEvery = std::chrono::seconds(1);
  auto kernel_stats_at = std::chrono::steady_clock::time_point{};
  auto publish_counters = [&](bool final) {
    counter(cc::kReceived).store(already_published + received);
    counter(cc::kSampledOut).fetch_add(std::exchange(sampled_out, 0));
    counter(cc::kTruncated).fetch_add(std::exchange(truncated, 0));
    counter(cc::kRingFullDropped).fetch_add(std::exchange(ring_dropped, 0));
    counter(cc::kWriterStalledDropped).fetch_add(std::exchange(stalled_dropped, 0));
    counter(cc::kBytesRead).store(source.bytes_read());
    const auto now = std::chrono::steady_clock::now();
    if (live && (final || now - kernel_stats_at >= kKernelStatsEvery)) {
      kernel_stats_at = now;
      const KernelStats k = source.kernel_stats();
      counter(cc::kKernelDropped).store(k.dropped + k.if_dropped);
    }
    runtime.heartbeat();
  };
  auto flush = [&](float rate) {
    const std::size_t pending = batcher.pending_packets();
    if (pending == 0) return;
    // Offline: wait for room (backpressure, nothing dropped). Live: a full ring drops.
    auto give_up = [&] {
      runtime.heartbeat();  // waiting on a full ring is alive, not hung
      return live;
    };
    // Live: not a moment's sleep on a full ring, or the kernel's buffer overflows meanwhile.
    if (!batcher.flush(rings, rate, give_up,
                       live ? std::chrono::milliseconds(0) : std::chrono::milliseconds(50))) {
      const std::size_t lost = batcher.discard();
      ring_dropped += lost;
      if (writer_stalled_since.load(std::memory_order_relaxed) != 0) {
        stalled_dropped += lost;
        log.warn("writer stalled",
                 "dropping packets: the rings are full because writerd cannot write "
                 "(its log says why); counted as dropped, ring full (writer stalled), "
                 "until writing works again");
      } else {
        log.rearm("writer stalled");  // the next stall is logged at once
      }
      for (auto* ring : rings) ring->count_drop();
      published += pending - lost;
    } else {
      published += pending;
    }
    counter(cc::kPublished).store(published);
    for (std::size_t s = 0; s < shards; ++s) {
      counter(kShardSeqCounter + s).store(batcher.next_seq(s));
    }
  };

  Packet packet;
  packet::DecodedPacket decoded;
  FragmentRouter router;  // all pieces of a datagram to its flow's shard
  // Loop mode rewrites addresses in a copy: the file mapping is read-only.
  std::vector<std::uint8_t> rewritten;
  if (config.loop > 1) rewritten.resize(kMaxCaplen);
  std::uint32_t level = runtime.control().pressure_level.load(std::memory_order_relaxed);
  float rate = sampling_rate_for(level);
  std::size_t keep = payload_keep_for(level, static_cast<std::size_t>(config.snaplen));
  std::uint64_t since_check = 0;
  for (;;) {
    if (++since_check >= 4096) {
      since_check = 0;
      publish_counters(false);
      level = runtime.control().pressure_level.load(std::memory_order_relaxed);
      rate = sampling_rate_for(level);
      keep = payload_keep_for(level, static_cast<std::size_t>(config.snaplen));
      if (runtime.stop_requested()) break;
    }
    // The kernel's block timeout wakes the poll as soon as packets arrive, so a long wait
    // with nothing pending delays no packet.
    // Live, nothing waiting to be published: a read waits kIdleWait (every stage's idle slice,
    // ring_io.h) for the next packet; the stop flag and pressure level are seen that often.
    if (live) source.set_idle_wait(batcher.pending_packets() > 0 ? source.batch_wait() : kIdleWait);
    const auto status = source.next(packet);
    if (status == PcapSource::Status::kEnd) break;
    if (status == PcapSource::Status::kIdle) {
      flush(rate);
      publish_counters(false);
      if (runtime.stop_requested()) break;
      continue;
    }
    std::uint32_t hash = 0;
    if (packet::decode(packet.link_type, packet.bytes, packet.wire_len, decoded) ==
        packet::DecodeStatus::kOk) {
      if (packet.pass > 0) {
        std::copy(packet.bytes.begin(), packet.bytes.end(), rewritten.begin());
        const std::span<std::uint8_t> copy(rewritten.data(), packet.bytes.size());
        if (rewrite_for_pass(copy, decoded, packet.pass)) packet.bytes = copy;
      }
      hash = router.route(decoded, packet::symmetric_hash(decoded.key));
    }
    // Sample whole flows, not packets: a flow is kept or left out as a unit, so the flows
    // that are kept stay exact (and carry their sampling rate).
    const bool sampled = rate < 1.0f && static_cast<float>(hash % 10000) >= rate * 10000.0f;
    if (!live && !sampled && seen_in_shard[hash % shards]++ < resume_seq[hash % shards]) {
      continue;  // published before a restart
    }
    ++received;
    if (sampled) {
      ++sampled_out;
      continue;
    }
    if (packet.bytes.size() < packet.wire_len) ++truncated;
    if (batcher.add(hash % shards, packet, hash, keep)) flush(rate);
  }
  flush(rate);
  publish_counters(true);
  for (auto* ring : rings) ring->close();
  runtime.set_state(StageState::kDraining);

  for (const auto& error : source.errors())
    spdlog::error("{}", without_stage_prefix(error.message));
  counter(cc::kBadRecords).store(source.skipped());
  counter(cc::kBadTime).store(source.bad_times());
  spdlog::info("{} packets received, {} published to {} shard(s)", counter(cc::kReceived).load(),
               published, shards);
  return source.errors().empty() ? exit_code::kOk : exit_code::kDataError;
}

}  // namespace flowseal::capture
