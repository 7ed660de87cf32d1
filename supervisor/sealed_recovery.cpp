#include "sealed_recovery.h"

#include <algorithm>
#include <map>

#include <capnp/serialize.h>
#include <fmt/format.h>
#include <kj/exception.h>
#include <spdlog/spdlog.h>

#include "capnp_frame.h"
#include "layout.h"
#include "ring.h"
#include "record_list.h"
#include "seal/chain_verifier.h"

namespace flowseal::supervisor {
namespace {

template <typename Bytes, typename Array>
bool same(const Bytes& data, const Array& array) {
  return data.size() == array.size() && std::equal(data.begin(), data.end(), array.begin());
}

// Places the taken batches' frames in the empty ring, in order; how many fit (a smaller
// budget's ring may hold fewer than the dead run's did).
std::size_t place_frames(std::span<std::byte> ring,
                         const std::vector<std::vector<std::byte>>& frames,
                         const std::vector<SealedRecovery::Batch>& taken) {
  RingProducer producer(ring);
  std::size_t placed = 0;
  for (const auto& batch : taken) {
    const auto& frame = frames[batch.frame];
    const auto slot = producer.try_reserve(frame.size());
    if (slot.data() == nullptr) break;
    std::copy(frame.begin(), frame.end(), slot.begin());
    producer.commit(frame.size());
    ++placed;
  }
  producer.publish();
  return placed;
}

// The recovery of the sealed ring's frames: log lines and summary lines.
void recover_sealed(const LeftoverRing& sealed, std::span<std::byte> sealed_ring,
                    std::optional<ChainPosition>& position, const std::string& key_file,
                    std::vector<std::string>& summary) {
  auto say = [&](const std::string& line) {
    spdlog::warn("leftovers: {}", line);
    summary.push_back(line);
  };
  if (!position) {
    say(fmt::format(
        "{} sealed batch(es) not recovered: writer.dir holds no stream for them to continue (the "
        "dead run stored nothing here, or wrote elsewhere)",
        sealed.payloads.size()));
    return;
  }
  SealedRecovery recovery;
  try {
    const seal::PrivateKey secret = seal::PrivateKey::load(key_file);
    recovery =
        continue_chain(sealed.payloads, *position, seal::PublicKey::from_der(secret.public_der()));
  } catch (const std::runtime_error& e) {
    recovery.stopped = fmt::format("seal.key_file {}: {}", key_file, e.what());
  }
  const std::size_t placed = place_frames(sealed_ring, sealed.payloads, recovery.taken);
  if (placed < recovery.taken.size()) {
    recovery.stopped = fmt::format("only {} of {} recoverable batches fit this run's sealed ring",
                                   placed, recovery.taken.size());
    recovery.taken.resize(placed);
  }
  if (recovery.already_stored > 0) {
    spdlog::info("leftovers: {} sealed batch(es) in the dead instance's ring are stored already",
                 recovery.already_stored);
  }
  if (!recovery.taken.empty()) {
    std::uint64_t records = 0;
    for (const auto& batch : recovery.taken) records += batch.records;
    *position = recovery.taken.back().after;
    const std::string line = fmt::format(
        "recovered {} sealed batch(es), seq {}..{}, {} records, from the dead instance's "
        "signerd -> writerd ring: writerd stores them first, signerd goes on at seq {}",
        recovery.taken.size(), recovery.taken.front().seq, recovery.taken.back().seq, records,
        position->next_seq);
    spdlog::info("leftovers: {}", line);
    summary.push_back(line);
  }
  if (!recovery.stopped.empty()) say("sealed batches not recovered: " + recovery.stopped);
}

}  // namespace

SealedRecovery continue_chain(const std::vector<std::vector<std::byte>>& frames,
                              const ChainPosition& from, const seal::PublicKey& key) {
  SealedRecovery out;
  ChainPosition at = from;
  std::map<seal::Digest, seal::PublicKey> keys;
  keys.emplace(key.key_id(), seal::PublicKey::from_der(key.public_der()));
  seal::ChainVerifier verifier(std::move(keys));
  for (std::size_t i = 0; i < frames.size(); ++i) {
    std::string why;
    try {
      capnp::FlatArrayMessageReader message(as_words(frames[i]), frame_reader_options());
      const auto batch = message.getRoot<schema::SealedBatch>();
      const auto header = batch.getHeader();
      const std::uint64_t seq = header.getSeq();
      const std::size_t records = sized_records(batch.getRecords(), "SealedBatch.records").size();
      if (!same(header.getStreamId(), at.stream_id)) {
        why = fmt::format("frame {} (batch seq {}) is of another stream than the store's", i, seq);
      } else if (seq < at.next_seq && out.taken.empty()) {
        ++out.already_stored;  // the store has it; writerd had not committed the frame
        continue;
      } else if (seq != at.next_seq) {
        why = fmt::format("frame {} is batch seq {}, where seq {} comes next", i, seq, at.next_seq);
      } else if (!same(header.getPrevRoot(), at.prev_root)) {
        why = fmt::format("batch seq {} does not link to the batch before it (prevRoot)", seq);
      } else if (const auto problem = verifier.check(batch)) {
        why = fmt::format("batch seq {} does not verify: {}", seq, problem->what);
      } else {
        const auto root = header.getMerkleRoot();  // 32 bytes: the verifier checked it
        std::copy(root.begin(), root.end(), at.prev_root.begin());
        at.next_seq = seq + 1;
        out.taken.push_back({i, seq, records, at});
        continue;
      }
    } catch (const kj::Exception& e) {
      why =
          fmt::format("frame {} is not a readable sealed batch: {}", i, e.getDescription().cStr());
    }
    out.stopped = fmt::format("{}; it and the {} frame(s) after it are not recovered", why,
                              frames.size() - i - 1);
    break;
  }
  return out;
}

std::vector<std::string> take_over_leftovers(const std::vector<LeftoverRing>& rings,
                                             std::span<std::byte> sealed_ring,
                                             std::optional<ChainPosition>& position,
                                             const std::string& key_file) {
  std::vector<std::string> summary;
  const LeftoverRing* sealed = nullptr;
  std::string held;
  for (const auto& ring : rings) {
    if (ring.edge == kSealedEdge) sealed = &ring;
    if (ring.frames == 0 && ring.problem.empty()) continue;
    spdlog::warn("leftovers: the dead instance's ring {}", describe(ring));
    held += fmt::format("{}{} {} frame(s) ({} payload bytes)", held.empty() ? "" : ", ", ring.edge,
                        ring.frames, ring.payload);
  }
  if (held.empty()) return summary;
  summary.push_back(fmt::format(
      "the dead instance's rings held frames its stages had not processed: {} (the log says "
      "what each held)",
      held));
  if (sealed && !sealed->payloads.empty()) {
    recover_sealed(*sealed, sealed_ring, position, key_file, summary);
  }
  return summary;
}

}  // namespace flowseal::supervisor
