#include <catch2/catch.hpp>

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <stdexcept>
#include <string>

#include "test_temp_dir.h"
#include "seal/gap_marker.h"
#include "seal/keys.h"

namespace seal = flowseal::seal;
namespace fs = std::filesystem;

namespace {

// Each TempDir of this file is named after it.
class TempDir : public flowseal::testing::TempDir {
 public:
  TempDir() : flowseal::testing::TempDir("seal_gap_marker_test") {}
};

seal::PrivateKey make_key(const TempDir& dir, const std::string& name,
                          seal::Algorithm algorithm = seal::Algorithm::kEd25519) {
  seal::generate_key_pair(algorithm, dir / (name + ".key"), dir / (name + ".pub"));
  return seal::PrivateKey::load(dir / (name + ".key"));
}

seal::GapClaim claim() {
  seal::GapClaim c;
  for (std::size_t i = 0; i < c.stream_id.size(); ++i)
    c.stream_id[i] = static_cast<std::uint8_t>(i);
  c.first_seq = 100;
  c.last_seq = 163;
  c.records = 65536;
  c.given_up_ns = 1'700'000'000'000'000'000;
  c.reason = "the disk limit (writer.retention_max_mb)";
  return c;
}

std::map<seal::Digest, seal::PublicKey> keys_of(const TempDir& dir, const std::string& name) {
  std::map<seal::Digest, seal::PublicKey> keys;
  seal::PublicKey key = seal::PublicKey::load(dir / (name + ".pub"));
  keys.emplace(key.key_id(), std::move(key));
  return keys;
}

void write(const fs::path& file, const std::vector<std::uint8_t>& bytes) {
  std::ofstream out(file, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
}

}  // namespace

TEST_CASE("a sealed gap marker opens with its key and says what was given up") {
  TempDir dir;
  for (const auto algorithm :
       {seal::Algorithm::kEd25519, seal::Algorithm::kEcdsaP256, seal::Algorithm::kRsa4096}) {
    const std::string name = std::string(seal::to_string(algorithm));
    const seal::PrivateKey key = make_key(dir, name, algorithm);
    const auto bytes = seal::seal_gap_marker(claim(), key);
    std::string why;
    const auto marker = seal::open_gap_marker(bytes, keys_of(dir, name), why);
    INFO(name << ": " << why);
    REQUIRE(marker);
    CHECK(marker->key_id == key.key_id());
    CHECK(marker->claim.stream_id == claim().stream_id);
    CHECK(marker->claim.first_seq == 100);
    CHECK(marker->claim.last_seq == 163);
    CHECK(marker->claim.records == 65536);
    CHECK(marker->claim.given_up_ns == claim().given_up_ns);
    CHECK(marker->claim.reason == claim().reason);
    const auto by_key =
        seal::open_gap_marker(bytes, seal::PublicKey::load(dir / (name + ".pub")), why);
    CHECK(by_key);
  }
}

TEST_CASE("a gap marker with any byte changed, another key or a reversed range is refused") {
  TempDir dir;
  const seal::PrivateKey key = make_key(dir, "probe");
  make_key(dir, "other");
  const auto bytes = seal::seal_gap_marker(claim(), key);
  const auto keys = keys_of(dir, "probe");
  std::string why;

  // Every single byte flipped: refused (or, where capnp padding is not read, still the same
  // claim, never another one that verifies).
  for (std::size_t i = 0; i < bytes.size(); ++i) {
    auto changed = bytes;
    changed[i] ^= 0x01;
    const auto marker = seal::open_gap_marker(changed, keys, why);
    if (marker) {
      CHECK(marker->claim.first_seq == 100);
      CHECK(marker->claim.last_seq == 163);
      CHECK(marker->claim.records == 65536);
    }
  }
  CHECK_FALSE(seal::open_gap_marker(bytes, keys_of(dir, "other"), why));
  CHECK(why.find("not a key of this store") != std::string::npos);
  CHECK_FALSE(seal::open_gap_marker(bytes, seal::PublicKey::load(dir / "other.pub"), why));

  seal::GapClaim reversed = claim();
  reversed.first_seq = 200;
  CHECK_FALSE(seal::open_gap_marker(seal::seal_gap_marker(reversed, key), keys, why));
  CHECK(why.find("after last seq") != std::string::npos);

  seal::GapClaim endless = claim();
  endless.last_seq = ~std::uint64_t{0};
  CHECK_FALSE(seal::open_gap_marker(seal::seal_gap_marker(endless, key), keys, why));
  CHECK(why.find("2^64-1") != std::string::npos);

  CHECK_FALSE(seal::open_gap_marker(std::vector<std::uint8_t>(7, 0), keys, why));
  CHECK_FALSE(seal::open_gap_marker(std::vector<std::uint8_t>(64, 0xff), keys, why));
  CHECK_FALSE(seal::open_gap_marker({}, keys, why));
}

TEST_CASE("the marker files of a store are found by name, checked, and the bad ones named") {
  TempDir dir;
  const seal::PrivateKey key = make_key(dir, "probe");
  const auto keys = keys_of(dir, "probe");
  CHECK(seal::gap_marker_file_name(100, 163) ==
        "gap-00000000000000000100-00000000000000000163.fgm");

  seal::GapClaim later = claim();
  later.first_seq = 300;
  later.last_seq = 301;
  write(dir / seal::gap_marker_file_name(300, 301), seal::seal_gap_marker(later, key));
  write(dir / seal::gap_marker_file_name(100, 163), seal::seal_gap_marker(claim(), key));
  // A good marker under a name that claims other batches.
  write(dir / seal::gap_marker_file_name(500, 600), seal::seal_gap_marker(claim(), key));
  // A symlink to a good marker is not followed.
  fs::create_symlink(dir / seal::gap_marker_file_name(100, 163),
                     dir / seal::gap_marker_file_name(700, 700));
  // A FIFO under a marker's name is refused, never waited on.
  REQUIRE(::mkfifo((dir / seal::gap_marker_file_name(800, 801)).c_str(), 0600) == 0);
  // Not marker names: ignored.
  write(dir / "gap-1-2.fgm", seal::seal_gap_marker(claim(), key));
  write(dir / "gap-0000000000000000010x-00000000000000000163.fgm",
        seal::seal_gap_marker(claim(), key));
  write(dir / "seg-00000000000000000000.fsg", {1, 2, 3});
  // Past 2^64-1: not a seq, so not a marker's name.
  write(dir / "gap-18446744073709551616-18446744073709551616.fgm",
        seal::seal_gap_marker(claim(), key));

  const auto named = seal::list_gap_marker_files(dir.path());
  REQUIRE(named.size() == 5);
  CHECK(named[0].first_seq == 100);
  CHECK(named[0].last_seq == 163);
  CHECK(named[0].path == dir / seal::gap_marker_file_name(100, 163));
  CHECK(named[1].first_seq == 300);
  CHECK(named[4].first_seq == 800);
  CHECK(named[4].last_seq == 801);
  std::vector<std::string> problems;
  const auto markers = seal::load_gap_markers(dir.path(), keys, problems);
  REQUIRE(markers.size() == 2);
  CHECK(markers[0].claim.first_seq == 100);
  CHECK(markers[1].claim.first_seq == 300);
  REQUIRE(problems.size() == 3);
  CHECK(problems[0].find("does not say the batches it covers") != std::string::npos);
  CHECK(problems[1].find("cannot open") != std::string::npos);         // the symlink
  CHECK(problems[2].find("not a regular file") != std::string::npos);  // the FIFO

  std::vector<std::string> none;
  CHECK(seal::load_gap_markers(dir / "missing", keys, none).empty());
  CHECK(none.empty());
}
