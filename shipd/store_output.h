// What every shipd output shares (shipping to NATS, IPFIX export, Kafka export): each follows
// the store writerd has made durable, hands its batches over in order, keeps a durable position
// (the last batch handed over for good, and every batch before it) and ends the same way.
//
// follow_store() is that loop, written once: heartbeat, leave on stop (position saved, exit
// 75), counters published every 100 ms and logged every 5 s, and the drain once writerd is
// done: exit 0 when the output says everything is confirmed, 75 after the drain timeout with
// the lag logged (the batches stay in the store; the next start resumes). The output
// (StoreOutput) does only its own part of a pass: take confirmations, send what its window
// allows.
//
// OutputPosition is the durable position with its save throttled to one every 250 ms (and a
// forced one when leaving), and the rule for a store that now holds another stream (a new
// run into the directory): the output starts that stream from its first batch.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include "segment/format.h"
#include "segment/shipped_position.h"
#include "shipd/store_watch.h"

namespace flowseal::shipd {

using Clock = std::chrono::steady_clock;

struct OutputHooks {
  std::function<bool()> stop;         // leave now (a signal): the position is saved first
  std::function<bool()> writer_done;  // the store will not grow any more: drain, then end
  std::function<void()> heartbeat;
};

class OutputPosition {
 public:
  // Writes the position durably; false with `error` (the old one stays).
  using Writer = std::function<bool(const segment::ShippedPosition&, std::string& error)>;

  // `name` prefixes log lines ("ship", "ipfix", "kafka"); `loaded` is the position read at
  // start (nullopt: from the store's first batch).
  OutputPosition(std::string name, std::filesystem::path dir,
                 std::optional<segment::ShippedPosition> loaded, Writer write);

  // The last batch handed over for good (nullopt: none yet in this stream).
  std::optional<std::uint64_t> upto() const { return upto_; }
  void advance(std::uint64_t seq) { upto_ = seq; }

  // A stored batch the output met (read from the store): the first one met is where the lag
  // counts from while nothing is handed over yet.
  void met(std::uint64_t seq) {
    if (!first_met_) first_met_ = seq;
  }
  // Batches stored (up to `newest`, the newest the follower met) and not handed over yet.
  std::uint64_t lag(std::optional<std::uint64_t> newest) const;

  // Checks a frame's stream: true if it is the position's (adopted when there is none yet).
  // false when the store now holds another stream: logged, and the position starts over in
  // it (the caller rewinds its follower to the first batch and drops what is in flight) and
  // its lag counts from the new stream's first batch.
  bool same_stream(const segment::StreamId& stream);
  // The position's stream (nullopt: none met or loaded yet).
  const std::optional<segment::StreamId>& stream() const { return stream_; }

  // Saves if the position moved since the last save and (unless forced) 250 ms have passed.
  void save(bool force);

 private:
  std::string name_;
  std::filesystem::path dir_;
  Writer write_;
  std::optional<segment::StreamId> stream_;
  std::optional<std::uint64_t> upto_;
  std::optional<std::uint64_t> saved_;
  std::optional<std::uint64_t> first_met_;
  Clock::time_point last_save_ = Clock::now();
};

class StoreOutput {
 public:
  virtual ~StoreOutput() = default;
  // One pass: confirmations taken, the position advanced, new batches sent as far as the
  // output's window allows. True if anything happened (the loop then does not wait).
  virtual bool pass(Clock::time_point now) = 0;
  // Every stored batch is handed over and confirmed (only asked once writerd is done).
  virtual bool drained() = 0;
  virtual void save_position(bool force) = 0;
  // The counters brought up to date and handed to whoever shows them (`flowseal status`).
  virtual void publish_stats() = 0;
  virtual void log_stats(std::string_view what) = 0;
  virtual std::uint64_t lag() const = 0;
  // Nothing to do this pass (busy false) or a full window: wait a little for news (the
  // store changing wakes it early, once follow_store has set a watch).
  virtual void wait(bool busy);
  void set_watch(StoreWatch* watch) { watch_ = watch; }

 private:
  StoreWatch* watch_ = nullptr;
};

struct DrainRule {
  std::string name;                             // log prefix
  std::string timeout_key;                      // the config key, for the message
  std::chrono::duration<double> timeout{30.0};  // after writerd is done
  std::string not_done;                         // "acked", "exported", "wholly delivered"
};

// Runs `output` until hooks.stop() (75), or, once hooks.writer_done(), until output.drained()
// (0) or the drain timeout (75). `dir`: the store, for the messages.
int follow_store(StoreOutput& output, const DrainRule& drain, const std::filesystem::path& dir,
                 const OutputHooks& hooks);

}  // namespace flowseal::shipd
