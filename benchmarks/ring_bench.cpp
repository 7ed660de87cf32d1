// End-to-end throughput of the shared-memory frame ring between two processes.
//
// The parent process is the producer and runs the timed loop; a forked child is the consumer,
// spinning on next()/advance() and committing per batch. The consumer reads every payload
// (first and last byte) and every timed iteration ends only when the consumer has committed
// the last frame, so the figures are frames delivered end to end, not frames written.
//
// Arguments: payload bytes per frame, frames per publish (1 = publish every frame).
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <new>
#include <stdexcept>
#include <thread>
#include <vector>

#include <benchmark/benchmark.h>
#include <fmt/format.h>

#include "ring.h"
#include "shm.h"

namespace flowseal {
namespace {

// Big enough to absorb scheduling hiccups, small enough to stay in the L2 caches.
constexpr std::size_t kRingCapacity = 256 * 1024;
// Frames per timed iteration: the drain at its end is a small share of it.
constexpr std::int64_t kFramesPerIteration = 1 << 18;
// Frames the consumer reads before it commits (sooner if the ring runs empty).
constexpr std::uint64_t kConsumerBatch = 64;

// Spins while the other side works; on a loaded machine it yields now and then, so that a
// spinner does not sit on the core its peer needs (without load the yield returns at once).
class Spin {
 public:
  void operator()() {
#if defined(__x86_64__)
    __builtin_ia32_pause();
#endif
    if (++spins_ % 256 == 0) std::this_thread::yield();
  }

 private:
  std::uint32_t spins_ = 0;
};

// What the consumer child reports back, beside the ring.
struct ConsumerReport {
  std::atomic<std::uint64_t> frames;
  std::atomic<std::uint64_t> touched;  // sum of first and last bytes: the payload was read
  std::atomic<std::uint32_t> done;
};

int run_consumer(std::span<std::byte> ring_memory, ConsumerReport& report) {
  RingConsumer consumer(ring_memory);
  std::uint64_t frames = 0;
  std::uint64_t touched = 0;
  auto idle_since = std::chrono::steady_clock::now();
  std::uint32_t idle_spins = 0;
  Spin spin;
  for (;;) {
    std::uint64_t in_batch = 0;
    while (in_batch < kConsumerBatch) {
      auto frame = consumer.next();
      if (!frame) break;
      touched +=
          static_cast<std::uint8_t>(frame->front()) + static_cast<std::uint8_t>(frame->back());
      consumer.advance();
      ++in_batch;
    }
    if (in_batch > 0) {
      consumer.commit();
      frames += in_batch;
      idle_spins = 0;
      continue;
    }
    consumer.commit();
    if (consumer.drained()) break;
    spin();
    // A parent that died never closes the ring: give up after a long silence.
    if (++idle_spins % 4096 == 0) {
      if (idle_spins == 4096) idle_since = std::chrono::steady_clock::now();
      if (std::chrono::steady_clock::now() - idle_since > std::chrono::seconds(30)) return 1;
    }
  }
  report.frames.store(frames);
  report.touched.store(touched);
  report.done.store(1);
  return 0;
}

void BM_RingTwoProcesses(benchmark::State& state) {
  const auto payload = static_cast<std::size_t>(state.range(0));
  const auto batch = static_cast<std::int64_t>(state.range(1));
  const std::string name = fmt::format("/flowseal.bench.{}", ::getpid());
  ShmSegment::remove(name);
  ShmSegment::remove(name + ".report");
  ShmSegment ring = ShmSegment::create(name, ring_bytes(kRingCapacity));
  ring_format(ring.bytes(), kRingCapacity);
  ShmSegment report_segment = ShmSegment::create(name + ".report", sizeof(ConsumerReport));
  auto* report = new (report_segment.bytes().data()) ConsumerReport{};

  const pid_t child = ::fork();
  if (child == 0) ::_exit(run_consumer(ring.bytes(), *report));
  if (child < 0) {
    state.SkipWithError("fork failed");
    return;
  }

  RingProducer producer(ring.bytes());
  std::vector<std::byte> source(payload);
  for (std::size_t i = 0; i < payload; ++i) source[i] = static_cast<std::byte>(i * 7 + 1);
  std::uint64_t produced = 0;
  Spin spin;

  for (auto _ : state) {
    for (std::int64_t i = 0; i < kFramesPerIteration; ++i) {
      std::span<std::byte> slot = producer.try_reserve(payload);
      while (slot.data() == nullptr) {
        // Full: let the consumer see what is pending, and spin rather than sleep.
        producer.publish();
        spin();
        slot = producer.try_reserve(payload);
      }
      std::memcpy(slot.data(), source.data(), payload);
      producer.commit(payload);
      if ((i + 1) % batch == 0) producer.publish();
    }
    producer.publish();
    // End to end: the iteration is over when the consumer has freed the last frame.
    while (producer.used_bytes() != 0) spin();
    produced += kFramesPerIteration;
  }

  producer.close();
  int status = 0;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (::waitpid(child, &status, WNOHANG) != child) {
    if (std::chrono::steady_clock::now() > deadline) {
      ::kill(child, SIGKILL);
      ::waitpid(child, &status, 0);
      state.SkipWithError("the consumer did not finish within 30 s");
      return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || report->frames.load() != produced) {
    state.SkipWithError(
        fmt::format("the consumer read {} of {} frames", report->frames.load(), produced).c_str());
    return;
  }
  const std::uint64_t per_frame =
      static_cast<std::uint8_t>(source.front()) + static_cast<std::uint8_t>(source.back());
  if (report->touched.load() != per_frame * produced) {
    state.SkipWithError("the consumer read payload bytes the producer did not write");
    return;
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(produced));
  state.SetBytesProcessed(static_cast<std::int64_t>(produced * payload));
}

BENCHMARK(BM_RingTwoProcesses)
    ->ArgNames({"bytes", "batch"})
    ->ArgsProduct({{64, 256, 1500}, {1, 32, 64}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace
}  // namespace flowseal

BENCHMARK_MAIN();
