#include "segment/store.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <system_error>

#include <fmt/format.h>

#include "segment/reader.h"
#include "segment/shipped_position.h"

namespace flowseal::segment {

std::error_code make_directories(const std::filesystem::path& dir, unsigned mode) {
  std::error_code ec;
  make_directories(dir, mode, ec);
  return ec;
}

void make_directories(const std::filesystem::path& dir, unsigned mode, std::error_code& ec) {
  std::filesystem::path path;
  for (const auto& part : dir) {
    path /= part;
    if (::mkdir(path.c_str(), static_cast<mode_t>(mode)) == 0) {
      if (::chmod(path.c_str(), static_cast<mode_t>(mode)) != 0) {
        ec.assign(errno, std::generic_category());
        return;
      }
    } else if (errno != EEXIST) {
      ec.assign(errno, std::generic_category());
      return;
    }
  }
  if (!std::filesystem::is_directory(dir, ec) && !ec) {
    ec = std::make_error_code(std::errc::not_a_directory);
  }
}

SegmentStore::SegmentStore(StoreOptions options) : options_(std::move(options)) {
  std::error_code ec;
  make_directories(options_.dir, options_.directory_mode, ec);
  if (ec) {
    throw std::runtime_error(fmt::format("{}: cannot create the output directory: {}",
                                         options_.dir.string(), ec.message()));
  }
  recover();
}

void SegmentStore::recover() {
  std::vector<std::filesystem::path> segments;
  try {
    segments = list_segments(options_.dir);
  } catch (const std::filesystem::filesystem_error& e) {
    throw std::runtime_error(
        fmt::format("{}: cannot list segments: {}", options_.dir.string(), e.code().message()));
  }
  std::vector<std::filesystem::path> closed_segments, parts;
  for (auto& s : segments) (is_part(s) ? parts : closed_segments).push_back(s);
  for (std::size_t i = 0; i < parts.size(); ++i) recover_part(parts[i], i + 1 == parts.size());
  if (!writer_ && !closed_segments.empty()) {
    // Names sort by first seq, so the newest closed segment holds the highest seq.
    learn_from_closed(closed_segments.back());
  }
}

void SegmentStore::recover_part(const std::filesystem::path& part, bool newest) {
  SegmentReader reader(part);
  if (!reader.ok()) {
    const SegmentError& e = *reader.error();
    std::error_code ec;
    const auto size = std::filesystem::file_size(part, ec);
    if (!ec && size < kFileHeaderBytes) {
      std::filesystem::remove(part, ec);
      notes_.push_back(fmt::format("{}: removed: torn before its header was whole ({} bytes)",
                                   part.string(), size));
    } else {
      std::filesystem::path damaged = part;
      damaged += ".damaged";
      std::filesystem::rename(part, damaged, ec);
      notes_.push_back(fmt::format("{}; kept as {}", e.message(), damaged.filename().string()));
    }
    return;
  }
  SegmentReader::Next next;
  while ((next = reader.next()) == SegmentReader::Next::kFrame) recovery_progress();
  if (next == SegmentReader::Next::kError) {
    notes_.push_back(fmt::format("{}: cutting back to offset {}, its last whole frame",
                                 reader.error()->message(), reader.end_of_frames()));
  }
  if (reader.frames().empty()) {
    std::error_code ec;
    std::filesystem::remove(part, ec);
    notes_.push_back(fmt::format("{}: removed: it holds no whole batch", part.string()));
    return;
  }
  IoStatus status;
  auto writer = SegmentWriter::adopt(part, reader.header(), reader.frames(), reader.end_of_frames(),
                                     options_.writer, status);
  if (!writer) throw std::runtime_error(status.what);
  highest_seq_ = reader.frames().back().batch.seq;
  stream_id_ = reader.header().stream_id;
  // A .part of an older format version is closed, never continued: one file, one version.
  if (newest && reader.header().version == kFormatVersion) {
    notes_.push_back(fmt::format("{}: continuing after batch {} ({} batches)", part.string(),
                                 *highest_seq_, reader.frames().size()));
    writer_ = std::move(writer);
    return;
  }
  status = writer->close();
  if (!writer->closed()) throw std::runtime_error(status.what);
  notes_.push_back(fmt::format("{}: closed as {}", part.string(), writer->path().string()));
}

void SegmentStore::learn_from_closed(const std::filesystem::path& segment) {
  SegmentReader reader(segment);
  if (!reader.ok()) {
    throw std::runtime_error(fmt::format(
        "{}: cannot tell which batches the output directory holds; move the damaged segment "
        "away",
        reader.error()->message()));
  }
  stream_id_ = reader.header().stream_id;
  SegmentError error;
  if (auto index = read_index(segment, error); index && !index->empty()) {
    highest_seq_ = index->back().batch.seq;
    return;
  }
  while (reader.next() == SegmentReader::Next::kFrame) recovery_progress();
  if (!reader.frames().empty()) highest_seq_ = reader.frames().back().batch.seq;
  if (reader.error()) {
    notes_.push_back(fmt::format("{} (the newest stored batch seen is {})",
                                 reader.error()->message(),
                                 highest_seq_ ? std::to_string(*highest_seq_) : "none"));
  }
}

bool SegmentStore::segment_due(std::int64_t now_ns) {
  const std::int64_t age = now_ns - writer_->header().created_ns;
  if (age >= 0) return age >= options_.segment_max_age.count();
  // The wall clock went back behind the segment's creation (an NTP step, an operator): its
  // age would stay negative for as long as the step, keeping it open that much past
  // segment_max_age. Closed now; the next segment ages from the new time.
  if (!clock_step_noted_) {
    notes_.push_back(fmt::format(
        "{}: the wall clock went back {:.1f} s behind the segment's creation: closing it now "
        "(segment ages are measured from the new time)",
        writer_->path().string(), double(-age) / 1e9));
    clock_step_noted_ = true;
  }
  return true;
}

IoStatus SegmentStore::close_writer() {
  if (!writer_) return {};
  IoStatus status = writer_->close();
  if (writer_->closed()) {
    writer_.reset();
    clock_step_noted_ = false;
    return {};  // a directory fsync failure after the rename leaves a complete segment
  }
  return status;
}

namespace {

// The batches of a closed segment (seq, record count): from its index, or by reading its
// frames when the index is missing.
std::vector<BatchMeta> batches_of(const std::filesystem::path& file, StreamId& stream) {
  std::vector<BatchMeta> batches;
  SegmentReader reader(file);
  stream = reader.header().stream_id;
  SegmentError error;
  if (auto index = read_index(file, error)) {
    for (const IndexEntry& entry : *index) batches.push_back(entry.batch);
    return batches;
  }
  while (reader.next() == SegmentReader::Next::kFrame) batches.push_back(reader.frame().batch);
  return batches;
}

// The batches of `batches` the Core has not acked (after shipd's position `shipped`): what a
// gap marker tells it was given up. The other outputs' positions do not count (a lagging
// IPFIX or Kafka export would widen the marker over batches the Core has); nullopt if none.
std::optional<GivenUp> unshipped_to_core(const std::vector<BatchMeta>& batches,
                                         const StreamId& stream,
                                         const std::optional<ShippedPosition>& shipped,
                                         std::int64_t now_ns) {
  std::optional<GivenUp> range;
  for (const BatchMeta& batch : batches) {
    if (shipped && shipped->stream == stream && batch.seq <= shipped->seq) continue;
    if (!range) range = GivenUp{stream, batch.seq, batch.seq, 0, now_ns};
    range->last_seq = batch.seq;
    range->records += batch.record_count;
  }
  return range;
}

}  // namespace

void SegmentStore::enforce_retention(std::int64_t now_ns) {
  if (options_.retention_max_age.count() <= 0 && options_.retention_max_bytes == 0) return;
  std::vector<std::filesystem::path> segments;
  try {
    segments = list_segments(options_.dir);
  } catch (const std::filesystem::filesystem_error& e) {
    notes_.push_back(fmt::format("retention: {}: cannot list segments: {}", options_.dir.string(),
                                 e.code().message()));
    return;
  }
  struct Closed {
    std::filesystem::path file;
    std::uint64_t bytes;
    std::int64_t closed_ns;
  };
  std::vector<Closed> closed;  // in stream order: oldest first
  std::uint64_t total = 0;
  for (const auto& file : segments) {
    std::error_code ec;
    const std::uint64_t bytes = std::filesystem::file_size(file, ec);
    if (ec) continue;
    total += bytes;
    if (is_part(file)) continue;  // the open segment (or one recovery left) is never deleted
    const auto mtime = std::filesystem::last_write_time(file, ec);
    if (ec) continue;
    const auto since_epoch = std::chrono::file_clock::to_sys(mtime).time_since_epoch();
    closed.push_back(
        {file, bytes, std::chrono::duration_cast<std::chrono::nanoseconds>(since_epoch).count()});
  }
  // What every output has handed over (nothing of an output with no position yet).
  std::vector<std::optional<ShippedPosition>> positions;
  for (const std::string& name : options_.output_positions) {
    std::string why;
    positions.push_back(load_output_position(options_.dir, name, why));
    if (!why.empty()) {
      notes_.push_back(fmt::format("retention: {}: taking nothing as handed over", why));
    }
  }
  // shipd's own position, for the Core's gap markers (none without shipping).
  const auto ship = std::find(options_.output_positions.begin(), options_.output_positions.end(),
                              std::string(kShippedFileName));
  const bool ships = ship != options_.output_positions.end();
  const std::optional<ShippedPosition> shipped =
      ships ? positions[static_cast<std::size_t>(ship - options_.output_positions.begin())]
            : std::nullopt;
  const auto handed_over = [&positions](const StreamId& stream, std::uint64_t seq) {
    return std::all_of(positions.begin(), positions.end(), [&](const auto& position) {
      return position && position->stream == stream && seq <= position->seq;
    });
  };
  bool age_hold = false;
  for (const Closed& segment : closed) {
    const bool too_old = options_.retention_max_age.count() > 0 &&
                         now_ns - segment.closed_ns > options_.retention_max_age.count();
    const bool too_big = options_.retention_max_bytes > 0 && total > options_.retention_max_bytes;
    if (!too_old && !too_big) break;  // oldest first: the rest are newer and the total fits
    std::uint64_t unshipped_records = 0;
    std::optional<std::uint64_t> first_unshipped, last_unshipped;
    StreamId stream{};
    std::optional<GivenUp> given_up;
    if (!options_.output_positions.empty()) {
      const std::vector<BatchMeta> batches = batches_of(segment.file, stream);
      if (ships) given_up = unshipped_to_core(batches, stream, shipped, now_ns);
      for (const BatchMeta& batch : batches) {
        if (handed_over(stream, batch.seq)) continue;
        unshipped_records += batch.record_count;
        if (!first_unshipped) first_unshipped = batch.seq;
        last_unshipped = batch.seq;
      }
      if (first_unshipped && !too_big) {
        // Past its age only: kept until every output has it (the newer ones are not handed
        // over either, so none goes).
        age_hold = true;
        if (!age_hold_noted_) {
          notes_.push_back(fmt::format(
              "retention: keeping {} and newer past writer.retention_max_age: not shipped yet "
              "(batch seq {} onwards)",
              segment.file.filename().string(), *first_unshipped));
          age_hold_noted_ = true;
        }
        break;
      }
    }
    // The note goes first: a crash after it and before the deletion leaves a note for batches
    // that are still there, which ship nothing false (shipd uses a marker only for a seq it
    // cannot find), while the other order could lose a gap without a marker.
    std::string note_failure;
    const bool noted = !given_up || append_given_up(options_.dir, *given_up, note_failure);
    std::error_code ec;
    std::filesystem::remove(segment.file, ec);
    if (ec) {
      notes_.push_back(
          fmt::format("retention: {}: cannot delete: {}", segment.file.string(), ec.message()));
      return;
    }
    // A full disk is when the limit bites: the deletion just freed room for the note.
    if (!noted && !append_given_up(options_.dir, *given_up, note_failure)) {
      note_failure = fmt::format(" (and no gap marker for the Core: {})", note_failure);
    } else {
      note_failure.clear();
    }
    total -= segment.bytes;
    ++segments_deleted_;
    if (first_unshipped) {
      dropped_unshipped_records_ += unshipped_records;
      ++dropped_unshipped_segments_;
      alarms_.push_back(
          fmt::format("retention: DELETED {} BEFORE IT WAS SHIPPED: the disk limit "
                      "(writer.retention_max_mb) forced it; batch seq {}..{}, {} records given up "
                      "(ship.dropped_records {} in all): the Core never gets them{}",
                      segment.file.filename().string(), *first_unshipped, *last_unshipped,
                      unshipped_records, dropped_unshipped_records_, note_failure));
      continue;
    }
    notes_.push_back(fmt::format(
        "retention: deleted {} ({} bytes, {})", segment.file.filename().string(), segment.bytes,
        too_old ? "past writer.retention_max_age" : "past writer.retention_max_mb"));
  }
  if (!age_hold) age_hold_noted_ = false;
}

AppendResult SegmentStore::append(const StreamId& stream, const KeyId& key, const BatchMeta& batch,
                                  std::span<const std::byte> message, std::int64_t now_ns) {
  last_error_ = {};  // describes this append only: writerd tells "works again" by it
  if (stream_id_ && *stream_id_ != stream) {
    last_error_ = IoStatus::failure(
        EINVAL, fmt::format("{} holds stream {}; batch {} belongs to stream {}: use another "
                            "output directory for a new stream",
                            options_.dir.string(), to_hex(*stream_id_), batch.seq, to_hex(stream)));
    return AppendResult::kForeignStream;
  }
  if (highest_seq_ && batch.seq <= *highest_seq_) return AppendResult::kDuplicate;
  if (writer_ && (writer_->header().key_id != key || segment_due(now_ns))) {
    // A segment has one key id in its header, so a key change starts a new one.
    if (IoStatus s = close_writer(); !s.ok()) {
      last_error_ = s;
      return AppendResult::kError;
    }
  }
  if (!writer_) {
    FileHeader header;
    header.stream_id = stream;
    header.key_id = key;
    header.created_ns = now_ns;
    IoStatus status;
    writer_ = SegmentWriter::create(options_.dir, batch.seq, header, options_.writer, status);
    if (!writer_) {
      last_error_ = status;
      return AppendResult::kError;
    }
    ++segments_started_;
  }
  const std::uint64_t before = writer_->bytes();
  if (IoStatus s = writer_->append(batch, message); !s.ok()) {
    last_error_ = s;
    return AppendResult::kError;
  }
  bytes_stored_ += writer_->bytes() - before;
  highest_seq_ = batch.seq;
  stream_id_ = stream;
  if (writer_->bytes() >= options_.segment_max_bytes) {
    // The batch is stored either way; a failed close is retried by the next append/maintain.
    last_error_ = close_writer();
    if (!writer_) enforce_retention(now_ns);
  }
  return AppendResult::kStored;
}

IoStatus SegmentStore::maintain(std::int64_t now_ns) {
  if (writer_ && (writer_->bytes() >= options_.segment_max_bytes || segment_due(now_ns))) {
    if (IoStatus s = close_writer(); !s.ok()) return s;
  }
  // Age-based retention must act when no batch comes: it is checked here, at most once a second.
  if (now_ns - last_retention_ns_ >= 1'000'000'000) {
    last_retention_ns_ = now_ns;
    enforce_retention(now_ns);
  }
  return writer_ ? writer_->sync_if_due() : IoStatus{};
}

IoStatus SegmentStore::close() { return close_writer(); }

}  // namespace flowseal::segment
