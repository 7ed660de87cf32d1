#include "dedup_stage.h"

#include <vector>

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <spdlog/spdlog.h>

#include "capnp_frame.h"
#include "flowseal.capnp.h"
#include "layout.h"
#include "ring_io.h"

namespace flowseal::dedupd {
namespace {

namespace rc = record_counter;

std::vector<std::string> input_edges(std::size_t shards) {
  std::vector<std::string> edges;
  for (std::size_t s = 0; s < shards; ++s) edges.push_back(flow_edge(s));
  return edges;
}

}  // namespace

int run_dedupd(StageRuntime& runtime) {
  RingInputs inputs(runtime, input_edges(runtime.shards()));
  RingOutput output(runtime, kDedupEdge);
  auto never = [&] {
    runtime.heartbeat();
    return false;
  };
  std::uint64_t records_in = 0, records_out = 0;
  bool bad_frame_logged = false;

  for (;;) {
    bool progressed = false;
    for (std::size_t i = 0; i < inputs.size(); ++i) {
      RingConsumer& in = inputs[i];
      auto frame = in.next();
      if (!frame) continue;
      progressed = true;
      try {
        capnp::FlatArrayMessageReader reader(as_words(*frame), frame_reader_options());
        auto events = reader.getRoot<schema::FlowEventBatch>().getEvents();
        records_in += events.size();
        // Every event passes: suppression of repetition is the dedup engine's job (issue 5);
        // this path keeps every fact and its stable event id.
        if (events.size() > 0) {
          capnp::MallocMessageBuilder message;
          message.setRoot(reader.getRoot<schema::FlowEventBatch>());
          if (!write_message(output.producer(), message, never)) {
            throw std::runtime_error("a FlowEventBatch exceeds the output ring's frame limit");
          }
          output.producer().publish();
          records_out += events.size();
        }
      } catch (const kj::Exception& e) {
        runtime.counter(rc::kBadFrames).fetch_add(1);
        if (!bad_frame_logged) {
          spdlog::warn("skipped a malformed frame from {}: {}", flow_edge(i),
                       e.getDescription().cStr());
          bad_frame_logged = true;
        }
      }
      in.advance();
      in.commit();
    }
    runtime.counter(rc::kRecordsIn).store(records_in);
    runtime.counter(rc::kRecordsOut).store(records_out);
    if (!progressed) {
      if (inputs.drained()) break;
      if (runtime.signalled()) return exit_code::kTempFail;
      runtime.heartbeat();
      inputs.wait(std::chrono::milliseconds(100));
    }
  }
  output.producer().close();
  spdlog::info("drained: {} records in, {} out", records_in, records_out);
  return exit_code::kOk;
}

}  // namespace flowseal::dedupd
