// `flowseal cat`: prints the flow records of a store (or of one segment file) as JSON lines or
// a Zeek-style TSV log, filtered by time, host and port, each event once.
//
// cat checks what it prints as verify would (StoreChecker: signatures, Merkle roots, chain,
// and the unsigned frame headers against the records) unless told --no-verify; either way it
// prints every record it can read, and then says on stderr, and with exit 65, if any of it
// came from a batch that is forged, damaged or out of chain. With --no-verify it says on
// stderr that what it printed is unverified. The time filter compares each record's own
// (signed) times: no frame is ever skipped by the unsigned times of its frame header.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

#include "commands.h"
#include "flowseal.capnp.h"

namespace flowseal::supervisor {

// An address, or a CIDR prefix of one, that matches either side of a flow.
struct HostFilter {
  std::vector<std::uint8_t> address;  // 4 or 16 bytes
  unsigned prefix = 0;                // leading bits that must match
  bool matches(capnp::Data::Reader candidate) const;
};
// "10.1.2.3", "10.0.0.0/8", "2001:db8::1", "2001:db8::/32"; nullopt for anything else.
std::optional<HostFilter> parse_host(std::string_view text);

// Which records cat prints, from its options.
class RecordFilter {
 public:
  // Throws StoreInputError (64) naming the option and the value that is not valid.
  static RecordFilter from(const CatOptions& options);
  bool wanted(schema::FlowEvent::Reader record) const;

 private:
  bool all_events_ = false;
  std::optional<std::int64_t> since_;  // records that end at or after it
  std::optional<std::int64_t> until_;  // records that start before it
  std::vector<HostFilter> hosts_;
  std::vector<std::uint32_t> ports_;
};

}  // namespace flowseal::supervisor
