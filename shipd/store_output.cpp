#include "shipd/store_output.h"

#include <thread>
#include <utility>

#include <spdlog/spdlog.h>

#include "stage_runtime.h"

namespace flowseal::shipd {

OutputPosition::OutputPosition(std::string name, std::filesystem::path dir,
                               std::optional<segment::ShippedPosition> loaded, Writer write)
    : name_(std::move(name)), dir_(std::move(dir)), write_(std::move(write)) {
  if (loaded) {
    stream_ = loaded->stream;
    upto_ = loaded->seq;
    saved_ = upto_;
  }
}

bool OutputPosition::same_stream(const segment::StreamId& stream) {
  if (!stream_) stream_ = stream;
  if (stream == *stream_) return true;
  spdlog::warn(
      "{}: {} now holds stream {} (the position was for {}): starting the new stream at its "
      "first batch",
      name_, dir_.string(), segment::to_hex(stream), segment::to_hex(*stream_));
  stream_ = stream;
  upto_.reset();
  saved_.reset();
  first_met_.reset();
  return false;
}

void OutputPosition::save(bool force) {
  if (!upto_ || !stream_ || upto_ == saved_) return;
  if (!force && Clock::now() - last_save_ < std::chrono::milliseconds(250)) return;
  std::string error;
  if (write_({*stream_, *upto_}, error)) {
    saved_ = upto_;
  } else {
    spdlog::error("{}: cannot save the position: {}", name_, error);
  }
  last_save_ = Clock::now();
}

std::uint64_t OutputPosition::lag(std::optional<std::uint64_t> newest) const {
  if (!newest) return 0;
  if (upto_) return *newest > *upto_ ? *newest - *upto_ : 0;
  return first_met_ && *newest >= *first_met_ ? *newest - *first_met_ + 1 : 0;
}

void StoreOutput::wait(bool busy) {
  if (busy) return;
  if (watch_ != nullptr) {
    watch_->wait(std::chrono::milliseconds(20));
  } else {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

int follow_store(StoreOutput& output, const DrainRule& drain, const std::filesystem::path& dir,
                 const OutputHooks& hooks) {
  auto finish = [&](std::string_view what, int code) {
    output.save_position(true);
    output.publish_stats();
    output.log_stats(what);
    return code;
  };
  StoreWatch watch(dir);
  output.set_watch(&watch);
  Clock::time_point last_log = Clock::now();
  Clock::time_point last_publish = Clock::now();
  std::optional<Clock::time_point> drain_since;
  for (;;) {
    if (hooks.heartbeat) hooks.heartbeat();
    if (hooks.stop && hooks.stop()) return finish("stopped", exit_code::kTempFail);
    const Clock::time_point now = Clock::now();
    if (now - last_log >= std::chrono::seconds(5)) {
      output.publish_stats();
      output.log_stats("progress");
      last_log = last_publish = now;
    } else if (now - last_publish >= std::chrono::milliseconds(100)) {
      output.publish_stats();  // the counters `flowseal status` reads
      last_publish = now;
    }

    bool busy = false;
    try {
      busy = output.pass(now);
    } catch (const std::exception& e) {  // a bug, not an outage: the supervisor restarts us
      spdlog::error("{}: {}", drain.name, e.what());
      return finish("failed", exit_code::kSoftware);
    }

    if (hooks.writer_done && hooks.writer_done()) {
      if (!drain_since) drain_since = now;
      if (output.drained()) return finish("done", exit_code::kOk);
      if (now - *drain_since > drain.timeout) {
        output.publish_stats();
        spdlog::error(
            "{}: drain timeout ({} s, {}): {} batches stored but not {}; they stay in {} and "
            "go out at the next start",
            drain.name, drain.timeout.count(), drain.timeout_key, output.lag(), drain.not_done,
            dir.string());
        return finish("gave up", exit_code::kTempFail);
      }
    }
    output.save_position(false);
    output.wait(busy);
  }
}

}  // namespace flowseal::shipd
