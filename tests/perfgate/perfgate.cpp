// perfgate: every stage's per-frame work in one process over a fixed input, for the callgrind
// regression gate (tests/perfgate/run-perfgate).
//
// The pipeline runs twice on fresh state: once to warm up (lazy symbol binding, allocator
// arenas, OpenSSL's and zstd's first-use set-up), then with callgrind collecting one part at
// a time; after each measured part its counts are dumped under the part's name. Parts are
// joined by rings in private memory large enough for every frame of the input, so no part
// waits: nothing measured sleeps, reads a clock or depends on scheduling, and the counts are
// the same run after run.
//
// Per frame, each part does what its stage does (the glue a stage keeps private is mirrored
// here, marked "as in ..."):
//   capture  PcapSource::next, decode, symmetric hash, fragment routing, PacketBatcher
//   flowd    PacketBatch read in place, decode, FlowTable steps (journaled), FlowEventBatch out
//   dedupd   DedupEngine::on_event per record, what it emits written out as frames
//   signerd  BatchSealer::add per record; per 1024: Merkle root, Ed25519, SealedBatch frame
//   writerd  SegmentStore::append: columns, zstd, CRC32C, write (fsync per segment)
//
// Prints one JSON object on stdout: per part, the items it processed and their unit.
// FLOWSEAL_PERFGATE_BURN=PART:N adds N instructions per item of PART inside its measured
// region: the deliberate slowdown the gate's own test must see caught.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <capnp/any.h>
#include <capnp/message.h>
#include <capnp/serialize.h>
#include <fmt/format.h>
#include <valgrind/callgrind.h>

#include "batch_sealer.h"
#include "capnp_frame.h"
#include "config.h"
#include "dedup_engine.h"
#include "frame_sink.h"
#include "event_encode.h"
#include "flow_table.h"
#include "flowseal.capnp.h"
#include "fragment_router.h"
#include "packet/decode.h"
#include "packet_batch.h"
#include "packet_batcher.h"
#include "pcap_source.h"
#include "ring.h"
#include "ring_message.h"
#include "seal/keys.h"
#include "segment/store.h"

namespace {

using namespace flowseal;
namespace fs = std::filesystem;

// ---- the deliberate slowdown (the gate's own test) ----------------------------------------

struct Burn {
  std::string part;
  std::uint64_t per_item = 0;  // instructions
};

Burn burn_from_env() {
  const char* value = std::getenv("FLOWSEAL_PERFGATE_BURN");
  if (value == nullptr) return {};
  // run-perfgate pads the value with spaces to a fixed width (see its measure()).
  std::string_view spec(value);
  while (!spec.empty() && spec.back() == ' ') spec.remove_suffix(1);
  if (spec.empty()) return {};
  const auto colon = spec.find(':');
  if (colon == std::string_view::npos)
    throw std::runtime_error("FLOWSEAL_PERFGATE_BURN: want PART:N");
  return {std::string(spec.substr(0, colon)), std::stoull(std::string(spec.substr(colon + 1)))};
}

// Executes about `instructions` instructions (exactly, on x86-64: two per turn of the loop).
void burn(std::uint64_t instructions) {
  std::uint64_t turns = instructions / 2;
  if (turns == 0) return;
#if defined(__x86_64__)
  asm volatile("1: dec %0\n\tjnz 1b" : "+r"(turns) : : "cc");
#else
  for (volatile std::uint64_t i = 0; i < turns; i = i + 1) {
  }
#endif
}

// ---- measurement ----------------------------------------------------------------------------

struct PartResult {
  const char* name;
  const char* unit;
  std::uint64_t items = 0;
};

// Runs `work` (returns its item count) with callgrind collecting, then dumps the counts under
// `name`. Outside callgrind the client requests do nothing.
template <typename Work>
PartResult measure(bool collect, const char* name, const char* unit, const Burn& slow,
                   Work&& work) {
  if (collect) CALLGRIND_TOGGLE_COLLECT;
  const std::uint64_t items = work();
  if (collect && slow.part == name) burn(slow.per_item * items);
  if (collect) {
    CALLGRIND_TOGGLE_COLLECT;
    CALLGRIND_DUMP_STATS_AT(name);
  }
  return {name, unit, items};
}

// A ring in private memory, producer and consumer in this thread.
class LocalRing {
 public:
  static constexpr std::size_t kCapacity = 16u << 20;  // every frame of the input fits
  LocalRing()
      : bytes_(ring_bytes(kCapacity)),
        memory_(static_cast<std::byte*>(std::aligned_alloc(64, (bytes_ + 63) / 64 * 64))) {
    std::memset(memory_.get(), 0, bytes_);
    ring_format({memory_.get(), bytes_}, kCapacity);
    producer_.emplace(std::span<std::byte>(memory_.get(), bytes_));
    consumer_.emplace(std::span<std::byte>(memory_.get(), bytes_));
  }
  RingProducer& producer() { return *producer_; }
  RingConsumer& consumer() { return *consumer_; }

