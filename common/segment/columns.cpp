#include "segment/columns.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cstring>
#include <string_view>
#include <unordered_map>

#include <capnp/any.h>
#include <capnp/message.h>
#include <capnp/serialize.h>
#include <fmt/format.h>
#include <kj/exception.h>
#include <openssl/evp.h>

#include "flowseal.capnp.h"
#include "packet/flow_id.h"
#include "record/direction.h"
#include "record_list.h"

namespace flowseal::segment {
namespace {

using schema::FlowEvent;

using record::DirectionStats;
using record::index_of;
using record::kSides;
using record::Side;

// Each side's columns (docs/FORMAT.md, "Columns"): packets, IP bytes as their overhead over
// the payload bytes, payload bytes, TCP flags, size min, max - min, sum of squares;
// inter-arrival min, max - min, sum, sum of squares (the raw float64 bits); retransmissions;
// locality (format 3 only).
enum DirectionColumn : std::size_t {
  kPkts,
  kIpOverhead,
  kBytes,
  kTcpFlags,
  kSizeMin,
  kSizeSpan,
  kSizeSumSq,
  kIatMin,
  kIatSpan,
  kIatSum,
  kIatSumSq,
  kRexmits,
  kLocal,
  kDirectionColumns
};
constexpr std::array<std::string_view, kDirectionColumns> kDirectionColumnNames = {
    "Pkts",   "IpOverhead", "Bytes",  "TcpFlags", "SizeMin", "SizeSpan", "SizeSumSq",
    "IatMin", "IatSpan",    "IatSum", "IatSumSq", "Rexmits", "Local"};

// Every column, in format 3's stored order: the record's own columns, then the originator's
// kDirectionColumns, then the responder's.
enum Column : std::size_t {
  kFlags,
  kShard,
  kUid,
  kKind,
  kEventNumber,
  kEndReason,
  kSamplingRate,
  kProto,
  kAddresses,
  kOrigAddr,
  kRespAddr,
  kOrigPort,
  kRespPort,
  kVlan,
  kFirstTs,
  kDuration,
  kTexts,
  kConnState,
  kHistory,
  kCommunityId,
  kFlowCount,
  kFirstUid,
  kLastUid,
  // Per record 0 (null) or 1 + the parent count, then each parent uid (8 bytes).
  kTunnelParents,
  kMissedBytes,
  kService,
  kDirections,
  kColumnCount = kDirections + 2 * kDirectionColumns
};
constexpr std::array<std::string_view, kDirections> kRecordColumnNames = {
    "flags",        "shard",       "uid",       "kind",     "eventNumber", "endReason",
    "samplingRate", "proto",       "addresses", "origAddr", "respAddr",    "origPort",
    "respPort",     "vlan",        "firstTs",   "duration", "texts",       "connState",
    "history",      "communityId", "flowCount", "firstUid", "lastUid",     "tunnelParents",
    "missedBytes",  "service"};

constexpr Column column_of(Side side, DirectionColumn c) {
  return static_cast<Column>(kDirections + index_of(side) * kDirectionColumns + c);
}
std::string column_name(std::size_t c) {
  if (c < kDirections) return std::string(kRecordColumnNames[c]);
  const std::size_t d = c - kDirections;
  return fmt::format("{}{}", d < kDirectionColumns ? "orig" : "resp",
                     kDirectionColumnNames[d % kDirectionColumns]);
}

// Format 2's 48 columns in their stored order (docs/FORMAT.md), as format 3's columns; its
// encoding 1 stored all but the last (tunnelParents).
constexpr std::size_t kFormat2Columns = 48;
constexpr std::array<Column, kFormat2Columns> kFormat2Order = [] {
  std::array<Column, kFormat2Columns> order{};
  std::size_t n = 0;
  for (const Column c :
       {kFlags, kShard, kUid, kKind, kEventNumber, kEndReason, kSamplingRate, kProto, kAddresses,
        kOrigAddr, kRespAddr, kOrigPort, kRespPort, kVlan, kFirstTs, kDuration}) {
    order[n++] = c;
  }
  for (const Side side : kSides) {
    for (const DirectionColumn c : {kPkts, kIpOverhead, kBytes}) order[n++] = column_of(side, c);
  }
  for (const Side side : kSides) order[n++] = column_of(side, kTcpFlags);
  for (const Column c :
       {kTexts, kConnState, kHistory, kCommunityId, kFlowCount, kFirstUid, kLastUid}) {
    order[n++] = c;
  }
  for (const Side side : kSides) {
    for (const DirectionColumn c :
         {kSizeMin, kSizeSpan, kSizeSumSq, kIatMin, kIatSpan, kIatSum, kIatSumSq, kRexmits}) {
      order[n++] = column_of(side, c);
    }
  }
  order[n++] = kTunnelParents;
  return order;
}();
constexpr std::array<Column, kColumnCount> kFormat3Order = [] {
  std::array<Column, kColumnCount> order{};
  for (std::size_t i = 0; i < kColumnCount; ++i) order[i] = static_cast<Column>(i);
  return order;
}();

// How a batch encoding lays out its columns.
struct Layout {
  std::span<const Column> stored;  // the columns it holds, in stored order
  bool format3;                    // records in format 3's layout (Direction structs)
  bool tunnel_parents;             // it has the tunnelParents column
};
constexpr Layout kFormat3Layout{kFormat3Order, true, true};
constexpr Layout kFormat2Layout{kFormat2Order, false, true};
constexpr Layout kFormat2NoParentsLayout{
    std::span<const Column>(kFormat2Order).first(kFormat2Columns - 1), false, false};

// Per-record flags.
constexpr std::uint64_t kUidDerived = 1;          // uid = flow_uid(key hash, firstTs, shard)
constexpr std::uint64_t kCommunityIdDerived = 2;  // communityId = community_id(seed, 5-tuple)
constexpr std::uint64_t kFirstUidIsUid = 4;
constexpr std::uint64_t kLastUidIsUid = 8;
constexpr std::uint64_t kAllFlags = 15;

constexpr std::uint32_t kOneBits = 0x3F800000u;  // 1.0f, samplingRate's default
constexpr std::uint64_t kMaxTsScale = 18;        // 10^18 still fits an int64
constexpr std::uint32_t kShardsTried = 64;       // flowd.shards is 1..8
constexpr std::uint64_t kMaxRecords = 1u << 20;  // seal.batch_records' maximum
// Every record takes at least one byte in each of these many per-record columns, so a batch
// of n records is at least n * kMinRecordBytes long: a forged count cannot make the decoder
// allocate more than a few times the bytes it was given.
constexpr std::size_t kMinRecordBytes = 39;

constexpr std::array<std::int64_t, kMaxTsScale + 1> kPow10 = [] {
  std::array<std::int64_t, kMaxTsScale + 1> p{};
  p[0] = 1;
  for (std::size_t i = 1; i < p.size(); ++i) p[i] = p[i - 1] * 10;
  return p;
}();

void put_varint(std::vector<std::uint8_t>& out, std::uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<std::uint8_t>(v) | 0x80);
    v >>= 7;
  }
  out.push_back(static_cast<std::uint8_t>(v));
}
void put_u64(std::vector<std::uint8_t>& out, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
}
std::uint64_t zigzag(std::uint64_t v) {  // v: an int64 in two's complement
  return (v << 1) ^ (0 - (v >> 63));
}
std::uint64_t unzigzag(std::uint64_t v) { return (v >> 1) ^ (0 - (v & 1)); }

