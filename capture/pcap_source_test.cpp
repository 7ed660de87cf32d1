#include "pcap_source.h"

#include <catch2/catch.hpp>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "packet/decode.h"

namespace flowseal::capture {
namespace {

const std::string kData = FLOWSEAL_TEST_DATA;

struct Read {
  std::vector<Packet> packets;  // bytes are not kept: only the metadata is compared
  std::vector<std::uint8_t> protos;
};

Read read_all(PcapSource& source) {
  Read read;
  Packet packet;
  while (source.next(packet) == PcapSource::Status::kPacket) {
    packet::DecodedPacket d;
    read.protos.push_back(packet::decode(packet.link_type, packet.bytes, packet.wire_len, d) ==
                                  packet::DecodeStatus::kOk
                              ? d.key.proto
                              : 0);
    packet.bytes = {};
    read.packets.push_back(packet);
  }
  return read;
}

// kB of file-backed memory this process maps now (Pss_File of /proc/self/smaps_rollup).
std::uint64_t pss_file_kb() {
  std::ifstream in("/proc/self/smaps_rollup");
  in.ignore(1 << 10, '\n');  // "ADDR-ADDR ---p 00000000 00:00 0 [rollup]"
  std::string key;
  std::uint64_t value = 0;
  while (in >> key >> value) {
    if (key == "Pss_File:") return value;
    in.ignore(1 << 10, '\n');
  }
  return 0;
}

// A pcap of `bytes` (or a little more) made of one 1514-byte UDP frame repeated.
std::string write_big_pcap(std::uint64_t bytes) {
  const std::string path = std::string(std::getenv("TMPDIR") ? std::getenv("TMPDIR") : "/tmp") +
                           "/pcap_source_test_big_" + std::to_string(::getpid()) + ".pcap";
  std::ofstream out(path, std::ios::binary);
  auto u32 = [&](std::uint32_t v) { out.write(reinterpret_cast<const char*>(&v), 4); };
  auto u16 = [&](std::uint16_t v) { out.write(reinterpret_cast<const char*>(&v), 2); };
  u32(0xa1b2c3d4);
  u16(2);
  u16(4);
  u32(0);
  u32(0);
  u32(65535);
  u32(1);
  std::string frame(1514, '\0');
  frame[12] = 0x08;  // IPv4, then whatever: only the framing matters here
  std::uint64_t written = 24;
  for (std::uint32_t i = 0; written < bytes; ++i) {
    u32(1'700'000'000 + i / 1000);
    u32(i % 1000);
    u32(static_cast<std::uint32_t>(frame.size()));
    u32(static_cast<std::uint32_t>(frame.size()));
    out.write(frame.data(), static_cast<std::streamsize>(frame.size()));
    written += 16 + frame.size();
  }
  return path;
}

}  // namespace

TEST_CASE("files are read in the order given, each packet with its file's link type") {
  auto source = PcapSource::offline({kData + "/sample.pcap", kData + "/KakaoTalk_talk.pcap"}, "");
  const Read read = read_all(source);
  REQUIRE(read.packets.size() > 500);
  for (std::size_t i = 0; i < read.packets.size(); ++i) {
    INFO("packet " << i);
    CHECK(read.packets[i].link_type == (i < 500 ? 1 : 113));
  }
  CHECK(source.errors().empty());
  CHECK(source.bytes_read() == source.bytes_total());
}

TEST_CASE("a pcapng file with many interfaces gives every packet") {
  auto source = PcapSource::offline({kData + "/sites.pcapng"}, "");
  const Read read = read_all(source);
  CHECK(read.packets.size() == 699);
  CHECK(source.errors().empty());
  CHECK(source.skipped() == 0);
}

TEST_CASE("loop mode reads the files again, each pass later in time than the one before") {
  auto once = PcapSource::offline({kData + "/sample.pcap"}, "");
  const Read first = read_all(once);
  auto looped = PcapSource::offline({kData + "/sample.pcap"}, "", 3);
  const Read all = read_all(looped);
  REQUIRE(all.packets.size() == 3 * first.packets.size());
  const std::size_t n = first.packets.size();
  const std::int64_t span = first.packets.back().ts_ns - first.packets.front().ts_ns;
  for (std::size_t i = 0; i < all.packets.size(); ++i) {
    const std::uint32_t pass = static_cast<std::uint32_t>(i / n);
    REQUIRE(all.packets[i].pass == pass);
    REQUIRE(all.packets[i].ts_ns == first.packets[i % n].ts_ns + pass * (span + 1'000'000'000));
  }
  CHECK(looped.bytes_read() == looped.bytes_total());
}

TEST_CASE("loop mode stops, saying why, at the last pass whose times fit 64-bit nanoseconds") {
  // Two packets 136 years apart (1970 and 2106, the ends of pcap's 32-bit seconds): pass 1
  // reaches 2242, pass 2 would pass 2262 and wrap to times near -9.2e9 s.
  const std::string path = std::string(std::getenv("TMPDIR") ? std::getenv("TMPDIR") : "/tmp") +
                           "/pcap_source_test_span_" + std::to_string(::getpid()) + ".pcap";
  {
    std::ofstream out(path, std::ios::binary);
    auto u32 = [&](std::uint32_t v) { out.write(reinterpret_cast<const char*>(&v), 4); };
    auto u16 = [&](std::uint16_t v) { out.write(reinterpret_cast<const char*>(&v), 2); };
    u32(0xa1b2c3d4);  // microsecond pcap, little-endian
    u16(2);
    u16(4);
    u32(0);
    u32(0);
    u32(65535);
    u32(1);  // Ethernet
    const std::string frame(60, '\0');
    for (const std::uint32_t seconds : {1u, 0xFFFFFFF0u}) {
      u32(seconds);
      u32(0);
      u32(static_cast<std::uint32_t>(frame.size()));
      u32(static_cast<std::uint32_t>(frame.size()));
      out.write(frame.data(), static_cast<std::streamsize>(frame.size()));
    }
  }
  auto looped = PcapSource::offline({path}, "", 5);
  const Read all = read_all(looped);
  std::remove(path.c_str());
  REQUIRE(all.packets.size() == 4);
  for (const auto& p : all.packets) CHECK(p.ts_ns > 0);
  CHECK(all.packets[3].pass == 1);
  REQUIRE(looped.errors().size() == 1);
  CHECK_THAT(looped.errors()[0].message,
             Catch::Contains("loop mode: stopped after 2 of 5 passes") &&
                 Catch::Contains("past 2262-04-11"));
}

TEST_CASE("a BPF filter keeps only the packets it matches") {
  auto source = PcapSource::offline({kData + "/sample.pcap"}, "udp");
  const Read read = read_all(source);
  REQUIRE_FALSE(read.packets.empty());
  CHECK(read.packets.size() < 500);
  for (const auto proto : read.protos) CHECK(proto == 17);
}

TEST_CASE("a bad filter is a configuration error at start") {
  try {
    (void)PcapSource::offline({kData + "/sample.pcap"}, "tcp and and");
    FAIL("no error");
  } catch (const SourceStartError& e) {
    CHECK(e.exit_code == 78);
    CHECK(std::string(e.what()).find("tcp and and") != std::string::npos);
  }
}

TEST_CASE("a file that cannot be opened is an error naming it, and the next file is read") {
  auto source = PcapSource::offline({"/nonexistent/x.pcap", kData + "/sample.pcap"}, "");
  const Read read = read_all(source);
  CHECK(read.packets.size() == 500);
  REQUIRE(source.errors().size() == 1);
  CHECK(source.errors()[0].message ==
        "capture: /nonexistent/x.pcap: cannot open: No such file or directory");
}

TEST_CASE("reading a capture much larger than 32 MiB keeps file-backed memory under 32 MiB") {
  // Issue 12 target 7. Without the release behind the cursor, the mapping's pages stay in
  // the process and Pss_File grows with the bytes read (to ~96 MiB here).
  constexpr std::uint64_t kFile = std::uint64_t{96} << 20;
  const std::string path = write_big_pcap(kFile);
  auto source = PcapSource::offline({path}, "");
  Packet packet;
  std::uint64_t packets = 0, samples = 0, max_kb = 0, next_sample = 0;
  std::uint64_t sum = 0;
  while (source.next(packet) == PcapSource::Status::kPacket) {
    ++packets;
    sum += packet.bytes[packet.bytes.size() / 2] + packet.bytes[12];  // touch the bytes
    if (source.bytes_read() >= next_sample) {  // a sample every 4 MiB read, to the end
      max_kb = std::max(max_kb, pss_file_kb());
      ++samples;
      next_sample += std::uint64_t{4} << 20;
    }
  }
  ::unlink(path.c_str());
  CHECK(source.errors().empty());
  CHECK(source.bytes_read() == source.bytes_total());
  CHECK(sum == packets * 8);
  CHECK(samples >= 24);
  INFO("largest file-backed PSS while reading: " << max_kb << " kB");
  CHECK(max_kb > 0);
  CHECK(max_kb <= 32u * 1024);
}

TEST_CASE("a released range of a mapped file reads the same; the offset follows the release") {
  constexpr std::uint64_t kFile = std::uint64_t{12} << 20;
  const std::string path = write_big_pcap(kFile);
  std::string error;
  auto mapped = MappedFile::open(path, error);
  REQUIRE(mapped);
  const auto bytes = mapped->bytes();
  const std::vector<std::uint8_t> before(bytes.begin(), bytes.begin() + (6 << 20));
  mapped->release_before(MappedFile::kReleaseStep - 1);  // not a whole step yet
  CHECK(mapped->released() == 0);
  mapped->release_before((5u << 20) + 100);
  CHECK(mapped->released() == 5u << 20);
  CHECK(std::equal(before.begin(), before.end(), bytes.begin()));  // faulted back in
  mapped->release_before(std::uint64_t{1} << 40);  // past the end: up to the last page
  CHECK(mapped->released() == bytes.size() / 4096 * 4096);
  ::unlink(path.c_str());
}

TEST_CASE("the pages ahead of the cursor are mapped before the reader touches them") {
  constexpr std::uint64_t kFile = std::uint64_t{12} << 20;
  const std::string path = write_big_pcap(kFile);
  std::string error;
  auto mapped = MappedFile::open(path, error);
  REQUIRE(mapped);
  const auto bytes = mapped->bytes();
  auto minor_faults = [] {
    rusage usage{};
    ::getrusage(RUSAGE_SELF, &usage);
    return usage.ru_minflt;
  };
  mapped->release_before(0);  // maps [0, 2 * kReleaseStep) ahead of the cursor
  const long before = minor_faults();
  unsigned sum = 0;
  for (std::uint64_t at = 0; at < 2 * MappedFile::kReleaseStep; at += 4096) sum += bytes[at];
  const long faults = minor_faults() - before;
  INFO("minor faults touching 2048 pages already mapped: " << faults << " (sum " << sum << ")");
  // Without the populate call each page (or each fault-around group of 16) faults: 128+.
  CHECK(faults < 16);
  ::unlink(path.c_str());
}

// Pages of [data, data + size) in the page cache (mincore).
std::size_t resident_pages(const std::uint8_t* data, std::size_t size) {
  std::vector<unsigned char> resident((size + 4095) / 4096);
  REQUIRE(::mincore(const_cast<std::uint8_t*>(data), size, resident.data()) == 0);
  return static_cast<std::size_t>(
      std::count_if(resident.begin(), resident.end(), [](unsigned char r) { return r & 1; }));
}

// Reads the file's pages from disk into the page cache, or writes them back and evicts them.
void set_cached(const std::string& path, bool cached) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  REQUIRE(fd >= 0);
  ::fdatasync(fd);
  if (cached) {
    std::vector<char> buffer(1 << 20);
    while (::read(fd, buffer.data(), buffer.size()) > 0) {
    }
  } else {
    ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  }
  ::close(fd);
}

TEST_CASE("a file read once leaves the page cache behind the cursor; one already cached stays") {
  constexpr std::uint64_t kFile = std::uint64_t{12} << 20;
  const std::string path = write_big_pcap(kFile);
  for (const bool cached : {false, true}) {
    set_cached(path, cached);
    std::string error;
    auto mapped = MappedFile::open(path, error);
    REQUIRE(mapped);
    const auto bytes = mapped->bytes();
    if (!cached && resident_pages(bytes.data(), bytes.size()) > bytes.size() / 4096 / 2) {
      ::unlink(path.c_str());
      WARN("not checked: the kernel kept the evicted file in the page cache (tmpfs?)");
      return;
    }
    CHECK(mapped->drops_cache() == !cached);
    unsigned sum = 0;
    for (std::uint64_t at = 0; at < bytes.size(); at += 4096) {
      mapped->release_before(at);
      sum += bytes[at];
    }
    mapped->release_before(bytes.size());
    const std::size_t released_pages = mapped->released() / 4096;
    const std::size_t resident = resident_pages(bytes.data(), mapped->released());
    INFO("cached before: " << cached << ", released pages " << released_pages
                           << ", of them still in the page cache " << resident << " (sum " << sum
                           << ")");
    CHECK(released_pages >= 3000);
    if (cached) {
      CHECK(resident == released_pages);
    } else {
      CHECK(resident < released_pages / 10);
    }
  }
  ::unlink(path.c_str());
}

TEST_CASE("the link types the decoder knows are supported, others are not") {
  for (const int known : {0, 1, 12, 101, 105, 108, 113, 127, 228, 229, 276}) {
    CHECK(link_type_supported(known));
  }
  for (const int unknown : {147, 195, 226}) CHECK_FALSE(link_type_supported(unknown));
}

}  // namespace flowseal::capture
