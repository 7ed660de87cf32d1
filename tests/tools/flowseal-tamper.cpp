// flowseal-tamper: damages a closed segment in ways only the seal (or verify's check of the
// unsigned frame headers against it) can catch: frames, CRCs and the index stay valid. Used by
// tests/store only; not installed.
//
//   flowseal-tamper SEGMENT [--edit-record SEQ:INDEX] [--drop-record SEQ:INDEX]
//       [--drop-batch SEQ] [--swap SEQ:SEQ] [--reseal SEQ --key PRIVATE_KEY] [--rehint SEQ]
//       [--frame-times SEQ:FIRST_NS:LAST_NS] [--split N]
#include <algorithm>
#include <cstring>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <capnp/message.h>
#include <capnp/serialize.h>
#include <fmt/format.h>

#include "capnp_frame.h"
#include "flowseal.capnp.h"
#include "seal/chain_verifier.h"
#include "seal/keys.h"
#include "seal/leaf_hints.h"
#include "seal/merkle.h"
#include "segment/format.h"
#include "segment/reader.h"
#include "segment/writer.h"

namespace {

namespace fs = std::filesystem;
using namespace flowseal;

struct Options {
  std::string segment;
  std::vector<std::string> edit_records;  // SEQ:INDEX: origPkts + 1
  std::vector<std::string> drop_records;  // SEQ:INDEX
  std::vector<std::uint64_t> drop_batches;
  std::string swap;                      // SEQ:SEQ
  std::vector<std::uint64_t> reseal;     // re-signed with `key`
  std::vector<std::uint64_t> rehint;     // leaf hints recomputed from the records as they are
  std::vector<std::string> frame_times;  // SEQ:FIRST_NS:LAST_NS written into the frame header
  std::string key;
  std::size_t split = 0;  // > 0: write segments of this many batches
};

struct Frame {
  segment::BatchMeta meta;
  std::vector<capnp::word> words;
};

std::vector<std::string> split_colons(const std::string& text, std::size_t parts) {
  std::vector<std::string> out;
  std::size_t start = 0;
  for (std::size_t i = 0; i + 1 < parts; ++i) {
    const auto colon = text.find(':', start);
    if (colon == std::string::npos) throw std::invalid_argument("malformed argument " + text);
    out.push_back(text.substr(start, colon - start));
    start = colon + 1;
  }
  out.push_back(text.substr(start));
  return out;
}

class Segment {
 public:
  explicit Segment(const fs::path& file) : file_(file) {
    segment::SegmentReader reader(file);
    while (reader.ok() && reader.next() == segment::SegmentReader::Next::kFrame) {
      const auto bytes = reader.message();
      Frame frame{reader.frame().batch, std::vector<capnp::word>(bytes.size() / 8)};
      std::memcpy(frame.words.data(), bytes.data(), bytes.size());
      frames_.push_back(std::move(frame));
    }
    if (reader.error()) throw std::runtime_error(reader.error()->message());
    header_ = reader.header();
  }

  Frame& find(std::uint64_t seq) {
    for (Frame& f : frames_) {
      if (f.meta.seq == seq) return f;
    }
    throw std::invalid_argument(fmt::format("{} holds no batch seq {}", file_.string(), seq));
  }

  // Rebuilds a frame's message through `change`, which edits a copy of the batch.
  template <typename Change>
  void rebuild(std::uint64_t seq, const Change& change) {
    Frame& frame = find(seq);
    capnp::FlatArrayMessageReader in(kj::arrayPtr(frame.words.data(), frame.words.size()),
                                     frame_reader_options());
    capnp::MallocMessageBuilder out;
    out.setRoot(in.getRoot<schema::SealedBatch>());
    change(out.getRoot<schema::SealedBatch>());
    const kj::Array<capnp::word> flat = capnp::messageToFlatArray(out);
    frame.words.assign(flat.begin(), flat.end());
    frame.meta.record_count = out.getRoot<schema::SealedBatch>().getRecords().size();
  }

  void drop(std::uint64_t seq) {
    const Frame& gone = find(seq);
    frames_.erase(frames_.begin() + (&gone - frames_.data()));
  }
  void swap(std::uint64_t a, std::uint64_t b) { std::swap(find(a), find(b)); }

  // Writes the frames back: under the old name, or (split > 0) as segments of `split` batches
  // each, named by their first seq as writerd would.
  void write(std::size_t split) {
    if (frames_.empty()) throw std::invalid_argument("nothing would be left of " + file_.string());
    const fs::path scratch_dir = file_.parent_path() / ".rewrite";
    fs::remove_all(scratch_dir);
    fs::create_directories(scratch_dir);
    const std::size_t per_segment = split > 0 ? split : frames_.size();
    std::vector<std::uint64_t> first_seqs;
    for (std::size_t begin = 0; begin < frames_.size(); begin += per_segment) {
      const std::size_t end = std::min(frames_.size(), begin + per_segment);
      segment::IoStatus status;
      auto writer = segment::SegmentWriter::create(scratch_dir, frames_[begin].meta.seq, header_,
                                                   segment::WriterOptions{}, status);
      for (std::size_t i = begin; writer && status.ok() && i < end; ++i) {
        status = writer->append(frames_[i].meta,
                                {reinterpret_cast<const std::byte*>(frames_[i].words.data()),
                                 frames_[i].words.size() * sizeof(capnp::word)});
      }
      if (writer && status.ok()) status = writer->close();
      if (!writer || !status.ok()) throw std::runtime_error(status.what);
      first_seqs.push_back(frames_[begin].meta.seq);
    }
    if (split > 0) {
      fs::remove(file_);
      for (const std::uint64_t seq : first_seqs) {
        fs::rename(scratch_dir / segment::segment_name(seq),
                   file_.parent_path() / segment::segment_name(seq));
      }
    } else {
      fs::rename(scratch_dir / segment::segment_name(first_seqs.front()), file_);
    }
    fs::remove_all(scratch_dir);
    fmt::print("rewrote {}: {} batches\n", file_.string(), frames_.size());
  }

