// The capture -> flowd edge as flowd reads it: one PacketBatch frame applied to the flow
// table. flowd's stage loop and the callgrind gate (tests/perfgate) both call this, so the
// gate measures the stage's own per-packet code, not a copy of it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "event_encode.h"
#include "flow_table.h"
#include "packet/decode.h"

namespace flowseal::flowd {

// An EventSink told the sampling rate of the packets its next events come from (capture
// samples whole flows under memory pressure; each event carries the rate in force).
class SampledEventSink : public EventSink {
 public:
  virtual void set_sampling_rate(float rate) = 0;
};

// Applies one PacketBatch frame to `table`, in the step the caller opened: each packet is
// decoded and accounted, or counted by why it could not be; packets before
// table.next_seq() were applied already (capture repeated a batch after a restart, or a
// commit cut this frame before a kill) and are skipped; then what is due by the frame's last
// packet time expires. Throws kj::Exception if the frame is malformed (what it applied until
// then stays). Returns the number of packets in the frame, skipped ones included.
std::uint64_t apply_packet_batch(std::span<const std::byte> frame, FlowTable& table,
                                 SampledEventSink& sink, packet::DecodedPacket& decoded);

}  // namespace flowseal::flowd
