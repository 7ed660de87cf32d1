#include "fragment_table.h"

#include <bit>
#include <cstring>
#include <stdexcept>
#include <string>

namespace flowseal::flowd {
namespace {

std::uint64_t load64(const std::uint8_t* p) {
  std::uint64_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

}  // namespace

FragmentTable::FragmentTable(FragmentTableOptions options) : options_(options) {
  if (options_.capacity == 0 || options_.capacity >= kNil) {
    throw std::invalid_argument("fragment table: capacity " + std::to_string(options_.capacity) +
                                " is outside 1.." + std::to_string(kNil - 1));
  }
  entries_.resize(options_.capacity);
  for (std::uint32_t i = 0; i < entries_.size(); ++i) {
    entries_[i].chain = i + 1 < entries_.size() ? i + 1 : kNil;
  }
  free_ = 0;
  buckets_.assign(std::bit_ceil(options_.capacity * 2), kNil);
  bucket_mask_ = buckets_.size() - 1;
}

std::uint32_t FragmentTable::find(const Key& key, std::uint64_t hash) const {
  for (std::uint32_t i = buckets_[hash & bucket_mask_]; i != kNil; i = entries_[i].chain) {
    if (entries_[i].hash == hash && entries_[i].key == key) return i;
  }
  return kNil;
}

void FragmentTable::unlink_lru(std::uint32_t index) {
  Entry& e = entries_[index];
  (e.older != kNil ? entries_[e.older].newer : oldest_) = e.newer;
  (e.newer != kNil ? entries_[e.newer].older : newest_) = e.older;
  e.older = e.newer = kNil;
}

void FragmentTable::touch(std::uint32_t index) {
  if (newest_ == index) return;
  unlink_lru(index);
  push_newest(index);
}

void FragmentTable::push_newest(std::uint32_t index) {
  Entry& e = entries_[index];
  e.older = newest_;
  if (newest_ != kNil) entries_[newest_].newer = index;
  newest_ = index;
  if (oldest_ == kNil) oldest_ = index;
}

std::uint32_t FragmentTable::insert(const Key& key, std::uint64_t hash) {
  if (free_ == kNil) {
    ++stats_.evicted;
    remove(oldest_);
  }
  const std::uint32_t index = free_;
  Entry& e = entries_[index];
  free_ = e.chain;
  e = Entry{};
  e.key = key;
  e.hash = hash;
  std::uint32_t& head = buckets_[hash & bucket_mask_];
  e.chain = head;
  head = index;
  ++used_;
  push_newest(index);
  return index;
}

void FragmentTable::remove(std::uint32_t index) {
  Entry& e = entries_[index];
  unlink_lru(index);
  for (std::uint32_t* link = &buckets_[e.hash & bucket_mask_]; *link != kNil;
       link = &entries_[*link].chain) {
    if (*link == index) {
      *link = e.chain;
      break;
    }
  }
  e.chain = free_;
  free_ = index;
  --used_;
}

void FragmentTable::end(std::uint32_t index) {
  ++(entries_[index].have_first ? stats_.incomplete : stats_.without_first);
  remove(index);
}

bool FragmentTable::add(const packet::DecodedPacket& packet, std::int64_t ts_ns,
                        packet::DecodedPacket& datagram) {
  const packet::FragmentInfo& f = packet.frag;
  ++stats_.fragments;
  Key key;
  key.src = f.src;
  key.dst = f.dst;
  key.id = f.id;
  key.vlan = f.vlan;
  key.proto = f.proto;
  key.ip_version = f.ip_version;
  std::uint64_t hash = packet::mix64(0x667261676D656E74ULL ^ (std::uint64_t{f.id} << 24) ^
                                     (std::uint64_t{f.proto} << 16) ^ f.vlan);
  for (const auto* addr : {&f.src, &f.dst}) {
    hash = packet::mix64(hash ^ load64(addr->data()));
    hash = packet::mix64(hash ^ load64(addr->data() + 8));
  }

  std::uint32_t index = find(key, hash);
  if (index == kNil) index = insert(key, hash);
  else touch(index);
  Entry& e = entries_[index];
  e.last_ts = ts_ns;
  e.received += f.length;
  if (!f.more) {
    e.have_total = true;
    e.total = f.offset + f.length;
  }
  if (f.offset == 0 && !e.have_first) {
    e.have_first = true;
    e.first = packet;
  }
  if (!e.have_first || !e.have_total || e.received < e.total) return false;

  // A last piece that ends inside the first one (forged, or a wrong length) cannot make a
  // datagram: taken whole, the rest of its length would be negative. Dropped as overlapping.
  if (e.total < std::uint64_t{e.first.frag.length}) {
    ++stats_.overlapping;
    remove(index);
    return false;
  }
  if (e.received > e.total) ++stats_.overlapping;
  datagram = e.first;
  const std::uint32_t ip_bytes = std::uint32_t{datagram.frag.header_len} + e.total;
  const std::uint32_t more_payload = e.total - datagram.frag.length;
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
  remove(index);
  return true;
}

void FragmentTable::expire(std::int64_t now_ns) {
  while (oldest_ != kNil && now_ns - entries_[oldest_].last_ts > options_.timeout_ns) {
    end(oldest_);
  }
}

void FragmentTable::clear() {
  while (oldest_ != kNil) end(oldest_);
}

}  // namespace flowseal::flowd