 private:
  struct Free {
    void operator()(std::byte* p) const { std::free(p); }
  };
  std::size_t bytes_;
  std::unique_ptr<std::byte, Free> memory_;
  std::optional<RingProducer> producer_;
  std::optional<RingConsumer> consumer_;
};

// A full ring would make a stage wait: here it means the ring is too small for the input.
const std::function<bool()> kRingFull = [] {
  std::fputs("perfgate: a ring is full: raise LocalRing::kCapacity\n", stderr);
  std::abort();
  return true;
};

// ---- capture ----------------------------------------------------------------------------------

std::uint64_t run_capture(const std::vector<std::string>& files, RingProducer& out) {
  const CaptureConfig config;
  capture::PcapSource source = capture::PcapSource::offline(files, "", 1);
  capture::PacketBatcher batcher(1, static_cast<std::size_t>(config.batch_packets),
                                 std::min<std::size_t>(out.max_frame() / 2, 4u << 20));
  RingProducer* rings[] = {&out};
  capture::FragmentRouter router;
  capture::Packet packet;
  packet::DecodedPacket decoded;
  const auto keep = static_cast<std::size_t>(config.snaplen);
  std::uint64_t packets = 0;
  // As in capture_stage.cpp's loop (one shard, no sampling, no loop passes).
  while (source.next(packet) == capture::PcapSource::Status::kPacket) {
    std::uint32_t hash = 0;
    std::size_t packet_keep = keep;
    if (packet::decode(packet.link_type, packet.bytes, packet.wire_len, decoded) ==
        packet::DecodeStatus::kOk) {
      packet_keep = std::min<std::size_t>(keep, decoded.header_bytes);
      hash = router.route(decoded, packet::symmetric_hash(decoded.key));
    }
    ++packets;
    if (batcher.add(0, packet, hash, packet_keep)) batcher.flush(rings, 1.0f, kRingFull);
  }
  batcher.flush(rings, 1.0f, kRingFull);
  out.close();
  return packets;
}

// ---- flowd ------------------------------------------------------------------------------------

// As in flowd_stage.cpp's EventBatchWriter (no export latency: offline).
class EventFrames final : public flowd::SampledEventSink {
 public:
  explicit EventFrames(RingProducer& out) : out_(out) {}
  void on_event(const flowd::FlowEventData& event) override {
    pending_.push_back(event);
    pending_.back().sampling_rate = sampling_rate_;
    if (pending_.size() >= kEventsPerFrame) write_pending();
  }
  void sync() override { flush(); }
  void set_sampling_rate(float rate) override { sampling_rate_ = rate; }
  void flush() {
    write_pending();
    out_.publish();
  }

