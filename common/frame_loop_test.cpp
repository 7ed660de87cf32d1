// FrameLoop over real shared-memory rings: bad frames counted, logged (rate-limited) and
// skipped; held frames left uncommitted and replayed by a successor; drain, signals and
// stop() ending the loop with the stage's exit code; inputs read round-robin.
#include "frame_loop.h"

#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <capnp/message.h>
#include <catch2/catch.hpp>
#include <fmt/format.h>
#include <spdlog/sinks/ostream_sink.h>

#include "capnp_frame.h"
#include "flowseal.capnp.h"
#include "ring.h"
#include "shm.h"

namespace flowseal {
namespace {

using namespace std::chrono_literals;

constexpr std::size_t kCapacity = 64 * 1024;

std::string shm_name(std::string_view tag) {
  return fmt::format("/flowseal.test.{}.frame_loop.{}", ::getpid(), tag);
}

// A formatted ring in its own shared-memory object (removed with it) and a producer on it.
struct TestRing {
  explicit TestRing(std::string tag_in)
      : tag(std::move(tag_in)), segment(make(tag)), producer(segment.bytes()) {}
  static ShmSegment make(const std::string& tag) {
    ShmSegment::remove(shm_name(tag));  // left over from a crashed run with our pid
    ShmSegment segment = ShmSegment::create(shm_name(tag), ring_bytes(kCapacity));
    ring_format(segment.bytes(), kCapacity);
    return segment;
  }
  // A PacketBatch frame carrying `seq` (as firstSeq), published.
  void good(std::uint64_t seq) {
    capnp::MallocMessageBuilder message;
    message.initRoot<schema::PacketBatch>().setFirstSeq(seq);
    REQUIRE(write_message(producer, message, [] { return true; }));
    producer.publish();
  }
  // A frame whose segment table claims far more words than the frame holds.
  void bad() {
    const std::uint32_t table[4] = {0, 0x00FFFFFF, 0, 0};
    REQUIRE(producer.write(std::as_bytes(std::span(table)), 1s));
  }
  RingHeader& header() const { return ring_attach(segment.bytes()); }
  bool all_committed() const { return header().tail.load() == header().head.load(); }

  std::string tag;
  ShmSegment segment;
  RingProducer producer;
};

// Consumer-side mappings of `rings`, as a stage's RingInputs.
RingInputs inputs_of(const std::vector<TestRing*>& rings) {
  std::vector<ShmSegment> segments;
  std::vector<std::string> edges;
  for (TestRing* ring : rings) {
    segments.push_back(ShmSegment::open(shm_name(ring->tag)));
    edges.push_back(ring->tag);
  }
  return RingInputs(std::move(segments), std::move(edges));
}

// The process around the loop, with a signal the test raises by hand, and a log with a
// hand-moved clock whose lines land in `lines`.
struct Harness {
  Harness()
      : logger(std::make_shared<spdlog::logger>(
            "test", std::make_shared<spdlog::sinks::ostream_sink_st>(lines))),
        log(
            10s, [this] { return now; }, logger) {
    logger->set_pattern("%v");
  }
  LoopProcess process() {
    return LoopProcess{.signalled = [this] { return signal; },
                       .heartbeat = [this] { ++heartbeats; },
                       .bad_frames = &bad_frames};
  }
  int log_lines() const {
    const std::string t = lines.str();
    return static_cast<int>(std::count(t.begin(), t.end(), '\n'));
  }

