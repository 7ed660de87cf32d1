// What a stored flow record becomes in IPFIX (RFC 7011, biflows per RFC 5103): the field
// mapping, the templates, and the per-flow state that makes a collector's sums come out right.
//
// One IpfixRecord is one IPFIX data record in the layout of the exporter's internal template
// (kIpfixSpec, libfixbuf transcodes it to the template on the wire). Which records a stored
// event gives (IpfixMapper::map):
//   - start: none (its packets are in the flow's later records).
//   - update (active timeout) and end: the flow's packets and octets SINCE THE LAST RECORD
//     exported for it (octetDeltaCount / packetDeltaCount), from flowStartMilliseconds = the end
//     of that last record (the flow's first packet for its first record) to its last packet,
//     so that a collector summing a flow's records gets exactly its totals. flowEndReason:
//     activeTimeout(2) for an update, idleTimeout(1), endOfFlowDetected(3) for FIN/RST,
//     forcedEnd(4) for shutdown, lackOfResources(5) for eviction.
//   - summary (dedupd folded repeated short flows): ONE record with the group's key
//     (originator and responder address, responder port, protocol, VLAN; source port: the last
//     folded flow's), the summed packets and octets, first and last packet of the group, and
//     deltaFlowCount (IE 3) = the number of flows it stands for. A collector that sums packets
//     and octets per address pair gets the same totals as with dedup off; one that counts
//     records counts a summary once (deltaFlowCount says how many flows it holds).
// Biflow mode: one record, the originator as source, the responder's figures in the reverse
// elements (reverseOctetDeltaCount, reversePacketDeltaCount, reverseTcpControlBits).
// Uniflow mode: one record per direction that sent packets in the slice, the responder's with
// source and destination swapped (a slice in which neither side sent gives none). ICMP: type and
// code go in destinationTransportPort as type * 256 + code (sourceTransportPort 0), as YAF and
// nfdump read them. Octets are IP bytes (headers included), as IPFIX defines octetDeltaCount.
// Sampled records are exported as counted (not scaled up).
//
// IpfixMapper keeps, per flow with an exported update, its figures so far (bounded by
// kMaxTrackedFlows), and the ids of recently exported events (a crash of an upstream stage may
// store one event twice, in two batches; `flowseal cat` shows it once, so does the export).
// Changes are made per batch and either committed (the batch went out) or rolled back (it did
// not: it is sent again later). Its state is saved with the exporter's position
// (ipfix_exporter.h), so a restart neither repeats a delta nor loses one.
//
// Not thread-safe.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <fixbuf/public.h>

#include "flowseal.capnp.h"
#include "shipd/recent_event_ids.h"

namespace flowseal::shipd {

enum class IpfixMode { kBiflow, kUniflow };

// Standard-layout, fields in kIpfixSpec order, each the size its spec says.
struct IpfixRecord {
  std::uint64_t flow_start_ms = 0;                // flowStartMilliseconds (152)
  std::uint64_t flow_end_ms = 0;                  // flowEndMilliseconds (153)
  std::uint64_t octets = 0;                       // octetDeltaCount (1)
  std::uint64_t packets = 0;                      // packetDeltaCount (2)
  std::uint64_t reverse_octets = 0;               // reverseOctetDeltaCount (29305/1), biflow
  std::uint64_t reverse_packets = 0;              // reversePacketDeltaCount (29305/2), biflow
  std::uint64_t flow_count = 0;                   // deltaFlowCount (3): 1, a summary's flow count
  std::array<std::uint8_t, 16> source_v6{};       // sourceIPv6Address (27)
  std::array<std::uint8_t, 16> destination_v6{};  // destinationIPv6Address (28)
  std::uint32_t source_v4 = 0;                    // sourceIPv4Address (8), host order
  std::uint32_t destination_v4 = 0;               // destinationIPv4Address (12), host order
  std::uint16_t source_port = 0;                  // sourceTransportPort (7)
  std::uint16_t destination_port = 0;             // destinationTransportPort (11)
  std::uint16_t vlan = 0;                         // vlanId (58)
  std::uint16_t tcp_flags = 0;                    // tcpControlBits (6)
  std::uint16_t reverse_tcp_flags = 0;            // reverseTcpControlBits (29305/6), biflow
  std::uint8_t protocol = 0;                      // protocolIdentifier (4)
  std::uint8_t end_reason = 0;                    // flowEndReason (136)
  std::array<std::uint8_t, 4> padding{};          // paddingOctets: internal template only