// A 32-bit field stored as its signed distance from another: every value it can take maps
// to exactly one stored number (below kSizeSpanLimit), so no damaged high bit can hide.
constexpr std::uint64_t kSizeSpanLimit = (std::uint64_t{1} << 33) - 1;
std::uint64_t size_span(std::uint32_t min, std::uint32_t max) {
  return zigzag(static_cast<std::uint64_t>(std::int64_t{max} - std::int64_t{min}));
}
// nullopt if min + span leaves the 32-bit range.
std::optional<std::uint32_t> size_from_span(std::uint64_t min, std::uint64_t stored) {
  const std::int64_t v =
      static_cast<std::int64_t>(min) + static_cast<std::int64_t>(unzigzag(stored));
  if (v < 0 || v > 0xFFFFFFFFll) return std::nullopt;
  return static_cast<std::uint32_t>(v);
}

std::span<const std::uint8_t> bytes_of(capnp::Data::Reader d) { return {d.begin(), d.size()}; }
std::span<const std::uint8_t> bytes_of(capnp::Text::Reader t) {
  return {reinterpret_cast<const std::uint8_t*>(t.begin()), t.size()};
}

// The flow key hash flowd built the uid on, from the record's 5-tuple and VLAN.
std::optional<std::uint64_t> key_hash(std::uint8_t proto, std::span<const std::uint8_t> orig,
                                      std::span<const std::uint8_t> resp, std::uint16_t orig_port,
                                      std::uint16_t resp_port, std::uint16_t vlan) {
  if ((orig.size() != 4 && orig.size() != 16) || resp.size() != orig.size()) return std::nullopt;
  packet::FlowKey key;
  std::memcpy(key.src.data(), orig.data(), orig.size());
  std::memcpy(key.dst.data(), resp.data(), resp.size());
  key.src_port = orig_port;
  key.dst_port = resp_port;
  key.vlan = vlan;
  key.proto = proto;
  key.ip_version = orig.size() == 4 ? 4 : 6;
  return packet::symmetric_hash64(key);
}

// The data-section bits that belong to some FlowEvent field of format 3 (the format-2 flat
// fields are not among them). A record with any other bit set (a field of a newer schema, a
// format-2 field, or junk) cannot be rebuilt from its fields.
std::vector<std::uint8_t> known_field_bits() {
  capnp::MallocMessageBuilder m;
  auto e = m.initRoot<FlowEvent>();
  e.setUid(~0ull);
  e.setKind(static_cast<schema::EventKind>(0xFFFF));
  e.setEventNumber(~0u);
  e.setEndReason(static_cast<schema::EndReason>(0xFFFF));
  e.setSamplingRate(std::bit_cast<float>(~kOneBits));  // stored XOR the default: all ones
  e.setProto(0xFF);
  e.setOrigPort(0xFFFF);
  e.setRespPort(0xFFFF);
  e.setVlan(0xFFFF);
  e.setFirstTsNs(-1);
  e.setLastTsNs(-1);
  e.setFlowCount(~1u);  // stored XOR the default 1: all ones
  e.setFirstUid(~0ull);
  e.setLastUid(~0ull);
  e.setMissedBytes(~0ull);
  const auto data = capnp::AnyStruct::Reader(e.asReader()).getDataSection();
  return {data.begin(), data.end()};
}
// The same for a Direction struct.
std::vector<std::uint8_t> known_direction_bits() {
  capnp::MallocMessageBuilder m;
  auto d = m.initRoot<schema::Direction>();
  DirectionStats{~0ull,
                 ~0ull,
                 ~0ull,
                 0xFF,
                 ~0u,
                 ~0u,
                 ~0ull,
                 ~0ull,
                 ~0ull,
                 ~0ull,
                 std::bit_cast<double>(~0ull),
                 ~0u,
                 static_cast<schema::Locality>(0xFFFF)}
      .write(d);
  const auto data = capnp::AnyStruct::Reader(d.asReader()).getDataSection();
  return {data.begin(), data.end()};
}
// True if no bit of `data` lies outside `known`. Eight bytes at a time (data and mask loaded
// the same way, so byte order does not matter): a record's data sections are 392 bytes,
// and a byte loop over them was a third of the encoder's work.
bool only_known_bits(kj::ArrayPtr<const kj::byte> data, const std::vector<std::uint8_t>& known) {
  const std::size_t whole = std::min(data.size(), known.size()) / 8 * 8;
  for (std::size_t i = 0; i < whole; i += 8) {
    std::uint64_t d = 0, k = 0;
    std::memcpy(&d, data.begin() + i, 8);
    std::memcpy(&k, known.data() + i, 8);
    if ((d & ~k) != 0) return false;
  }
  for (std::size_t i = whole; i < data.size(); ++i) {
    const std::uint8_t k = i < known.size() ? known[i] : 0;
    if ((static_cast<std::uint8_t>(data[i]) & ~k) != 0) return false;
  }
  return true;
}
// origAddr, respAddr, connState, history, communityId, tunnelParents, orig, resp, service
constexpr unsigned kPointerFields = 9;
constexpr unsigned kTunnelParentsPointer = 5;

// A batch-wide dictionary of byte strings (addresses; texts), entry 0 first seen first.
class Dictionary {
 public:
  std::uint32_t add(bool present, std::span<const std::uint8_t> bytes) {
    if (!present) {
      if (!null_index_) null_index_ = append(false, bytes);
      return *null_index_;
    }
    std::string key(reinterpret_cast<const char*>(bytes.data()), bytes.size());
    auto [it, inserted] = index_.try_emplace(std::move(key), count_);
    if (inserted) append(true, bytes);
    return it->second;
  }
  void write(std::vector<std::uint8_t>& out) const {
    put_varint(out, count_);
    out.insert(out.end(), entries_.begin(), entries_.end());
  }
  void clear() {
    index_.clear();
    null_index_.reset();
    entries_.clear();
    count_ = 0;
  }

