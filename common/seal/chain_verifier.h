// ChainVerifier: checks a stream of SealedBatch messages, in stored order, as `flowseal
// verify` does: each batch's Merkle root against its records, its signature against a known
// key, its seq and prevRoot against the batch before it, and one stream id throughout.
//
// It knows nothing of files: the caller (segment reading) feeds batches and says where each
// came from, so a problem is reported as "segment S, batch seq N, record i: what". The
// record is named from the batch's unsigned leaf hints (leaf_hints.h) when it has them: they
// only ever locate a mismatch the signed root proves, they never make a batch pass.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "flowseal.capnp.h"
#include "seal/gap_marker.h"
#include "seal/keys.h"

namespace flowseal::seal {

// Leaf data of a record: the canonical Cap'n Proto encoding of the FlowEvent (its bytes).
std::vector<std::uint8_t> canonical_bytes(schema::FlowEvent::Reader record);
// What the signature covers: the canonical encoding of the BatchHeader.
std::vector<std::uint8_t> canonical_bytes(schema::BatchHeader::Reader header);

struct BatchProblem {
  std::uint64_t seq = 0;                // the batch's seq as stored (or expected)
  std::optional<std::uint32_t> record;  // index of the offending record, if one
  std::string what;                     // "Merkle root does not match the records", ...
};

// What a batch's records themselves say about it: how many there are, the earliest first
// time and the latest last time (0 and 0 for an empty batch). Anything unsigned that claims
// these (a segment's frame header or index, which readers skip frames by) is checked
// against this.
struct BatchExtent {
  std::uint32_t records = 0;
  std::int64_t first_ts_ns = 0;
  std::int64_t last_ts_ns = 0;
};

// Batches the chain passed over because a signed gap marker says the probe gave them up.
struct ChainGap {
  std::uint64_t first_seq = 0;
  std::uint64_t last_seq = 0;
  std::uint64_t records = 0;  // what the markers covering them say
};

struct ChainSummary {
  std::uint64_t batches = 0;
  std::uint64_t records = 0;
  std::int64_t first_ts_ns = 0;
  std::int64_t last_ts_ns = 0;
  std::set<std::string> key_ids;  // hex
  // The chain may start at any seq (segments older than retention are gone): the first and
  // last seq seen say which part of the stream was verified.
  std::uint64_t first_seq = 0;
  std::uint64_t last_seq = 0;
  std::vector<ChainGap> gaps;  // passed over with a signed gap marker, in stream order
};

class ChainVerifier {
 public:
  // `keys`: the public keys a batch may be signed with, by key id. With a pinned key (from
  // `--pubkey`) the map holds only that key, so a batch signed with any other key fails.
  explicit ChainVerifier(std::map<Digest, PublicKey> keys);

  // Signed gap markers (already checked against the keys: seal/gap_marker.h): a jump over
  // batches they cover, all of them, is no problem but a gap in the summary, and the batch
  // after it is not checked against a prevRoot the verifier never saw.
  void allow_gaps(std::vector<GapMarker> markers) { markers_ = std::move(markers); }
  const std::vector<GapMarker>& gap_markers() const { return markers_; }

  // Checks the next batch. nullopt if it is good; otherwise what is wrong with it. After a
  // problem the verifier resynchronises on this batch (so one bad batch is reported once).
  std::optional<BatchProblem> check(schema::SealedBatch::Reader batch);
  // The records' extent of the batch last given to check(); nullopt when its records could
  // not all be read (the problem check() returned says why).
  const std::optional<BatchExtent>& last_extent() const { return last_extent_; }
  // Called after the last batch.
  const ChainSummary& summary() const { return summary_; }

 private:
  using StreamId = std::array<std::uint8_t, 16>;
  // Adds to `content` why the header is not authentic; true if it is.
  bool check_signature(schema::SealedBatch::Reader batch, const Digest& key_id,
                       std::vector<std::string>& content) const;
  // Where the batch sits in the chain: what is wrong with its position, if anything;
  // `advance` false when the batch must not move the stream's position.
  std::optional<std::string> check_position(const StreamId& stream_id, std::uint64_t seq,
                                            const Digest& prev_root, const Digest& merkle_root,
                                            BatchProblem& problem,
                                            std::vector<std::string>& content, bool& advance);
  void account(schema::BatchHeader::Reader header, std::size_t records, const Digest& key_id);

  // Whether markers_ cover every batch first..last of `stream`; the records they claim.
  std::optional<std::uint64_t> covered(const StreamId& stream, std::uint64_t first,
                                       std::uint64_t last) const;

  std::map<Digest, PublicKey> keys_;
  std::vector<GapMarker> markers_;
  ChainSummary summary_;
  std::optional<BatchExtent> last_extent_;
  bool started_ = false;
  StreamId stream_id_{};
  std::uint64_t next_seq_ = 0;
  Digest prev_root_{};
  // False after a batch whose header is not authentic (bad signature, unknown key): its
  // merkleRoot proves nothing, so the next batch's prevRoot is taken as it is rather than
  // reported a second time.
  bool prev_root_trusted_ = true;
};

}  // namespace flowseal::seal
