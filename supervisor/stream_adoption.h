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
//   78  the newest batch is sealed with another key than seal.key_file: a continued chain
//       would change keys in the middle, which is rotation, not a restart
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
};

// nullopt: `dir` holds no whole batch (empty, missing, or only torn `.part` files that
// recovery removes): the run starts a new stream. `key` is the public half of
// seal.key_file, named `key_file` in messages.
std::optional<AdoptedStream> adopt_stream(const std::filesystem::path& dir,
                                          const seal::PublicKey& key, const std::string& key_file);

}  // namespace flowseal::supervisor
