// libFuzzer target: the Cap'n Proto record and batch decode - what signerd does with a
// FlowEventBatch ring frame and what `flowseal verify` / `cat` and the segment codec do with a
// SealedBatch. The input is the message as a flat array (the ring frame's form).
//
// Mode (first byte, even/odd):
//   even: a SealedBatch from outside (verify's input): the chain verifier checks it, each
//         record prints as cat prints it, and the column codec (common/segment/columns.h)
//         stores it and reads it back losslessly: the same canonical record bytes, header
//         bytes and signature.
//   odd:  a FlowEventBatch from flowd/dedupd (signerd's input): after the frame traverses
//         (signerd's check), signerd's BatchSealer seals its records, and the sealed batch
//         must verify, also after a trip through the column codec.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <span>
#include <vector>

#include <capnp/message.h>
#include <capnp/serialize.h>

#include "batch_sealer.h"
#include "capnp_frame.h"
#include "flowseal.capnp.h"
#include "record/record_json.h"
#include "seal/chain_verifier.h"
#include "seal/keys.h"
#include "segment/columns.h"
#include "record_list.h"

namespace {

using namespace flowseal;

struct Keys {
  seal::PrivateKey priv;
  seal::PublicKey pub;
};

Keys make_keys() {
  char dir_template[] = "/tmp/flowseal-fuzz-keys.XXXXXX";
  const char* dir = mkdtemp(dir_template);
  if (dir == nullptr) std::abort();
  const std::filesystem::path d(dir);
  seal::generate_key_pair(seal::Algorithm::kEd25519, d / "k.key", d / "k.pub");
  Keys keys{seal::PrivateKey::load(d / "k.key"), seal::PublicKey::load(d / "k.pub")};
  std::filesystem::remove_all(d);
  return keys;
}

const Keys& keys() {
  static const Keys k = make_keys();
  return k;
}

std::map<seal::Digest, seal::PublicKey> trusting() {
  std::map<seal::Digest, seal::PublicKey> m;
  m.emplace(keys().pub.key_id(), seal::PublicKey::from_der(keys().pub.public_der()));
  return m;
}

std::span<const std::byte> bytes_of(const kj::Array<capnp::word>& words) {
  return {reinterpret_cast<const std::byte*>(words.begin()), words.size() * sizeof(capnp::word)};
}

// Stores `batch` as writerd does and reads it back as SegmentReader does; the result must
// carry the same canonical records, header and signature.
void round_trip(std::span<const std::byte> message, schema::SealedBatch::Reader batch) {
  segment::BatchCodec codec;
  std::vector<std::uint8_t> stored;
  codec.encode(message, stored);
  std::vector<std::uint64_t> out;
  std::size_t bytes = 0;
  const auto records = batch.hasRecords() ? batch.getRecords().size() : 0u;
  if (auto error = codec.decode(stored, records, out, bytes)) std::abort();  // stored, unreadable
  capnp::FlatArrayMessageReader back(
      kj::arrayPtr(reinterpret_cast<const capnp::word*>(out.data()), bytes / sizeof(capnp::word)),
      frame_reader_options());
  const auto copy = back.getRoot<schema::SealedBatch>();
  if (copy.getRecords().size() != records) std::abort();
  for (unsigned i = 0; i < records; ++i) {
    if (seal::canonical_bytes(copy.getRecords()[i]) != seal::canonical_bytes(batch.getRecords()[i]))
      std::abort();
  }
  if (seal::canonical_bytes(copy.getHeader()) != seal::canonical_bytes(batch.getHeader()))
    std::abort();
  if (copy.getSignature() != batch.getSignature()) std::abort();
}

void sealed_batch(std::span<const std::byte> frame) {
  capnp::FlatArrayMessageReader reader(as_words(frame), frame_reader_options());
  const auto batch = reader.getRoot<schema::SealedBatch>();
  seal::ChainVerifier verifier(trusting());
  (void)verifier.check(batch);
  const std::array<std::uint8_t, 16> stream{};
  std::uint64_t leaf = 0;
  // A list of empty structs costs Cap'n Proto's traversal limit one word per element: a short
  // input can claim millions of records, each printed below. Real batches are capped by
  // seal.batch_records; the first 4096 are enough to exercise the printers here.
  for (auto record : sized_records(batch.getRecords(), "SealedBatch.records")) {
    if (leaf == 4096) break;
    (void)record::to_json_line(record);
    (void)record::to_json_line(record, {stream, 7, leaf++});
    (void)record::to_tsv_line(record);
  }
  // Only a batch that reads whole reaches the writer: signerd made it.
  (void)reader.getRoot<schema::SealedBatch>().totalSize();
  round_trip(frame, batch);
}

void event_batch(std::span<const std::byte> frame) {
  capnp::FlatArrayMessageReader reader(as_words(frame), frame_reader_options());
  const auto batch = reader.getRoot<schema::FlowEventBatch>();
  static_cast<void>(batch.totalSize());  // signerd: a frame that does not traverse is skipped
  signerd::BatchSealer sealer(keys().priv, {1, 2, 3}, 0, seal::Digest{});
  // As signerd: a list of empty records is refused before any is sealed (record_list.h).
  for (auto event : sized_records(batch.getEvents(), "FlowEventBatch.events")) sealer.add(event);
  capnp::MallocMessageBuilder message;
  sealer.seal(message);
  const kj::Array<capnp::word> words = capnp::messageToFlatArray(message);
  capnp::FlatArrayMessageReader sealed(words, frame_reader_options());
  const auto batch_out = sealed.getRoot<schema::SealedBatch>();
  seal::ChainVerifier verifier(trusting());
  if (verifier.check(batch_out)) std::abort();  // what signerd seals verifies
  round_trip(bytes_of(words), batch_out);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  // The frame as the ring gives it: 8-byte aligned, exactly its (word-rounded) size.
  const std::size_t words = (size - 1 + 7) / 8;
  std::vector<capnp::word> frame(words);
  if (size > 1) __builtin_memcpy(frame.data(), data + 1, size - 1);
  const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(frame.data()),
                                         words * sizeof(capnp::word));
  try {
    if (data[0] % 2 == 0) {
      sealed_batch(bytes);
    } else {
      event_batch(bytes);
    }
  } catch (const kj::Exception&) {
    // A malformed message: every caller catches this and skips the frame or names the batch.
  }
  return 0;
}
