#include "seal/keys.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <utility>

#include <fmt/format.h>
#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "unique_fd.h"

namespace flowseal::seal {
namespace {

struct EvpPkeyFree {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
};
struct EvpMdCtxFree {
  void operator()(EVP_MD_CTX* p) const { EVP_MD_CTX_free(p); }
};
struct EvpMdFree {
  void operator()(EVP_MD* p) const { EVP_MD_free(p); }
};
struct BioFree {
  void operator()(BIO* p) const { BIO_free_all(p); }
};
struct OpensslFree {
  void operator()(unsigned char* p) const { OPENSSL_free(p); }
};
using EvpPkeyPtr = std::unique_ptr<EVP_PKEY, EvpPkeyFree>;
using EvpMdCtxPtr = std::unique_ptr<EVP_MD_CTX, EvpMdCtxFree>;
using EvpMdPtr = std::unique_ptr<EVP_MD, EvpMdFree>;
using BioPtr = std::unique_ptr<BIO, BioFree>;

// The oldest queued OpenSSL error (the cause; later ones are context), and clears the queue
// so that the next failure reports its own error.
std::string openssl_error() {
  const unsigned long code = ERR_get_error();
  ERR_clear_error();
  if (code == 0) return "no OpenSSL error reported";
  char buf[256];
  ERR_error_string_n(code, buf, sizeof buf);
  return buf;
}

[[noreturn]] void fail(const std::filesystem::path& file, std::string_view what) {
  throw std::runtime_error(fmt::format("{}: {}: {}", file.string(), what, openssl_error()));
}

[[noreturn]] void fail_errno(const std::filesystem::path& file, std::string_view what) {
  throw std::runtime_error(fmt::format("{}: {}: {}", file.string(), what, std::strerror(errno)));
}

// A private key's PEM must not linger in freed heap memory.
struct SecretBytes {
  std::vector<char> bytes;
  ~SecretBytes() { OPENSSL_cleanse(bytes.data(), bytes.size()); }
};

void write_all(int fd, const std::filesystem::path& file, const char* data, std::size_t size) {
  while (size > 0) {
    const ssize_t n = ::write(fd, data, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      fail_errno(file, "cannot write");
    }
    data += n;
    size -= static_cast<std::size_t>(n);
  }
  if (::fsync(fd) != 0) fail_errno(file, "cannot fsync");
}

SecretBytes read_all(int fd, const std::filesystem::path& file) {
  SecretBytes out;
  out.bytes.reserve(16384);  // an RSA-4096 PEM is ~3.3 kB: no reallocation leaves copies behind
  char buf[4096];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      OPENSSL_cleanse(buf, sizeof buf);
      fail_errno(file, "cannot read");
    }
    if (n == 0) break;
    if (out.bytes.size() + static_cast<std::size_t>(n) > out.bytes.capacity()) {
      OPENSSL_cleanse(buf, sizeof buf);
      throw std::runtime_error(fmt::format("{}: too large for a key file (over {} bytes)",
                                           file.string(), out.bytes.capacity()));
    }
    out.bytes.insert(out.bytes.end(), buf, buf + n);
  }
  OPENSSL_cleanse(buf, sizeof buf);
  return out;
}

// Which of our algorithms a key is; throws naming the file for any other kind of key.
Algorithm algorithm_of(EVP_PKEY* pkey, const std::filesystem::path& file) {
  if (EVP_PKEY_is_a(pkey, "ED25519")) return Algorithm::kEd25519;
  if (EVP_PKEY_is_a(pkey, "EC")) {
    char group[64] = {};
    std::size_t len = 0;
    if (EVP_PKEY_get_group_name(pkey, group, sizeof group, &len) == 1 &&
        (std::strcmp(group, "prime256v1") == 0 || std::strcmp(group, "P-256") == 0)) {
      return Algorithm::kEcdsaP256;
    }
    throw std::runtime_error(
        fmt::format("{}: EC key on curve {}: only P-256 is supported", file.string(), group));
  }
  if (EVP_PKEY_is_a(pkey, "RSA")) {
    const int bits = EVP_PKEY_get_bits(pkey);
    if (bits == 4096) return Algorithm::kRsa4096;
    throw std::runtime_error(
        fmt::format("{}: RSA key of {} bits: only RSA-4096 is supported", file.string(), bits));
  }
  throw std::runtime_error(
      fmt::format("{}: {} key: supported are ed25519, ecdsa-p256 and rsa-4096", file.string(),
                  EVP_PKEY_get0_type_name(pkey) ? EVP_PKEY_get0_type_name(pkey) : "unknown"));
}