 private:
  static constexpr std::size_t kEventsPerFrame = 512;
  void write_pending() {
    if (pending_.empty()) return;
    RingMessageBuilder message(out_, flowd::event_batch_words(pending_));
    auto events = message.initRoot<schema::FlowEventBatch>().initEvents(
        static_cast<unsigned>(pending_.size()));
    for (unsigned i = 0; i < pending_.size(); ++i) flowd::encode(pending_[i], events[i]);
    if (!message.write(kRingFull)) throw std::runtime_error("frame too large");
    pending_.clear();
  }
  RingProducer& out_;
  std::vector<flowd::FlowEventData> pending_;
  float sampling_rate_ = 1.0f;
};

struct FlowdState {
  static constexpr std::size_t kCapacity = 1u << 16;
  FlowdState() : memory((flowd::FlowTable::bytes_needed(kCapacity) + 7) / 8) {}
  std::vector<std::uint64_t> memory;
};

flowd::FlowTableOptions flowd_options(const FlowdConfig& c) {
  auto ns = [](double seconds) { return static_cast<std::int64_t>(seconds * 1e9); };
  flowd::FlowTableOptions options;
  options.timeouts.tcp_established_idle_ns = ns(c.tcp_idle_timeout);
  options.timeouts.tcp_attempt_idle_ns = ns(c.tcp_attempt_timeout);
  options.timeouts.tcp_closed_linger_ns = ns(c.tcp_closed_timeout);
  options.timeouts.udp_idle_ns = ns(c.udp_idle_timeout);
  options.timeouts.icmp_idle_ns = ns(c.icmp_idle_timeout);
  options.timeouts.other_idle_ns = ns(c.other_idle_timeout);
  options.timeouts.active_timeout_ns = ns(c.active_timeout);
  options.community_id_seed = static_cast<std::uint16_t>(c.community_id_seed);
  return options;
}

std::uint64_t run_flowd(RingConsumer& in, RingProducer& out, FlowdState& state) {
  flowd::FlowTable table(
      {reinterpret_cast<std::byte*>(state.memory.data()), state.memory.size() * 8},
      FlowdState::kCapacity, flowd_options(FlowdConfig{}));
  EventFrames writer(out);
  packet::DecodedPacket decoded;
  std::uint64_t packets = 0;
  // As flowd_stage.cpp's frame handler (without the pressure ladder: no pressure here).
  while (auto frame = in.next()) {
    table.begin_step();
    packets += flowd::apply_packet_batch(*frame, table, writer, decoded);
    writer.flush();
    table.commit_step();
    in.advance();
    in.commit();
  }
  table.begin_step();
  table.flush(writer);
  writer.flush();
  table.commit_step();
  out.close();
  return packets;
}

// ---- dedupd -----------------------------------------------------------------------------------

std::uint64_t run_dedupd(RingConsumer& in, RingProducer& out) {
  dedupd::FrameSink sink(out, kRingFull);
  dedupd::DedupEngine engine(dedupd::DedupOptions::from_config(Config{}), sink);
  std::uint64_t records = 0;
  // As in dedup_stage.cpp's loop (one input; no pressure, no idle flush).
  while (auto frame = in.next()) {
    capnp::FlatArrayMessageReader reader(as_words(*frame), frame_reader_options());
    for (auto event : reader.getRoot<schema::FlowEventBatch>().getEvents()) {
      engine.on_event(event, 0);
      ++records;
    }
    sink.publish();
    in.advance();
    if (!engine.holds(0)) in.commit();
  }
  engine.flush_all();
  sink.publish();
  in.commit();
  out.close();
  return records;
}

// ---- signerd ----------------------------------------------------------------------------------

std::uint64_t run_signerd(RingConsumer& in, RingProducer& out, const seal::PrivateKey& key) {
  const SealConfig config;
  const auto batch_records = static_cast<std::size_t>(config.batch_records);
  signerd::BatchSealer sealer(key, {}, 0, {}, static_cast<unsigned>(config.leaf_hint_bytes));
  std::uint64_t records = 0;
  // As in signer_stage.cpp: sealed by count only (its timers would make batches depend on
  // the clock).
  auto seal_and_write = [&] {
    if (sealer.size() == 0) return;
    RingMessageBuilder message(out, sealer.words());
    sealer.seal(message);
    if (!message.write(kRingFull)) throw std::runtime_error("frame too large");
    out.publish();
    in.commit();
  };
  while (auto frame = in.next()) {
    capnp::FlatArrayMessageReader reader(as_words(*frame), frame_reader_options());
    auto batch = reader.getRoot<schema::FlowEventBatch>();
    if (capnp::AnyStruct::Reader(batch).getPointerSection().size() >
        schema::FlowEventBatch::_capnpPrivate::pointerCount) {
      static_cast<void>(batch.totalSize());
    }
    auto events = batch.getEvents();
    if (sealer.size() > 0 && sealer.size() + events.size() > batch_records) seal_and_write();
    sealer.add_all(events);
    records += events.size();
    in.advance();
    if (sealer.size() >= batch_records) seal_and_write();
  }
  seal_and_write();
  out.close();
  return records;
}

// ---- writerd ----------------------------------------------------------------------------------

std::uint64_t run_writerd(RingConsumer& in, const fs::path& dir) {
  segment::StoreOptions options;
  options.dir = dir;
  options.writer.fsync = segment::FsyncPolicy::kRotate;  // a disk figure, not an instruction one
  segment::SegmentStore store(options);
  constexpr std::int64_t kNow = 1'700'000'000'000'000'000;  // a fixed clock: same files each run
  std::uint64_t records = 0;
  // As in writer_stage.cpp's read_batch and loop.
  while (auto frame = in.next()) {
    capnp::FlatArrayMessageReader reader(as_words(*frame), frame_reader_options());
    const auto sealed = reader.getRoot<schema::SealedBatch>();
    const auto header = sealed.getHeader();
    segment::StreamId stream{};
    segment::KeyId key_id{};
    std::copy_n(header.getStreamId().begin(), stream.size(), stream.begin());
    std::copy_n(header.getKeyId().begin(), key_id.size(), key_id.begin());
    segment::BatchMeta meta;
    meta.seq = header.getSeq();
    meta.first_ts_ns = header.getFirstTsNs();
    meta.last_ts_ns = header.getLastTsNs();
    meta.record_count = sealed.getRecords().size();
    if (store.append(stream, key_id, meta, *frame, kNow) != segment::AppendResult::kStored) {
      throw std::runtime_error("writerd: " + store.last_error().what);
    }
    records += meta.record_count;
    in.advance();
    in.commit();
  }
  if (!store.close().ok()) throw std::runtime_error("writerd: close failed");
  return records;
}

// A fixed key: a fresh one per run would change the signatures and key ids, and with them
// what zstd finds to compress. A test key, used nowhere else.
constexpr std::string_view kTestKeyPem =
    "-----BEGIN PRIVATE KEY-----\n"
    "MC4CAQAwBQYDK2VwBCIEIKIJprqnsFbLRUXMumQfwgec54lLHA+B/wM4igXtV+vL\n"
    "-----END PRIVATE KEY-----\n";

seal::PrivateKey test_key(const fs::path& file) {
  const int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0 || ::write(fd, kTestKeyPem.data(), kTestKeyPem.size()) !=
                    static_cast<ssize_t>(kTestKeyPem.size())) {
    throw std::runtime_error("cannot write the test key");
  }
  ::close(fd);
  return seal::PrivateKey::load(file);
}

