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

}  // namespace

BatchSealer::BatchSealer(const seal::PrivateKey& key, std::array<std::uint8_t, 16> stream_id,
                         std::uint64_t next_seq, seal::Digest prev_root, unsigned leaf_hint_bytes)
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
    // What append_canonical() declines may carry pointers this schema does not know (the
    // copy below drops them unread): check them as a traversal of the whole frame did.
    static_cast<void>(record.totalSize());
    const kj::Array<capnp::word> canonical = canonical_as_stored(record);
    canonical_.resize(start + canonical.size());
    std::memcpy(canonical_.data() + start, canonical.begin(), canonical.asBytes().size());
  }
  copied_words_ +=
      direct ? seal::copied_words(canonical_.data() + start) : canonical_.size() - start;
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

std::size_t BatchSealer::words() const {
  using Sealed = schema::SealedBatch::_capnpPrivate;
  using Event = schema::FlowEvent::_capnpPrivate;
  return 1 + Sealed::dataWordSize + Sealed::pointerCount + 1 +
         offsets_.size() * (Event::dataWordSize + Event::pointerCount) + copied_words_ +
         (offsets_.size() * leaf_hint_bytes_ + 7) / 8 + 1024;
}

void BatchSealer::add_all(capnp::List<schema::FlowEvent>::Reader records) {
  const std::size_t count = offsets_.size(), words = canonical_.size(), copied = copied_words_;
  const std::int64_t first = first_ts_ns_, last = last_ts_ns_;
  try {
    for (const auto record : records) add(record);
  } catch (...) {
    offsets_.resize(count);
    direct_.resize(count);
    leaves_.resize(count);
    canonical_.resize(words);
    copied_words_ = copied;
    first_ts_ns_ = first;
    last_ts_ns_ = last;
    throw;
  }
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
    const capnp::word* canonical = canonical_.data() + offsets_[i];
    if (direct_[i] != 0) {
      seal::copy_canonical(canonical, records[i]);
    } else {
      // The canonical form is a single segment with the root pointer first: our own output,
      // so it can be read unchecked.
      records.setWithCaveats(i, capnp::readMessageUnchecked<schema::FlowEvent>(canonical));
    }
  }

  const kj::Array<capnp::word> signed_bytes = capnp::canonicalize(header.asReader());
  const auto bytes = signed_bytes.asBytes();
  const std::vector<std::uint8_t> signature = key_->sign({bytes.begin(), bytes.size()});
  batch.setSignature(as_data(signature));
  // Outside the signature on purpose: verify uses them only to say which record a root
  // mismatch comes from (seal/leaf_hints.h).
  if (leaf_hint_bytes_ > 0)
    batch.setLeafHints(as_data(seal::make_leaf_hints(leaves_, leaf_hint_bytes_)));

  ++next_seq_;
  prev_root_ = root;
  canonical_.clear();  // keeps its capacity for the next batch
  offsets_.clear();
  direct_.clear();
  copied_words_ = 0;
  leaves_.clear();
}

}  // namespace flowseal::signerd
