// Stream adoption: a `flowseal run` into a directory that already holds a store continues
// that store's stream rather than starting a second one there (which writerd refuses: one
// directory, one hash chain). This finds where the chain stands and checks that it may go on,
// before any stage starts.
//
// The newest durable batch is the one writerd's recovery (common/segment/store.h) will take
// as the highest stored: the last whole frame of a `.part` (a torn tail after it is what
// recovery cuts off), or the last batch of the newest closed segment, by its index. That
// batch and the one before it (when the store has one) are checked as `verify` checks them
// (StoreChecker: Merkle root, signature, chain link, what the segment says about them), and
// the run goes on from there: same stream id, next seq = last seq + 1, previous root = its
// Merkle root. Only the newest batches are read: `flowseal verify` is the check of the rest.
//
// Refusals (CommandError, nothing in the directory is changed):
//   78  the newest batch is sealed with another key than seal.key_file, and the run was not
//       asked to rotate keys (`run --rotate-key`): a new key file is as often a mistake (a
//       wrong path, a key made afresh where none was found) as a rotation, and continuing
//       would make the batches an auditor pinned the old key for unverifiable with it
//   78  asked to rotate, but DIR/keys/ holds no public half of the key that sealed the
//       store: `flowseal verify DIR` could not check the batches before the rotation
//   65  the newest segment cannot be read (header, index, the newest frames), or the newest
//       batches do not verify: continuing would chain onto something unproven
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

#include "chain_position.h"
#include "seal/keys.h"

namespace flowseal::supervisor {

struct AdoptedStream {
  ChainPosition position;      // where signerd starts: the newest batch's successor
  std::uint64_t last_seq = 0;  // the newest durable batch
  std::uint64_t batches_checked = 0;
  std::filesystem::path file;  // the segment holding it
  // Set when the store was sealed with another key and the run rotates to seal.key_file's:
  // the key id that sealed the newest batch (its public half is in DIR/keys/).
  std::optional<seal::Digest> rotated_from;
};

// nullopt: `dir` holds no whole batch (empty, missing, or only torn `.part` files that
// recovery removes): the run starts a new stream. `key` is the public half of
// seal.key_file, named `key_file` in messages. `rotate_key`: a store sealed with another key
// is continued with this one (key rotation: the chain goes on, the next batch is signed with
// the new key, writerd starts a new segment for it), provided DIR/keys/ holds the old key.
std::optional<AdoptedStream> adopt_stream(const std::filesystem::path& dir,
                                          const seal::PublicKey& key, const std::string& key_file,
                                          bool rotate_key = false);

}  // namespace flowseal::supervisor
