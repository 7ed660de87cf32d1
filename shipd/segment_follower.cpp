#include "segment_follower.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <utility>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "unique_fd.h"
#include "ship/ship_message.h"

namespace flowseal::shipd {

namespace fs = std::filesystem;

SegmentFollower::SegmentFollower(fs::path dir, std::optional<std::uint64_t> after, FrameParts parts)
    : dir_(std::move(dir)), after_(after), parts_(parts) {}

void SegmentFollower::rewind(std::optional<std::uint64_t> after) {
  after_ = after;
  current_first_.reset();
  current_is_part_ = false;
  finished_current_ = false;
  resume_offset_ = 0;
  part_size_seen_ = 0;
  retire_reader();
}

void SegmentFollower::retire_reader() {
  if (!reader_) return;
  spent_.emplace(std::move(*reader_));
  reader_.reset();
}

void SegmentFollower::note_error(const std::string& what) {
  ++errors_;
  last_error_ = what;
  spdlog::error(
      "ship: {} (the batches after the damage in this segment are not shipped; the "
      "Core will see the gap)",
      what);
}

fs::path SegmentFollower::path_of(std::uint64_t first, bool part) const {
  fs::path path = dir_ / segment::segment_name(first);
  if (part) path += std::string(segment::kPartSuffix);
  return path;
}

// Opens `file` (the segment whose first seq is `first`) at the frame after after_.
bool SegmentFollower::open(const fs::path& file, std::uint64_t first, bool part) {
  const auto depth = parts_ != FrameParts::kStoredBytes
                         ? segment::SegmentReader::Depth::kBatches
                         : segment::SegmentReader::Depth::kStoredBytes;
  if (spent_) {
    reader_.emplace(file, depth, std::move(*spent_));
    spent_.reset();
  } else {
    reader_.emplace(file, depth);
  }
  reader_->set_decode_derived_community_ids(parts_ != FrameParts::kMessageNoDerivedIds);
  current_first_ = first;
  current_is_part_ = part;
  finished_current_ = false;
  if (!reader_->ok()) {
    const bool torn_header = part && reader_->error()->kind == segment::Damage::kBadHeader;
    if (!torn_header && reader_->error()->kind != segment::Damage::kIo) {
      note_error(reader_->error()->message());
      finished_current_ = true;
    }
    retire_reader();
    return false;
  }
  if (part) {
    // What this reader can see (its size was taken when it opened) goes to disk before any
    // of it is shipped: never ahead of the probe's own store.
    UniqueFd fd(::open(file.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd || ::fdatasync(fd.get()) != 0) {
      retire_reader();
      return false;
    }
  }
  if (resume_offset_ > segment::kFileHeaderBytes) {
    reader_->seek(resume_offset_);
  } else if (!part && after_) {
    // A closed segment: skip what is shipped through its index, without decompressing.
    segment::SegmentError error;
    if (auto index = segment::read_index(file, error)) {
      auto it = std::find_if(index->begin(), index->end(),
                             [&](const segment::IndexEntry& e) { return e.batch.seq > *after_; });
      if (!index->empty()) {
        newest_seen_ = std::max(newest_seen_.value_or(0), index->back().batch.seq);
      }
      if (it == index->end()) {
        retire_reader();
        finished_current_ = true;
        return false;
      }
      reader_->seek(it->offset);
    }
  }
  return true;
}

bool SegmentFollower::open_next_segment() {
  std::vector<std::pair<std::uint64_t, fs::path>> segments;
  try {
    for (const fs::path& file : segment::list_segments(dir_)) {
      if (auto first = segment::first_seq_of_name(file)) segments.emplace_back(*first, file);
    }
  } catch (const fs::filesystem_error& e) {
    if (last_error_ != e.what()) note_error(e.what());
    return false;
  }
  std::sort(segments.begin(), segments.end());
  for (;;) {
    const std::pair<std::uint64_t, fs::path>* pick = nullptr;
    if (current_first_) {
      // The next segment after the one finished.
      for (const auto& s : segments) {
        if (s.first > *current_first_) {
          pick = &s;
          break;
        }
      }
    } else {
      // The last segment that starts at or before the first batch wanted, else the first.
      for (const auto& s : segments) {
        if (!after_ || s.first > *after_ + 1) break;
        pick = &s;
      }
      if (pick == nullptr && !segments.empty()) pick = &segments.front();
    }
    if (pick == nullptr) return false;
    resume_offset_ = 0;
    if (open(pick->second, pick->first, segment::is_part(pick->second))) return true;
    if (!finished_current_) return false;  // a .part not readable yet: poll again
  }
}

std::optional<StoredFrame> SegmentFollower::next() {
  for (;;) {
    if (!reader_) {
      if (current_first_ && !finished_current_) {
        // Waiting on a .part: read again once it grew, or follow it to its closed name.
        struct stat st {};
        const fs::path part = path_of(*current_first_, true);
        if (::stat(part.c_str(), &st) == 0) {
          if (static_cast<std::uint64_t>(st.st_size) <= part_size_seen_) return std::nullopt;
          if (!open(part, *current_first_, true)) return std::nullopt;
        } else if (const fs::path closed = path_of(*current_first_, false);
                   ::stat(closed.c_str(), &st) == 0) {
          if (!open(closed, *current_first_, false) && !finished_current_) return std::nullopt;
        } else {
          finished_current_ = true;  // gone (retention): go on with the next one
        }
      }
      if (!reader_) {
        if (!open_next_segment()) return std::nullopt;
      }
    }
    switch (reader_->next()) {
      case segment::SegmentReader::Next::kFrame: {
        const segment::FrameHeader& frame = reader_->frame();
        resume_offset_ = reader_->end_of_frames();
        newest_seen_ = std::max(newest_seen_.value_or(0), frame.batch.seq);
        if (after_ && frame.batch.seq <= *after_) continue;
        after_ = frame.batch.seq;
        StoredFrame stored{reader_->header(), frame, {}, {}, 0};
        if (parts_ == FrameParts::kStoredBytes || parts_ == FrameParts::kBoth) {
          stored.bytes = ship::encode_frame(frame, reader_->compressed());
        }
        if (parts_ != FrameParts::kStoredBytes) {
          stored.message = reader_->take_message(stored.message_bytes, std::move(spare_));
          spare_ = {};
        }
        return stored;
      }
      case segment::SegmentReader::Next::kEnd:
        if (current_is_part_) {
          part_size_seen_ = reader_->end_of_frames();
          retire_reader();
          return std::nullopt;
        }
        retire_reader();
        finished_current_ = true;
        continue;
      case segment::SegmentReader::Next::kError: {
        const segment::SegmentError& error = *reader_->error();
        if (current_is_part_ &&
            (error.kind == segment::Damage::kTruncated || error.kind == segment::Damage::kIo)) {
          // A frame still being written: it is read once whole.
          part_size_seen_ = reader_->end_of_frames();
          retire_reader();
          return std::nullopt;
        }
        note_error(error.message());
        retire_reader();
        finished_current_ = true;
        continue;
      }
    }
  }
}

bool SegmentFollower::at_end_of_closed_store() {
  if (reader_ || (current_first_ && !finished_current_)) return false;
  try {
    for (const fs::path& file : segment::list_segments(dir_)) {
      if (segment::is_part(file)) return false;
      const auto first = segment::first_seq_of_name(file);
      if (first && (!current_first_ || *first > *current_first_)) return false;
    }
  } catch (const fs::filesystem_error&) {
    return false;
  }
  return true;
}

}  // namespace flowseal::shipd