// ---- the pipeline -----------------------------------------------------------------------------

struct Scratch {
  fs::path dir;
  Scratch() {
    std::string pattern = (fs::temp_directory_path() / "flowseal-perfgate.XXXXXX").string();
    if (::mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    dir = pattern;
  }
  ~Scratch() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
};

std::vector<PartResult> run_pipeline(const std::vector<std::string>& files,
                                     const seal::PrivateKey& key, const fs::path& store_dir,
                                     bool collect, const Burn& slow) {
  LocalRing packets, events, deduplicated, sealed;
  FlowdState flowd_state;
  std::vector<PartResult> parts;
  parts.push_back(measure(collect, "capture", "packet", slow,
                          [&] { return run_capture(files, packets.producer()); }));
  parts.push_back(measure(collect, "flowd", "packet", slow, [&] {
    return run_flowd(packets.consumer(), events.producer(), flowd_state);
  }));
  parts.push_back(measure(collect, "dedupd", "record", slow,
                          [&] { return run_dedupd(events.consumer(), deduplicated.producer()); }));
  parts.push_back(measure(collect, "signerd", "record", slow, [&] {
    return run_signerd(deduplicated.consumer(), sealed.producer(), key);
  }));
  parts.push_back(measure(collect, "writerd", "record", slow,
                          [&] { return run_writerd(sealed.consumer(), store_dir); }));
  return parts;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: perfgate CAPTURE...\n");
    return 64;
  }
  try {
    const std::vector<std::string> files(argv + 1, argv + argc);
    const Burn slow = burn_from_env();
    Scratch scratch;
    const seal::PrivateKey key = test_key(scratch.dir / "test.key");
    run_pipeline(files, key, scratch.dir / "warm", false, slow);
    const auto parts = run_pipeline(files, key, scratch.dir / "measured", true, slow);
    std::string json = "{";
    for (const PartResult& p : parts) {
      json += fmt::format("{}\"{}\": {{\"items\": {}, \"unit\": \"{}\"}}",
                          json.size() > 1 ? ", " : "", p.name, p.items, p.unit);
    }
    std::printf("%s}\n", json.c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "perfgate: %s\n", e.what());
    return 70;
  } catch (const kj::Exception& e) {
    std::fprintf(stderr, "perfgate: %s\n", e.getDescription().cStr());
    return 70;
  }
  return 0;
}
