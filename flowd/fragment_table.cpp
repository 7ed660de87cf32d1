#include "fragment_table.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace flowseal::flowd {

using detail::FragmentSlot;

static_assert(std::is_standard_layout_v<FragmentSlot> &&
              std::is_trivially_copyable_v<FragmentSlot>);
static_assert(sizeof(FragmentSlot) == 288 && alignof(FragmentSlot) == 8);
// store_first() / load_first() copy DecodedPacket field by field: a field added to it must be
// added to FragmentSlot too (and this size updated). header_bytes is not: it tells capture how
// much of the packet to forward, and flowd has no use for it.
static_assert(sizeof(packet::DecodedPacket) == 272, "DecodedPacket changed: update FragmentSlot");

namespace {

constexpr std::uint8_t kHasPorts = 1, kPortsCut = 2, kMore = 4;
// A datagram's fragmentable bytes end by 65528 + 65535 (IPv4's largest offset and length;
// IPv6's are the same): anything past this is no length a piece gave.
constexpr std::uint32_t kMaxTotal = 1u << 17;

std::uint64_t load64(const std::uint8_t* p) {
  std::uint64_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

std::uint64_t key_hash(const std::array<std::uint8_t, 16>& src,
                       const std::array<std::uint8_t, 16>& dst, std::uint32_t id,
                       std::uint8_t proto, std::uint16_t vlan) {
  std::uint64_t hash = packet::mix64(0x667261676D656E74ULL ^ (std::uint64_t{id} << 24) ^
                                     (std::uint64_t{proto} << 16) ^ vlan);
  for (const auto* addr : {&src, &dst}) {
    hash = packet::mix64(hash ^ load64(addr->data()));
    hash = packet::mix64(hash ^ load64(addr->data() + 8));
  }
  return hash;
}

bool same_datagram(const FragmentSlot& s, const packet::FragmentInfo& f) {
  return s.id == f.id && s.proto == f.proto && s.vlan == f.vlan && s.ip_version == f.ip_version &&
         s.src == f.src && s.dst == f.dst;
}

bool same_datagram(const FragmentSlot& a, const FragmentSlot& b) {
  return a.id == b.id && a.proto == b.proto && a.vlan == b.vlan && a.ip_version == b.ip_version &&
         a.src == b.src && a.dst == b.dst;
}

bool is_ip_version(std::uint8_t v) { return v == 4 || v == 6; }
bool is_flag(std::uint8_t v) { return v <= 1; }

}  // namespace

std::size_t FragmentTable::bytes_needed(std::size_t capacity) {
  return capacity * sizeof(FragmentSlot);
}

void FragmentTable::store_first(FragmentSlot& s, const packet::DecodedPacket& p) {
  s.key = p.key;
  s.ip_bytes = p.ip_bytes;
  s.payload_bytes = p.payload_bytes;
  s.tcp_seq = p.tcp_seq;
  s.tcp_ack = p.tcp_ack;
  s.tcp_window = p.tcp_window;
  s.tcp_flags = p.tcp_flags;
  s.tunnel_depth = p.tunnel_depth;
  s.outer_count = p.outer_count;
  s.outer = p.outer;
  s.first_flags = static_cast<std::uint8_t>(
      (p.has_ports ? kHasPorts : 0) | (p.ports_cut ? kPortsCut : 0) | (p.frag.more ? kMore : 0));
  s.frag_layer = p.frag.layer;
  s.frag_outer_before = p.frag.outer_before;
  s.frag_depth = p.frag.depth;
  s.frag_header_len = p.frag.header_len;
  s.frag_length = p.frag.length;
}

bool FragmentTable::load_first(const FragmentSlot& s, packet::DecodedPacket& p) {
  if (s.have_first != 1 || (s.first_flags & ~(kHasPorts | kPortsCut | kMore)) != 0 ||
      !is_ip_version(s.key.ip_version) || s.outer_count > packet::kMaxOuterFlows ||
      s.frag_outer_before > s.outer_count || s.frag_length > 0xFFFF ||
      !(s.frag_layer == packet::kKeyLayer || s.frag_layer == packet::kNoLayer ||
        s.frag_layer < s.outer_count)) {
    return false;
  }
  for (std::size_t i = 0; i < s.outer_count; ++i) {
    if (!is_ip_version(s.outer[i].key.ip_version)) return false;
  }
  p = packet::DecodedPacket{};
  p.key = s.key;
  p.ip_bytes = s.ip_bytes;
  p.payload_bytes = s.payload_bytes;
  p.tcp_flags = s.tcp_flags;
  p.tcp_seq = s.tcp_seq;
  p.tcp_ack = s.tcp_ack;
  p.tcp_window = s.tcp_window;
  p.has_ports = (s.first_flags & kHasPorts) != 0;
  p.fragment = true;
  p.ports_cut = (s.first_flags & kPortsCut) != 0;
  p.tunnel_depth = s.tunnel_depth;
  p.outer_count = s.outer_count;
  p.outer = s.outer;
  packet::FragmentInfo& f = p.frag;
  f.src = s.src;
  f.dst = s.dst;
  f.id = s.id;
  f.offset = 0;
  f.length = s.frag_length;
  f.header_len = s.frag_header_len;
  f.vlan = s.vlan;
  f.proto = s.proto;
  f.ip_version = s.ip_version;
  f.more = (s.first_flags & kMore) != 0;
  f.layer = s.frag_layer;
  f.outer_before = s.frag_outer_before;
  f.depth = s.frag_depth;
  return true;
}

bool FragmentTable::valid(const FragmentSlot& s) {
  if (s.in_use != 1 || !is_ip_version(s.ip_version) || !is_flag(s.have_first) ||
      !is_flag(s.have_total) || s.total > kMaxTotal) {
    return false;
  }
  if (s.have_first == 0) return s.first_flags == 0;
  packet::DecodedPacket p;
  return load_first(s, p);
}

FragmentTable::FragmentTable(std::span<std::byte> memory, std::size_t capacity,
                             std::int64_t timeout_ns, FragmentStats& stats, FragmentUndo& undo,
                             bool resume)
    : slots_(reinterpret_cast<FragmentSlot*>(memory.data())),
      timeout_ns_(timeout_ns),
      stats_(stats),
      undo_(undo) {
  if (capacity == 0 || capacity >= kNil) {
    throw std::invalid_argument("fragment table: capacity " + std::to_string(capacity) +
                                " is outside 1.." + std::to_string(kNil - 1));
  }
  if (memory.size() < bytes_needed(capacity) ||
      reinterpret_cast<std::uintptr_t>(memory.data()) % alignof(FragmentSlot) != 0) {
    throw std::invalid_argument("fragment table: memory too small or not 8-byte aligned");
  }
  index_.resize(capacity);
  buckets_.assign(std::bit_ceil(capacity * 2), kNil);
  bucket_mask_ = buckets_.size() - 1;
  if (resume) {
    rebuild();
    return;
  }
  // Fresh memory is zero: every slot free. Not read, so its pages stay untouched.
  for (std::uint32_t i = 0; i < index_.size(); ++i) {
    index_[i].chain = i + 1 < index_.size() ? i + 1 : kNil;
  }
  free_ = 0;
}

// Every index is derived from the slots; a slot that fails valid() is dropped and counted.
// Called with no step open: a kill here leaves the slots as they were or cleared, and the
// next attach checks them again.
void FragmentTable::rebuild() {
  std::vector<std::uint32_t> live;
  for (std::uint32_t i = static_cast<std::uint32_t>(index_.size()); i-- > 0;) {
    FragmentSlot& s = slots_[i];
    bool keep = s.in_use != 0 && valid(s);
    if (s.in_use != 0 && !keep) ++stats_.corrupt;
    if (keep) {
      const std::uint64_t hash = key_hash(s.src, s.dst, s.id, s.proto, s.vlan);
      for (std::uint32_t j = buckets_[hash & bucket_mask_]; j != kNil; j = index_[j].chain) {
        if (same_datagram(slots_[j], s)) keep = false;  // two slots for one datagram
      }
      if (!keep) ++stats_.corrupt;
    }
    if (!keep) {
      if (s.in_use != 0) s.in_use = 0;
      index_[i].chain = free_;
      free_ = i;
      continue;
    }
    index_[i].hash = key_hash(s.src, s.dst, s.id, s.proto, s.vlan);
    std::uint32_t& head = buckets_[index_[i].hash & bucket_mask_];
    index_[i].chain = head;
    head = i;
    live.push_back(i);
  }
  std::sort(live.begin(), live.end(), [this](std::uint32_t a, std::uint32_t b) {
    return slots_[a].touched < slots_[b].touched;
  });
  for (const std::uint32_t i : live) {
    push_newest(i);
    clock_ = std::max(clock_, slots_[i].touched);
  }
  used_ = live.size();
}

std::uint32_t FragmentTable::find(const packet::FragmentInfo& f, std::uint64_t hash) const {
  for (std::uint32_t i = buckets_[hash & bucket_mask_]; i != kNil; i = index_[i].chain) {
    if (index_[i].hash == hash && same_datagram(slots_[i], f)) return i;
  }
  return kNil;
}

void FragmentTable::unlink_lru(std::uint32_t i) {
  Index& e = index_[i];
  (e.older != kNil ? index_[e.older].newer : oldest_) = e.newer;
  (e.newer != kNil ? index_[e.newer].older : newest_) = e.older;
  e.older = e.newer = kNil;
}

void FragmentTable::touch(std::uint32_t i) {
  if (newest_ == i) return;
  unlink_lru(i);
  push_newest(i);
}

void FragmentTable::push_newest(std::uint32_t i) {
  Index& e = index_[i];
  e.older = newest_;
  e.newer = kNil;
  if (newest_ != kNil) index_[newest_].newer = i;
  newest_ = i;
  if (oldest_ == kNil) oldest_ = i;
}

std::uint32_t FragmentTable::insert(const packet::FragmentInfo& f, std::uint64_t hash) {
  if (free_ == kNil) {
    ++stats_.evicted;
    remove(oldest_);
  }
  const std::uint32_t i = free_;
  free_ = index_[i].chain;
  FragmentSlot& s = slots_[i];
  undo_.save_fragment(i, s);
  s = FragmentSlot{};
  s.src = f.src;
  s.dst = f.dst;
  s.id = f.id;
  s.vlan = f.vlan;
  s.proto = f.proto;
  s.ip_version = f.ip_version;
  s.in_use = 1;
  index_[i].hash = hash;
  std::uint32_t& head = buckets_[hash & bucket_mask_];
  index_[i].chain = head;
  head = i;
  ++used_;
  push_newest(i);
  return i;
}

void FragmentTable::remove(std::uint32_t i) {
  undo_.save_fragment(i, slots_[i]);
  slots_[i].in_use = 0;
  unlink_lru(i);
  for (std::uint32_t* link = &buckets_[index_[i].hash & bucket_mask_]; *link != kNil;
       link = &index_[*link].chain) {
    if (*link == i) {
      *link = index_[i].chain;
      break;
    }
  }
  index_[i].chain = free_;
  free_ = i;
  --used_;
}

void FragmentTable::end(std::uint32_t i) {
  ++(slots_[i].have_first != 0 ? stats_.incomplete : stats_.without_first);
  remove(i);
}

bool FragmentTable::add(const packet::DecodedPacket& packet, std::int64_t ts_ns,
                        packet::DecodedPacket& datagram) {
  const packet::FragmentInfo& f = packet.frag;
  ++stats_.fragments;
  const std::uint64_t hash = key_hash(f.src, f.dst, f.id, f.proto, f.vlan);
  std::uint32_t i = find(f, hash);
  if (i == kNil) {
    i = insert(f, hash);  // saved there
  } else {
    undo_.save_fragment(i, slots_[i]);
    touch(i);
  }
  FragmentSlot& s = slots_[i];
  s.last_ts = ts_ns;
  s.touched = ++clock_;
  s.received += f.length;
  if (!f.more) {
    s.have_total = 1;
    s.total = f.offset + f.length;
  }
  if (f.offset == 0 && s.have_first == 0) {
    s.have_first = 1;
    store_first(s, packet);
  }
  if (s.have_first == 0 || s.have_total == 0 || s.received < s.total) return false;

  // A last piece that ends inside the first one (forged, or a wrong length) cannot make a
  // datagram: taken whole, the rest of its length would be negative. Dropped as overlapping.
  if (s.total < s.frag_length) {
    ++stats_.overlapping;
    remove(i);
    return false;
  }
  if (!load_first(s, datagram)) {  // only if something else wrote the slot meanwhile
    ++stats_.corrupt;
    remove(i);
    return false;
  }
  if (s.received > s.total) ++stats_.overlapping;
  const std::uint32_t ip_bytes = std::uint32_t{datagram.frag.header_len} + s.total;
  const std::uint32_t more_payload = s.total - datagram.frag.length;
  auto make_whole = [&](std::uint32_t& ip, std::uint32_t& payload) {
    ip = ip_bytes;
    payload += more_payload;
  };
  const std::uint8_t layer = datagram.frag.layer;
  if (layer == packet::kKeyLayer) {
    make_whole(datagram.ip_bytes, datagram.payload_bytes);
  } else if (layer < datagram.outer_count) {
    make_whole(datagram.outer[layer].ip_bytes, datagram.outer[layer].payload_bytes);
  }  // else GRE / IP-in-IP: the fragmented layer is no connection; the inner one is whole
  ++stats_.datagrams;
  remove(i);
  return true;
}

bool FragmentTable::expire_one(std::int64_t now_ns) {
  if (oldest_ == kNil) return false;
  // Any last_ts (it is only data): the difference is taken without signed overflow.
  const std::int64_t last = slots_[oldest_].last_ts;
  if (now_ns <= last || static_cast<std::uint64_t>(now_ns) - static_cast<std::uint64_t>(last) <=
                            static_cast<std::uint64_t>(timeout_ns_)) {
    return false;
  }
  end(oldest_);
  return true;
}

bool FragmentTable::end_oldest() {
  if (oldest_ == kNil) return false;
  end(oldest_);
  return true;
}

}  // namespace flowseal::flowd
