#include "writer_stage.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <thread>

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <spdlog/spdlog.h>

#include "capnp_frame.h"
#include "export_latency.h"
#include "flowseal.capnp.h"
#include "layout.h"
#include "ring_io.h"
#include "segment/store.h"

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
  options.retention_max_age = std::chrono::duration_cast<std::chrono::nanoseconds>(
      std::chrono::duration<double>(config.retention_max_age));
  options.retention_max_bytes = static_cast<std::uint64_t>(config.retention_max_mb) << 20;
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
  batch.meta.record_count = sealed.getRecords().size();
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

}  // namespace

int run_writerd(StageRuntime& runtime) {
  segment::SegmentStore store(store_options(runtime.config()));
  for (const std::string& note : store.take_notes()) spdlog::warn("recovery: {}", note);
  if (store.highest_seq()) {
    spdlog::info("{} holds batches up to seq {}: replays of those are dropped",
                 runtime.config().writer.dir, *store.highest_seq());
  }
  RingInputs inputs(runtime, {std::string(kSealedEdge)});
  RingConsumer& in = inputs[0];

  // Packet time is wall time only on a live capture: only there is export latency a delay.
  const bool live = !runtime.config().capture.interface.empty();
  ExportLatency latency(runtime.config().flowd);
  bool bad_frame_logged = false;
  bool write_error_logged = false;
  auto retry_delay = std::chrono::milliseconds(200);
  auto report_io = [&](const segment::IoStatus& status) {
    if (status.ok()) return;
    runtime.counter(rc::kWriteErrors).fetch_add(1);
    // Published so that a live capture, whose rings fill behind us, can say why it drops.
    if (runtime.counter(rc::kStalledSinceNs).load() == 0) {
      runtime.counter(rc::kStalledSinceNs).store(monotonic_ns());
    }
    if (!write_error_logged) {
      spdlog::error("{} (retrying; the ring holds the batches meanwhile)", status.what);
      write_error_logged = true;
    }
  };

  for (;;) {
    // SIGTERM (`flowseal restart`, an abort) is obeyed between frames even when busy:
    // everything not committed is replayed by the next process.
    if (runtime.signalled()) return exit_code::kTempFail;
    auto frame = in.next();
    // Every pass: a busy writer (frames back to back, each fsynced) is alive, not hung.
    runtime.heartbeat();
    for (const std::string& note : store.take_notes()) spdlog::info("{}", note);
    if (!frame) {
      report_io(store.maintain(realtime_ns()));
      if (inputs.drained()) break;
      if (runtime.signalled()) return exit_code::kTempFail;
      runtime.heartbeat();
      in.wait(kIdleWait);
      continue;
    }
    segment::AppendResult result = segment::AppendResult::kError;
    std::uint32_t records = 0;
    try {
      capnp::FlatArrayMessageReader reader(as_words(*frame), frame_reader_options());
      std::string why;
      auto batch = read_batch(reader.getRoot<schema::SealedBatch>(), why);
      if (!batch) KJ_FAIL_REQUIRE(why.c_str());
      records = batch->meta.record_count;
      result = store.append(batch->stream, batch->key, batch->meta, *frame, realtime_ns());
      if (live && result == segment::AppendResult::kStored) {
        const std::int64_t stored = realtime_ns();
        for (auto record : reader.getRoot<schema::SealedBatch>().getRecords()) {
          latency.add(record, stored);
        }
      }
    } catch (const kj::Exception& e) {
      runtime.counter(rc::kBadFrames).fetch_add(1);
      if (!bad_frame_logged) {
        spdlog::warn("skipped a malformed SealedBatch frame: {}", e.getDescription().cStr());
        bad_frame_logged = true;
      }
      in.advance();
      in.commit();
      continue;
    }

    switch (result) {
      case segment::AppendResult::kStored:
        runtime.counter(rc::kRecordsIn).fetch_add(records);
        runtime.counter(rc::kRecordsOut).fetch_add(records);
        runtime.counter(rc::kBatchesOut).fetch_add(1);
        runtime.counter(rc::kBytesStored).store(store.bytes_stored());
        runtime.counter(rc::kSegments).store(store.segments_started());
        report_io(store.last_error());  // a failed rotation after the batch was stored
        if (store.last_error().ok()) {
          // Also clears what a writerd killed while stalled left in the counter.
          const std::int64_t since = runtime.counter(rc::kStalledSinceNs).exchange(0);
          if (write_error_logged) {
            spdlog::info("writing works again (after {:.1f} s of failed writes)",
                         since > 0 ? double(monotonic_ns() - since) / 1e9 : 0.0);
            write_error_logged = false;
            retry_delay = std::chrono::milliseconds(200);
          }
        }
        break;
      case segment::AppendResult::kDuplicate:
        runtime.counter(rc::kRecordsIn).fetch_add(records);
        runtime.counter(rc::kDuplicates).fetch_add(1);
        break;
      case segment::AppendResult::kForeignStream:
        spdlog::error("{}", store.last_error().what);
        return exit_code::kConfig;
      case segment::AppendResult::kError:
        // Not committed: the frame stays in the ring and is stored on a later try.
        report_io(store.last_error());
        if (!pause(runtime, retry_delay)) return exit_code::kTempFail;
        retry_delay = std::min(retry_delay * 2, std::chrono::milliseconds(5000));
        continue;
    }
    // Stored (durable as writer.fsync says) or held already: the ring may drop the frame.
    in.advance();
    in.commit();
  }

  for (;;) {
    const segment::IoStatus status = store.close();
    if (status.ok()) break;
    report_io(status);
    if (!pause(runtime, retry_delay)) return exit_code::kTempFail;
    retry_delay = std::min(retry_delay * 2, std::chrono::milliseconds(5000));
  }
  spdlog::info("drained: {} batches stored, {} bytes in {} segments this run",
               runtime.counter(rc::kBatchesOut).load(), store.bytes_stored(),
               store.segments_started());
  if (latency.count() > 0) {
    spdlog::info("export latency (flow end due -> stored): {}", latency.describe());
    spdlog::info("export latency histogram (bucket upper edge in us: flow ends): {}",
                 latency.histogram());
  }
  return exit_code::kOk;
}

}  // namespace flowseal::writerd
