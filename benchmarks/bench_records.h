// Shared by the sealing and store benchmarks: records shaped like flowd's, and a throw-away
// Ed25519 key in a temporary directory (removed by the destructor).
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>

#include "flowseal.capnp.h"
#include "seal/keys.h"

namespace flowseal::bench {

namespace fs = std::filesystem;

// Records shaped like flowd's: addresses, ports, counters, Zeek state text, Community ID.
inline void fill(schema::FlowEvent::Builder e, std::uint64_t i) {
  e.setUid(i * 0x9E3779B97F4A7C15ull);
  e.setKind(schema::EventKind::END);
  e.setEventNumber(1);
  e.setEndReason(schema::EndReason::FIN);
  e.setProto(6);
  const std::uint8_t orig[4] = {10, 0, static_cast<std::uint8_t>(i >> 8),
                                static_cast<std::uint8_t>(i)};
  const std::uint8_t resp[4] = {192, 168, 1, static_cast<std::uint8_t>(i % 7)};
  e.setOrigAddr({orig, 4});
  e.setRespAddr({resp, 4});
  e.setOrigPort(static_cast<std::uint16_t>(30000 + i % 30000));
  e.setRespPort(443);
  e.setFirstTsNs(1'700'000'000'000'000'000 + static_cast<std::int64_t>(i) * 1'000'000);
  e.setLastTsNs(1'700'000'000'000'000'000 + static_cast<std::int64_t>(i) * 1'000'000 + 250'000'000);
  e.getOrig().setPkts(12 + i % 5);
  e.getOrig().setIpBytes(1400 + i % 300);
  e.getOrig().setBytes(800 + i % 300);
  e.getResp().setPkts(10 + i % 3);
  e.getResp().setIpBytes(9000 + i % 900);
  e.getResp().setBytes(8000 + i % 900);
  e.getOrig().setTcpFlags(0x1b);
  e.getResp().setTcpFlags(0x1b);
  e.setConnState("SF");
  e.setHistory("ShADadFf");
  e.setCommunityId("1:LQU9qZlK+B5F3KDmev6m5PMibrg=");
}

struct Key {
  fs::path dir;
  std::unique_ptr<seal::PrivateKey> key;
  Key() {
    std::string pattern = (fs::temp_directory_path() / "seal-bench.XXXXXX").string();
    if (::mkdtemp(pattern.data()) == nullptr) std::abort();
    dir = pattern;
    seal::generate_key_pair(seal::Algorithm::kEd25519, dir / "k.key", dir / "k.pub");
    key = std::make_unique<seal::PrivateKey>(seal::PrivateKey::load(dir / "k.key"));
  }
  ~Key() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
};

}  // namespace flowseal::bench