 private:
  std::uint32_t append(bool present, std::span<const std::uint8_t> bytes) {
    put_varint(entries_, present ? bytes.size() + 1 : 0);  // 0: a null pointer
    entries_.insert(entries_.end(), bytes.begin(), bytes.end());
    return count_++;
  }
  std::unordered_map<std::string, std::uint32_t> index_;
  std::optional<std::uint32_t> null_index_;
  std::vector<std::uint8_t> entries_;
  std::uint32_t count_ = 0;
};

// The largest power of ten dividing every timestamp: pcap gives microseconds (10^3 ns).
std::uint64_t timestamp_scale(capnp::List<FlowEvent>::Reader records) {
  std::uint64_t scale = kMaxTsScale;
  for (const auto record : records) {
    while (scale > 0 && (record.getFirstTsNs() % kPow10[scale] != 0 ||
                         record.getLastTsNs() % kPow10[scale] != 0)) {
      --scale;
    }
  }
  return scale;
}

using Columns = std::array<std::vector<std::uint8_t>, kColumnCount>;

// Turns records into a batch's columns (docs/FORMAT.md, "Columns"), one step per group of
// columns. writerd encodes every record it stores: the steps are private to this file and
// called once per record, so the compiler inlines them into add(). The encoder owns the
// columns and dictionaries (kept across batches: their memory is reused), so that every step
// reaches them through `this` alone.
class ColumnEncoder {
 public:
  // Starts a batch whose timestamps are whole multiples of `unit` ns (10^timestamp_scale()).
  void start(std::int64_t unit) {
    for (auto& column : columns_) column.clear();
    addresses_.clear();
    texts_.clear();
    unit_ = unit;
    prev_first_ = 0;
    last_shard_ = 0;
  }

  // Ends the batch: the dictionaries go into their columns.
  const Columns& finish() {
    addresses_.write(columns_[kAddresses]);
    texts_.write(columns_[kTexts]);
    return columns_;
  }

  // `r` must fit the columns (State::fits_columns). `sha1` and `seed` derive Community IDs.
  void add(FlowEvent::Reader r, packet::Sha1& sha1, std::uint16_t seed) {
    // Read once: several steps need them, and a getter cannot be merged across the stores
    // in between.
    const Tuple t{bytes_of(r.getOrigAddr()), bytes_of(r.getRespAddr()), r.getProto(),
                  r.getOrigPort(),           r.getRespPort(),           r.getVlan()};
    const std::uint64_t uid = r.getUid();
    const std::int64_t first_ts = r.getFirstTsNs();
    std::uint64_t flags = shard_or_uid(t, first_ts, uid);
    event(r);
    endpoints(r, t);
    times(first_ts, r.getLastTsNs());
    flags |= state_texts(r, t, sha1, seed);
    flags |= lineage(r, uid);
    // Each side spelled out: with `side` a constant, every column's address is one too.
    direction<Side::kOrig>(record::direction(r, Side::kOrig));
    direction<Side::kResp>(record::direction(r, Side::kResp));
    extras(r);
    put(kFlags, flags);
  }

 private:
  // A record's flow key fields.
  struct Tuple {
    std::span<const std::uint8_t> orig, resp;
    std::uint8_t proto;
    std::uint16_t orig_port, resp_port, vlan;
  };

  void put(Column c, std::uint64_t v) { put_varint(columns_[c], v); }

  // The shard when the uid is the one flowd derives from the flow key (kUidDerived), else the
  // uid itself.
  std::uint64_t shard_or_uid(const Tuple& t, std::int64_t first_ts, std::uint64_t uid) {
    if (const auto hash = key_hash(t.proto, t.orig, t.resp, t.orig_port, t.resp_port, t.vlan)) {
      // The shard of the record before first: records of one shard come in runs.
      for (std::uint32_t i = 0; i <= kShardsTried; ++i) {
        const std::uint32_t shard = i == 0 ? last_shard_ : i - 1;
        if (packet::flow_uid(*hash, first_ts, shard) == uid) {
          last_shard_ = shard;
          put(kShard, shard);
          return kUidDerived;
        }
      }
    }
    put_u64(columns_[kUid], uid);
    return 0;
  }

  // kind, eventNumber, endReason, samplingRate.
  void event(FlowEvent::Reader r) {
    put(kKind, static_cast<std::uint16_t>(r.getKind()));
    put(kEventNumber, r.getEventNumber());
    put(kEndReason, static_cast<std::uint16_t>(r.getEndReason()));
    put(kSamplingRate, std::bit_cast<std::uint32_t>(r.getSamplingRate()) ^ kOneBits);
  }

  // proto, both addresses (as indices into the address dictionary), ports, VLAN.
  void endpoints(FlowEvent::Reader r, const Tuple& t) {
    put(kProto, t.proto);
    put(kOrigAddr, addresses_.add(r.hasOrigAddr(), t.orig));
    put(kRespAddr, addresses_.add(r.hasRespAddr(), t.resp));
    put(kOrigPort, t.orig_port);
    put(kRespPort, t.resp_port);
    put(kVlan, t.vlan);
  }

  // firstTs as its distance from the record before's, lastTs as the duration, in units.
  void times(std::int64_t first_ts, std::int64_t last_ts) {
    // Exact: `unit_` divides both. Differences wrap in uint64, as the decoder's sums do.
    const auto first = static_cast<std::uint64_t>(first_ts / unit_);
    const auto last = static_cast<std::uint64_t>(last_ts / unit_);
    put(kFirstTs, zigzag(first - prev_first_));
    put(kDuration, zigzag(last - first));
    prev_first_ = first;
  }

  // connState, history and communityId (as indices into the text dictionary); the Community
  // ID is left out when it is the one the 5-tuple gives (kCommunityIdDerived).
  std::uint64_t state_texts(FlowEvent::Reader r, const Tuple& t, packet::Sha1& sha1,
                            std::uint16_t seed) {
    put(kConnState, texts_.add(r.hasConnState(), bytes_of(r.getConnState())));
    put(kHistory, texts_.add(r.hasHistory(), bytes_of(r.getHistory())));
    const auto community = r.getCommunityId();
    const packet::CommunityIdText derived =
        packet::community_id(sha1, seed, t.proto, t.orig, t.resp, t.orig_port, t.resp_port);
    if (r.hasCommunityId() && derived.size > 0 &&
        derived.view() == std::string_view(community.begin(), community.size())) {
      return kCommunityIdDerived;
    }
    put(kCommunityId, texts_.add(r.hasCommunityId(), bytes_of(community)));
    return 0;
  }

  // flowCount, firstUid and lastUid (each left out when it is the record's uid).
  std::uint64_t lineage(FlowEvent::Reader r, std::uint64_t uid) {
    std::uint64_t flags = 0;
    put(kFlowCount, r.getFlowCount());
    if (r.getFirstUid() == uid) {
      flags |= kFirstUidIsUid;
    } else {
      put_u64(columns_[kFirstUid], r.getFirstUid());
    }
    if (r.getLastUid() == uid) {
      flags |= kLastUidIsUid;
    } else {
      put_u64(columns_[kLastUid], r.getLastUid());
    }
    return flags;
  }

