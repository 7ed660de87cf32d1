// Inclusion proofs. `flowseal verify --proof EVENT_ID` prints one record's proof: a JSON
// object, one member per line, holding everything needed to check it alone — the record and
// its canonical bytes, its leaf hash, index and count, the Merkle path, the root, the signed
// header (canonical bytes), the signature and the public key (DER). `flowseal verify-proof
// FILE` checks such a file with nothing else: the record's bytes hash to the leaf, the leaf
// and path lead to the root, the signed header names that root and count, the signature
// verifies with the key, and the key is the pinned one if --pubkey is given.
//
// Proof files are read with a JSON parser (nlohmann/json): any JSON writer may reformat
// them. Bad input is named by member ("member \"leaf_hash\": not 32 bytes of hex") or, for
// text that is not JSON, by line and column.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "flowseal.capnp.h"
#include "seal/keys.h"

namespace flowseal::supervisor {

struct EventId {
  std::uint64_t uid = 0;
  schema::EventKind kind = schema::EventKind::END;
  std::uint32_t number = 0;
};
// `<uid text>:<kind>:<event number>`, as event_id_text() writes it; nullopt if not one.
std::optional<EventId> parse_event_id(std::string_view text);

struct Proof {
  std::string event_id;
  std::string segment;
  nlohmann::ordered_json record;  // the record as cat prints it
  std::vector<std::uint8_t> record_canonical;
  seal::Digest leaf_hash{};
  std::uint64_t leaf_index = 0;
  std::uint64_t leaf_count = 0;
  std::vector<seal::Digest> path;
  seal::Digest merkle_root{};
  nlohmann::ordered_json header;  // the signed header's fields, for people
  std::vector<std::uint8_t> header_canonical;
  std::vector<std::uint8_t> signature;
  std::vector<std::uint8_t> public_key_der;
};

// The proof file's text: one member per line.
std::string proof_text(const Proof& proof);
// Reads a proof file's text; nullopt with `error` naming the member (or line and column).
std::optional<Proof> parse_proof(std::string_view text, std::string& error);
// Checks a proof; nullopt if it holds, else what fails. `pinned`: the key it must be signed with.
// `summary` gets the one-line description of what was proven.
std::optional<std::string> check_proof(const Proof& proof, const seal::PublicKey* pinned,
                                       std::string& summary);

// `verify --proof`: finds the event among `files` (a store's segments) and prints its proof.
// Throws StoreInputError for a malformed event id (64) or unusable keys (66).
int print_proof(const std::vector<std::filesystem::path>& files, const VerifyOptions& options);

}  // namespace flowseal::supervisor
