// SegmentStore: a directory of segments as writerd sees it — recovery at start, then one open
// segment that batches are appended to, rotated by size, age or signing key.
//
// Recovery (in the constructor): a `.part` left by a crash is read frame by frame and cut back
// to its last whole frame; the newest one is continued (appended to), older ones are closed;
// a `.part` without a single whole frame is removed, one with an unreadable header is renamed
// to `*.damaged` (kept as evidence, ignored by list_segments). The highest stored batch seq
// and the stream id come from the newest segment, so a replayed batch (seq <= highest) is
// recognised and dropped: after a crash the ring replays what was not committed. Recovery
// reports its progress frame by frame (StoreOptions::on_recovery_progress).
//
// One directory holds one stream: a batch of another stream id is refused (kForeignStream),
// since `flowseal verify` checks one hash chain per directory. Nothing on the append path
// throws; the constructor throws std::runtime_error if the directory cannot be used.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <system_error>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "segment/format.h"
#include "segment/writer.h"

namespace flowseal::segment {

// create_directories, but each directory made here gets `mode` exactly (not umask's idea of
// it); directories that exist already are left as their owner set them.
std::error_code make_directories(const std::filesystem::path& dir, unsigned mode);
void make_directories(const std::filesystem::path& dir, unsigned mode, std::error_code& ec);

struct StoreOptions {
  std::filesystem::path dir;
  unsigned directory_mode = 0750;  // of the directories the store makes (writer.file_mode)
  std::uint64_t segment_max_bytes = 64u << 20;
  std::chrono::nanoseconds segment_max_age = std::chrono::minutes(5);
  WriterOptions writer;
  // Retention: closed segments older than this (by their file's modification time, which is
  // when they were closed) or past the total size are deleted, oldest first. Zero: no limit.
  // The open segment is never deleted, so the total may exceed the size limit by one segment.
  std::chrono::nanoseconds retention_max_age{0};
  std::uint64_t retention_max_bytes = 0;
  // The position files (in DIR, segment/shipped_position.h) of the outputs that follow the
  // store (shipd: `shipped`, `ipfix-exported`, `kafka-exported`, each when configured).
  // Retention never deletes, for its age, a segment holding a batch one of them has not
  // handed over yet; only the size limit (the disk) may force it, and then every record
  // given up is counted (dropped_unshipped_records) and said loudly (take_alarms).
  std::vector<std::string> output_positions;
  // Called after each frame recovery reads (a `.part` to cut back, or a closed segment
  // without its index): a long read goes frame by frame (zstd and the columns: about a
  // millisecond each on a loaded machine, seconds for a busy run's open segment), and a
  // caller watched by a heartbeat (writerd) beats in it. Empty: nothing is called.
  std::function<void()> on_recovery_progress;
};

enum class AppendResult { kStored, kDuplicate, kForeignStream, kError };

class SegmentStore {
 public:
  explicit SegmentStore(StoreOptions options);

  // Stores one SealedBatch message. kError: last_error() says why; nothing was stored and the
  // same batch may be retried. `now_ns` is CLOCK_REALTIME (segment age and header time).
  AppendResult append(const StreamId& stream, const KeyId& key, const BatchMeta& batch,
                      std::span<const std::byte> message, std::int64_t now_ns);
  // Closes the open segment once it is older than segment_max_age, and fsyncs on the
  // `interval` policy: call it when idle.
  IoStatus maintain(std::int64_t now_ns);
  // When maintain() has an fsync to do if nothing else is appended (time_point::max():
  // nothing; segment age and retention are seconds-coarse and need no wake of their own).
  std::chrono::steady_clock::time_point sync_due_at() const {
    return writer_ ? writer_->sync_due_at() : std::chrono::steady_clock::time_point::max();
  }
  // Closes the open segment (drain). Ok if none is open.
  IoStatus close();

  const IoStatus& last_error() const { return last_error_; }
  std::optional<std::uint64_t> highest_seq() const { return highest_seq_; }
  const std::optional<StreamId>& stream_id() const { return stream_id_; }
  // What recovery found and did, one line each, for the log.
  const std::vector<std::string>& recovery_notes() const { return notes_; }
  // The notes so far (recovery, then retention deletions), handed over once for the log.
  std::vector<std::string> take_notes() { return std::exchange(notes_, {}); }
  std::uint64_t bytes_stored() const { return bytes_stored_; }
  std::uint64_t segments_started() const { return segments_started_; }
  bool has_open_segment() const { return writer_.has_value(); }
  std::uint64_t segments_deleted() const { return segments_deleted_; }
  // output_positions: what the size limit forced retention to delete before shipd had it acked.
  std::uint64_t dropped_unshipped_records() const { return dropped_unshipped_records_; }
  std::uint64_t dropped_unshipped_segments() const { return dropped_unshipped_segments_; }
  // Lines to log as errors, handed over once: unshipped data deleted.
  std::vector<std::string> take_alarms() { return std::exchange(alarms_, {}); }

 private:
  void recover();
  void recover_part(const std::filesystem::path& part, bool newest);
  void learn_from_closed(const std::filesystem::path& segment);
  void recovery_progress() const {
    if (options_.on_recovery_progress) options_.on_recovery_progress();
  }
  IoStatus close_writer();
  // Whether the open segment is past segment_max_age at `now_ns`, or the wall clock went back
  // behind its creation (then noted once).
  bool segment_due(std::int64_t now_ns);
  // Deletes closed segments past the retention limits (a failure is noted, retried later).
  void enforce_retention(std::int64_t now_ns);

  StoreOptions options_;
  std::optional<SegmentWriter> writer_;
  std::optional<std::uint64_t> highest_seq_;
  std::optional<StreamId> stream_id_;
  IoStatus last_error_;
  std::vector<std::string> notes_;
  std::uint64_t bytes_stored_ = 0;
  std::uint64_t segments_started_ = 0;
  std::uint64_t segments_deleted_ = 0;
  std::int64_t last_retention_ns_ = 0;
  std::uint64_t dropped_unshipped_records_ = 0;
  std::uint64_t dropped_unshipped_segments_ = 0;
  std::vector<std::string> alarms_;
  bool clock_step_noted_ = false;  // "the wall clock went back" said once per open segment
  bool age_hold_noted_ = false;    // "kept past its age: not shipped" said once per hold
};

}  // namespace flowseal::segment
