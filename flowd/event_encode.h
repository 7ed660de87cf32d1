// One flow event as flowd produces it, and its Cap'n Proto encoding.
//
// FlowEventData is a plain, fixed-size value (no heap: text fields are short inline arrays)
// holding every field of schema::FlowEvent, so the flow table can hand events to a sink
// without allocating and the stage can batch them before building a message. encode()
// writes one into a FlowEvent builder; it allocates only inside the message's arena.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

#include "flowseal.capnp.h"
#include "record/direction.h"

namespace flowseal::flowd {

// Short inline text (conn_state, history, Community ID): trivially copyable, never allocates,
// always NUL-terminated (Cap'n Proto's Text wants that). assign() keeps the first N bytes.
template <std::size_t N>
struct FixedText {
  static_assert(N < 255);
  std::array<char, N + 1> chars{};
  std::uint8_t size = 0;

  std::string_view view() const { return {chars.data(), size}; }
  const char* c_str() const { return chars.data(); }
  void assign(std::string_view text) {
    size = static_cast<std::uint8_t>(text.size() < N ? text.size() : N);
    for (std::size_t i = 0; i < size; ++i) chars[i] = text[i];
    chars[size] = '\0';
  }
  bool push_back(char c) {
    if (size >= N) return false;
    chars[size++] = c;
    chars[size] = '\0';
    return true;
  }
};

struct FlowEventData {
  std::uint64_t uid = 0;
  schema::EventKind kind = schema::EventKind::START;
  std::uint32_t event_number = 0;
  schema::EndReason end_reason = schema::EndReason::NONE;
  float sampling_rate = 1.0f;

  std::uint8_t proto = 0;
  std::uint8_t ip_version = 4;  // 4: the first 4 bytes of each address count
  std::array<std::uint8_t, 16> orig_addr{};
  std::array<std::uint8_t, 16> resp_addr{};
  std::uint16_t orig_port = 0;
  std::uint16_t resp_port = 0;
  std::uint16_t vlan = 0;

  std::int64_t first_ts_ns = 0;
  std::int64_t last_ts_ns = 0;

  // What each side sent (record/direction.h); `local` is set by the flow table from
  // net.local_nets.
  record::DirectionStats orig;
  record::DirectionStats resp;
  std::uint64_t missed_bytes = 0;  // conn.log missed_bytes: no gap tracking yet

  FixedText<7> conn_state;  // NUL-padded: see FixedText
  FixedText<31> history;
  FixedText<31> community_id;  // "1:" + 28 base64 characters

  std::uint32_t flow_count = 1;
  std::uint64_t first_uid = 0;
  std::uint64_t last_uid = 0;

  // uids of the enclosing tunnel connections (schema: tunnelParents), 0 = none; a set.
  static constexpr std::size_t kMaxTunnelParents = 2;
  std::array<std::uint64_t, kMaxTunnelParents> tunnel_parents{};
};

// Receives the events the flow table emits, in order. Implementations must not throw for
// per-record reasons (a full output ring is waited on, not an error).
class EventSink {
 public:
  virtual ~EventSink() = default;
  virtual void on_event(const FlowEventData& event) = 0;
  // Makes every event given so far durable downstream (published); the flow table calls it
  // before it commits a step it has to cut short (see flow_table.h).
  virtual void sync() {}
};

void encode(const FlowEventData& event, schema::FlowEvent::Builder out);

// Words a FlowEventBatch of `events` takes as one Cap'n Proto segment once encode()d: each
// event's list element, its two Direction structs, addresses, texts and tunnel parents, plus
// the batch's root. Exact, not capnp_frame.h's flow_event_batch_words() bound (which allows
// every text its longest): flowd's output frames are reserved and zeroed at this size.
std::size_t event_batch_words(std::span<const FlowEventData> events);

}  // namespace flowseal::flowd
