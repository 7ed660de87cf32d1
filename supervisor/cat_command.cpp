#include "cat_command.h"

#include <arpa/inet.h>

#include <algorithm>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <string>
#include <unordered_set>

#include <fmt/format.h>

#include "record/record_json.h"
#include "rfc3339.h"
#include "stage_runtime.h"
#include "store_commands.h"
#include "record_list.h"

namespace flowseal::supervisor {
namespace {

using namespace flowseal::record;  // cat's JSON line and TSV row, event id text

namespace fs = std::filesystem;

// Events are deduplicated on their id: a crash may have stored one twice, in two batches.
struct EventKey {
  std::uint64_t uid;
  std::uint64_t kind_and_number;
  bool operator==(const EventKey&) const = default;
};
struct EventKeyHash {
  std::size_t operator()(const EventKey& k) const {
    return std::hash<std::uint64_t>()(k.uid * 0x9E3779B97F4A7C15ull ^ k.kind_and_number);
  }
};
EventKey event_key(schema::FlowEvent::Reader record) {
  return {record.getUid(),
          (static_cast<std::uint64_t>(record.getKind()) << 32) | record.getEventNumber()};
}

// Zeek's #open/#close stamp: local time as YYYY-MM-DD-HH-MM-SS.
std::string zeek_now() {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  localtime_r(&now, &tm);
  char text[32];
  std::strftime(text, sizeof text, "%Y-%m-%d-%H-%M-%S", &tm);
  return text;
}

// Buffered output of records, each event id once.
class RecordPrinter {
 public:
  explicit RecordPrinter(bool tsv) : tsv_(tsv) {
    if (tsv_) out_ += tsv_header(zeek_now());
  }
  void print(schema::FlowEvent::Reader record) {
    if (!seen_.insert(event_key(record)).second) return;
    out_ += tsv_ ? to_tsv_line(record) : to_json_line(record);
    out_ += '\n';
    if (out_.size() > (1 << 16)) flush();
  }
  void flush() {
    std::fwrite(out_.data(), 1, out_.size(), stdout);
    out_.clear();
  }
  void close() {
    if (tsv_) out_ += fmt::format("#close\t{}\n", zeek_now());
    flush();
    std::fflush(stdout);
  }