  // One side's columns. IP bytes as their overhead over the payload bytes, maxima as their
  // distance from the minima (zigzag: damaged data may have max < min).
  template <Side side>
  void direction(const DirectionStats& d) {
    auto put = [&](DirectionColumn c, std::uint64_t v) {
      put_varint(columns_[column_of(side, c)], v);
    };
    put(kPkts, d.pkts);
    put(kIpOverhead, zigzag(d.ip_bytes - d.bytes));
    put(kBytes, d.bytes);
    put(kTcpFlags, d.tcp_flags);
    put(kSizeMin, d.size_min);
    put(kSizeSpan, size_span(d.size_min, d.size_max));
    put(kSizeSumSq, d.size_sumsq);
    put(kIatMin, d.iat_min_us);
    put(kIatSpan, zigzag(d.iat_max_us - d.iat_min_us));
    put(kIatSum, d.iat_sum_us);
    put_u64(columns_[column_of(side, kIatSumSq)], std::bit_cast<std::uint64_t>(d.iat_sumsq_us));
    put(kRexmits, d.rexmits);
    put(kLocal, static_cast<std::uint16_t>(d.local));
  }

  // tunnelParents (0 for none, else 1 + their count, then each), missedBytes, service.
  void extras(FlowEvent::Reader r) {
    if (r.hasTunnelParents()) {
      const auto parents = r.getTunnelParents();
      put(kTunnelParents, std::uint64_t{parents.size()} + 1);
      for (const std::uint64_t parent : parents) put_u64(columns_[kTunnelParents], parent);
    } else {
      put(kTunnelParents, 0);
    }
    put(kMissedBytes, r.getMissedBytes());
    put(kService, texts_.add(r.hasService(), bytes_of(r.getService())));
  }

  Columns columns_;
  Dictionary addresses_, texts_;
  std::int64_t unit_ = 1;
  std::uint64_t prev_first_ = 0;
  std::uint32_t last_shard_ = 0;
};

// Reads one column (or the batch prologue) without ever leaving it. The first problem sticks.
class Cursor {
 public:
  Cursor() = default;
  explicit Cursor(std::span<const std::uint8_t> bytes)
      : p_(bytes.data()), end_(p_ + bytes.size()) {}

  // A minimal LEB128 varint no larger than `max`. Most column values fit in one byte: that
  // case inline, the rest out of line.
  std::uint64_t varint(std::uint64_t max) {
    if (p_ != end_ && *p_ < 0x80) {
      const std::uint64_t v = *p_++;
      return v <= max ? v : too_large(v, max);
    }
    return long_varint(max);
  }
  std::uint64_t u64() {
    if (end_ - p_ < 8) return fail("ends inside an 8-byte value");
    std::uint64_t v = 0;
    for (int i = 7; i >= 0; --i) v = (v << 8) | p_[i];
    p_ += 8;
    return v;
  }
  std::span<const std::uint8_t> bytes(std::uint64_t n) {
    if (static_cast<std::uint64_t>(end_ - p_) < n) {
      fail(fmt::format("{} bytes wanted, {} left", n, end_ - p_));
      return {};
    }
    const std::uint8_t* at = p_;
    p_ += n;
    return {at, static_cast<std::size_t>(n)};
  }
  std::size_t left() const { return static_cast<std::size_t>(end_ - p_); }
  const std::optional<std::string>& error() const { return error_; }
  std::uint64_t fail(std::string what) {
    if (!error_) error_ = std::move(what);
    p_ = end_;
    return 0;
  }

 private:
  [[gnu::noinline]] std::uint64_t long_varint(std::uint64_t max) {
    std::uint64_t v = 0;
    for (unsigned shift = 0;; shift += 7) {
      if (p_ == end_) return fail("ends inside a varint");
      const std::uint8_t b = *p_++;
      if (shift == 63 && b > 1) return fail("varint longer than 64 bits");
      v |= std::uint64_t{b & 0x7Fu} << shift;
      if ((b & 0x80) == 0) {
        if (b == 0 && shift > 0) return fail("varint not in its shortest form");
        break;
      }
    }
    return v <= max ? v : too_large(v, max);
  }
  [[gnu::noinline]] std::uint64_t too_large(std::uint64_t v, std::uint64_t max) {
    return fail(fmt::format("value {} is larger than {}", v, max));
  }

  const std::uint8_t* p_ = nullptr;
  const std::uint8_t* end_ = nullptr;
  std::optional<std::string> error_;
};

struct Entry {
  bool present = false;
  std::string bytes;  // std::string keeps a NUL after the bytes, as Cap'n Proto's Text wants
  capnp::Text::Reader text() const { return {bytes.data(), bytes.size()}; }
};

// Reads a dictionary column: count, then (length + 1 | 0 for null, bytes) per entry.
std::vector<Entry> read_dictionary(Cursor& c) {
  const std::uint64_t count = c.varint(c.left());  // every entry takes a byte at least
  std::vector<Entry> entries;
  entries.reserve(static_cast<std::size_t>(count));
  for (std::uint64_t i = 0; i < count && !c.error(); ++i) {
    const std::uint64_t n = c.varint(c.left() + 1);
    const auto bytes = c.bytes(n == 0 ? 0 : n - 1);
    entries.push_back({n != 0, std::string(bytes.begin(), bytes.end())});
  }
  return entries;
}

using Cursors = std::array<Cursor, kColumnCount>;

// A stored batch's prologue (State::write_batch): record count, timestamp scale, Community ID
// seed, signed header, signature, then each column its layout holds.
struct Prologue {
  std::uint64_t records = 0;
  std::uint64_t scale = 0;
  std::uint16_t seed = 0;
  std::span<const std::uint8_t> header;
  std::optional<std::span<const std::uint8_t>> signature;  // nullopt: the batch has none
  Cursors columns;
};

// Reads `body` (the stored batch after its encoding byte and leaf hints) into `p`; the
// problem if it is not a whole prologue of `expected_records` records.
std::optional<std::string> read_prologue(std::span<const std::uint8_t> body, const Layout& layout,
                                         std::uint32_t expected_records, Prologue& p) {
  Cursor c(body);
  p.records = c.varint(std::min<std::uint64_t>(kMaxRecords, body.size() / kMinRecordBytes));
  p.scale = c.varint(kMaxTsScale);
  p.seed = static_cast<std::uint16_t>(c.varint(0xFFFF));
  p.header = c.bytes(c.varint(c.left()));
  const std::uint64_t signature_size = c.varint(c.left() + 1);
  const auto signature = c.bytes(signature_size == 0 ? 0 : signature_size - 1);
  if (signature_size != 0) p.signature = signature;
  for (std::size_t i = 0; i < layout.stored.size() && !c.error(); ++i) {
    p.columns[layout.stored[i]] = Cursor(c.bytes(c.varint(c.left())));
  }
  if (c.error()) return fmt::format("batch prologue: {}", *c.error());
  if (c.left() != 0) return fmt::format("{} bytes after the last column", c.left());
  if (p.records != expected_records) {
    return fmt::format("the batch holds {} records, its frame header says {}", p.records,
                       expected_records);
  }
  if (p.header.empty() || p.header.size() % sizeof(capnp::word) != 0) {
    return fmt::format("the signed header is {} bytes, not whole 8-byte words", p.header.size());
  }
  return std::nullopt;
}

