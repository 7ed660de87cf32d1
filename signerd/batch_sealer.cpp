#include "batch_sealer.h"

#include <algorithm>
#include <cstring>

#include <capnp/any.h>

#include "seal/canonical_record.h"

namespace flowseal::signerd {
namespace {

// seal() casts the key's Algorithm to the schema's enum.
static_assert(static_cast<int>(seal::Algorithm::kEd25519) ==
              static_cast<int>(schema::SignatureAlgorithm::ED25519));
static_assert(static_cast<int>(seal::Algorithm::kEcdsaP256) ==
              static_cast<int>(schema::SignatureAlgorithm::ECDSA_P256));
static_assert(static_cast<int>(seal::Algorithm::kRsa4096) ==
              static_cast<int>(schema::SignatureAlgorithm::RSA4096));

capnp::Data::Reader as_data(std::span<const std::uint8_t> bytes) {
  return {bytes.data(), bytes.size()};
}

// A record written with a newer schema can carry fields this build does not know; the
// batch's record list has this build's struct size and drops them on copy, so the leaf must
// hash the record as it will be stored, not as it arrived.
bool larger_than_schema(schema::FlowEvent::Reader record) {
  const capnp::AnyStruct::Reader any(record);
  using Private = schema::FlowEvent::_capnpPrivate;
  return any.getDataSection().size() > Private::dataWordSize * sizeof(capnp::word) ||
         any.getPointerSection().size() > Private::pointerCount;
}

kj::Array<capnp::word> canonical_as_stored(schema::FlowEvent::Reader record) {
  if (!larger_than_schema(record)) return capnp::canonicalize(record);
  capnp::MallocMessageBuilder scratch;
  auto list = scratch.initRoot<schema::FlowEventBatch>().initEvents(1);
  list.setWithCaveats(0, record);
  return capnp::canonicalize(list[0].asReader());
}

// Copies a record from its canonical form into the batch's (fresh, all-zero) list element:
// the data section as bytes, each list through its typed setter. The same bytes as capnp's
// setWithCaveats(), which first zeroes the element and copies every pointer through its
// general, kind-dispatching path: about half the cost. Only for records append_canonical()
// wrote (pointers of the schema's kinds, byte and 8-byte lists).
void copy_direct(schema::FlowEvent::Reader from, schema::FlowEvent::Builder to) {
  schema::FlowEvent::Builder whole = to;  // AnyStruct::Builder takes its argument by move
  const auto src = capnp::AnyStruct::Reader(from).getDataSection();
  auto dst = capnp::AnyStruct::Builder(kj::mv(whole)).getDataSection();
  std::memcpy(dst.begin(), src.begin(), std::min(src.size(), dst.size()));
  if (from.hasOrigAddr()) to.setOrigAddr(from.getOrigAddr());
  if (from.hasRespAddr()) to.setRespAddr(from.getRespAddr());
  if (from.hasConnState()) to.setConnState(from.getConnState());
  if (from.hasHistory()) to.setHistory(from.getHistory());
  if (from.hasCommunityId()) to.setCommunityId(from.getCommunityId());
  if (from.hasTunnelParents()) to.setTunnelParents(from.getTunnelParents());
}

}  // namespace

BatchSealer::BatchSealer(const seal::PrivateKey& key, std::array<std::uint8_t, 16> stream_id,
                         std::uint64_t next_seq, seal::Digest prev_root,
                         unsigned leaf_hint_bytes)
    : key_(&key),
      stream_id_(stream_id),
      next_seq_(next_seq),
      prev_root_(prev_root),
      leaf_hint_bytes_(std::min(leaf_hint_bytes, seal::kMaxLeafHintBytes)) {}

void BatchSealer::add(schema::FlowEvent::Reader record) {
  const std::size_t start = canonical_.size();
  // The direct encoder covers every record flowd and dedupd make; it declines (appending
  // nothing) the rest, which take capnp's general path.
  const bool direct = seal::append_canonical(record, canonical_);
  direct_.push_back(direct ? 1 : 0);
  if (!direct) {
    const kj::Array<capnp::word> canonical = canonical_as_stored(record);
    canonical_.resize(start + canonical.size());
    std::memcpy(canonical_.data() + start, canonical.begin(), canonical.asBytes().size());
  }
  leaves_.push_back(hasher_.leaf({reinterpret_cast<const std::uint8_t*>(canonical_.data() + start),
                                  (canonical_.size() - start) * sizeof(capnp::word)}));
  if (offsets_.empty()) {
    first_ts_ns_ = record.getFirstTsNs();
    last_ts_ns_ = record.getLastTsNs();
  } else {
    first_ts_ns_ = std::min(first_ts_ns_, record.getFirstTsNs());
    last_ts_ns_ = std::max(last_ts_ns_, record.getLastTsNs());
  }
  offsets_.push_back(start);
}

void BatchSealer::seal(capnp::MessageBuilder& message) {
  auto batch = message.initRoot<schema::SealedBatch>();
  auto header = batch.initHeader();
  const seal::Digest root = hasher_.root(leaves_);
  header.setStreamId(as_data(stream_id_));
  header.setSeq(next_seq_);
  header.setPrevRoot(as_data(prev_root_));
  header.setMerkleRoot(as_data(root));
  header.setRecordCount(static_cast<std::uint32_t>(offsets_.size()));
  header.setFirstTsNs(offsets_.empty() ? 0 : first_ts_ns_);
  header.setLastTsNs(offsets_.empty() ? 0 : last_ts_ns_);
  header.setKeyId(as_data(key_->key_id()));
  header.setAlgorithm(static_cast<schema::SignatureAlgorithm>(key_->algorithm()));

  auto records = batch.initRecords(static_cast<unsigned>(offsets_.size()));
  for (unsigned i = 0; i < offsets_.size(); ++i) {
    // The canonical form is a single segment with the root pointer first: our own output,
    // so it can be read unchecked.
    const auto record =
        capnp::readMessageUnchecked<schema::FlowEvent>(canonical_.data() + offsets_[i]);
    if (direct_[i] != 0) {
      copy_direct(record, records[i]);
    } else {
      records.setWithCaveats(i, record);
    }
  }

  const kj::Array<capnp::word> signed_bytes = capnp::canonicalize(header.asReader());
  const auto bytes = signed_bytes.asBytes();
  const std::vector<std::uint8_t> signature = key_->sign({bytes.begin(), bytes.size()});
  batch.setSignature(as_data(signature));
  // Outside the signature on purpose: verify uses them only to say which record a root
  // mismatch comes from (seal/leaf_hints.h).
  if (leaf_hint_bytes_ > 0) batch.setLeafHints(as_data(seal::make_leaf_hints(leaves_, leaf_hint_bytes_)));

  ++next_seq_;
  prev_root_ = root;
  canonical_.clear();  // keeps its capacity for the next batch
  offsets_.clear();
  direct_.clear();
  leaves_.clear();
}

}  // namespace flowseal::signerd
