#include "writer_stage.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <thread>
#include <utility>

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <spdlog/spdlog.h>

#include "capnp_frame.h"
#include "export_latency.h"
#include "segment/shipped_position.h"
#include "flowseal.capnp.h"
#include "frame_loop.h"
#include "layout.h"
#include "ring_io.h"
#include "segment/store.h"
#include "record_list.h"

namespace flowseal::writerd {
namespace {

namespace rc = record_counter;

segment::StoreOptions store_options(const Config& full) {
  const WriterConfig& config = full.writer;
  segment::StoreOptions options;
  options.dir = config.dir;
  options.segment_max_bytes = static_cast<std::uint64_t>(config.segment_max_mb) << 20;
  options.segment_max_age = std::chrono::duration_cast<std::chrono::nanoseconds>(
      std::chrono::duration<double>(config.segment_max_age));
  options.writer.zstd_level = static_cast<int>(config.zstd_level);
  // Community IDs made with this seed are recomputed by readers rather than stored.
  options.writer.community_id_seed = static_cast<std::uint16_t>(full.flowd.community_id_seed);
  options.writer.fsync = segment::parse_fsync_policy(config.fsync);
  options.writer.fsync_interval = std::chrono::milliseconds(config.fsync_interval_ms);
  options.writer.file_mode = static_cast<unsigned>(config.file_mode);
  options.directory_mode = static_cast<unsigned>(directory_mode(config.file_mode));
  options.retention_max_age = std::chrono::duration_cast<std::chrono::nanoseconds>(
      std::chrono::duration<double>(config.retention_max_age));
  options.retention_max_bytes = static_cast<std::uint64_t>(config.retention_max_mb) << 20;
  // Shipping or exports on: retention reads each output's durable position, the one thing
  // that flows back upstream (docs/ARCHITECTURE.md), and keeps what one of them has not handed
  // over unless the size forces it.
  if (!full.ship.url.empty()) options.output_positions.push_back(segment::kShippedFileName);
  if (!full.exports.ipfix.url.empty()) {
    options.output_positions.push_back(segment::kIpfixExportedFileName);
  }
  if (!full.exports.kafka.brokers.empty()) {
    options.output_positions.push_back(segment::kKafkaExportedFileName);
  }
  return options;
}

// What the store needs from a SealedBatch, read from the frame without copying it.
struct Batch {
  segment::StreamId stream{};
  segment::KeyId key{};
  segment::BatchMeta meta;
};

// nullopt (with `why`) if the ids have the wrong length; throws kj::Exception if the message
// is malformed — both are a bad frame.
std::optional<Batch> read_batch(schema::SealedBatch::Reader sealed, std::string& why) {
  const auto header = sealed.getHeader();
  const auto stream = header.getStreamId();
  const auto key = header.getKeyId();
  Batch batch;
  if (stream.size() != batch.stream.size() || key.size() != batch.key.size()) {
    why = fmt::format("batch {} has a stream id of {} bytes and a key id of {} bytes (want 16, 32)",
                      header.getSeq(), stream.size(), key.size());
    return std::nullopt;
  }
  std::copy(stream.begin(), stream.end(), batch.stream.begin());
  std::copy(key.begin(), key.end(), batch.key.begin());
  batch.meta.seq = header.getSeq();
  batch.meta.first_ts_ns = header.getFirstTsNs();
  batch.meta.last_ts_ns = header.getLastTsNs();
  batch.meta.record_count = sized_records(sealed.getRecords(), "SealedBatch.records").size();
  return batch;
}

// Sleeps up to `total` in short steps, keeping the heartbeat; false if a signal came.
bool pause(StageRuntime& runtime, std::chrono::milliseconds total) {
  for (auto waited = std::chrono::milliseconds(0); waited < total;
       waited += std::chrono::milliseconds(100)) {
    if (runtime.signalled()) return false;
    runtime.heartbeat();
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return true;
}

// writerd's work on each sealed batch: append it to the store (while writes fail, retry with
// a growing delay: the ring holds the batches meanwhile), count it, and pass on what the store
// has to say (recovery notes, retention alarms, unshipped batches retention dropped).
class SealedBatchWriter {
 public:
  SealedBatchWriter(StageRuntime& runtime, segment::SegmentStore& store, RateLimitedLog& log)
      : runtime_(runtime),
        store_(store),
        log_(log),
        // Packet time is wall time only on a live capture: only there is export latency a
        // delay.
        live_(!runtime.config().capture.interface.empty()),
        latency_(runtime.config().flowd) {}

  // FrameHandlers::on_frame: kCommit once the batch is stored (durable as writer.fsync says)
  // or held already.
  FrameUse on_frame(std::span<const std::byte> frame, FrameLoop& loop) {
    capnp::FlatArrayMessageReader reader(as_words(frame), frame_reader_options());
    std::string why;
    auto batch = read_batch(reader.getRoot<schema::SealedBatch>(), why);
    if (!batch) KJ_FAIL_REQUIRE(why.c_str());
    const std::uint32_t records = batch->meta.record_count;
    segment::AppendResult result;
    // On an error nothing is committed: the frame stays in the ring and is stored on a
    // later try (or by the next process).
    while ((result = store_.append(batch->stream, batch->key, batch->meta, frame, realtime_ns())) ==
           segment::AppendResult::kError) {
      report_io(store_.last_error());
      if (!back_off()) return loop.stop(exit_code::kTempFail);
      take_notes();
    }
    switch (result) {
      case segment::AppendResult::kStored:
        if (live_) publish_latency(reader.getRoot<schema::SealedBatch>());
        count_stored(records);
        break;
      case segment::AppendResult::kDuplicate:
        runtime_.counter(rc::kRecordsIn).fetch_add(records);
        runtime_.counter(rc::kDuplicates).fetch_add(1);
        break;
      case segment::AppendResult::kForeignStream:
        spdlog::error("{}", store_.last_error().what);
        return loop.stop(exit_code::kConfig);
      case segment::AppendResult::kError: break;  // retried above
    }
    // Stored or held already: the ring may drop the frame.
    return FrameUse::kCommit;
  }

  // FrameHandlers::before_pass, and after each failed write: the store's notes and alarms to
  // the log, what retention dropped unshipped to the counters.
  void take_notes() {
    for (const std::string& note : store_.take_notes()) spdlog::info("{}", note);
    for (const std::string& alarm : store_.take_alarms()) spdlog::error("{}", alarm);
    runtime_.counter(rc::kShipDroppedRecords)
        .fetch_add(store_.dropped_unshipped_records() - dropped_records_);
    runtime_.counter(rc::kShipDroppedSegments)
        .fetch_add(store_.dropped_unshipped_segments() - dropped_segments_);
    dropped_records_ = store_.dropped_unshipped_records();
    dropped_segments_ = store_.dropped_unshipped_segments();
  }

  // FrameHandlers::after_pass: rotation by age and retention while there is nothing to store.
  void after_pass(bool progressed) {
    if (!progressed) report_io(store_.maintain(realtime_ns()));
  }
  // FrameHandlers::on_idle: asleep until the `interval` fsync is due (segment age and
  // retention are seconds-coarse: the stage's heartbeat wakes are often enough for them).
  std::chrono::milliseconds until_due() const {
    return idle_wait(store_.sync_due_at(), std::chrono::steady_clock::now());
  }

  // After the loop: closes the store (retrying as a write does) and logs the run's figures.
  int finish() {
    for (;;) {
      const segment::IoStatus status = store_.close();
      if (status.ok()) break;
      report_io(status);
      if (!back_off()) return exit_code::kTempFail;
    }
    take_notes();
    spdlog::info("drained: {} batches stored, {} bytes in {} segments this run",
                 runtime_.counter(rc::kBatchesOut).load(), store_.bytes_stored(),
                 store_.segments_started());
    if (latency_.count() > 0) {
      spdlog::info("export latency (flow end due -> stored): {}", latency_.describe());
      spdlog::info("export latency histogram (bucket upper edge in us: flow ends): {}",
                   latency_.histogram());
    }
    return exit_code::kOk;
  }

 private:
  void report_io(const segment::IoStatus& status) {
    if (status.ok()) return;
    runtime_.counter(rc::kWriteErrors).fetch_add(1);
    // Published so that a live capture, whose rings fill behind us, can say why it drops.
    if (runtime_.counter(rc::kStalledSinceNs).load() == 0) {
      runtime_.counter(rc::kStalledSinceNs).store(monotonic_ns());
    }
    log_.error("write error", "{} (retrying; the ring holds the batches meanwhile)", status.what);
  }

  // Sleeps out the retry delay (false if a signal came meanwhile), then doubles it.
  bool back_off() {
    if (!pause(runtime_, retry_delay_)) return false;
    retry_delay_ = std::min(retry_delay_ * 2, std::chrono::milliseconds(5000));
    return true;
  }

  // Each record's export latency, and the coarse histogram for the supervisor's /metrics
  // (supervisor/metrics.cpp).
  void publish_latency(schema::SealedBatch::Reader batch) {
    const std::int64_t stored = realtime_ns();
    for (auto record : batch.getRecords()) latency_.add(record, stored);
    static_assert(writerd_counter::kLatencyLe0 + ExportLatency::kCoarseBoundsS.size() ==
                  writerd_counter::kEnd);
    runtime_.counter(writerd_counter::kLatencyCount).store(latency_.count());
    runtime_.counter(writerd_counter::kLatencySumUs).store(latency_.sum_us());
    for (std::size_t i = 0; i < ExportLatency::kCoarseBoundsS.size(); ++i) {
      runtime_.counter(writerd_counter::kLatencyLe0 + i).store(latency_.coarse_at_most(i));
    }
  }

  void count_stored(std::uint32_t records) {
    runtime_.counter(rc::kRecordsIn).fetch_add(records);
    runtime_.counter(rc::kRecordsOut).fetch_add(records);
    runtime_.counter(rc::kBatchesOut).fetch_add(1);
    runtime_.counter(rc::kBytesStored).store(store_.bytes_stored());
    runtime_.counter(rc::kSegments).store(store_.segments_started());
    report_io(store_.last_error());  // a failed rotation after the batch was stored
    if (store_.last_error().ok()) {
      // Also clears what a writerd killed while stalled left in the counter.
      if (const std::int64_t since = runtime_.counter(rc::kStalledSinceNs).exchange(0)) {
        spdlog::info("writing works again (after {:.1f} s of failed writes)",
                     double(monotonic_ns() - since) / 1e9);
        retry_delay_ = std::chrono::milliseconds(200);
        log_.rearm("write error");  // the next failure is a new episode: said at once
      }
    }
  }

  StageRuntime& runtime_;
  segment::SegmentStore& store_;
  RateLimitedLog& log_;
  const bool live_;
  ExportLatency latency_;
  std::chrono::milliseconds retry_delay_{200};
  // What this process has added to ship.dropped_records (a successor adds its own).
  std::uint64_t dropped_records_ = 0, dropped_segments_ = 0;
};

}  // namespace

int run_writerd(StageRuntime& runtime) {
  segment::StoreOptions options = store_options(runtime.config());
  // Reading a busy run's open .part back takes seconds; the supervisor kills a stage silent
  // past supervisor.heartbeat_timeout_ms, and its successor would read the same .part again
  // (docs/RELIABILITY.md, the soak's finding 4). The beat also ends the start timeout: a
  // writerd working through its recovery is up.
  options.on_recovery_progress = [&runtime] { runtime.heartbeat(); };
  segment::SegmentStore store(std::move(options));
  for (const std::string& note : store.take_notes()) spdlog::warn("recovery: {}", note);
  if (store.highest_seq()) {
    spdlog::info("{} holds batches up to seq {}: replays of those are dropped",
                 runtime.config().writer.dir, *store.highest_seq());
  }
  RingInputs inputs(runtime, {std::string(kSealedEdge)});
  RateLimitedLog log;
  FrameLoop loop(stage_process(runtime, rc::kBadFrames), inputs, log, "SealedBatch");
  SealedBatchWriter writer(runtime, store, log);

  FrameHandlers handlers;
  handlers.before_pass = [&] { writer.take_notes(); };
  handlers.on_frame = [&](std::span<const std::byte> frame, std::size_t) {
    return writer.on_frame(frame, loop);
  };
  handlers.after_pass = [&](bool progressed) { writer.after_pass(progressed); };
  handlers.on_idle = [&] { return writer.until_due(); };
  if (const int code = loop.run(handlers); code != exit_code::kOk) return code;
  return writer.finish();
}

}  // namespace flowseal::writerd
