#include "dedup_stage.h"

#include <memory>
#include <stdexcept>
#include <vector>

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <spdlog/spdlog.h>

#include "capnp_frame.h"
#include "dedup_engine.h"
#include "frame_sink.h"
#include "flowseal.capnp.h"
#include "frame_loop.h"
#include "layout.h"
#include "pressure_level.h"
#include "ring_io.h"
#include "record_list.h"

namespace flowseal::dedupd {
namespace {

namespace rc = record_counter;

std::vector<std::string> input_edges(std::size_t shards) {
  std::vector<std::string> edges;
  for (std::size_t s = 0; s < shards; ++s) edges.push_back(flow_edge(s));
  return edges;
}

int pass_through(StageRuntime& runtime, FrameLoop& loop, RingOutput& output,
                 const std::function<bool()>& never) {
  std::uint64_t records_in = 0, records_out = 0;
  FrameHandlers handlers;
  handlers.on_frame = [&](std::span<const std::byte> frame, std::size_t) {
    capnp::FlatArrayMessageReader reader(as_words(frame), frame_reader_options());
    auto events = sized_records(reader.getRoot<schema::FlowEventBatch>().getEvents(),
                                "FlowEventBatch.events");
    records_in += events.size();
    if (events.size() > 0) {
      capnp::MallocMessageBuilder message;
      message.setRoot(reader.getRoot<schema::FlowEventBatch>());
      if (!write_message(output.producer(), message, never)) {
        throw std::runtime_error("a FlowEventBatch exceeds the output ring's frame limit");
      }
      output.producer().publish();
      records_out += events.size();
    }
    return FrameUse::kCommit;
  };
  handlers.after_pass = [&](bool) {
    runtime.counter(rc::kRecordsIn).store(records_in);
    runtime.counter(rc::kRecordsOut).store(records_out);
  };
  if (const int code = loop.run(handlers); code != exit_code::kOk) return code;
  output.producer().close();
  spdlog::info("drained (dedup disabled): {} records in, {} out", records_in, records_out);
  return exit_code::kOk;
}

int deduplicate(StageRuntime& runtime, FrameLoop& loop, RateLimitedLog& log, RingInputs& inputs,
                RingOutput& output, const std::function<bool()>& never) {
  const DedupOptions options = DedupOptions::from_config(runtime.config());
  FrameSink sink(output.producer(), never);
  DedupEngine engine(options, sink);
  // Frame bytes read but not committed, per input: past this, flush to unpin (see header).
  const std::size_t pin_limit = plan_memory(runtime.config()).event_ring / 2;
  std::uint64_t pressure_flushes = 0, idle_flushes = 0;
  const auto idle_limit = std::chrono::duration_cast<std::chrono::steady_clock::duration>(
      std::chrono::duration<double>(runtime.config().dedup.window));
  auto last_input = std::chrono::steady_clock::now();
  spdlog::info(
      "dedup: report interval {} s, rate change {}, burst {}, window {} s, "
      "hold {} s, max entries {}",
      options.report_interval_ns / 1e9, options.rate_change, options.burst, options.window_ns / 1e9,
      (options.window_ns + options.linger_ns) / 1e9, options.max_entries);

  // Commits every input whose frames the engine no longer holds (their output is published).
  auto commit_free = [&] {
    for (std::size_t j = 0; j < inputs.size(); ++j) {
      if (loop.uncommitted_bytes(j) > 0 && !engine.holds(static_cast<std::uint32_t>(j))) {
        loop.commit(j);
      }
    }
  };
  auto flush = [&] {
    engine.flush_all();
    sink.publish();
    commit_free();
  };
  // Memory pressure shrinks the entry cap (common/pressure_level.h); the evictions that
  // follow emit what the entries held, published and committed like any other output.
  PressureLevel level = PressureLevel::kLow;
  auto apply_pressure = [&] {
    const PressureLevel now =
        pressure_level_from(runtime.control().pressure_level.load(std::memory_order_relaxed));
    if (now == level) return;
    level = now;
    const auto cap = static_cast<std::size_t>(double(options.max_entries) *
                                              pressure_effects(level).dedup_cap_scale);
    const std::uint64_t evicted = engine.stats().evictions;
    engine.set_entry_cap(cap);
    sink.publish();
    commit_free();
    spdlog::info("pressure {}: entry cap {} of {} ({} entries evicted)", to_string(level),
                 engine.entry_cap(), options.max_entries, engine.stats().evictions - evicted);
  };
  auto store_counters = [&] {
    const DedupStats& s = engine.stats();
    runtime.counter(rc::kEntries).store(engine.entries());
    runtime.counter(rc::kEntryCap).store(engine.entry_cap());
    runtime.counter(rc::kRecordsIn).store(s.records_in);
    runtime.counter(rc::kRecordsOut).store(s.records_out);
    runtime.counter(rc::kSummaries).store(s.summaries);
    runtime.counter(rc::kSuppressed).store(s.folded + s.starts_dropped + s.updates_suppressed);
    // Once per pass over the inputs: a dedupd that always finds input and never waits for
    // room downstream (the slowest stage, e.g. under ASan) is busy, not hung.
    runtime.heartbeat();
  };

  FrameHandlers handlers;
  handlers.before_pass = apply_pressure;
  handlers.on_frame = [&](std::span<const std::byte> frame, std::size_t i) {
    capnp::FlatArrayMessageReader reader(as_words(frame), frame_reader_options());
    for (auto event : sized_records(reader.getRoot<schema::FlowEventBatch>().getEvents(),
                                    "FlowEventBatch.events")) {
      try {
        engine.on_event(event, static_cast<std::uint32_t>(i));
      } catch (const kj::Exception& e) {  // one bad record: the rest of the frame goes on
        runtime.counter(rc::kBadFrames).fetch_add(1);
        log.warn("malformed record", "skipped a malformed record from {}: {}", inputs.edge(i),
                 e.getDescription().cStr());
      }
    }
    // Published before any commit: what this frame released must be downstream first.
    sink.publish();
    return engine.holds(static_cast<std::uint32_t>(i)) ? FrameUse::kHold : FrameUse::kCommit;
  };
  // What a malformed frame's records emitted before it failed goes out before it is skipped.
  handlers.on_bad_frame = [&](std::size_t) { sink.publish(); };
  handlers.after_pass = [&](bool progressed) {
    commit_free();  // what this pass's records released on the other inputs
    for (std::size_t j = 0; j < inputs.size(); ++j) {
      if (loop.uncommitted_bytes(j) > pin_limit) {
        ++pressure_flushes;
        flush();
        break;
      }
    }
    store_counters();
    if (progressed) last_input = std::chrono::steady_clock::now();
  };
  handlers.on_idle = [&] {
    if (engine.holds_any() && std::chrono::steady_clock::now() - last_input > idle_limit) {
      ++idle_flushes;
      flush();
      last_input = std::chrono::steady_clock::now();
    }
    // Asleep until what it holds is due to go out, not a slice at a time.
    return engine.holds_any() ? idle_wait(last_input + idle_limit, std::chrono::steady_clock::now())
                              : kIdleWait;
  };
  if (const int code = loop.run(handlers); code != exit_code::kOk) return code;
  flush();
  store_counters();
  output.producer().close();
  const DedupStats& s = engine.stats();
  spdlog::info(
      "drained: {} records in, {} out ({} summaries folding {} flows, {} updates "
      "suppressed, {} evictions, {} pressure and {} idle flushes)",
      s.records_in, s.records_out, s.summaries, s.folded, s.updates_suppressed, s.evictions,
      pressure_flushes, idle_flushes);
  return exit_code::kOk;
}

}  // namespace

int run_dedupd(StageRuntime& runtime) {
  RingInputs inputs(runtime, input_edges(runtime.shards()));
  RingOutput output(runtime, kDedupEdge);
  std::function<bool()> never = [&] {
    runtime.heartbeat();
    return false;
  };
  RateLimitedLog log;
  FrameLoop loop(stage_process(runtime, rc::kBadFrames), inputs, log, "FlowEventBatch");
  if (!runtime.config().dedup.enabled) return pass_through(runtime, loop, output, never);
  return deduplicate(runtime, loop, log, inputs, output, never);
}

}  // namespace flowseal::dedupd
