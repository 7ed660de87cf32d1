#include "packet_batch.h"

#include <capnp/serialize.h>

#include "capnp_frame.h"
#include "flowseal.capnp.h"

namespace flowseal::flowd {

std::uint64_t apply_packet_batch(std::span<const std::byte> frame, FlowTable& table,
                                 SampledEventSink& sink, packet::DecodedPacket& decoded) {
  capnp::FlatArrayMessageReader reader(as_words(frame), frame_reader_options());
  auto batch = reader.getRoot<schema::PacketBatch>();
  const auto data = batch.getData();
  const auto index = batch.getIndex();
  std::uint64_t seq = batch.getFirstSeq();
  sink.set_sampling_rate(batch.getSamplingRate());
  std::int64_t last_ts = 0;
  for (auto ref : index) {
    // A skipped packet's time still drives expire() below, so a replayed frame expires what
    // the first try did.
    last_ts = ref.getTsNs();
    if (seq < table.next_seq()) {
      ++seq;
      continue;
    }
    const std::uint64_t end = std::uint64_t{ref.getOffset()} + ref.getCapLen();
    if (end > data.size()) {
      table.count_weird(packet::DecodeStatus::kTruncatedLink);
    } else {
      const std::span<const std::uint8_t> bytes(data.begin() + ref.getOffset(), ref.getCapLen());
      const auto status = packet::decode(ref.getLinkType(), bytes, ref.getWireLen(), decoded);
      if (status == packet::DecodeStatus::kOk) {
        table.on_packet(decoded, ref.getTsNs(), sink);
      } else {
        table.count_weird(status);
      }
    }
    table.set_next_seq(++seq);
  }
  // Packet time drives expiry while packets come, live too: a live input that lags the
  // wire (the kernel buffer absorbs bursts) must not end flows whose next packets are
  // still queued. Wall time takes over only when the input is idle (flowd's on_idle).
  if (last_ts != 0) table.expire(last_ts, sink);
  return index.size();
}

}  // namespace flowseal::flowd