  bool signal = false;
  int heartbeats = 0;
  std::atomic<std::uint64_t> bad_frames{0};
  std::ostringstream lines;
  std::chrono::system_clock::time_point now{std::chrono::seconds(1'700'000'000)};
  std::shared_ptr<spdlog::logger> logger;
  RateLimitedLog log;
};

std::uint64_t seq_of(std::span<const std::byte> frame) {
  capnp::FlatArrayMessageReader reader(as_words(frame), frame_reader_options());
  return reader.getRoot<schema::PacketBatch>().getFirstSeq();
}

TEST_CASE(
    "a bad frame is counted, logged once per interval with the count, skipped and committed") {
  TestRing ring("bad");
  Harness h;
  RingInputs inputs = inputs_of({&ring});
  FrameLoop loop(h.process(), inputs, h.log, "PacketBatch");
  std::vector<std::uint64_t> seen;
  FrameHandlers handlers;
  handlers.on_frame = [&](std::span<const std::byte> frame, std::size_t) {
    seen.push_back(seq_of(frame));
    return FrameUse::kCommit;
  };
  int settled = 0;
  handlers.on_bad_frame = [&](std::size_t input) {
    CHECK(input == 0);
    ++settled;
  };

  ring.bad();
  ring.good(1);
  ring.bad();
  ring.bad();
  ring.good(2);
  ring.producer.close();
  CHECK(loop.run(handlers) == exit_code::kOk);
  CHECK(seen == std::vector<std::uint64_t>{1, 2});
  CHECK(h.bad_frames == 3);
  CHECK(settled == 3);
  CHECK(h.log_lines() == 1);
  CHECK(h.lines.str().starts_with("skipped a malformed PacketBatch frame from bad: "));
  CHECK(h.log.held_back("malformed frame") == 2);
  CHECK(ring.all_committed());

  // Past the interval, the next bad frame is logged again, with the two held back.
  h.now += 10s;
  ring.producer.reopen();
  ring.bad();
  ring.producer.close();
  CHECK(loop.run(handlers) == exit_code::kOk);
  CHECK(h.bad_frames == 4);
  CHECK(h.log_lines() == 2);
  CHECK(h.lines.str().find("(2 more since ") != std::string::npos);
  CHECK(ring.all_committed());
}

TEST_CASE("a frame the callback holds stays uncommitted and is replayed after a restart") {
  TestRing ring("hold");
  for (std::uint64_t seq = 1; seq <= 3; ++seq) ring.good(seq);
  ring.bad();  // after held frames: held with them, or they would be freed too early
  ring.good(4);
  {
    Harness h;
    RingInputs inputs = inputs_of({&ring});
    FrameLoop loop(h.process(), inputs, h.log, "PacketBatch");
    std::vector<std::uint64_t> seen;
    FrameHandlers handlers;
    handlers.on_frame = [&](std::span<const std::byte> frame, std::size_t) {
      seen.push_back(seq_of(frame));
      if (seen.size() == 4) h.signal = true;  // the stage is killed before it commits
      return FrameUse::kHold;
    };
    CHECK(loop.run(handlers) == exit_code::kTempFail);
    CHECK(seen == std::vector<std::uint64_t>{1, 2, 3, 4});
    CHECK(h.bad_frames == 1);
    CHECK(loop.uncommitted_bytes(0) > 0);
    CHECK(ring.header().tail.load() == 0);  // nothing freed, the bad frame included
  }
  // The successor starts at the last commit: every held frame comes again.
  Harness h;
  RingInputs inputs = inputs_of({&ring});
  FrameLoop loop(h.process(), inputs, h.log, "PacketBatch");
  std::vector<std::uint64_t> seen;
  FrameHandlers handlers;
  handlers.on_frame = [&](std::span<const std::byte> frame, std::size_t input) {
    seen.push_back(seq_of(frame));
    if (seen.size() == 2) loop.commit(input);  // frees frame 1 only: 2 is not passed yet
    return FrameUse::kHold;
  };
  ring.producer.close();
  CHECK(loop.run(handlers) == exit_code::kOk);
  CHECK(seen == std::vector<std::uint64_t>{1, 2, 3, 4});
  CHECK(!ring.all_committed());
  loop.commit_all();  // what a stage does once its output is out, at the drain
  CHECK(loop.uncommitted_bytes(0) == 0);
  CHECK(ring.all_committed());
}

TEST_CASE("inputs are read round-robin and drain ends the loop once every ring is closed") {
  TestRing a("rr.a"), b("rr.b");
  for (std::uint64_t seq = 1; seq <= 3; ++seq) {
    a.good(seq);
    b.good(100 + seq);
  }
  a.producer.close();  // b stays open: the loop must idle until it closes
  Harness h;
  RingInputs inputs = inputs_of({&a, &b});
  FrameLoop loop(h.process(), inputs, h.log, "PacketBatch");
  std::vector<std::uint64_t> seen;
  int idles = 0, passes = 0, idle_passes = 0;
  FrameHandlers handlers;
  handlers.on_frame = [&](std::span<const std::byte> frame, std::size_t input) {
    seen.push_back(seq_of(frame));
    CHECK(input == (seq_of(frame) > 100 ? 1u : 0u));
    return FrameUse::kCommit;
  };
  handlers.before_pass = [&] { ++passes; };
  handlers.after_pass = [&](bool progressed) { idle_passes += progressed ? 0 : 1; };
  handlers.on_idle = [&] {
    if (++idles == 2) b.producer.close();  // a due time of 1 ms: the loop comes back soon
    return 1ms;
  };
  CHECK(loop.run(handlers) == exit_code::kOk);
  CHECK(seen == std::vector<std::uint64_t>{1, 101, 2, 102, 3, 103});
  CHECK(idles == 2);
  CHECK(idle_passes == 3);  // two idle, then the one that finds both rings drained
  CHECK(passes == 3 + idle_passes);
  CHECK(h.heartbeats >= passes);
  CHECK(a.all_committed());
  CHECK(b.all_committed());
}

TEST_CASE("a signal ends the loop with exit code 75 between frames, even while busy or idle") {
  TestRing ring("signal");
  ring.good(1);
  ring.good(2);
  Harness h;
  RingInputs inputs = inputs_of({&ring});
  FrameLoop loop(h.process(), inputs, h.log, "PacketBatch");
  std::vector<std::uint64_t> seen;
  FrameHandlers handlers;
  handlers.on_frame = [&](std::span<const std::byte> frame, std::size_t) {
    seen.push_back(seq_of(frame));
    h.signal = true;
    return FrameUse::kCommit;
  };
  CHECK(loop.run(handlers) == exit_code::kTempFail);
  CHECK(seen == std::vector<std::uint64_t>{1});  // frame 2 is left for the successor
  CHECK(ring.header().tail.load() > 0);          // frame 1 was committed before

  // Idle: the signal comes while the loop waits for input (never closed here).
  h.signal = false;
  seen.clear();
  handlers.on_frame = [&](std::span<const std::byte> frame, std::size_t) {
    seen.push_back(seq_of(frame));
    return FrameUse::kCommit;
  };
  handlers.on_idle = [&] {
    h.signal = true;
    return 1ms;
  };
  CHECK(loop.run(handlers) == exit_code::kTempFail);
  CHECK(seen == std::vector<std::uint64_t>{2});
  CHECK(ring.all_committed());
}

TEST_CASE("stop() ends the loop with the stage's code and leaves its frame to be replayed") {
  TestRing ring("stop");
  ring.good(1);
  ring.good(2);
  ring.producer.close();
  Harness h;
  RingInputs inputs = inputs_of({&ring});
  FrameLoop loop(h.process(), inputs, h.log, "PacketBatch");
  std::vector<std::uint64_t> seen;
  FrameHandlers handlers;
  handlers.on_frame = [&](std::span<const std::byte> frame, std::size_t) {
    seen.push_back(seq_of(frame));
    return seen.size() == 2 ? loop.stop(exit_code::kConfig) : FrameUse::kCommit;
  };
  CHECK(loop.run(handlers) == exit_code::kConfig);
  CHECK(!ring.all_committed());
  // The same loop (or a successor) meets frame 2 again: it was neither passed nor freed.
  CHECK(loop.run(handlers) == exit_code::kOk);
  CHECK(seen == std::vector<std::uint64_t>{1, 2, 2});
  CHECK(ring.all_committed());
}

TEST_CASE("an exception that is not a bad frame leaves the loop and commits nothing") {
  TestRing ring("throw");
  ring.good(1);
  Harness h;
  RingInputs inputs = inputs_of({&ring});
  FrameLoop loop(h.process(), inputs, h.log, "PacketBatch");
  FrameHandlers handlers;
  handlers.on_frame = [&](std::span<const std::byte>, std::size_t) -> FrameUse {
    throw std::runtime_error("output ring too small");
  };
  CHECK_THROWS_WITH(loop.run(handlers), "output ring too small");
  CHECK(h.bad_frames == 0);
  CHECK(ring.header().tail.load() == 0);
}

}  // namespace
}  // namespace flowseal