// Puts the signed header back into `batch` as it was stored; false if it is not in canonical
// form (then it is not what was signed).
bool set_header(schema::SealedBatch::Builder batch, std::span<const std::uint8_t> bytes) {
  std::vector<capnp::word> words(bytes.size() / sizeof(capnp::word));
  std::memcpy(words.data(), bytes.data(), bytes.size());
  kj::ArrayPtr<const capnp::word> segments[] = {kj::arrayPtr(words.data(), words.size())};
  capnp::SegmentArrayMessageReader header(segments);
  if (!header.isCanonical()) return false;
  batch.setHeader(header.getRoot<schema::BatchHeader>());
  return true;
}

std::span<const std::uint8_t> data_of(const Entry* e) {
  return e ? std::span<const std::uint8_t>(reinterpret_cast<const std::uint8_t*>(e->bytes.data()),
                                           e->bytes.size())
           : std::span<const std::uint8_t>();
}

// Rebuilds records from a batch's columns, one step per group of columns, in the order
// ColumnEncoder wrote them. The first problem sticks, named by its column and record.
class ColumnDecoder {
 public:
  // `columns`: the batch's columns (read_prologue). `seed` and `unit` come from the prologue.
  // `derived_ids`: rebuild the Community IDs the store derives (else leave them out).
  ColumnDecoder(Cursors columns, const Layout& layout, packet::Sha1& sha1, std::uint16_t seed,
                std::int64_t unit, bool derived_ids)
      : col_(std::move(columns)),
        layout_(layout),
        sha1_(sha1),
        seed_(seed),
        derived_ids_(derived_ids),
        unit_(unit),
        addresses_(read_dictionary(col_[kAddresses])),
        texts_(read_dictionary(col_[kTexts])),
        address_used_(addresses_.size()),
        text_used_(texts_.size()) {}

  // Reads record number `record` into `r`; false once the batch has a problem.
  bool read(std::uint64_t record, FlowEvent::Builder r) {
    record_ = record;
    const std::uint64_t flags = col_[kFlags].varint(kAllFlags);
    const std::uint64_t shard = flags & kUidDerived ? col_[kShard].varint(0xFFFFFFFF) : 0;
    const std::uint64_t stored_uid = flags & kUidDerived ? 0 : col_[kUid].u64();
    event(r);
    const Endpoints e = endpoints(r);
    const std::int64_t first_ts = times(r);
    state_texts(r, flags, e);
    r.setFlowCount(static_cast<std::uint32_t>(col_[kFlowCount].varint(0xFFFFFFFF)));
    uids(r, flags, e, shard, stored_uid, first_ts);
    // Each side spelled out: with `side` a constant, every column's address is one too.
    direction<Side::kOrig>(r);
    direction<Side::kResp>(r);
    if (layout_.format3) {
      r.setMissedBytes(col_[kMissedBytes].varint(~0ull));
      const Entry* service = index(kService, texts_, text_used_);
      if (service && service->present) r.setService(service->text());
    }
    if (layout_.tunnel_parents) tunnel_parents(r);
    for (std::size_t i = 0; i < kColumnCount && !problem_; ++i) {
      if (col_[i].error()) bad(static_cast<Column>(i), *col_[i].error());
    }
    return !problem_;
  }

  // After the last record: the batch's problem, a column not read to its end, or a dictionary
  // entry no record used; nullopt if there is none.
  std::optional<std::string> finish() const {
    if (problem_) return problem_;
    for (std::size_t i = 0; i < kColumnCount; ++i) {
      if (col_[i].error()) return fmt::format("column {}: {}", column_name(i), *col_[i].error());
      if (col_[i].left() != 0) {
        return fmt::format("column {}: {} bytes left after the last record", column_name(i),
                           col_[i].left());
      }
    }
    for (std::size_t i = 0; i < address_used_.size(); ++i) {
      if (!address_used_[i]) return fmt::format("column addresses: entry {} is not used", i);
    }
    for (std::size_t i = 0; i < text_used_.size(); ++i) {
      if (!text_used_[i]) return fmt::format("column texts: entry {} is not used", i);
    }
    return std::nullopt;
  }

 private:
  // A record's flow key fields (addresses: nullptr after a problem).
  struct Endpoints {
    const Entry* orig;
    const Entry* resp;
    std::uint8_t proto;
    std::uint16_t orig_port, resp_port, vlan;
  };

  void bad(Column column, const std::string& what) {
    if (!problem_) {
      problem_ = fmt::format("column {}, record {}: {}", column_name(column), record_, what);
    }
  }

  // The dictionary entry a column refers to; nullptr if the dictionary is empty.
  const Entry* index(Column column, const std::vector<Entry>& entries, std::vector<bool>& used) {
    const std::uint64_t i = col_[column].varint(entries.size() - (entries.empty() ? 0 : 1));
    if (entries.empty()) {
      bad(column, "refers to an empty dictionary");
      return nullptr;
    }
    used[i] = true;
    return &entries[i];
  }

  // kind, eventNumber, endReason, samplingRate.
  void event(FlowEvent::Builder r) {
    r.setKind(static_cast<schema::EventKind>(col_[kKind].varint(0xFFFF)));
    r.setEventNumber(static_cast<std::uint32_t>(col_[kEventNumber].varint(0xFFFFFFFF)));
    r.setEndReason(static_cast<schema::EndReason>(col_[kEndReason].varint(0xFFFF)));
    r.setSamplingRate(std::bit_cast<float>(
        static_cast<std::uint32_t>(col_[kSamplingRate].varint(0xFFFFFFFF)) ^ kOneBits));
  }

