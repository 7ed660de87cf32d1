#include "chain_resume.h"

#include <algorithm>
#include <cstdint>
#include <stdexcept>

#include <capnp/serialize.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "capnp_frame.h"
#include "flowseal.capnp.h"

namespace flowseal::signerd {

ChainPosition resume_chain(const StoredChainPosition& stored, const RingProducer& producer) {
  if (producer.published() == stored.ring_head) return stored.position;
  const auto frame = producer.last_published_since(stored.ring_head);
  if (!frame) {
    throw std::runtime_error(fmt::format(
        "signerd: the sealed ring's head {} is past the chain position's {}, and what lies "
        "between is not a frame this ring holds (damaged shared memory)",
        producer.published(), stored.ring_head));
  }
  capnp::FlatArrayMessageReader reader(as_words(*frame), frame_reader_options());
  const auto header = reader.getRoot<schema::SealedBatch>().getHeader();
  const auto stream = header.getStreamId();
  const auto root = header.getMerkleRoot();
  ChainPosition position = stored.position;
  if (stream.size() != position.stream_id.size() || root.size() != position.prev_root.size() ||
      !std::equal(stream.begin(), stream.end(), position.stream_id.begin()) ||
      // A seq from shared memory: the last one has no successor (seq + 1 would wrap to 0).
      header.getSeq() == UINT64_MAX ||
      // A store torn after its seq word already says seq + 1.
      header.getSeq() + 1 < position.next_seq) {
    throw std::runtime_error(fmt::format(
        "signerd: the last sealed batch in the ring (seq {}) does not follow the chain position "
        "(next seq {}) of this stream (damaged shared memory)",
        header.getSeq(), position.next_seq));
  }
  position.next_seq = header.getSeq() + 1;
  std::copy(root.begin(), root.end(), position.prev_root.begin());
  spdlog::warn(
      "the stored chain position was behind the sealed ring (a signerd killed after publishing "
      "batch {}): continuing after that batch",
      header.getSeq());
  return position;
}

}  // namespace flowseal::signerd
