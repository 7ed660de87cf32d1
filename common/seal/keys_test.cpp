#include <catch2/catch.hpp>

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>

#include <openssl/evp.h>
#include <openssl/pem.h>

#include "test_temp_dir.h"
#include "seal/keys.h"

namespace seal = flowseal::seal;
namespace fs = std::filesystem;

namespace {

// Each TempDir of this file is named after it.
class TempDir : public flowseal::testing::TempDir {
 public:
  TempDir() : flowseal::testing::TempDir("seal_keys_test") {}
};

std::string read_text(const fs::path& file) {
  std::ifstream in(file);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

unsigned mode_of(const fs::path& file) {
  struct stat st {};
  REQUIRE(::stat(file.c_str(), &st) == 0);
  return st.st_mode & 07777;
}

std::span<const std::uint8_t> bytes_of(const std::string& s) {
  return {reinterpret_cast<const std::uint8_t*>(s.data()), s.size()};
}

// RSA-4096 generation takes seconds: one key pair for the whole binary.
const TempDir& rsa_dir() {
  static const TempDir dir;
  static const bool made = [] {
    seal::generate_key_pair(seal::Algorithm::kRsa4096, dir / "rsa.key", dir / "rsa.pub");
    return true;
  }();
  (void)made;
  return dir;
}

}  // namespace

TEST_CASE("algorithm names parse and print both ways, and an unknown one is refused by name") {
  for (auto a :
       {seal::Algorithm::kEd25519, seal::Algorithm::kEcdsaP256, seal::Algorithm::kRsa4096}) {
    CHECK(seal::parse_algorithm(seal::to_string(a)) == a);
  }
  CHECK_THROWS_WITH(seal::parse_algorithm("dsa"), Catch::Contains("'dsa'"));
}

TEST_CASE("sha256 and to_hex give the well-known digest of abc") {
  CHECK(seal::to_hex(seal::sha256(bytes_of("abc"))) ==
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST_CASE("a generated key pair is PKCS#8 with mode 0600 beside an SPKI public key of 0644") {
  TempDir dir;
  seal::generate_key_pair(seal::Algorithm::kEd25519, dir / "k.key", dir / "k.pub");
  CHECK(mode_of(dir / "k.key") == 0600);
  CHECK(mode_of(dir / "k.pub") == 0644);
  CHECK(read_text(dir / "k.key").rfind("-----BEGIN PRIVATE KEY-----", 0) == 0);
  CHECK(read_text(dir / "k.pub").rfind("-----BEGIN PUBLIC KEY-----", 0) == 0);
}

TEST_CASE("an existing private key is never overwritten") {
  TempDir dir;
  seal::generate_key_pair(seal::Algorithm::kEd25519, dir / "k.key", dir / "k.pub");
  const std::string before = read_text(dir / "k.key");
  CHECK_THROWS_WITH(
      seal::generate_key_pair(seal::Algorithm::kEd25519, dir / "k.key", dir / "other.pub"),
      Catch::Contains((dir / "k.key").string()) && Catch::Contains("File exists"));
  CHECK(read_text(dir / "k.key") == before);
  CHECK_FALSE(fs::exists(dir / "other.pub"));
}

TEST_CASE("a symlink at the public key's name is replaced, never written through") {
  TempDir dir;
  // A file the key's writer must not touch (root's 0600 file in the finding), and a symlink
  // to it where the public key goes.
  std::ofstream(dir / "victim") << "precious";
  fs::permissions(dir / "victim", fs::perms(0600));
  fs::create_symlink(dir / "victim", dir / "k.pub");
  seal::generate_key_pair(seal::Algorithm::kEd25519, dir / "k.key", dir / "k.pub", 0640);
  CHECK(read_text(dir / "victim") == "precious");
  CHECK(mode_of(dir / "victim") == 0600);
  CHECK_FALSE(fs::is_symlink(dir / "k.pub"));
  CHECK(read_text(dir / "k.pub").rfind("-----BEGIN PUBLIC KEY-----", 0) == 0);
  CHECK(mode_of(dir / "k.pub") == 0640);
  // No temporary name is left behind.
  std::size_t files = 0;
  for ([[maybe_unused]] const auto& entry : fs::directory_iterator(dir / ".")) ++files;
  CHECK(files == 3);
}

TEST_CASE("a symlink at the private key's name is refused, not followed") {
  TempDir dir;
  std::ofstream(dir / "victim") << "precious";
  fs::create_symlink(dir / "victim", dir / "k.key");
  fs::create_symlink(dir / "nowhere", dir / "d.key");  // dangling: O_CREAT would make it
  CHECK_THROWS_WITH(
      seal::generate_key_pair(seal::Algorithm::kEd25519, dir / "k.key", dir / "k.pub"),
      Catch::Contains((dir / "k.key").string()));
  CHECK_THROWS(seal::generate_key_pair(seal::Algorithm::kEd25519, dir / "d.key", dir / "d.pub"));
  CHECK(read_text(dir / "victim") == "precious");
  CHECK_FALSE(fs::exists(dir / "nowhere"));
  CHECK_FALSE(fs::exists(dir / "k.pub"));
}

TEST_CASE("a private key readable by group or others is refused with the chmod to run") {
  TempDir dir;
  const auto key = dir / "k.key";
  seal::generate_key_pair(seal::Algorithm::kEd25519, key, dir / "k.pub");
  ::chmod(key.c_str(), 0644);
  CHECK_THROWS_WITH(seal::PrivateKey::load(key), Catch::Contains(key.string() + " has mode 0644") &&
                                                     Catch::Contains("chmod 600 " + key.string()));
  ::chmod(key.c_str(), 0640);
  CHECK_THROWS_WITH(seal::PrivateKey::load(key), Catch::Contains("has mode 0640"));
  ::chmod(key.c_str(), 0600);
  CHECK_NOTHROW(seal::PrivateKey::load(key));
}

TEST_CASE("a missing or garbled key file is an error naming the file") {
  TempDir dir;
  CHECK_THROWS_WITH(seal::PrivateKey::load(dir / "none.key"),
                    Catch::Contains((dir / "none.key").string()));
  CHECK_THROWS_WITH(seal::PublicKey::load(dir / "none.pub"),
                    Catch::Contains((dir / "none.pub").string()));
  const auto junk = dir / "junk.key";
  std::ofstream(junk) << "-----BEGIN PRIVATE KEY-----\nnot base64 at all\n";
  ::chmod(junk.c_str(), 0600);
  CHECK_THROWS_WITH(seal::PrivateKey::load(junk),
                    Catch::Contains(junk.string()) && Catch::Contains("not a PEM private key"));
  CHECK_THROWS_WITH(seal::PublicKey::load(junk), Catch::Contains(junk.string()));
}

TEST_CASE("an encrypted private key is refused without asking for a passphrase") {
  TempDir dir;
  const auto key = dir / "enc.key";
  {
    EVP_PKEY* pkey = EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519");
    REQUIRE(pkey != nullptr);
    BIO* out = BIO_new_file(key.c_str(), "w");
    REQUIRE(out != nullptr);
    char passphrase[] = "secret";
    CHECK(PEM_write_bio_PKCS8PrivateKey(out, pkey, EVP_aes_256_cbc(), passphrase,
                                        sizeof passphrase - 1, nullptr, nullptr) == 1);
    BIO_free(out);
    EVP_PKEY_free(pkey);
  }
  ::chmod(key.c_str(), 0600);
  CHECK_THROWS_WITH(seal::PrivateKey::load(key), Catch::Contains("encrypted"));
}

TEST_CASE("the key id is SHA-256 of the public key's DER, the same from either half") {
  TempDir dir;
  seal::generate_key_pair(seal::Algorithm::kEd25519, dir / "k.key", dir / "k.pub");
  const auto priv = seal::PrivateKey::load(dir / "k.key");
  const auto pub = seal::PublicKey::load(dir / "k.pub");
  CHECK(priv.key_id() == seal::sha256(priv.public_der()));
  CHECK(pub.key_id() == priv.key_id());
  CHECK(seal::PublicKey::from_der(priv.public_der()).key_id() == priv.key_id());
  CHECK(priv.public_der().size() == 44);  // Ed25519 SPKI: 12-byte prefix + 32-byte key
}

TEST_CASE("Ed25519 signatures are deterministic and verify only the message signed") {
  TempDir dir;
  seal::generate_key_pair(seal::Algorithm::kEd25519, dir / "k.key", dir / "k.pub");
  seal::generate_key_pair(seal::Algorithm::kEd25519, dir / "o.key", dir / "o.pub");
  const auto priv = seal::PrivateKey::load(dir / "k.key");
  const auto pub = seal::PublicKey::load(dir / "k.pub");
  const auto other = seal::PublicKey::load(dir / "o.pub");
  CHECK(priv.algorithm() == seal::Algorithm::kEd25519);
  const auto sig = priv.sign(bytes_of("batch header"));
  CHECK(sig.size() == 64);
  CHECK(priv.sign(bytes_of("batch header")) == sig);  // the reused context is reset each time
  CHECK(pub.verify(bytes_of("batch header"), sig));
  CHECK(pub.verify(bytes_of("batch header"), sig));
  CHECK_FALSE(pub.verify(bytes_of("batch headeR"), sig));
  CHECK_FALSE(other.verify(bytes_of("batch header"), sig));
  auto bad = sig;
  bad[10] ^= 0x01;
  CHECK_FALSE(pub.verify(bytes_of("batch header"), bad));
  CHECK_FALSE(pub.verify(bytes_of("batch header"), {}));
}

TEST_CASE("ECDSA P-256 keys sign and verify many messages through one reused context") {
  TempDir dir;
  seal::generate_key_pair(seal::Algorithm::kEcdsaP256, dir / "k.key", dir / "k.pub");
  const auto priv = seal::PrivateKey::load(dir / "k.key");
  const auto pub = seal::PublicKey::load(dir / "k.pub");
  CHECK(priv.algorithm() == seal::Algorithm::kEcdsaP256);
  CHECK(pub.algorithm() == seal::Algorithm::kEcdsaP256);
  for (int i = 0; i < 5; ++i) {
    const std::string message = "header " + std::to_string(i);
    const auto sig = priv.sign(bytes_of(message));
    CHECK(pub.verify(bytes_of(message), sig));
    CHECK_FALSE(pub.verify(bytes_of(message + "!"), sig));
  }
}

TEST_CASE("RSA-4096 keys sign and verify, and a key moved keeps working") {
  const auto& dir = rsa_dir();
  auto priv = seal::PrivateKey::load(dir / "rsa.key");
  const auto pub = seal::PublicKey::load(dir / "rsa.pub");
  CHECK(priv.algorithm() == seal::Algorithm::kRsa4096);
  seal::PrivateKey moved = std::move(priv);
  const auto sig = moved.sign(bytes_of("header"));
  CHECK(sig.size() == 512);
  CHECK(moved.sign(bytes_of("header")) == sig);  // PKCS#1 v1.5 is deterministic too
  CHECK(pub.verify(bytes_of("header"), sig));
  CHECK_FALSE(pub.verify(bytes_of("headers"), sig));
}