  // proto, both addresses, ports, VLAN.
  Endpoints endpoints(FlowEvent::Builder r) {
    Endpoints e{};
    e.proto = static_cast<std::uint8_t>(col_[kProto].varint(0xFF));
    r.setProto(e.proto);
    e.orig = index(kOrigAddr, addresses_, address_used_);
    e.resp = index(kRespAddr, addresses_, address_used_);
    if (e.orig && e.orig->present) r.setOrigAddr({data_of(e.orig).data(), data_of(e.orig).size()});
    if (e.resp && e.resp->present) r.setRespAddr({data_of(e.resp).data(), data_of(e.resp).size()});
    e.orig_port = static_cast<std::uint16_t>(col_[kOrigPort].varint(0xFFFF));
    e.resp_port = static_cast<std::uint16_t>(col_[kRespPort].varint(0xFFFF));
    e.vlan = static_cast<std::uint16_t>(col_[kVlan].varint(0xFFFF));
    r.setOrigPort(e.orig_port);
    r.setRespPort(e.resp_port);
    r.setVlan(e.vlan);
    return e;
  }

  // firstTs and lastTs; returns firstTs.
  std::int64_t times(FlowEvent::Builder r) {
    const std::uint64_t first = prev_first_ + unzigzag(col_[kFirstTs].varint(~0ull));
    const std::uint64_t last = first + unzigzag(col_[kDuration].varint(~0ull));
    prev_first_ = first;
    const auto first_ts = static_cast<std::int64_t>(first * static_cast<std::uint64_t>(unit_));
    r.setFirstTsNs(first_ts);
    r.setLastTsNs(static_cast<std::int64_t>(last * static_cast<std::uint64_t>(unit_)));
    return first_ts;
  }

  // connState, history, and the Community ID: stored, or derived from the 5-tuple.
  void state_texts(FlowEvent::Builder r, std::uint64_t flags, const Endpoints& e) {
    const Entry* state = index(kConnState, texts_, text_used_);
    const Entry* history = index(kHistory, texts_, text_used_);
    if (state && state->present) r.setConnState(state->text());
    if (history && history->present) r.setHistory(history->text());
    if (flags & kCommunityIdDerived) {
      // Damage whether or not the caller wants the ID rebuilt.
      const bool five_tuple = e.orig && e.resp && e.orig->present && e.resp->present &&
                              (data_of(e.orig).size() == 4 || data_of(e.orig).size() == 16) &&
                              data_of(e.resp).size() == data_of(e.orig).size();
      if (!five_tuple) {
        bad(kFlags, "a Community ID to derive, but there is no 5-tuple to derive it from");
        return;
      }
      if (!derived_ids_) return;  // no SHA-1 for a reader that does not use it
      const packet::CommunityIdText id = packet::community_id(
          sha1_, seed_, e.proto, data_of(e.orig), data_of(e.resp), e.orig_port, e.resp_port);
      if (!sha1_.ok() || id.size == 0) {
        bad(kFlags, "a Community ID to derive, but OpenSSL has no SHA-1");
      } else {
        r.setCommunityId({id.chars.data(), id.size});
      }
    } else {
      const Entry* id = index(kCommunityId, texts_, text_used_);
      if (id && id->present) r.setCommunityId(id->text());
    }
  }

  // uid (stored, or derived from the flow key and the shard), firstUid, lastUid.
  void uids(FlowEvent::Builder r, std::uint64_t flags, const Endpoints& e, std::uint64_t shard,
            std::uint64_t stored_uid, std::int64_t first_ts) {
    std::uint64_t uid = stored_uid;
    if (flags & kUidDerived) {
      const auto hash =
          key_hash(e.proto, data_of(e.orig), data_of(e.resp), e.orig_port, e.resp_port, e.vlan);
      if (!hash || !e.orig->present || !e.resp->present) {
        bad(kFlags, "a uid to derive, but there is no flow key to derive it from");
      } else {
        uid = packet::flow_uid(*hash, first_ts, static_cast<std::uint32_t>(shard));
      }
    }
    r.setUid(uid);
    r.setFirstUid(flags & kFirstUidIsUid ? uid : col_[kFirstUid].u64());
    r.setLastUid(flags & kLastUidIsUid ? uid : col_[kLastUid].u64());
  }

  // One side's columns (see ColumnEncoder::direction).
  template <Side side>
  void direction(FlowEvent::Builder r) {
    auto column = [&](DirectionColumn which) -> Cursor& { return col_[column_of(side, which)]; };
    DirectionStats d;
    d.pkts = column(kPkts).varint(~0ull);
    const std::uint64_t overhead = unzigzag(column(kIpOverhead).varint(~0ull));
    d.bytes = column(kBytes).varint(~0ull);
    d.ip_bytes = d.bytes + overhead;
    d.tcp_flags = static_cast<std::uint8_t>(column(kTcpFlags).varint(0xFF));
    const std::uint64_t size_min = column(kSizeMin).varint(0xFFFFFFFF);
    d.size_min = static_cast<std::uint32_t>(size_min);
    const auto size_max = size_from_span(size_min, column(kSizeSpan).varint(kSizeSpanLimit));
    if (!size_max) bad(column_of(side, kSizeSpan), "the largest size leaves 32 bits");
    d.size_max = size_max.value_or(0);
    d.size_sumsq = column(kSizeSumSq).varint(~0ull);
    d.iat_min_us = column(kIatMin).varint(~0ull);
    d.iat_max_us = d.iat_min_us + unzigzag(column(kIatSpan).varint(~0ull));
    d.iat_sum_us = column(kIatSum).varint(~0ull);
    d.iat_sumsq_us = std::bit_cast<double>(column(kIatSumSq).u64());
    d.rexmits = static_cast<std::uint32_t>(column(kRexmits).varint(0xFFFFFFFF));
    if (layout_.format3) {
      d.local = static_cast<schema::Locality>(column(kLocal).varint(0xFFFF));
      record::set_direction(r, side, d);
    } else {
      record::set_legacy_direction(r, side, d);  // the layout its leaf was hashed over
    }
  }

  // 0 for no list, else 1 + the parent count, then each parent.
  void tunnel_parents(FlowEvent::Builder r) {
    Cursor& parents_col = col_[kTunnelParents];
    const std::uint64_t stored = parents_col.varint(parents_col.left() / 8 + 1);
    if (stored > 0) {
      auto parents = r.initTunnelParents(static_cast<unsigned>(stored - 1));
      for (unsigned i = 0; i < parents.size(); ++i) parents.set(i, parents_col.u64());
    }
  }

  Cursors col_;
  const Layout& layout_;
  packet::Sha1& sha1_;
  const std::uint16_t seed_;
  const bool derived_ids_;
  const std::int64_t unit_;
  const std::vector<Entry> addresses_, texts_;
  std::vector<bool> address_used_, text_used_;
  std::uint64_t record_ = 0;
  std::uint64_t prev_first_ = 0;
  std::optional<std::string> problem_;
};

}  // namespace

