#include "dedup_engine.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string_view>

#include <capnp/message.h>
#include <capnp/serialize.h>

#include "layout.h"
#include "record_buffer.h"

namespace flowseal::dedupd {
namespace {

constexpr double kNsPerSecond = 1e9;

std::int64_t seconds_to_ns(double seconds) {
  return static_cast<std::int64_t>(std::llround(seconds * kNsPerSecond));
}

std::uint64_t mix64(std::uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  return x ^ (x >> 33);
}

std::array<char, 8> short_text(capnp::Text::Reader text) {
  std::array<char, 8> out{};
  std::memcpy(out.data(), text.begin(), std::min<std::size_t>(text.size(), out.size() - 1));
  return out;
}

bool same_text(const std::array<char, 8>& stored, capnp::Text::Reader text) {
  return std::string_view(stored.data()) ==
         std::string_view(text.begin(), std::min<std::size_t>(text.size(), stored.size() - 1));
}

std::uint64_t ip_bytes(schema::FlowEvent::Reader e) {
  std::uint64_t total = 0;
  for (const record::Side side : record::kSides) total += record::direction(e, side).ip_bytes;
  return total;
}

DedupEngine::GroupKey group_key(schema::FlowEvent::Reader e) {
  DedupEngine::GroupKey key;
  const auto orig = e.getOrigAddr();
  const auto resp = e.getRespAddr();
  std::memcpy(key.orig.data(), orig.begin(), std::min<std::size_t>(orig.size(), 16));
  std::memcpy(key.resp.data(), resp.begin(), std::min<std::size_t>(resp.size(), 16));
  key.addr_len = static_cast<std::uint8_t>(std::min<std::size_t>(orig.size(), 16));
  key.resp_port = e.getRespPort();
  key.vlan = e.getVlan();
  key.proto = e.getProto();
  return key;
}

}  // namespace

DedupOptions DedupOptions::from_config(const Config& config) {
  DedupOptions o;
  o.report_interval_ns = seconds_to_ns(config.dedup.report_interval);
  o.rate_change = config.dedup.rate_change;
  o.burst = static_cast<std::uint32_t>(std::min<std::int64_t>(config.dedup.burst, UINT32_MAX));
  o.window_ns = seconds_to_ns(config.dedup.window);
  const auto& f = config.flowd;
  o.linger_ns =
      seconds_to_ns(std::max({f.udp_idle_timeout, f.icmp_idle_timeout, f.other_idle_timeout,
                              f.tcp_attempt_timeout, f.tcp_closed_timeout}));
  if (config.dedup.max_entries > 0) {
    o.max_entries = static_cast<std::size_t>(config.dedup.max_entries);
  } else {
    o.max_entries =
        std::max<std::size_t>(plan_memory(config).dedup_bytes / kBudgetBytesPerEntry, 1024);
  }
  return o;
}

std::size_t DedupEngine::GroupKeyHash::operator()(const GroupKey& key) const {
  std::uint64_t words[4];
  std::memcpy(words, key.orig.data(), 16);
  std::memcpy(words + 2, key.resp.data(), 16);
  std::uint64_t h = (std::uint64_t{key.resp_port} << 32) ^ (std::uint64_t{key.vlan} << 16) ^
                    (std::uint64_t{key.proto} << 8) ^ key.addr_len;
  for (std::uint64_t w : words) h = mix64(h ^ w);
  return static_cast<std::size_t>(h);
}

DedupEngine::DedupEngine(DedupOptions options, DedupSink& sink)
    : options_(options), sink_(sink), entry_cap_(options.max_entries) {
  options_.max_entries = std::max<std::size_t>(options_.max_entries, 1);
  entry_cap_ = options_.max_entries;
  flows_.reserve(std::min<std::size_t>(options_.max_entries, 1 << 16));
  groups_.reserve(std::min<std::size_t>(options_.max_entries, 1 << 16));
}

std::size_t DedupEngine::flow_entry_size() { return sizeof(Flow); }
std::size_t DedupEngine::group_entry_size() { return sizeof(Group) + sizeof(GroupKey); }

bool DedupEngine::holds_any() const {
  return std::any_of(held_.begin(), held_.end(), [](std::uint64_t n) { return n != 0; });
}

void DedupEngine::on_event(schema::FlowEvent::Reader event, std::uint32_t source) {
  // The record's canonical form, which the engine passes on or holds as it is: writing it
  // traverses every pointer once, so a malformed record throws here, before any state changes.
  current_direct_ = canonical_into(event, current_);
  source = std::min(source, kMaxSources - 1);
  ++stats_.records_in;
  now_ns_ = std::max({now_ns_, event.getFirstTsNs(), event.getLastTsNs()});
  switch (event.getKind()) {
    case schema::EventKind::START: on_start(event, source); break;
    case schema::EventKind::UPDATE: on_update(event); break;
    case schema::EventKind::END: on_end(event, source); break;
    default: pass_current(); break;  // a summary from upstream, or a kind added later
  }
  fire_timers();
}

void DedupEngine::pass(schema::FlowEvent::Reader event) {
  ++stats_.records_out;
  sink_.emit(event);
}

void DedupEngine::pass_current() {
  ++stats_.records_out;
  sink_.emit_canonical({current_.data(), current_.size()}, current_direct_);
}

void DedupEngine::on_start(schema::FlowEvent::Reader event, std::uint32_t source) {
  auto it = flows_.find(event.getUid());
  if (it != flows_.end()) {
    // A second start for one uid only comes from odd input: keep both facts.
    release_start(it->second);
    erase_flow(it);
  }
  Flow& flow = new_flow(event.getUid());
  flow.held_start = kj::heapArray<capnp::word>(current_.data(), current_.size());
  flow.held_direct = current_direct_;
  flow.source = source;
  ++held_[source];
  ++held_starts_;
  flow.hold_until_ns = event.getFirstTsNs() + options_.window_ns + options_.linger_ns;
  flow.reported_ns = event.getFirstTsNs();
  flow.seen_ns = event.getLastTsNs();
  flow.seen_bytes = ip_bytes(event);
  flow.conn_state = short_text(event.getConnState());
  flow_timers_.push_back({flow.hold_until_ns, event.getUid()});
  if (flow_timers_.size() > 2 * options_.max_entries + 1024) compact_timers();
}

void DedupEngine::on_update(schema::FlowEvent::Reader event) {
  auto it = flows_.find(event.getUid());
  if (it == flows_.end()) {
    // No state (evicted, or a restarted dedupd): pass it, and remember it from here on.
    pass_current();
    Flow& flow = new_flow(event.getUid());
    flow.reported_ns = flow.seen_ns = event.getLastTsNs();
    flow.seen_bytes = ip_bytes(event);
    flow.conn_state = short_text(event.getConnState());
    return;
  }
  Flow& flow = it->second;
  touch(flow);
  // An update means the flow is long-lived: it will not be folded, so its start goes now.
  release_start(flow);

  const std::int64_t last = event.getLastTsNs();
  const std::uint64_t bytes = ip_bytes(event);
  double rate = -1;
  if (last > flow.seen_ns && bytes >= flow.seen_bytes) {
    rate = static_cast<double>(bytes - flow.seen_bytes) * kNsPerSecond /
           static_cast<double>(last - flow.seen_ns);
  }
  bool report = !same_text(flow.conn_state, event.getConnState()) ||
                last - flow.reported_ns >= options_.report_interval_ns;
  if (!report && rate >= 0 && flow.reported_rate >= 0) {
    report = std::fabs(rate - flow.reported_rate) > options_.rate_change * flow.reported_rate;
  }
  flow.seen_ns = std::max(flow.seen_ns, last);
  flow.seen_bytes = bytes;
  if (report) {
    flow.reported_ns = last;
    if (rate >= 0) flow.reported_rate = rate;
    flow.conn_state = short_text(event.getConnState());
    pass_current();
  } else {
    ++stats_.updates_suppressed;
  }
}

void DedupEngine::on_end(schema::FlowEvent::Reader event, std::uint32_t source) {
  auto it = flows_.find(event.getUid());
  if (it == flows_.end() || it->second.held_start == nullptr ||
      event.getLastTsNs() - event.getFirstTsNs() > options_.window_ns) {
    // Not a short flow (or one the engine no longer knows): the end passes as it is.
    if (it != flows_.end()) {
      release_start(it->second);
      erase_flow(it);
    }
    pass_current();
    return;
  }
  touch(it->second);
  const GroupKey key = group_key(event);
  auto g = groups_.find(key);
  Group* group = nullptr;
  if (g == groups_.end()) {
    group = &new_group(key);  // may evict: the flow (just touched) only under a cap of 1
  } else {
    group = &g->second;
    touch(*group);
  }
  it = flows_.find(event.getUid());
  const std::int64_t first = event.getFirstTsNs();
  if (group->short_flows == 0 || first >= group->window_open_ns + options_.window_ns) {
    if (group->summary.count > 0) emit_summary(key, *group);
    group->window_open_ns = first;
    group->short_flows = 0;
    group->expires_ns = first + options_.window_ns + options_.linger_ns;
    group_timers_.push_back({group->expires_ns, key});
    if (group_timers_.size() > 2 * options_.max_entries + 1024) compact_timers();
  }
  ++group->short_flows;
  if (group->short_flows <= options_.burst || it == flows_.end()) {
    if (it != flows_.end()) {
      release_start(it->second);
      erase_flow(it);
    }
    pass_current();
    return;
  }
  Flow& flow = it->second;
  --held_[flow.source];
  --held_starts_;
  flow.held_start = nullptr;
  ++stats_.starts_dropped;
  erase_flow(it);
  fold(*group, event, source);
}

namespace {

// Adds one folded flow's side to its summary's: sums of the sums, extremes of the extremes.
// Minima and maxima are taken only over flows that have packets (sizes) or gaps
// (inter-arrival times), so a side that sent nothing does not pull a minimum to 0.
void fold_side(DedupEngine::FoldedSide& into, const record::DirectionStats& in) {
  record::DirectionStats& s = into.stats;
  if (in.pkts > 0) {
    const std::uint64_t gaps = in.pkts - 1;
    s.size_min = s.pkts == 0 ? in.size_min : std::min(s.size_min, in.size_min);
    s.size_max = std::max(s.size_max, in.size_max);
    s.size_sumsq += in.size_sumsq;
    if (gaps > 0) {
      s.iat_min_us = into.gaps == 0 ? in.iat_min_us : std::min(s.iat_min_us, in.iat_min_us);
      s.iat_max_us = std::max(s.iat_max_us, in.iat_max_us);
    }
    s.iat_sum_us += in.iat_sum_us;
    s.iat_sumsq_us += in.iat_sumsq_us;
    s.rexmits += in.rexmits;
    into.gaps += gaps;
  }
  s.pkts += in.pkts;
  s.ip_bytes += in.ip_bytes;
  s.bytes += in.bytes;
  s.tcp_flags |= in.tcp_flags;
  s.local = in.local;  // the group's addresses are the same in every folded flow
}

}  // namespace

void DedupEngine::fold(Group& group, schema::FlowEvent::Reader end, std::uint32_t source) {
  Summary& s = group.summary;
  if (s.count == 0) {
    s = Summary{};
    s.first_ts_ns = end.getFirstTsNs();
    s.last_ts_ns = end.getLastTsNs();
    s.first_uid = end.getUid();
    s.orig_port = end.getOrigPort();
    s.sampling_rate = end.getSamplingRate();
  }
  ++s.count;
  const std::uint64_t bit = std::uint64_t{1} << source;
  if ((s.sources & bit) == 0) {
    s.sources |= bit;
    ++held_[source];
  }
  s.first_ts_ns = std::min(s.first_ts_ns, end.getFirstTsNs());
  s.last_ts_ns = std::max(s.last_ts_ns, end.getLastTsNs());
  s.last_uid = end.getUid();
  s.end_reason = end.getEndReason();
  s.sampling_rate = std::min(s.sampling_rate, end.getSamplingRate());
  s.conn_state = short_text(end.getConnState());
  for (const record::Side side : record::kSides) {
    fold_side(s.sides[record::index_of(side)], record::direction(end, side));
  }
  ++stats_.folded;
}

void DedupEngine::emit_summary(const GroupKey& key, Group& group) {
  Summary& s = group.summary;
  if (s.count == 0) return;
  capnp::MallocMessageBuilder message(64);
  auto e = message.initRoot<schema::FlowEvent>();
  e.setUid(s.first_uid);
  e.setKind(schema::EventKind::SUMMARY);
  e.setEventNumber(0);
  e.setEndReason(s.end_reason);
  e.setSamplingRate(s.sampling_rate);
  e.setProto(key.proto);
  e.setOrigAddr(kj::arrayPtr(key.orig.data(), key.addr_len));
  e.setRespAddr(kj::arrayPtr(key.resp.data(), key.addr_len));
  e.setOrigPort(s.orig_port);
  e.setRespPort(key.resp_port);
  e.setVlan(key.vlan);
  e.setFirstTsNs(s.first_ts_ns);
  e.setLastTsNs(s.last_ts_ns);
  e.setConnState(s.conn_state.data());
  e.setFlowCount(s.count);
  e.setFirstUid(s.first_uid);
  e.setLastUid(s.last_uid);
  for (const record::Side side : record::kSides) {
    record::set_direction(e, side, s.sides[record::index_of(side)].stats);
  }
  for (std::uint32_t i = 0; i < kMaxSources; ++i) {
    if (s.sources & (std::uint64_t{1} << i)) --held_[i];
  }
  s = Summary{};
  ++stats_.summaries;
  pass(e.asReader());
}

void DedupEngine::release_start(Flow& flow) {
  if (flow.held_start == nullptr) return;
  --held_[flow.source];
  --held_starts_;
  ++stats_.records_out;
  // Canonical already: the sink need not traverse it again (pass() would hand it a reader).
  sink_.emit_canonical(flow.held_start.asPtr(), flow.held_direct);
  flow.held_start = nullptr;
}

void DedupEngine::fire_timers() {
  while (!flow_timers_.empty() && flow_timers_.front().deadline_ns <= now_ns_) {
    const FlowTimer timer = flow_timers_.front();
    flow_timers_.pop_front();
    auto it = flows_.find(timer.uid);
    if (it != flows_.end() && it->second.held_start != nullptr &&
        it->second.hold_until_ns == timer.deadline_ns) {
      release_start(it->second);  // not short: the flow stays, for its updates
    }
  }
  while (!group_timers_.empty() && group_timers_.front().deadline_ns <= now_ns_) {
    const GroupTimer timer = group_timers_.front();
    group_timers_.pop_front();
    auto it = groups_.find(timer.key);
    if (it != groups_.end() && it->second.expires_ns == timer.deadline_ns) {
      emit_summary(it->first, it->second);
      erase_group(it);
    }
  }
}

void DedupEngine::flush_all() {
  // Summaries hold only ends, so their order against the released starts does not matter.
  for (auto& [uid, flow] : flows_) release_start(flow);
  for (auto& [key, group] : groups_) emit_summary(key, group);
  flows_.clear();
  groups_.clear();
  flow_lru_.clear();
  group_lru_.clear();
  flow_timers_.clear();
  group_timers_.clear();
}

DedupEngine::Flow& DedupEngine::new_flow(std::uint64_t uid) {
  make_room();
  auto [it, inserted] = flows_.try_emplace(uid);
  Flow& flow = it->second;
  flow_lru_.push_front(uid);
  flow.lru = flow_lru_.begin();
  flow.touched = ++clock_;
  return flow;
}

DedupEngine::Group& DedupEngine::new_group(const GroupKey& key) {
  make_room();
  auto [it, inserted] = groups_.try_emplace(key);
  Group& group = it->second;
  group_lru_.push_front(key);
  group.lru = group_lru_.begin();
  group.touched = ++clock_;
  return group;
}

void DedupEngine::set_entry_cap(std::size_t cap) {
  entry_cap_ = std::clamp<std::size_t>(cap, 1, options_.max_entries);
  evict_down_to(entry_cap_);
}

// Room for one more entry under the cap in force.
void DedupEngine::make_room() { evict_down_to(entry_cap_ - 1); }

void DedupEngine::evict_down_to(std::size_t keep) {
  while (entries() > keep) {
    const bool take_flow =
        group_lru_.empty() || (!flow_lru_.empty() && flows_.at(flow_lru_.back()).touched <
                                                         groups_.at(group_lru_.back()).touched);
    ++stats_.evictions;
    if (take_flow) {
      auto it = flows_.find(flow_lru_.back());
      release_start(it->second);
      erase_flow(it);
    } else {
      auto it = groups_.find(group_lru_.back());
      emit_summary(it->first, it->second);
      erase_group(it);
    }
  }
}

void DedupEngine::erase_flow(std::unordered_map<std::uint64_t, Flow>::iterator it) {
  flow_lru_.erase(it->second.lru);
  flows_.erase(it);
}

void DedupEngine::erase_group(std::unordered_map<GroupKey, Group, GroupKeyHash>::iterator it) {
  group_lru_.erase(it->second.lru);
  groups_.erase(it);
}

void DedupEngine::touch(Flow& flow) {
  flow.touched = ++clock_;
  flow_lru_.splice(flow_lru_.begin(), flow_lru_, flow.lru);
}

void DedupEngine::touch(Group& group) {
  group.touched = ++clock_;
  group_lru_.splice(group_lru_.begin(), group_lru_, group.lru);
}

void DedupEngine::compact_timers() {
  // Stale deadlines (flows ended or evicted) pile up under churn: keep only live ones.
  std::erase_if(flow_timers_, [&](const FlowTimer& t) {
    auto it = flows_.find(t.uid);
    return it == flows_.end() || it->second.held_start == nullptr ||
           it->second.hold_until_ns != t.deadline_ns;
  });
  std::erase_if(group_timers_, [&](const GroupTimer& t) {
    auto it = groups_.find(t.key);
    return it == groups_.end() || it->second.expires_ns != t.deadline_ns;
  });
}

}  // namespace flowseal::dedupd
