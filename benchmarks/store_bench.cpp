// The store, per record: writerd's SegmentWriter::append (zstd of one SealedBatch into one
// frame, CRC32C, write) and the SegmentReader that `flowseal cat` and `verify` use (read,
// check, decompress, open the SealedBatch in place and walk its records).
//
// Batches are real sealed batches (BatchSealer, Ed25519) of 1024 flowd-shaped records. Files
// go to /dev/shm when it exists, so the figures are CPU, not the disk: fsync policy
// `rotate` (one fsync per segment; a batch-policy fsync per append is a disk figure).
// items/s = records; bytes_per_record = stored frame bytes per record.
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <vector>

#include <benchmark/benchmark.h>
#include <capnp/message.h>
#include <capnp/serialize.h>

#include "batch_sealer.h"
#include "bench_records.h"
#include "flowseal.capnp.h"
#include "segment/reader.h"
#include "segment/writer.h"

namespace {

namespace fs = std::filesystem;
using namespace flowseal;

constexpr unsigned kRecords = 1024;

// One sealed batch in flat-array form, as writerd receives it from its ring.
struct SealedFixture {
  bench::Key key;
  kj::Array<capnp::word> flat;
  SealedFixture() {
    capnp::MallocMessageBuilder input;
    auto events = input.initRoot<schema::FlowEventBatch>().initEvents(kRecords);
    for (unsigned i = 0; i < kRecords; ++i) bench::fill(events[i], i);
    signerd::BatchSealer sealer(*key.key, {}, 0, {});
    for (auto e : events.asReader()) sealer.add(e);
    capnp::MallocMessageBuilder sealed;
    sealer.seal(sealed);
    flat = capnp::messageToFlatArray(sealed);
  }
  std::span<const std::byte> bytes() const {
    return {reinterpret_cast<const std::byte*>(flat.begin()), flat.size() * sizeof(capnp::word)};
  }
};

fs::path scratch_dir() {
  const fs::path base = fs::exists("/dev/shm") ? fs::path("/dev/shm") : fs::temp_directory_path();
  std::string pattern = (base / "store-bench.XXXXXX").string();
  if (::mkdtemp(pattern.data()) == nullptr) std::abort();
  return pattern;
}

segment::WriterOptions writer_options() {
  segment::WriterOptions options;
  options.fsync = segment::FsyncPolicy::kRotate;
  return options;
}

void BM_StoreAppend(benchmark::State& state) {
  SealedFixture fixture;
  const fs::path dir = scratch_dir();
  segment::IoStatus status;
  std::uint64_t seq = 0;
  std::optional<segment::SegmentWriter> writer;
  std::uint64_t stored = 0;
  auto open = [&] {
    writer = segment::SegmentWriter::create(dir, seq, {}, writer_options(), status);
    if (!writer) state.SkipWithError(status.what.c_str());
  };
  open();
  for (auto _ : state) {
    if (!writer) break;
    const std::uint64_t before = writer->bytes();
    const auto s = writer->append({seq, 0, 0, kRecords}, fixture.bytes());
    if (!s.ok()) {
      state.SkipWithError(s.what.c_str());
      break;
    }
    stored += writer->bytes() - before;
    ++seq;
    if (writer->batches() == 256) {  // rotate, as writerd does by size, and clear the file
      state.PauseTiming();
      writer->close();
      writer.reset();
      fs::remove_all(dir);
      fs::create_directories(dir);
      open();
      state.ResumeTiming();
    }
  }
  if (writer) writer->close();
  state.SetItemsProcessed(state.iterations() * kRecords);
  state.counters["bytes_per_record"] =
      static_cast<double>(stored) / static_cast<double>(state.iterations() * kRecords);
  state.counters["uncompressed_bytes_per_record"] =
      static_cast<double>(fixture.bytes().size()) / kRecords;
  std::error_code ec;
  fs::remove_all(dir, ec);
}
BENCHMARK(BM_StoreAppend)->Unit(benchmark::kMicrosecond);

void BM_SegmentRead(benchmark::State& state) {
  SealedFixture fixture;
  const fs::path dir = scratch_dir();
  segment::IoStatus status;
  constexpr unsigned kBatches = 64;
  fs::path file;
  {
    auto writer = segment::SegmentWriter::create(dir, 0, {}, writer_options(), status);
    if (!writer) {
      state.SkipWithError(status.what.c_str());
      return;
    }
    for (unsigned b = 0; b < kBatches; ++b) writer->append({b, 0, 0, kRecords}, fixture.bytes());
    writer->close();
  }
  for (const auto& entry : fs::directory_iterator(dir)) file = entry.path();
  std::uint64_t records = 0;
  for (auto _ : state) {
    segment::SegmentReader reader(file);
    while (reader.next() == segment::SegmentReader::Next::kFrame) {
      const auto message = reader.message();
      const kj::ArrayPtr<const capnp::word> words(
          reinterpret_cast<const capnp::word*>(message.data()),
          message.size() / sizeof(capnp::word));
      capnp::FlatArrayMessageReader batch(words);
      for (auto r : batch.getRoot<schema::SealedBatch>().getRecords())
        records += r.getOrig().getPkts() != 0;
    }
    if (!reader.ok()) {
      state.SkipWithError(reader.error()->message().c_str());
      break;
    }
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(records));
  std::error_code ec;
  fs::remove_all(dir, ec);
}
BENCHMARK(BM_SegmentRead)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