 private:
  fs::path file_;
  segment::FileHeader header_;
  std::vector<Frame> frames_;
};

void edit_records(Segment& segment, const Options& options) {
  for (const auto& text : options.edit_records) {
    const auto parts = split_colons(text, 2);
    const auto index = static_cast<std::uint32_t>(std::stoul(parts[1]));
    segment.rebuild(std::stoull(parts[0]), [&](schema::SealedBatch::Builder batch) {
      auto record = batch.getRecords()[index];
      record.getOrig().setPkts(record.getOrig().getPkts() + 1);
    });
  }
  for (const auto& text : options.drop_records) {
    const auto parts = split_colons(text, 2);
    const auto index = static_cast<std::uint32_t>(std::stoul(parts[1]));
    segment.rebuild(std::stoull(parts[0]), [&](schema::SealedBatch::Builder batch) {
      capnp::MallocMessageBuilder scratch;
      auto kept = scratch.initRoot<schema::FlowEventBatch>();
      const auto records = batch.asReader().getRecords();
      auto list = kept.initEvents(records.size() - 1);
      for (std::uint32_t i = 0, j = 0; i < records.size(); ++i) {
        if (i != index) list.setWithCaveats(j++, records[i]);
      }
      batch.setRecords(kept.asReader().getEvents());
    });
  }
  // What a tamperer who knows the format does after editing records: rewrite the unsigned
  // leaf hints to match them (verify must still fail, and say it cannot locate the record).
  for (const std::uint64_t seq : options.rehint) {
    segment.rebuild(seq, [&](schema::SealedBatch::Builder batch) {
      std::vector<seal::Digest> leaves;
      for (const auto r : batch.asReader().getRecords()) {
        leaves.push_back(seal::leaf_hash(seal::canonical_bytes(r)));
      }
      const auto old_hints = batch.asReader().getLeafHints();
      const unsigned width = old_hints.size() > 0 ? old_hints[0] : seal::kDefaultLeafHintBytes;
      const auto hints = seal::make_leaf_hints(leaves, width);
      batch.setLeafHints({hints.data(), hints.size()});
    });
  }
}

void edit_batches(Segment& segment, const Options& options) {
  if (!options.reseal.empty()) {
    const seal::PrivateKey key = seal::PrivateKey::load(options.key);
    for (const std::uint64_t seq : options.reseal) {
      segment.rebuild(seq, [&](schema::SealedBatch::Builder batch) {
        auto header = batch.getHeader();
        header.setKeyId({key.key_id().data(), key.key_id().size()});
        header.setAlgorithm(static_cast<schema::SignatureAlgorithm>(key.algorithm()));
        const auto signature = key.sign(seal::canonical_bytes(header.asReader()));
        batch.setSignature({signature.data(), signature.size()});
      });
    }
  }
  // The frame header's times are not signed: a tamperer may set them to anything (the CRCs
  // and the index are rewritten to match).
  for (const auto& text : options.frame_times) {
    const auto parts = split_colons(text, 3);
    segment::BatchMeta& meta = segment.find(std::stoull(parts[0])).meta;
    meta.first_ts_ns = std::stoll(parts[1]);
    meta.last_ts_ns = std::stoll(parts[2]);
  }
  for (const std::uint64_t seq : options.drop_batches) segment.drop(seq);
  if (!options.swap.empty()) {
    const auto parts = split_colons(options.swap, 2);
    segment.swap(std::stoull(parts[0]), std::stoull(parts[1]));
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"flowseal-tamper: damage a closed segment so that only the seal can tell"};
  Options options;
  app.add_option("segment", options.segment)->required();
  app.add_option("--edit-record", options.edit_records);
  app.add_option("--drop-record", options.drop_records);
  app.add_option("--drop-batch", options.drop_batches);
  app.add_option("--swap", options.swap);
  app.add_option("--reseal", options.reseal);
  app.add_option("--rehint", options.rehint);
  app.add_option("--frame-times", options.frame_times);
  app.add_option("--key", options.key);
  app.add_option("--split", options.split);
  CLI11_PARSE(app, argc, argv);
  if (segment::is_part(options.segment)) {
    fmt::print(stderr, "flowseal-tamper: {}: only closed segments are rewritten\n",
               options.segment);
    return 64;
  }
  try {
    Segment segment(options.segment);
    edit_records(segment, options);
    edit_batches(segment, options);
    segment.write(options.split);
    return 0;
  } catch (const std::exception& e) {
    fmt::print(stderr, "flowseal-tamper: {}\n", e.what());
    return 1;
  }
}
