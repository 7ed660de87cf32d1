#include "capture_file.h"

#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

namespace flowseal::capture {
namespace {

// Builds capture files byte by byte in either byte order.
struct Writer {
  bool big_endian = false;
  std::vector<std::uint8_t> bytes;

  void u8(std::uint8_t v) { bytes.push_back(v); }
  void u16(std::uint16_t v) {
    if (big_endian) {
      u8(static_cast<std::uint8_t>(v >> 8));
      u8(static_cast<std::uint8_t>(v));
    } else {
      u8(static_cast<std::uint8_t>(v));
      u8(static_cast<std::uint8_t>(v >> 8));
    }
  }
  void u32(std::uint32_t v) {
    if (big_endian) {
      u16(static_cast<std::uint16_t>(v >> 16));
      u16(static_cast<std::uint16_t>(v));
    } else {
      u16(static_cast<std::uint16_t>(v));
      u16(static_cast<std::uint16_t>(v >> 16));
    }
  }
  void data(const std::vector<std::uint8_t>& d) { bytes.insert(bytes.end(), d.begin(), d.end()); }
  void pad() {
    while (bytes.size() % 4 != 0) u8(0);
  }
};

std::vector<std::uint8_t> payload(std::size_t n, std::uint8_t seed) {
  std::vector<std::uint8_t> d(n);
  for (std::size_t i = 0; i < n; ++i) d[i] = static_cast<std::uint8_t>(seed + i);
  return d;
}

Writer pcap_header(std::uint32_t magic, bool big_endian, std::uint32_t snaplen = 65535,
                   std::uint32_t link_type = 1) {
  Writer w;
  w.big_endian = big_endian;
  w.u32(magic);
  w.u16(2);
  w.u16(4);
  w.u32(0);
  w.u32(0);
  w.u32(snaplen);
  w.u32(link_type);
  return w;
}

void pcap_record(Writer& w, std::uint32_t sec, std::uint32_t frac,
                 const std::vector<std::uint8_t>& d, std::uint32_t wire = 0) {
  w.u32(sec);
  w.u32(frac);
  w.u32(static_cast<std::uint32_t>(d.size()));
  w.u32(wire ? wire : static_cast<std::uint32_t>(d.size()));
  w.data(d);
}

void shb(Writer& w) {
  w.u32(0x0a0d0d0a);
  w.u32(28);
  w.u32(0x1a2b3c4d);
  w.u16(1);
  w.u16(0);
  w.u32(0xffffffff);
  w.u32(0xffffffff);
  w.u32(28);
}

void idb(Writer& w, std::uint16_t link_type, std::uint32_t snaplen, int tsresol = -1) {
  const std::uint32_t length = 20 + (tsresol >= 0 ? 12 : 0);
  w.u32(1);
  w.u32(length);
  w.u16(link_type);
  w.u16(0);
  w.u32(snaplen);
  if (tsresol >= 0) {
    w.u16(9);
    w.u16(1);
    w.u8(static_cast<std::uint8_t>(tsresol));
    w.pad();
    w.u16(0);
    w.u16(0);
  }
  w.u32(length);
}

void epb(Writer& w, std::uint32_t iface, std::uint64_t ts, const std::vector<std::uint8_t>& d,
         std::uint32_t caplen_override = 0) {
  const auto padded = (d.size() + 3) & ~std::size_t{3};
  const auto length = static_cast<std::uint32_t>(32 + padded);
  w.u32(6);
  w.u32(length);
  w.u32(iface);
  w.u32(static_cast<std::uint32_t>(ts >> 32));
  w.u32(static_cast<std::uint32_t>(ts));
  w.u32(caplen_override ? caplen_override : static_cast<std::uint32_t>(d.size()));
  w.u32(static_cast<std::uint32_t>(d.size()));
  w.data(d);
  w.pad();
  w.u32(length);
}

struct Result {
  std::vector<FileRecord> records;
  std::vector<FileProblem> problems;
  bool opened = false;
};

Result read_all(const std::vector<std::uint8_t>& file) {
  Result result;
  auto reader = CaptureFileReader::open(
      file, [&](const FileProblem& p) { result.problems.push_back(p); },
      [](int link) { return link == 1 || link == 101 || link == 113; });
  if (!reader) return result;
  result.opened = true;
  FileRecord record;
  while (reader->next(record)) result.records.push_back(record);
  return result;
}

}  // namespace

TEST_CASE("a microsecond pcap in either byte order gives its records with times in ns") {
  for (const bool big : {false, true}) {
    Writer w = pcap_header(0xa1b2c3d4, big);
    pcap_record(w, 100, 250, payload(60, 1));
    pcap_record(w, 101, 999999, payload(42, 2), 1500);
    const Result r = read_all(w.bytes);
    REQUIRE(r.problems.empty());
    REQUIRE(r.records.size() == 2);
    CHECK(r.records[0].ts_ns == 100'000'250'000);
    CHECK(r.records[0].bytes.size() == 60);
    CHECK(r.records[0].bytes[0] == 1);
    CHECK(r.records[0].link_type == 1);
    CHECK(r.records[1].ts_ns == 101'999'999'000);
    CHECK(r.records[1].wire_len == 1500);
  }
}

TEST_CASE("a nanosecond pcap in either byte order keeps nanosecond times") {
  for (const bool big : {false, true}) {
    Writer w = pcap_header(0xa1b23c4d, big, 65535, 101);
    pcap_record(w, 7, 123456789, payload(20, 9));
    const Result r = read_all(w.bytes);
    REQUIRE(r.records.size() == 1);
    CHECK(r.records[0].ts_ns == 7'123'456'789);
    CHECK(r.records[0].link_type == 101);
  }
}

TEST_CASE("a pcapng file with interfaces of different link types tags each packet with its own") {
  for (const bool big : {false, true}) {
    Writer w;
    w.big_endian = big;
    shb(w);
    idb(w, 1, 0);               // Ethernet, microseconds (default)
    idb(w, 113, 128, 9);        // Linux cooked, nanoseconds
    idb(w, 101, 0, 0x80 | 10);  // raw IP, 2^-10 s
    epb(w, 0, 5'000'001, payload(60, 1));
    epb(w, 1, 5'000'000'007, payload(50, 2));
    epb(w, 2, 3 * 1024 + 512, payload(21, 3));
    const Result r = read_all(w.bytes);
    REQUIRE(r.problems.empty());
    REQUIRE(r.records.size() == 3);
    CHECK(r.records[0].link_type == 1);
    CHECK(r.records[0].ts_ns == 5'000'001'000);
    CHECK(r.records[1].link_type == 113);
    CHECK(r.records[1].interface == 1);
    CHECK(r.records[1].ts_ns == 5'000'000'007);
    CHECK(r.records[2].link_type == 101);
    CHECK(r.records[2].ts_ns == 3'500'000'000);
    CHECK(r.records[2].bytes.size() == 21);
  }
}

TEST_CASE("a second pcapng section starts over with its own byte order and interfaces") {
  Writer w;
  shb(w);
  idb(w, 1, 0);
  epb(w, 0, 1, payload(30, 1));
  Writer second;
  second.big_endian = true;
  shb(second);
  idb(second, 113, 0);
  epb(second, 0, 2, payload(40, 2));
  w.data(second.bytes);
  const Result r = read_all(w.bytes);
  REQUIRE(r.problems.empty());
  REQUIRE(r.records.size() == 2);
  CHECK(r.records[0].link_type == 1);
  CHECK(r.records[1].link_type == 113);
  CHECK(r.records[1].bytes.size() == 40);
}

TEST_CASE("a file that stops mid-record reports that record's offset after the good records") {
  Writer w = pcap_header(0xa1b2c3d4, false);
  pcap_record(w, 1, 0, payload(60, 1));
  pcap_record(w, 2, 0, payload(60, 2));
  const std::size_t second_at = 24 + 16 + 60;
  w.bytes.resize(w.bytes.size() - 10);
  const Result r = read_all(w.bytes);
  REQUIRE(r.records.size() == 1);
  REQUIRE(r.problems.size() == 1);
  CHECK(r.problems[0].fatal);
  CHECK(r.problems[0].record == 2);
  CHECK(r.problems[0].offset == second_at);
  CHECK(r.problems[0].what.find("stops mid-record") != std::string::npos);
}

TEST_CASE("a record header cut short is reported as the file stopping mid-record") {
  Writer w = pcap_header(0xa1b2c3d4, false);
  pcap_record(w, 1, 0, payload(60, 1));
  w.u32(5);  // 4 of 16 header bytes
  const Result r = read_all(w.bytes);
  REQUIRE(r.records.size() == 1);
  REQUIRE(r.problems.size() == 1);
  CHECK(r.problems[0].offset == 24 + 16 + 60);
  CHECK(r.problems[0].what.find("4 of 16 record header bytes") != std::string::npos);
}

TEST_CASE("a caplen over the snaplen is reported and skipped and reading goes on") {
  Writer w = pcap_header(0xa1b2c3d4, false, 64);
  pcap_record(w, 1, 0, payload(60, 1));
  pcap_record(w, 2, 0, payload(100, 2));
  pcap_record(w, 3, 0, payload(64, 3));
  const Result r = read_all(w.bytes);
  REQUIRE(r.records.size() == 2);
  CHECK(r.records[1].bytes[0] == 3);
  REQUIRE(r.problems.size() == 1);
  CHECK_FALSE(r.problems[0].fatal);
  CHECK(r.problems[0].record == 2);
  CHECK(r.problems[0].offset == 24 + 16 + 60);
  CHECK(r.problems[0].what == "caplen 100 exceeds snaplen 64: record skipped");
}

TEST_CASE("a caplen no capture could hold ends the file instead of reading garbage") {
  Writer w = pcap_header(0xa1b2c3d4, false, 0);
  pcap_record(w, 1, 0, payload(60, 1));
  w.u32(2);
  w.u32(0);
  w.u32(0x7fffffff);
  w.u32(0x7fffffff);
  const Result r = read_all(w.bytes);
  REQUIRE(r.records.size() == 1);
  REQUIRE(r.problems.size() == 1);
  CHECK(r.problems[0].fatal);
  CHECK(r.problems[0].what.find("caplen 2147483647") != std::string::npos);
}

TEST_CASE("a zero-length packet is reported and skipped") {
  Writer w = pcap_header(0xa1b2c3d4, false);
  pcap_record(w, 1, 0, {}, 60);
  pcap_record(w, 2, 0, payload(60, 2));
  const Result r = read_all(w.bytes);
  REQUIRE(r.records.size() == 1);
  REQUIRE(r.problems.size() == 1);
  CHECK(r.problems[0].offset == 24);
  CHECK(r.problems[0].what.find("zero-length packet") != std::string::npos);
}

TEST_CASE("a file that is not a capture is reported at offset 0 with its magic number") {
  const std::string text = "this is not a capture file at all\n";
  const Result r = read_all({text.begin(), text.end()});
  CHECK_FALSE(r.opened);
  REQUIRE(r.problems.size() == 1);
  CHECK(r.problems[0].offset == 0);
  CHECK(r.problems[0].what.find("not a pcap or pcapng file (magic number") != std::string::npos);
  CHECK_FALSE(read_all({}).opened);
  CHECK_FALSE(read_all({0xd4, 0xc3, 0xb2, 0xa1, 2, 0}).opened);
}

TEST_CASE("an unsupported link type is named: a pcap file ends, a pcapng interface is skipped") {
  Writer w = pcap_header(0xa1b2c3d4, false, 65535, 195);
  pcap_record(w, 1, 0, payload(60, 1));
  Result r = read_all(w.bytes);
  CHECK_FALSE(r.opened);
  REQUIRE(r.problems.size() == 1);
  CHECK(r.problems[0].what == "link type 195 (IEEE802_15_4) is not supported");

  Writer ng;
  shb(ng);
  idb(ng, 195, 0);
  idb(ng, 1, 0);
  epb(ng, 0, 1, payload(60, 1));
  epb(ng, 1, 2, payload(60, 2));
  epb(ng, 0, 3, payload(60, 3));
  r = read_all(ng.bytes);
  REQUIRE(r.records.size() == 1);
  CHECK(r.records[0].bytes[0] == 2);
  REQUIRE(r.problems.size() == 1);  // once per interface, not per packet
  CHECK(r.problems[0].what.find("interface 0: link type 195") != std::string::npos);
}

TEST_CASE(
    "pcapng packets on an undescribed interface or with a caplen over their block are skipped") {
  Writer w;
  shb(w);
  idb(w, 1, 0);
  epb(w, 3, 1, payload(60, 1));
  epb(w, 0, 2, payload(20, 2), 400);
  epb(w, 0, 3, payload(20, 3));
  const Result r = read_all(w.bytes);
  REQUIRE(r.records.size() == 1);
  CHECK(r.records[0].bytes[0] == 3);
  REQUIRE(r.problems.size() == 2);
  CHECK(r.problems[0].what.find("interface 3") != std::string::npos);
  CHECK(r.problems[1].what.find("caplen 400 exceeds") != std::string::npos);
}

TEST_CASE("a pcapng block whose trailing length disagrees ends the file") {
  Writer w;
  shb(w);
  idb(w, 1, 0);
  epb(w, 0, 1, payload(60, 1));
  const std::size_t second_at = w.bytes.size();
  epb(w, 0, 2, payload(60, 2));
  w.bytes[w.bytes.size() - 4] ^= 0x40;
  const Result r = read_all(w.bytes);
  REQUIRE(r.records.size() == 1);
  REQUIRE(r.problems.size() == 1);
  CHECK(r.problems[0].fatal);
  CHECK(r.problems[0].offset == second_at);
}

TEST_CASE("every truncation and every flipped bit of a valid file is read without harm") {
  // The KJ habit: damage the encoding everywhere and make sure the reader only rejects.
  Writer pcap = pcap_header(0xa1b2c3d4, false);
  pcap_record(pcap, 1, 0, payload(40, 1));
  pcap_record(pcap, 2, 0, payload(30, 2));
  Writer ng;
  shb(ng);
  idb(ng, 1, 0, 9);
  epb(ng, 0, 1, payload(40, 1));
  epb(ng, 0, 2, payload(30, 2));
  struct Case {
    const std::vector<std::uint8_t>* file;
    std::vector<std::size_t> ends;  // where a whole header or record ends
  };
  // pcap: header 24, records of 16 + 40 and 16 + 30; pcapng: SHB 28, IDB 32, EPBs 72 and 64.
  for (const Case& c : {Case{&pcap.bytes, {24, 80, 126}}, Case{&ng.bytes, {28, 60, 132, 196}}}) {
    const auto* file = c.file;
    REQUIRE(file->size() == c.ends.back());
    const Result whole = read_all(*file);
    REQUIRE(whole.records.size() == 2);
    for (std::size_t cut = 0; cut < file->size(); ++cut) {
      const std::vector<std::uint8_t> head(file->begin(), file->begin() + static_cast<long>(cut));
      const Result r = read_all(head);
      const auto whole_records =
          std::count_if(c.ends.begin() + (c.file == &ng.bytes ? 2 : 1), c.ends.end(),
                        [&](std::size_t e) { return e <= cut; });
      const bool at_boundary = std::find(c.ends.begin(), c.ends.end(), cut) != c.ends.end();
      INFO("cut at " << cut);
      CHECK(r.records.size() == static_cast<std::size_t>(whole_records));
      CHECK(r.problems.empty() == at_boundary);
    }
    for (std::size_t bit = 0; bit < file->size() * 8; ++bit) {
      std::vector<std::uint8_t> damaged = *file;
      damaged[bit / 8] ^= static_cast<std::uint8_t>(1u << (bit % 8));
      const Result r = read_all(damaged);
      for (const auto& record : r.records) {
        CHECK(record.bytes.data() >= damaged.data());
        CHECK(record.bytes.data() + record.bytes.size() <= damaged.data() + damaged.size());
      }
    }
  }
}

TEST_CASE("pcapng timestamps convert from every resolution without overflow") {
  CHECK(pcapng_time_ns(1'500'000, false, 6) == 1'500'000'000);
  CHECK(pcapng_time_ns(123, false, 9) == 123);
  CHECK(pcapng_time_ns(1'000'000'000'000, false, 12) == 1'000'000'000);
  CHECK(pcapng_time_ns(std::uint64_t{3} << 40, true, 40) == 3'000'000'000);
  CHECK(pcapng_time_ns(1ULL << 62, true, 63) == 500'000'000);
  CHECK(pcapng_time_ns(5, false, 0) == 5'000'000'000);
  CHECK(pcapng_time_ns(5, false, 0, 10) == 15'000'000'000);
}

TEST_CASE("a pcapng time outside 1970..2116 is refused whatever the resolution and offset") {
  constexpr std::uint64_t kAll = ~std::uint64_t{0};
  // Every exponent either resolution can name, the largest count, the largest offsets:
  // defined arithmetic (UBSan checks this in the sanitizer build), an answer in range or none.
  for (int exp = 0; exp < 128; ++exp) {
    for (bool pow2 : {false, true}) {
      for (std::int64_t offset : {std::int64_t{0}, std::numeric_limits<std::int64_t>::max(),
                                  std::numeric_limits<std::int64_t>::min()}) {
        for (std::uint64_t units : {std::uint64_t{0}, std::uint64_t{1}, kAll}) {
          const auto ns = pcapng_time_ns(units, pow2, static_cast<std::uint8_t>(exp), offset);
          if (ns) CHECK((*ns >= 0 && *ns <= kMaxPacketTimeNs));
        }
      }
    }
  }
  CHECK_FALSE(pcapng_time_ns(kAll, false, 6));   // past int64 nanoseconds
  CHECK_FALSE(pcapng_time_ns(1, false, 6, -1));  // before 1970
  CHECK_FALSE(pcapng_time_ns(0, false, 6, std::int64_t{1} << 62));
  CHECK(pcapng_time_ns(std::uint64_t{kMaxPacketTimeNs}, false, 9) == kMaxPacketTimeNs);
  CHECK_FALSE(pcapng_time_ns(std::uint64_t{kMaxPacketTimeNs} + 1, false, 9));
}

namespace {

// An interface description with if_tsresol and if_tsoffset (little-endian sections only).
void idb_with_time(Writer& w, int tsresol, std::int64_t tsoffset) {
  const std::uint32_t length = 20 + 8 + 12 + 4;
  w.u32(1);
  w.u32(length);
  w.u16(1);
  w.u16(0);
  w.u32(65535);
  w.u16(9);  // if_tsresol
  w.u16(1);
  w.u8(static_cast<std::uint8_t>(tsresol));
  w.pad();
  w.u16(14);  // if_tsoffset
  w.u16(8);
  w.u32(static_cast<std::uint32_t>(static_cast<std::uint64_t>(tsoffset)));
  w.u32(static_cast<std::uint32_t>(static_cast<std::uint64_t>(tsoffset) >> 32));
  w.u16(0);
  w.u16(0);
  w.u32(length);
}

struct TimedRead {
  Result result;
  std::uint64_t bad_times = 0;
  std::uint64_t skipped = 0;
};

TimedRead read_timed(const std::vector<std::uint8_t>& file) {
  TimedRead out;
  auto reader = CaptureFileReader::open(
      file, [&](const FileProblem& p) { out.result.problems.push_back(p); },
      [](int link) { return link == 1; });
  REQUIRE(reader);
  FileRecord record;
  while (reader->next(record)) out.result.records.push_back(record);
  out.bad_times = reader->bad_times();
  out.skipped = reader->skipped();
  return out;
}

}  // namespace

TEST_CASE("a packet whose time cannot be carried is dropped, counted and named as a warning") {
  constexpr std::int64_t kNearMax = std::numeric_limits<std::int64_t>::max() - 5;
  constexpr std::int64_t kNearMin = std::numeric_limits<std::int64_t>::min() + 5;
  struct Case {
    int tsresol;
    std::int64_t offset;
    std::uint64_t units;
  };
  for (const Case c : {Case{6, kNearMax, 1'000'000}, Case{6, kNearMin, 1'000'000},
                       Case{6, 0, ~std::uint64_t{0}}, Case{9, -2, 1'000'000'000}}) {
    Writer w;
    shb(w);
    idb_with_time(w, c.tsresol, c.offset);
    epb(w, 0, 1'600'000'000ULL * 1'000'000 / (c.tsresol == 9 ? 1 : 1), payload(60, 1));
    epb(w, 0, c.units, payload(60, 2));  // record 2: the bad time
    const TimedRead read = read_timed(w.bytes);
    INFO("tsresol " << c.tsresol << " offset " << c.offset << " units " << c.units);
    CHECK(read.bad_times == (c.offset == 0 || c.offset == -2 ? 1u : 2u));
    CHECK(read.skipped == 0);  // a cause of its own, not "bad records"
    REQUIRE_FALSE(read.result.problems.empty());
    const FileProblem& p = read.result.problems.back();
    CHECK(p.warning);
    CHECK_FALSE(p.fatal);
    CHECK(p.record == 2);
    CHECK_THAT(p.what, Catch::Contains("record dropped") && Catch::Contains("1970 and 2116"));
    for (const auto& r : read.result.records) CHECK((r.ts_ns >= 0 && r.ts_ns <= kMaxPacketTimeNs));
  }
}

TEST_CASE("if_tsresol finer than a 64-bit count can use (2^-100, 2^-127) falls back to 10^-6") {
  for (int tsresol : {0xe4, 0xff}) {
    Writer w;
    shb(w);
    idb_with_time(w, tsresol, 0);
    epb(w, 0, 1'600'000'000ULL * 1'000'000, payload(60, 1));
    const TimedRead read = read_timed(w.bytes);
    REQUIRE(read.result.records.size() == 1);
    CHECK(read.result.records[0].ts_ns == 1'600'000'000LL * 1'000'000'000);
    REQUIRE(read.result.problems.size() == 1);
    CHECK_THAT(read.result.problems[0].what,
               Catch::Contains("if_tsresol 2^-" + std::to_string(tsresol & 0x7f)) &&
                   Catch::Contains("out of range"));
  }
}

}  // namespace flowseal::capture