std::vector<std::uint8_t> spki_der(EVP_PKEY* pkey, const std::filesystem::path& file) {
  unsigned char* der = nullptr;
  const int len = i2d_PUBKEY(pkey, &der);
  if (len <= 0) fail(file, "cannot encode the public key");
  std::unique_ptr<unsigned char, OpensslFree> owned(der);
  return {der, der + len};
}

// Ed25519 is PureEdDSA: no digest. ECDSA and RSA sign SHA-256 of the message.
bool uses_digest(Algorithm algorithm) { return algorithm != Algorithm::kEd25519; }

EvpMdPtr fetch_sha256() {
  EvpMdPtr md(EVP_MD_fetch(nullptr, "SHA256", nullptr));
  if (!md) throw std::runtime_error("OpenSSL: cannot fetch SHA256: " + openssl_error());
  return md;
}

EvpMdCtxPtr new_md_ctx() {
  EvpMdCtxPtr ctx(EVP_MD_CTX_new());
  if (!ctx) throw std::runtime_error("OpenSSL: cannot allocate a digest context");
  return ctx;
}

}  // namespace

Algorithm parse_algorithm(std::string_view name) {
  if (name == "ed25519") return Algorithm::kEd25519;
  if (name == "ecdsa-p256") return Algorithm::kEcdsaP256;
  if (name == "rsa-4096") return Algorithm::kRsa4096;
  throw std::invalid_argument(fmt::format(
      "unknown signature algorithm '{}': expected ed25519, ecdsa-p256 or rsa-4096", name));
}

std::string_view to_string(Algorithm algorithm) {
  switch (algorithm) {
    case Algorithm::kEd25519: return "ed25519";
    case Algorithm::kEcdsaP256: return "ecdsa-p256";
    case Algorithm::kRsa4096: return "rsa-4096";
  }
  return "unknown";
}

Digest sha256(std::span<const std::uint8_t> bytes) {
  Digest out{};
  unsigned int len = 0;
  if (EVP_Digest(bytes.data(), bytes.size(), out.data(), &len, EVP_sha256(), nullptr) != 1 ||
      len != out.size()) {
    throw std::runtime_error("OpenSSL: SHA-256 failed: " + openssl_error());
  }
  return out;
}

std::string to_hex(std::span<const std::uint8_t> bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (std::uint8_t b : bytes) {
    out.push_back(kDigits[b >> 4]);
    out.push_back(kDigits[b & 0xf]);
  }
  return out;
}