namespace {

kj::Array<capnp::word> zeroed_words(std::size_t words) {
  kj::Array<capnp::word> array = kj::heapArray<capnp::word>(words);
  std::memset(array.begin(), 0, array.asBytes().size());
  return array;
}

// `segments` as one flat-array message (the segment table, then each segment) in `out`,
// whose storage is reused; returns its size in bytes. What capnp::messageToFlatArray makes,
// without a buffer of its own to copy out of.
std::size_t write_flat_array(kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segments,
                             std::vector<std::uint64_t>& out) {
  const std::size_t table_words = segments.size() / 2 + 1;  // count-1 and sizes, 32 bits each
  std::size_t words = table_words;
  for (const auto& segment : segments) words += segment.size();
  out.resize(words);
  // The table's 32-bit little-endian entries, written as bytes (no uint32 view of the words).
  auto* table = reinterpret_cast<unsigned char*>(out.data());
  const auto put = [&](std::size_t entry, std::uint64_t value) {
    for (std::size_t b = 0; b < 4; ++b) table[entry * 4 + b] = (value >> (8 * b)) & 0xFF;
  };
  put(0, segments.size() - 1);
  for (std::size_t i = 0; i < segments.size(); ++i) put(i + 1, segments[i].size());
  if (segments.size() % 2 == 0) put(segments.size() + 1, 0);  // padding to a whole word
  std::size_t at = table_words;
  for (const auto& segment : segments) {
    std::memcpy(out.data() + at, segment.begin(), segment.size() * sizeof(capnp::word));
    at += segment.size();
  }
  return words * sizeof(capnp::word);
}

}  // namespace

struct BatchCodec::State {
  ColumnOptions options;
  packet::Sha1 sha1;  // Without SHA-1 no Community ID is left out, and none can be rebuilt
  std::vector<std::uint8_t> field_bits = known_field_bits();
  std::vector<std::uint8_t> direction_bits = known_direction_bits();
  ColumnEncoder encoder;
  std::vector<capnp::word> aligned;
  // The decoder's first message segment, reused batch after batch: zero except while a
  // decode builds in it (the builder zeroes what it used as it ends). Grown to what a batch
  // needed when it took more segments, so a store's batches are built without allocating.
  kj::Array<capnp::word> first_segment = kj::heapArray<capnp::word>(0);

  bool fits_columns(FlowEvent::Reader record) const;
  bool encode_columns(std::span<const std::byte> message, std::vector<std::uint8_t>& out);
  void write_batch(schema::SealedBatch::Reader batch, kj::ArrayPtr<const kj::byte> header_bytes,
                   std::size_t records, std::uint64_t scale, const Columns& columns,
                   std::vector<std::uint8_t>& out) const;
  // `body`: the stored batch after its encoding byte (and leaf hints). `hints`: the leaf
  // hints to put back into the batch, nullopt if it had none. `layout`: which columns the
  // batch's encoding holds, in which order, and the record layout to rebuild.
  std::optional<std::string> decode_columns(std::span<const std::uint8_t> body,
                                            std::optional<std::span<const std::uint8_t>> hints,
                                            std::uint32_t expected_records,
                                            std::vector<std::uint64_t>& out, std::size_t& bytes,
                                            const Layout& layout, bool first_try = true);
};

BatchCodec::BatchCodec(ColumnOptions options) : state_(std::make_unique<State>()) {
  state_->options = options;
}
void BatchCodec::set_options(const ColumnOptions& options) { state_->options = options; }
BatchCodec::BatchCodec(BatchCodec&&) noexcept = default;
BatchCodec& BatchCodec::operator=(BatchCodec&&) noexcept = default;
BatchCodec::~BatchCodec() = default;

// True if rebuilding `record` from its field values in format 3 gives back its canonical
// encoding: no bit outside the known fields (format 2's flat fields included), no pointer
// beyond them, both Direction structs present with nothing unknown in them, and every
// pointer of the right kind (the getters throw on a wrong one).
bool BatchCodec::State::fits_columns(FlowEvent::Reader record) const {
  const capnp::AnyStruct::Reader any(record);
  if (!only_known_bits(any.getDataSection(), field_bits)) return false;
  const auto pointers = any.getPointerSection();
  for (unsigned i = kPointerFields; i < pointers.size(); ++i) {
    if (!pointers[i].isNull()) return false;
  }
  if (!record.hasOrig() || !record.hasResp()) return false;
  for (const auto side : {record.getOrig(), record.getResp()}) {
    const capnp::AnyStruct::Reader d(side);
    if (!only_known_bits(d.getDataSection(), direction_bits)) return false;
    for (const auto pointer : d.getPointerSection()) {
      if (!pointer.isNull()) return false;
    }
  }
  record.getOrigAddr();
  record.getRespAddr();
  record.getConnState();
  record.getHistory();
  record.getCommunityId();
  record.getService();
  // Parents are rebuilt as a list of 8-byte elements: any other shape stays a message.
  if (!pointers[kTunnelParentsPointer].isNull() &&
      pointers[kTunnelParentsPointer].getAs<capnp::AnyList>().getElementSize() !=
          capnp::ElementSize::EIGHT_BYTES) {
    return false;
  }
  return true;
}

BatchEncoding BatchCodec::encode(std::span<const std::byte> message,
                                 std::vector<std::uint8_t>& out) {
  try {
    if (state_->encode_columns(message, out)) return static_cast<BatchEncoding>(out[0]);
  } catch (const kj::Exception&) {
    // unreadable as a SealedBatch: stored as it came, verify will say what is wrong with it
  }
  out.assign(8, 0);
  out[0] = static_cast<std::uint8_t>(BatchEncoding::kCapnp);
  const auto* bytes = reinterpret_cast<const std::uint8_t*>(message.data());
  out.insert(out.end(), bytes, bytes + message.size());
  return BatchEncoding::kCapnp;
}

bool BatchCodec::State::encode_columns(std::span<const std::byte> message,
                                       std::vector<std::uint8_t>& out) {
  if (message.empty() || message.size() % sizeof(capnp::word) != 0) return false;
  const std::size_t word_count = message.size() / sizeof(capnp::word);
  const auto* words = reinterpret_cast<const capnp::word*>(message.data());
  if (reinterpret_cast<std::uintptr_t>(message.data()) % alignof(capnp::word) != 0) {
    aligned.resize(word_count);
    std::memcpy(aligned.data(), message.data(), message.size());
    words = aligned.data();
  }
  capnp::ReaderOptions limits;
  // Our own ring frame, read field by field more than once: the limit is not a defence here.
  limits.traversalLimitInWords = word_count * 16 + 1024;
  capnp::FlatArrayMessageReader reader(kj::arrayPtr(words, word_count), limits);
  if (reader.getEnd() != words + word_count) return false;  // bytes after the message
  const auto batch = reader.getRoot<schema::SealedBatch>();
  const capnp::AnyStruct::Reader any_batch(batch);
  if (any_batch.getDataSection().size() != 0 || !batch.hasHeader() || !batch.hasRecords()) {
    return false;
  }
  // Pointers 0..3: header, records, signature, leafHints.
  for (unsigned i = 4; i < any_batch.getPointerSection().size(); ++i) {
    if (!any_batch.getPointerSection()[i].isNull()) return false;
  }
  const kj::Array<capnp::word> header = capnp::canonicalize(batch.getHeader());
  const auto records = sized_records(batch.getRecords(), "SealedBatch.records");
  if (records.size() > kMaxRecords) return false;

  const std::uint64_t scale = timestamp_scale(records);
  encoder.start(kPow10[scale]);
  for (const auto r : records) {
    if (!fits_columns(r)) return false;
    encoder.add(r, sha1, options.community_id_seed);
  }
  write_batch(batch, header.asBytes(), records.size(), scale, encoder.finish(), out);
  return true;
}

