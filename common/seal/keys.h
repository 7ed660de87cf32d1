// Signing keys for sealed batches: generation, loading, signing and verification through
// OpenSSL 3's EVP interface, with every OpenSSL object owned by RAII.
//
// Guarantees: a private key file readable by group or others is refused (as ssh does), and
// the key's bytes never leave this process (never shared memory, never a log line). A key is
// named by its key id: SHA-256 of the public key's DER SubjectPublicKeyInfo. Ed25519 is the
// default; ECDSA P-256 and RSA-4096 are selectable. Contexts are made once per key and
// reused: fetching the algorithm per signature costs ~2.6x.
#pragma once

#include <sys/types.h>

#include <array>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace flowseal::seal {

using Digest = std::array<std::uint8_t, 32>;

enum class Algorithm : std::uint8_t { kEd25519, kEcdsaP256, kRsa4096 };
// "ed25519" | "ecdsa-p256" | "rsa-4096"; throws std::invalid_argument naming the value.
Algorithm parse_algorithm(std::string_view name);
std::string_view to_string(Algorithm);

Digest sha256(std::span<const std::uint8_t> bytes);
std::string to_hex(std::span<const std::uint8_t> bytes);

// Writes a new key pair: `private_key` as PKCS#8 PEM with mode 0600 (created exclusively:
// an existing file or a symlink is an error, never overwritten or followed), `public_key`
// as SPKI PEM with `public_mode` (writer.file_mode in a store). The public key replaces an
// existing file by rename from a new private name, so a symlink at `public_key` is replaced,
// never written through. Throws std::runtime_error naming the file on any failure.
void generate_key_pair(Algorithm algorithm, const std::filesystem::path& private_key,
                       const std::filesystem::path& public_key, mode_t public_mode = 0644);

class PrivateKey {
 public:
  // Throws std::runtime_error naming the file if it is missing, unreadable, not a key, or
  // readable by group/others ("... has mode 0644; chmod 600 it").
  static PrivateKey load(const std::filesystem::path& file);
  // The same from a descriptor already open on the key file, closed here; `file` names it in
  // messages. The 0600 check is the same: it is the file's mode, whoever opened it (signerd
  // as supervisor.user gets the descriptor from the supervisor, the file stays root's).
  static PrivateKey load(int fd, const std::filesystem::path& file);
  PrivateKey(PrivateKey&&) noexcept;
  PrivateKey& operator=(PrivateKey&&) noexcept;
  ~PrivateKey();

  Algorithm algorithm() const;
  const Digest& key_id() const;
  std::vector<std::uint8_t> public_der() const;
  // Signs `message` (Ed25519: PureEdDSA; ECDSA/RSA: over SHA-256). Deterministic for Ed25519.
  std::vector<std::uint8_t> sign(std::span<const std::uint8_t> message) const;

 private:
  struct State;
  explicit PrivateKey(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

class PublicKey {
 public:
  // PEM (SPKI) file; throws std::runtime_error naming the file.
  static PublicKey load(const std::filesystem::path& file);
  static PublicKey from_der(std::span<const std::uint8_t> der);
  PublicKey(PublicKey&&) noexcept;
  PublicKey& operator=(PublicKey&&) noexcept;
  ~PublicKey();

  Algorithm algorithm() const;
  const Digest& key_id() const;
  std::vector<std::uint8_t> public_der() const;  // DER SubjectPublicKeyInfo
  bool verify(std::span<const std::uint8_t> message, std::span<const std::uint8_t> signature) const;

 private:
  struct State;
  explicit PublicKey(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

}  // namespace flowseal::seal
