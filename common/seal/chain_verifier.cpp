#include "seal/chain_verifier.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <utility>

#include <capnp/message.h>
#include <fmt/format.h>
#include <kj/exception.h>

#include "seal/canonical_record.h"
#include "seal/leaf_hints.h"
#include "seal/merkle.h"
#include "record_list.h"

namespace flowseal::seal {
namespace {

template <typename Reader>
std::vector<std::uint8_t> canonical_of(Reader reader) {
  const kj::Array<capnp::word> words = capnp::canonicalize(reader);
  const auto bytes = words.asBytes();
  return {bytes.begin(), bytes.end()};
}

std::span<const std::uint8_t> as_span(capnp::Data::Reader data) {
  return {data.begin(), data.size()};
}

template <std::size_t N>
std::array<std::uint8_t, N> to_array(capnp::Data::Reader data) {
  std::array<std::uint8_t, N> out{};
  std::memcpy(out.data(), data.begin(), N);
  return out;
}

std::string join(const std::vector<std::string>& parts) {
  std::string out;
  for (const auto& part : parts) {
    if (!out.empty()) out += "; ";
    out += part;
  }
  return out;
}

}  // namespace

std::vector<std::uint8_t> canonical_bytes(schema::FlowEvent::Reader record) {
  return canonical_of(record);
}

std::vector<std::uint8_t> canonical_bytes(schema::BatchHeader::Reader header) {
  return canonical_of(header);
}

ChainVerifier::ChainVerifier(std::map<Digest, PublicKey> keys) : keys_(std::move(keys)) {}

namespace {

// Field sizes first: nothing else in a header can be judged without them.
std::vector<std::string> shape_problems(schema::BatchHeader::Reader header) {
  std::vector<std::string> shape;
  const auto field = [&](const char* name, capnp::Data::Reader data, std::size_t expected) {
    if (data.size() != expected) {
      shape.push_back(
          fmt::format("header field {} has {} bytes, expected {}", name, data.size(), expected));
    }
  };
  field("streamId", header.getStreamId(), 16);
  field("prevRoot", header.getPrevRoot(), 32);
  field("merkleRoot", header.getMerkleRoot(), 32);
  field("keyId", header.getKeyId(), 32);
  return shape;
}

// The records' leaf hashes and their extent, with the records that hold the earliest first
// and latest last time. `leaves` stops short at a record that cannot be read.
struct RecordScan {
  std::vector<Digest> leaves;
  BatchExtent extent;
  std::uint32_t first_index = 0;
  std::uint32_t last_index = 0;
  std::optional<std::uint32_t> unreadable;
  std::string unreadable_what;
  bool complete(std::size_t count) const { return leaves.size() == count; }
};

RecordScan scan_records(capnp::List<schema::FlowEvent>::Reader records, MerkleHasher& hasher) {
  RecordScan scan;
  scan.leaves.reserve(records.size());
  std::vector<capnp::word> scratch;  // one record's canonical bytes, reused
  std::int64_t first_ts = std::numeric_limits<std::int64_t>::max();
  std::int64_t last_ts = std::numeric_limits<std::int64_t>::min();
  for (std::uint32_t i = 0; i < records.size(); ++i) {
    const auto record = records[i];
    try {
      scratch.clear();
      if (!append_canonical(record, scratch)) {
        const kj::Array<capnp::word> words = capnp::canonicalize(record);
        scratch.resize(words.size());
        std::memcpy(scratch.data(), words.begin(), words.asBytes().size());
      }
      scan.leaves.push_back(hasher.leaf({reinterpret_cast<const std::uint8_t*>(scratch.data()),
                                         scratch.size() * sizeof(capnp::word)}));
    } catch (const kj::Exception& e) {
      scan.unreadable = i;
      scan.unreadable_what =
          fmt::format("record {} cannot be read: {}", i, e.getDescription().cStr());
      break;
    }
    if (record.getFirstTsNs() < first_ts) {
      first_ts = record.getFirstTsNs();
      scan.first_index = i;
    }
    if (record.getLastTsNs() > last_ts) {
      last_ts = record.getLastTsNs();
      scan.last_index = i;
    }
  }
  if (records.size() == 0) first_ts = last_ts = 0;
  scan.extent = BatchExtent{records.size(), first_ts, last_ts};
  return scan;
}

// The records against the header: count, Merkle root, time range. Adds what is wrong to
// `content` and names the offending record in `problem` where it can.
void check_records(schema::SealedBatch::Reader batch, const RecordScan& scan,
                   const Digest& merkle_root, MerkleHasher& hasher, BatchProblem& problem,
                   std::vector<std::string>& content) {
  const auto header = batch.getHeader();
  const std::size_t count = batch.getRecords().size();
  if (header.getRecordCount() != count) {
    content.push_back(fmt::format("recordCount is {} but the batch holds {} records",
                                  header.getRecordCount(), count));
  }
  if (!scan.complete(count)) return;
  if (hasher.root(scan.leaves) != merkle_root) {
    // The root proves the damage; the unsigned leaf hints, if any, say where it is.
    const auto hints = batch.getLeafHints();
    const DamageLocation where =
        locate_damage({hints.begin(), hints.size()}, header.getRecordCount(), scan.leaves);
    if (where.located()) problem.record = where.first;
    content.push_back("Merkle root does not match the records: " + where.describe() +
                      (where.located() ? " (located by the batch's unsigned leaf hints)" : ""));
  }
  // A record outside the header's time range is the one that changed (if the header is
  // authentic): it can be named, where a Merkle mismatch alone cannot say which.
  if (header.getFirstTsNs() != scan.extent.first_ts_ns) {
    if (scan.extent.first_ts_ns < header.getFirstTsNs() && !problem.record) {
      problem.record = scan.first_index;
    }
    content.push_back(fmt::format("firstTsNs is {} but the earliest record starts at {}",
                                  header.getFirstTsNs(), scan.extent.first_ts_ns));
  }
  if (header.getLastTsNs() != scan.extent.last_ts_ns) {
    if (scan.extent.last_ts_ns > header.getLastTsNs() && !problem.record) {
      problem.record = scan.last_index;
    }
    content.push_back(fmt::format("lastTsNs is {} but the latest record ends at {}",
                                  header.getLastTsNs(), scan.extent.last_ts_ns));
  }
}

}  // namespace

bool ChainVerifier::check_signature(schema::SealedBatch::Reader batch, const Digest& key_id,
                                    std::vector<std::string>& content) const {
  const auto header = batch.getHeader();
  const auto key = keys_.find(key_id);
  if (key == keys_.end()) {
    content.push_back(
        fmt::format("signed with key {}, which is not a trusted key", to_hex(key_id)));
    return false;
  }
  // The schema's enum and Algorithm share their values (batch_sealer.cpp asserts it).
  const auto algorithm = static_cast<Algorithm>(header.getAlgorithm());
  if (algorithm != key->second.algorithm()) {
    content.push_back(fmt::format("header names algorithm {} but key {} is {}",
                                  static_cast<unsigned>(header.getAlgorithm()), to_hex(key_id),
                                  to_string(key->second.algorithm())));
    return false;
  }
  if (!key->second.verify(canonical_bytes(header), as_span(batch.getSignature()))) {
    content.push_back(fmt::format("signature does not verify with key {}", to_hex(key_id)));
    return false;
  }
  return true;
}

std::optional<std::uint64_t> ChainVerifier::covered(const StreamId& stream, std::uint64_t first,
                                                    std::uint64_t last) const {
  std::uint64_t records = 0;
  std::uint64_t next = first;  // the first batch not yet covered
  // Markers may overlap and come in any order; each pass takes one that covers `next`.
  for (std::size_t pass = 0; pass <= markers_.size() && next <= last; ++pass) {
    const GapMarker* best = nullptr;
    for (const GapMarker& marker : markers_) {
      if (marker.claim.stream_id != stream || marker.claim.first_seq > next ||
          marker.claim.last_seq < next) {
        continue;
      }
      if (best == nullptr || marker.claim.last_seq > best->claim.last_seq) best = &marker;
    }
    if (best == nullptr) return std::nullopt;
    records += best->claim.records;
    if (best->claim.last_seq == std::numeric_limits<std::uint64_t>::max()) break;
    next = best->claim.last_seq + 1;
  }
  if (next <= last) return std::nullopt;
  return records;
}

std::optional<std::string> ChainVerifier::check_position(const StreamId& stream_id,
                                                         std::uint64_t seq, const Digest& prev_root,
                                                         const Digest& merkle_root,
                                                         BatchProblem& problem,
                                                         std::vector<std::string>& content,
                                                         bool& advance) {
  advance = true;
  if (!started_) {
    started_ = true;
    stream_id_ = stream_id;
    summary_.first_seq = seq;
    return std::nullopt;
  }
  if (stream_id != stream_id_) {
    advance = false;  // a foreign batch does not move this stream's position
    return fmt::format("stream id {} differs from the stream's {}", to_hex(stream_id),
                       to_hex(stream_id_));
  }
  if (seq < next_seq_) {
    advance = false;  // a late or repeated batch: the stream goes on after the newest one
    return seq + 1 == next_seq_ && merkle_root == prev_root_
               ? fmt::format("batch seq {} repeated", seq)
               : fmt::format("batch seq {} out of order (expected {})", seq, next_seq_);
  }
  if (seq > next_seq_) {
    if (const auto records = covered(stream_id, next_seq_, seq - 1)) {
      summary_.gaps.push_back({next_seq_, seq - 1, *records});
      return std::nullopt;  // its prevRoot links to a batch given up: nothing to check it by
    }
    problem.seq = next_seq_;  // the batch that is gone is the one to name
    if (!content.empty()) content.front() = fmt::format("batch seq {}: {}", seq, content.front());
    return seq - next_seq_ == 1 ? fmt::format("batch seq {} missing (expected {}, found {})",
                                              next_seq_, next_seq_, seq)
                                : fmt::format("batches seq {}..{} missing (expected {}, found {})",
                                              next_seq_, seq - 1, next_seq_, seq);
  }
  if (prev_root_trusted_ && prev_root != prev_root_) {
    return fmt::format("prevRoot {} does not match the Merkle root {} of batch seq {}",
                       to_hex(prev_root), to_hex(prev_root_), seq - 1);
  }
  return std::nullopt;
}

void ChainVerifier::account(schema::BatchHeader::Reader header, std::size_t records,
                            const Digest& key_id) {
  ++summary_.batches;
  if (records > 0) {
    if (summary_.records == 0) {
      summary_.first_ts_ns = header.getFirstTsNs();
      summary_.last_ts_ns = header.getLastTsNs();
    } else {
      summary_.first_ts_ns = std::min(summary_.first_ts_ns, header.getFirstTsNs());
      summary_.last_ts_ns = std::max(summary_.last_ts_ns, header.getLastTsNs());
    }
  }
  summary_.records += records;
  summary_.key_ids.insert(to_hex(key_id));
}

std::optional<BatchProblem> ChainVerifier::check(schema::SealedBatch::Reader batch) {
  BatchProblem problem;
  last_extent_.reset();
  // A stored batch is untrusted: a damaged pointer makes capnp throw while we traverse it.
  try {
    const auto header = batch.getHeader();
    problem.seq = header.getSeq();
    const std::uint64_t seq = header.getSeq();
    if (const auto shape = shape_problems(header); !shape.empty()) {
      ++summary_.batches;
      problem.what = join(shape);
      return problem;
    }
    const auto stream_id = to_array<16>(header.getStreamId());
    const auto prev_root = to_array<32>(header.getPrevRoot());
    const auto merkle_root = to_array<32>(header.getMerkleRoot());
    const auto key_id = to_array<32>(header.getKeyId());
    const auto records = sized_records(batch.getRecords(), "SealedBatch.records");

    // ---- content: the records against the header, the header against its signature.
    std::vector<std::string> content;
    MerkleHasher hasher;
    const RecordScan scan = scan_records(records, hasher);
    if (scan.unreadable) {
      problem.record = scan.unreadable;
      content.push_back(scan.unreadable_what);
    } else {
      last_extent_ = scan.extent;
    }
    check_records(batch, scan, merkle_root, hasher, problem, content);
    const bool authentic = check_signature(batch, key_id, content);

    // ---- chain position: stream id, seq and prevRoot against the batch before.
    bool advance = true;
    const auto chain =
        check_position(stream_id, seq, prev_root, merkle_root, problem, content, advance);
    account(header, records.size(), key_id);
    if (advance) {
      next_seq_ = seq + 1;
      prev_root_ = merkle_root;
      prev_root_trusted_ = authentic;
      summary_.last_seq = seq;
    }

    if (!chain && content.empty()) return std::nullopt;
    if (chain) content.insert(content.begin(), *chain);
    problem.what = join(content);
    return problem;
  } catch (const kj::Exception& e) {
    ++summary_.batches;
    problem.record.reset();
    problem.what = fmt::format("batch cannot be read: {}", e.getDescription().cStr());
    return problem;
  }
}

}  // namespace flowseal::seal