// The stored batch: encoding byte (and leaf hints), the prologue (record count, timestamp
// scale, Community ID seed, signed header, signature), then every column with its length.
void BatchCodec::State::write_batch(schema::SealedBatch::Reader batch,
                                    kj::ArrayPtr<const kj::byte> header_bytes, std::size_t records,
                                    std::uint64_t scale, const Columns& columns,
                                    std::vector<std::uint8_t>& out) const {
  out.clear();
  if (batch.hasLeafHints()) {
    // Unsigned hints (seal/leaf_hints.h), kept byte for byte: random hash bytes that zstd
    // cannot shrink, so they cost their size.
    const auto hints = batch.getLeafHints();
    out.push_back(static_cast<std::uint8_t>(BatchEncoding::kColumnsWithHints));
    put_varint(out, hints.size());
    out.insert(out.end(), hints.begin(), hints.end());
  } else {
    out.push_back(static_cast<std::uint8_t>(BatchEncoding::kColumns));
  }
  put_varint(out, records);
  put_varint(out, scale);
  put_varint(out, options.community_id_seed);
  put_varint(out, header_bytes.size());
  out.insert(out.end(), header_bytes.begin(), header_bytes.end());
  const auto signature = batch.getSignature();
  put_varint(out, batch.hasSignature() ? signature.size() + 1 : 0);
  out.insert(out.end(), signature.begin(), signature.end());
  for (const auto& column : columns) {
    put_varint(out, column.size());
    out.insert(out.end(), column.begin(), column.end());
  }
}

std::optional<std::string> BatchCodec::decode(std::span<const std::uint8_t> stored,
                                              std::uint32_t expected_records,
                                              std::vector<std::uint64_t>& out, std::size_t& bytes,
                                              std::uint16_t format_version) {
  if (stored.empty()) return "empty batch";
  const auto encoding = static_cast<BatchEncoding>(stored[0]);
  if (encoding == BatchEncoding::kCapnp) {
    const std::size_t size = stored.size() - std::min<std::size_t>(stored.size(), 8);
    if (stored.size() < 16 || size % 8 != 0 ||
        std::any_of(stored.begin() + 1, stored.begin() + 8, [](auto b) { return b != 0; })) {
      return fmt::format(
          "a Cap'n Proto batch of {} bytes is not 8 bytes of encoding and "
          "whole 8-byte words",
          stored.size());
    }
    out.resize(size / 8);
    std::memcpy(out.data(), stored.data() + 8, size);
    bytes = size;
    return std::nullopt;
  }
  const Layout* layout = nullptr;
  bool hinted = false;
  switch (encoding) {
    case BatchEncoding::kColumnsWithHints: hinted = true; [[fallthrough]];
    case BatchEncoding::kColumns: layout = &kFormat3Layout; break;
    case BatchEncoding::kFormat2ColumnsWithHints: hinted = true; [[fallthrough]];
    case BatchEncoding::kFormat2Columns: layout = &kFormat2Layout; break;
    case BatchEncoding::kFormat2ColumnsNoParents: layout = &kFormat2NoParentsLayout; break;
    default: return fmt::format("unknown batch encoding {}", stored[0]);
  }
  if (layout->format3 != (format_version >= 3)) {
    return fmt::format("batch encoding {} does not belong in a segment of format version {}",
                       stored[0], format_version);
  }
  if (!hinted) {
    return state_->decode_columns(stored.subspan(1), std::nullopt, expected_records, out, bytes,
                                  *layout);
  }
  Cursor c(stored.subspan(1));
  const auto hints = c.bytes(c.varint(c.left()));
  if (c.error()) return fmt::format("leaf hints: {}", *c.error());
  return state_->decode_columns(stored.subspan(stored.size() - c.left()), hints, expected_records,
                                out, bytes, *layout);
}

std::optional<std::string> BatchCodec::State::decode_columns(
    std::span<const std::uint8_t> body, std::optional<std::span<const std::uint8_t>> hints,
    std::uint32_t expected_records, std::vector<std::uint64_t>& out, std::size_t& out_bytes,
    const Layout& layout, bool first_try) {
  Prologue p;
  if (auto problem = read_prologue(body, layout, expected_records, p)) return problem;
  ColumnDecoder decoder(std::move(p.columns), layout, sha1, p.seed, kPow10[p.scale],
                        options.decode_derived_community_ids);
  // About 40 words a record; a batch that needs more is built again in a larger one (below).
  if (first_segment.size() == 0) first_segment = zeroed_words(64 + p.records * 48);
  std::size_t words_used = 0;
  try {
    capnp::MallocMessageBuilder builder(first_segment);
    auto batch = builder.initRoot<schema::SealedBatch>();
    if (!set_header(batch, p.header)) return "the signed header is not in canonical form";
    if (p.signature) batch.setSignature({p.signature->data(), p.signature->size()});
    if (hints) batch.setLeafHints({hints->data(), hints->size()});
    auto records = batch.initRecords(static_cast<unsigned>(p.records));
    for (std::uint64_t i = 0; i < p.records; ++i) {
      if (!decoder.read(i, records[static_cast<unsigned>(i)])) break;
    }
    if (auto problem = decoder.finish()) return problem;
    const auto segments = builder.getSegmentsForOutput();
    out_bytes = write_flat_array(segments, out);
    if (segments.size() > 1) {
      for (const auto& segment : segments) words_used += segment.size();
    }
  } catch (const kj::Exception& e) {
    return fmt::format("the batch cannot be rebuilt: {}", e.getDescription().cStr());
  }
  if (words_used > first_segment.size()) {
    // The builder is gone (it zeroed what it used). The message is always one segment, so the
    // same stored batch decodes to the same bytes whatever the codec decoded before: built
    // again in a segment that holds it (and the next batch like it).
    first_segment = zeroed_words(words_used + words_used / 8);
    if (first_try) {
      return decode_columns(body, hints, expected_records, out, out_bytes, layout, false);
    }
  }
  return std::nullopt;
}

}  // namespace flowseal::segment