  bool is_v6() const { return source_v4 == 0 && destination_v4 == 0; }
};
static_assert(sizeof(IpfixRecord) == 112);

// Template flags (fbInfoElementSpec_t.flags): which spec entries each template holds.
inline constexpr std::uint32_t kIpfixV4 = 1;
inline constexpr std::uint32_t kIpfixV6 = 2;
inline constexpr std::uint32_t kIpfixBiflow = 4;
inline constexpr std::uint32_t kIpfixInternal = 8;
// The spec array, FB_IESPEC_NULL-terminated. Internal template: every flag (UINT32_MAX).
extern fbInfoElementSpec_t kIpfixSpec[];

// Template ids: the internal one, and the external ones by address family.
inline constexpr std::uint16_t kIpfixInternalTid = 0x9f00;
inline constexpr std::uint16_t kIpfixV4Tid = 0x0100;
inline constexpr std::uint16_t kIpfixV6Tid = 0x0101;
// The external template flags of an address family in a mode.
std::uint32_t external_flags(bool v6, IpfixMode mode);

// RFC 5102 flowEndReason of a stored event (0 for a start).
std::uint8_t flow_end_reason(schema::FlowEvent::Reader event);

class IpfixMapper {
 public:
  static constexpr std::size_t kMaxTrackedFlows = 1 << 20;
  static constexpr std::size_t kRecentEvents = 1 << 17;

  // What one flow has been exported with so far (the figures of its last update).
  struct Sent {
    std::uint64_t orig_pkts = 0, orig_bytes = 0, resp_pkts = 0, resp_bytes = 0;
    std::uint64_t last_ms = 0;  // end of the last record exported for it
    bool operator==(const Sent&) const = default;
  };

  explicit IpfixMapper(IpfixMode mode) : mode_(mode) {}

  // Appends the records for `event` to `out` (none for a start, a repeat, or a malformed
  // record: the latter counted in malformed()). Changes are pending until commit()/rollback().
  void map(schema::FlowEvent::Reader event, std::vector<IpfixRecord>& out);
  // Called for an event a few before it is mapped: loads what map() will look up for it.
  void prefetch(schema::FlowEvent::Reader event) const;
  void commit();
  void rollback();

  std::uint64_t repeats() const { return repeats_; }
  std::uint64_t malformed() const { return malformed_; }
  std::uint64_t untracked() const { return untracked_; }  // flows past kMaxTrackedFlows
  std::size_t tracked() const { return sent_.size(); }

  // The per-flow state as text lines ("flow UID OP OB RP RB LAST\n"), and back; load()
  // returns false with `why` on a line it cannot read (the state is then left empty).
  std::string save() const;
  bool load(std::string_view text, std::string& why);

 private:
  void remember(std::uint64_t uid, const std::optional<Sent>& before);

  IpfixMode mode_;
  std::unordered_map<std::uint64_t, Sent> sent_;
  // Undo log of the pending batch: each touched flow's state before it (nullopt: absent).
  std::vector<std::pair<std::uint64_t, std::optional<Sent>>> undo_;
  RecentEventIds recent_{kRecentEvents};
  std::uint64_t repeats_ = 0;
  std::uint64_t malformed_ = 0;
  std::uint64_t untracked_ = 0;
};

}  // namespace flowseal::shipd