 private:
  bool tsv_;
  std::string out_;
  std::unordered_set<EventKey, EventKeyHash> seen_;
};

// Prints the wanted records of one segment, checking each batch first when `checker` is set.
void cat_segment(const fs::path& file, const RecordFilter& filter, StoreChecker* checker,
                 RecordPrinter& printer, ProblemLog& problems) {
  segment::SegmentReader reader(file);
  if (checker) checker->start_segment(reader);
  while (reader.ok() && reader.next() == segment::SegmentReader::Next::kFrame) {
    try {
      capnp::FlatArrayMessageReader message = open_batch(reader);
      const auto batch = message.getRoot<schema::SealedBatch>();
      if (checker) checker->check(reader, batch, problems);
      for (const auto record : sized_records(batch.getRecords(), "SealedBatch.records")) {
        if (filter.wanted(record)) printer.print(record);
      }
    } catch (const kj::Exception& e) {
      printer.flush();
      problems.add(fmt::format("{}: batch seq {} at offset {}: cannot be read: {}", file.string(),
                               reader.frame().batch.seq, reader.frame_offset(),
                               e.getDescription().cStr()));
    }
  }
  printer.flush();
  StoreChecker::end_segment(reader, problems);
}

int cat(const CatOptions& options) {
  const RecordFilter filter = RecordFilter::from(options);
  const bool tsv = options.format == "tsv";
  const auto files = store_segments(options.path, /*file_allowed=*/true);
  std::optional<StoreChecker> checker;
  ProblemLog problems("cat");
  if (!options.no_verify && !files.empty()) {
    checker.emplace(
        StoreChecker::for_store(store_dir_of(options.path), options.public_key, problems));
  }
  RecordPrinter printer(tsv);
  for (const fs::path& file : files) {
    cat_segment(file, filter, checker ? &*checker : nullptr, printer, problems);
  }
  printer.close();
  if (!checker && !files.empty()) {
    fmt::print(stderr,
               "cat: the records printed are NOT VERIFIED (--no-verify); "
               "flowseal verify {} checks them\n",
               store_dir_of(options.path).string());
  }
  if (problems.count() == 0) return exit_code::kOk;
  fmt::print(stderr, "cat: {}: {}\n",
             checker ? "FAILED verification: what was printed may hold forged or damaged "
                       "records; the first problem"
                     : "damage",
             problems.first());
  if (problems.count() > 1) fmt::print(stderr, "cat: {} problems in all\n", problems.count());
  return exit_code::kDataError;
}

}  // namespace

bool HostFilter::matches(capnp::Data::Reader candidate) const {
  if (candidate.size() != address.size()) return false;
  for (unsigned bit = 0; bit < prefix; bit += 8) {
    const unsigned bits = std::min(8u, prefix - bit);
    const auto mask = static_cast<std::uint8_t>(0xff00u >> bits);
    if ((candidate[bit / 8] & mask) != (address[bit / 8] & mask)) return false;
  }
  return true;
}

std::optional<HostFilter> parse_host(std::string_view text) {
  const auto slash = text.find('/');
  const std::string host(text.substr(0, slash));
  HostFilter filter;
  std::uint8_t bytes[16];
  if (inet_pton(AF_INET, host.c_str(), bytes) == 1) {
    filter.address.assign(bytes, bytes + 4);
  } else if (inet_pton(AF_INET6, host.c_str(), bytes) == 1) {
    filter.address.assign(bytes, bytes + 16);
  } else {
    return std::nullopt;
  }
  filter.prefix = static_cast<unsigned>(filter.address.size() * 8);
  if (slash != std::string_view::npos) {
    const std::string_view bits = text.substr(slash + 1);
    if (bits.empty() || bits.size() > 3 ||
        bits.find_first_not_of("0123456789") != std::string_view::npos) {
      return std::nullopt;
    }
    const auto prefix = static_cast<unsigned>(std::stoul(std::string(bits)));
    if (prefix > filter.prefix) return std::nullopt;
    filter.prefix = prefix;
  }
  return filter;
}

RecordFilter RecordFilter::from(const CatOptions& options) {
  RecordFilter filter;
  filter.all_events_ = options.all_events;
  auto time = [](const char* name, const std::string& text) -> std::optional<std::int64_t> {
    if (text.empty()) return std::nullopt;
    if (auto ns = parse_time_ns(text)) return ns;
    throw StoreInputError(exit_code::kUsage,
                          fmt::format("{} {}: not a time (RFC 3339, e.g. 2024-05-01T12:00:00Z, "
                                      "or epoch seconds)",
                                      name, text));
  };
  filter.since_ = time("--since", options.since);
  filter.until_ = time("--until", options.until);
  for (const std::string& text : options.hosts) {
    auto host = parse_host(text);
    if (!host) {
      throw StoreInputError(
          exit_code::kUsage,
          fmt::format("--host {}: not an IPv4/IPv6 address or CIDR prefix", text));
    }
    filter.hosts_.push_back(std::move(*host));
  }
  for (const std::uint32_t port : options.ports) {
    if (port > 65535) {
      throw StoreInputError(exit_code::kUsage,
                            fmt::format("--port {}: out of range 0..65535", port));
    }
  }
  filter.ports_ = options.ports;
  if (options.format != "tsv" && options.format != "json") {
    throw StoreInputError(exit_code::kUsage,
                          fmt::format("--format {}: want json or tsv", options.format));
  }
  return filter;
}

bool RecordFilter::wanted(schema::FlowEvent::Reader record) const {
  // By default one line per finished connection: flow ends, and dedupd's summaries (each
  // stands for the repeated flows it folded), so no connection disappears from the default view.
  const auto kind = record.getKind();
  if (!all_events_ && kind != schema::EventKind::END && kind != schema::EventKind::SUMMARY) {
    return false;
  }
  if (since_ && record.getLastTsNs() < *since_) return false;
  if (until_ && record.getFirstTsNs() >= *until_) return false;
  if (!hosts_.empty()) {
    const auto orig = record.getOrigAddr();
    const auto resp = record.getRespAddr();
    if (std::none_of(hosts_.begin(), hosts_.end(),
                     [&](const HostFilter& h) { return h.matches(orig) || h.matches(resp); })) {
      return false;
    }
  }
  auto port_listed = [&](std::uint32_t port) {
    return std::find(ports_.begin(), ports_.end(), port) != ports_.end();
  };
  return ports_.empty() || port_listed(record.getOrigPort()) || port_listed(record.getRespPort());
}

int cat_command(const CatOptions& options) {
  try {
    return cat(options);
  } catch (const StoreInputError& e) {
    fmt::print(stderr, "cat: {}\n", e.what());
    return e.exit_code();
  }
}

}  // namespace flowseal::supervisor