void generate_key_pair(Algorithm algorithm, const std::filesystem::path& private_key,
                       const std::filesystem::path& public_key, mode_t public_mode) {
  EvpPkeyPtr pkey;
  switch (algorithm) {
    case Algorithm::kEd25519: pkey.reset(EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519")); break;
    case Algorithm::kEcdsaP256:
      pkey.reset(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
      break;
    case Algorithm::kRsa4096:
      pkey.reset(EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", static_cast<std::size_t>(4096)));
      break;
  }
  if (!pkey) fail(private_key, fmt::format("cannot generate a {} key", to_string(algorithm)));

  BioPtr priv_pem(BIO_new(BIO_s_mem()));
  BioPtr pub_pem(BIO_new(BIO_s_mem()));
  if (!priv_pem || !pub_pem) fail(private_key, "cannot allocate a memory BIO");
  // PEM_write_bio_PrivateKey writes PKCS#8 ("BEGIN PRIVATE KEY") in OpenSSL 3.
  if (PEM_write_bio_PrivateKey(priv_pem.get(), pkey.get(), nullptr, nullptr, 0, nullptr, nullptr) !=
      1) {
    fail(private_key, "cannot encode the private key");
  }
  if (PEM_write_bio_PUBKEY(pub_pem.get(), pkey.get()) != 1) {
    fail(public_key, "cannot encode the public key");
  }
  char* priv_data = nullptr;
  const long priv_len = BIO_get_mem_data(priv_pem.get(), &priv_data);
  char* pub_data = nullptr;
  const long pub_len = BIO_get_mem_data(pub_pem.get(), &pub_data);

  // O_EXCL: an existing key is never overwritten; 0600 from the first byte written.
  {
    UniqueFd fd(
        ::open(private_key.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
    if (fd.get() < 0) {
      OPENSSL_cleanse(priv_data, static_cast<std::size_t>(priv_len));
      fail_errno(private_key, "cannot create the private key file");
    }
    try {
      if (::fchmod(fd.get(), 0600) != 0) fail_errno(private_key, "cannot chmod 600");
      write_all(fd.get(), private_key, priv_data, static_cast<std::size_t>(priv_len));
    } catch (...) {
      OPENSSL_cleanse(priv_data, static_cast<std::size_t>(priv_len));
      ::unlink(private_key.c_str());
      throw;
    }
    OPENSSL_cleanse(priv_data, static_cast<std::size_t>(priv_len));
  }
  try {
    // The public key is derived from the new private key, so a stale one is replaced: but
    // never written through. A new file of a private name (O_EXCL | O_NOFOLLOW: a symlink
    // planted there is refused, not followed) is renamed over the old name, which replaces
    // a symlink at that name instead of writing to what it points at.
    std::filesystem::path temp = public_key;
    temp += fmt::format(".new-{}", ::getpid());
    UniqueFd fd(
        ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, public_mode));
    if (fd.get() < 0) fail_errno(temp, "cannot create the public key file");
    try {
      if (::fchmod(fd.get(), public_mode) != 0) {
        fail_errno(temp, fmt::format("cannot chmod {:04o}", public_mode));
      }
      write_all(fd.get(), temp, pub_data, static_cast<std::size_t>(pub_len));
      if (::rename(temp.c_str(), public_key.c_str()) != 0) {
        fail_errno(public_key, "cannot rename the new public key into place");
      }
    } catch (...) {
      ::unlink(temp.c_str());
      throw;
    }
  } catch (...) {
    ::unlink(private_key.c_str());  // no private key without its public half
    throw;
  }
}

// ------------------------------------------------------------------------------ PrivateKey

struct PrivateKey::State {
  EvpPkeyPtr pkey;
  Algorithm algorithm{};
  Digest key_id{};
  std::vector<std::uint8_t> public_der;
  EvpMdPtr md;  // fetched once; null for Ed25519
  // ECDSA/RSA: `initialised` holds a context set up once; each signature copies it into
  // `work` (a provider dupctx, no fetch). Ed25519 re-initialises `work` per signature.
  EvpMdCtxPtr initialised;
  EvpMdCtxPtr work;
};

PrivateKey::PrivateKey(std::unique_ptr<State> state) : state_(std::move(state)) {}
PrivateKey::PrivateKey(PrivateKey&&) noexcept = default;
PrivateKey& PrivateKey::operator=(PrivateKey&&) noexcept = default;
PrivateKey::~PrivateKey() = default;

PrivateKey PrivateKey::load(const std::filesystem::path& file) {
  const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail_errno(file, "cannot open the private key");
  return load(fd, file);
}

PrivateKey PrivateKey::load(int raw_fd, const std::filesystem::path& file) {
  UniqueFd fd(raw_fd);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) fail_errno(file, "cannot stat the private key");
  if (!S_ISREG(st.st_mode)) {
    throw std::runtime_error(fmt::format("{}: not a regular file", file.string()));
  }
  if ((st.st_mode & 077) != 0) {
    throw std::runtime_error(fmt::format(
        "{} has mode {:04o}: a private key must not be readable by group or others; chmod 600 {}",
        file.string(), st.st_mode & 07777, file.string()));
  }
  SecretBytes pem = read_all(fd.get(), file);
  BioPtr bio(BIO_new_mem_buf(pem.bytes.data(), static_cast<int>(pem.bytes.size())));
  if (!bio) fail(file, "cannot allocate a memory BIO");
  // A daemon must never stop to ask for a passphrase on a terminal (OpenSSL's default).
  pem_password_cb* no_passphrase = [](char*, int, int, void*) { return 0; };
  EvpPkeyPtr pkey(PEM_read_bio_PrivateKey(bio.get(), nullptr, no_passphrase, nullptr));
  if (!pkey) fail(file, "not a PEM private key (or an encrypted one: use an unencrypted key)");

  auto state = std::make_unique<State>();
  state->algorithm = algorithm_of(pkey.get(), file);
  state->public_der = spki_der(pkey.get(), file);
  state->key_id = sha256(state->public_der);
  state->work = new_md_ctx();
  if (uses_digest(state->algorithm)) {
    state->md = fetch_sha256();
    state->initialised = new_md_ctx();
    if (EVP_DigestSignInit(state->initialised.get(), nullptr, state->md.get(), nullptr,
                           pkey.get()) != 1) {
      fail(file, "cannot set up signing");
    }
  }
  state->pkey = std::move(pkey);
  return PrivateKey(std::move(state));
}

Algorithm PrivateKey::algorithm() const { return state_->algorithm; }
const Digest& PrivateKey::key_id() const { return state_->key_id; }
std::vector<std::uint8_t> PrivateKey::public_der() const { return state_->public_der; }

std::vector<std::uint8_t> PrivateKey::sign(std::span<const std::uint8_t> message) const {
  EVP_MD_CTX* ctx = state_->work.get();
  const bool ready = state_->initialised ? EVP_MD_CTX_copy_ex(ctx, state_->initialised.get()) == 1
                                         : EVP_DigestSignInit(ctx, nullptr, nullptr, nullptr,
                                                              state_->pkey.get()) == 1;
  if (!ready) {
    throw std::runtime_error(fmt::format("{} key {}: cannot start a signature: {}",
                                         to_string(state_->algorithm), to_hex(state_->key_id),
                                         openssl_error()));
  }
  std::size_t len = 0;
  std::vector<std::uint8_t> signature;
  if (EVP_DigestSign(ctx, nullptr, &len, message.data(), message.size()) == 1) {
    signature.resize(len);
    if (EVP_DigestSign(ctx, signature.data(), &len, message.data(), message.size()) == 1) {
      signature.resize(len);  // ECDSA's DER signature can be shorter than the maximum
      return signature;
    }
  }
  throw std::runtime_error(fmt::format("{} key {}: signing failed: {}",
                                       to_string(state_->algorithm), to_hex(state_->key_id),
                                       openssl_error()));
}

// ------------------------------------------------------------------------------- PublicKey

namespace {

struct VerifierParts {
  EvpPkeyPtr pkey;
  Algorithm algorithm{};
  Digest key_id{};
  std::vector<std::uint8_t> public_der;
  EvpMdPtr md;  // fetched once; null for Ed25519
  EvpMdCtxPtr initialised;
  EvpMdCtxPtr work;
};

}  // namespace

struct PublicKey::State : VerifierParts {};

PublicKey::PublicKey(std::unique_ptr<State> state) : state_(std::move(state)) {}
PublicKey::PublicKey(PublicKey&&) noexcept = default;
PublicKey& PublicKey::operator=(PublicKey&&) noexcept = default;
PublicKey::~PublicKey() = default;

namespace {

VerifierParts verifier_parts(EvpPkeyPtr pkey, const std::filesystem::path& where) {
  VerifierParts parts;
  parts.algorithm = algorithm_of(pkey.get(), where);
  parts.public_der = spki_der(pkey.get(), where);
  parts.key_id = sha256(parts.public_der);
  parts.work = new_md_ctx();
  if (uses_digest(parts.algorithm)) {
    parts.md = fetch_sha256();
    parts.initialised = new_md_ctx();
    if (EVP_DigestVerifyInit(parts.initialised.get(), nullptr, parts.md.get(), nullptr,
                             pkey.get()) != 1) {
      fail(where, "cannot set up verification");
    }
  }
  parts.pkey = std::move(pkey);
  return parts;
}

}  // namespace

PublicKey PublicKey::load(const std::filesystem::path& file) {
  BioPtr bio(BIO_new_file(file.c_str(), "r"));
  if (!bio) fail(file, "cannot open the public key");
  EvpPkeyPtr pkey(PEM_read_bio_PUBKEY(bio.get(), nullptr, nullptr, nullptr));
  if (!pkey) fail(file, "not a PEM public key (SubjectPublicKeyInfo)");
  auto state = std::make_unique<State>();
  static_cast<VerifierParts&>(*state) = verifier_parts(std::move(pkey), file);
  return PublicKey(std::move(state));
}

PublicKey PublicKey::from_der(std::span<const std::uint8_t> der) {
  const unsigned char* p = der.data();
  EvpPkeyPtr pkey(d2i_PUBKEY(nullptr, &p, static_cast<long>(der.size())));
  const std::filesystem::path where("<DER public key>");
  if (!pkey) fail(where, "not a DER SubjectPublicKeyInfo");
  auto state = std::make_unique<State>();
  static_cast<VerifierParts&>(*state) = verifier_parts(std::move(pkey), where);
  return PublicKey(std::move(state));
}

Algorithm PublicKey::algorithm() const { return state_->algorithm; }
const Digest& PublicKey::key_id() const { return state_->key_id; }
std::vector<std::uint8_t> PublicKey::public_der() const { return state_->public_der; }

bool PublicKey::verify(std::span<const std::uint8_t> message,
                       std::span<const std::uint8_t> signature) const {
  EVP_MD_CTX* ctx = state_->work.get();
  const bool ready = state_->initialised ? EVP_MD_CTX_copy_ex(ctx, state_->initialised.get()) == 1
                                         : EVP_DigestVerifyInit(ctx, nullptr, nullptr, nullptr,
                                                                state_->pkey.get()) == 1;
  const bool good = ready && EVP_DigestVerify(ctx, signature.data(), signature.size(),
                                              message.data(), message.size()) == 1;
  // A bad signature is an answer, not an error: leave no stale error for the next caller.
  ERR_clear_error();
  return good;
}

}  // namespace flowseal::seal
