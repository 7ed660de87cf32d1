#include "signer_stage.h"

#include <sys/random.h>

#include <algorithm>
#include <chrono>

#include <capnp/any.h>
#include <capnp/message.h>
#include <capnp/serialize.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "batch_sealer.h"
#include "capnp_frame.h"
#include "chain_position.h"
#include "chain_resume.h"
#include "flowseal.capnp.h"
#include "frame_loop.h"
#include "layout.h"
#include "ring_io.h"
#include "ring_message.h"
#include "seal/keys.h"
#include "record_list.h"

namespace flowseal::signerd {
namespace {

namespace rc = record_counter;

// The position stored in the slot (by an earlier signerd of this run, or by the supervisor
// when the run continues its store's stream), moved past a batch published after it was
// stored; else a new stream: a random id, seq 0.
ChainPosition load_position(StageRuntime& runtime, const RingProducer& producer) {
  if (auto stored = load_chain_position(runtime.slot())) {
    return resume_chain(*stored, producer);
  }
  ChainPosition pos;
  if (getrandom(pos.stream_id.data(), pos.stream_id.size(), 0) !=
      static_cast<ssize_t>(pos.stream_id.size())) {
    throw std::runtime_error("signerd: cannot read random bytes for the stream id");
  }
  return pos;
}

}  // namespace

int run_signerd(StageRuntime& runtime) {
  const SealConfig& config = runtime.config().seal;
  const int key_fd = runtime.take_key_fd();
  seal::PrivateKey key = key_fd >= 0 ? seal::PrivateKey::load(key_fd, config.key_file)
                                     : seal::PrivateKey::load(config.key_file);
  RingInputs inputs(runtime, {std::string(kDedupEdge)});
  RingOutput output(runtime, kSealedEdge);
  RateLimitedLog log;
  FrameLoop loop(stage_process(runtime, rc::kBadFrames), inputs, log, "FlowEventBatch");

  ChainPosition position = load_position(runtime, output.producer());
  store_chain_position(runtime.slot(), position, output.producer().published());
  if (position.next_seq > 0) {
    spdlog::info("continuing the chain at batch {}", position.next_seq);
  }
  BatchSealer sealer(key, position.stream_id, position.next_seq, position.prev_root,
                     static_cast<unsigned>(config.leaf_hint_bytes));

  const auto batch_records = static_cast<std::size_t>(config.batch_records);
  using Clock = std::chrono::steady_clock;
  const auto batch_age = std::chrono::milliseconds(config.batch_ms);
  // A flow's end is what someone waits for (export latency): a batch holding one is sealed
  // sooner. At most 1000/end_batch_ms extra signatures a second, a few ms of CPU.
  const auto end_age = std::chrono::milliseconds(std::min(config.end_batch_ms, config.batch_ms));
  auto seal_due = Clock::time_point::max();  // when the open batch must be sealed
  auto due_now = [&] { return sealer.size() > 0 && Clock::now() >= seal_due; };
  std::uint64_t records_in = 0, batches = 0;
  // A batch closes early when its records would not fit one frame of the writer ring (small
  // budgets have small rings). In the sealed list each record takes its struct's full size
  // (its canonical form drops trailing zero words) plus its texts, and its leaf hint beside
  // it; the header, signature and framing take under 4 KiB.
  const std::size_t frame_room = output.producer().max_frame();
  const std::size_t per_record = flow_event_batch_words(1, 0) * sizeof(capnp::word) +
                                 static_cast<std::size_t>(config.leaf_hint_bytes);
  auto would_overflow = [&](std::size_t more_bytes, std::size_t more_records) {
    const std::size_t records = sealer.size() + more_records;
    const std::size_t estimate = std::max(records * per_record, sealer.bytes() + more_bytes);
    return estimate + 4096 > frame_room;
  };
  auto never = [&] {
    runtime.heartbeat();
    return false;
  };

  auto seal_and_publish = [&] {
    if (sealer.size() > 0) {
      // Built in its ring frame (ring_message.h: no scratch segment zeroed after use, no
      // copy), as one segment (capnp_frame.h says why); the header, signature and leaf
      // hints fit in the extra words.
      RingMessageBuilder message(output.producer(), sealer.words());
      sealer.seal(message);
      if (!message.write(never)) {
        throw std::runtime_error(
            "a sealed batch exceeds the writer ring's frame limit: lower "
            "seal.batch_records");
      }
      output.producer().publish();
      ++batches;
      position.next_seq = sealer.next_seq();
      position.prev_root = sealer.prev_root();
      store_chain_position(runtime.slot(), position, output.producer().published());
    }
    seal_due = Clock::time_point::max();
    loop.commit(0);  // every frame read so far is inside a published batch
    runtime.counter(rc::kBatchesOut).store(batches);
    runtime.counter(rc::kRecordsIn).store(records_in);
    runtime.counter(rc::kRecordsOut).store(records_in);
    // Once per sealed batch: a signerd that always finds input and never waits for room
    // downstream (the slowest stage, e.g. under ASan) is busy, not hung.
    runtime.heartbeat();
  };

  FrameHandlers handlers;
  handlers.on_frame = [&](std::span<const std::byte> frame, std::size_t) {
    capnp::FlatArrayMessageReader reader(as_words(frame), frame_reader_options());
    auto batch = reader.getRoot<schema::FlowEventBatch>();
    // A malformed frame is skipped as a whole rather than half-sealed: add_all() checks every
    // pointer it reads and takes back what it added when one is bad. Fields of the batch
    // this schema does not know are not read there: they are checked first (a traversal of
    // every frame cost ~1 k instructions per record, tests/perfgate).
    if (capnp::AnyStruct::Reader(batch).getPointerSection().size() >
        schema::FlowEventBatch::_capnpPrivate::pointerCount) {
      static_cast<void>(batch.totalSize());
    }
    auto events = sized_records(batch.getEvents(), "FlowEventBatch.events");
    if (sealer.size() > 0 && (sealer.size() + events.size() > batch_records ||
                              would_overflow(frame.size(), events.size()))) {
      seal_and_publish();  // keeps a batch within batch_records and the frame limit (unless
                           // one frame alone exceeds them)
    }
    const auto now = Clock::now();
    if (sealer.size() == 0) seal_due = now + batch_age;
    sealer.add_all(events);
    for (auto event : events) {
      if (event.getKind() == schema::EventKind::END) seal_due = std::min(seal_due, now + end_age);
    }
    records_in += events.size();
    return FrameUse::kHold;  // committed once its records are in a published batch
  };
  // By count, or by age: after each frame even while input keeps coming (a busy input
  // never goes idle), and while idle.
  handlers.after_pass = [&](bool) {
    if (sealer.size() >= batch_records || due_now()) seal_and_publish();
  };
  handlers.on_idle = [&] {
    return idle_wait(sealer.size() > 0 ? seal_due : Clock::time_point::max(), Clock::now());
  };
  if (const int code = loop.run(handlers); code != exit_code::kOk) return code;
  seal_and_publish();
  output.producer().close();
  spdlog::info("drained: {} records sealed in {} batches", records_in, batches);
  return exit_code::kOk;
}

}  // namespace flowseal::signerd
