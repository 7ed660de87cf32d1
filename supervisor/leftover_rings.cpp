#include "leftover_rings.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <bit>
#include <cerrno>
#include <cstring>

#include <fmt/format.h>

#include "control_block.h"
#include "layout.h"
#include "ring.h"
#include "shm.h"
#include "unique_fd.h"

namespace flowseal::supervisor {
namespace {

constexpr std::uint64_t kMinCapacity = 4096;
constexpr std::uint64_t kMaxCapacity = std::uint64_t{1} << 32;

std::uint64_t pad8(std::uint64_t n) { return (n + 7) & ~std::uint64_t{7}; }

// A field of the header copy, by its offset in RingHeader (the copy holds plain bytes).
template <typename T>
T field(const std::byte* header, std::size_t offset) {
  T value;
  std::memcpy(&value, header + offset, sizeof value);
  return value;
}

// Header fields read from the copy; offsetof on a standard-layout struct.
struct HeaderFields {
  std::uint64_t magic, capacity, max_frame, head, tail;
  std::uint32_t layout_version, header_bytes;
};
HeaderFields fields_of(const std::byte* h) {
  HeaderFields f{};
  f.magic = field<std::uint64_t>(h, offsetof(RingHeader, magic));
  f.layout_version = field<std::uint32_t>(h, offsetof(RingHeader, layout_version));
  f.header_bytes = field<std::uint32_t>(h, offsetof(RingHeader, header_bytes));
  f.capacity = field<std::uint64_t>(h, offsetof(RingHeader, capacity));
  f.max_frame = field<std::uint64_t>(h, offsetof(RingHeader, max_frame));
  f.head = field<std::uint64_t>(h, offsetof(RingHeader, head));
  f.tail = field<std::uint64_t>(h, offsetof(RingHeader, tail));
  return f;
}

// Empty if the identity and positions can be believed, otherwise why not.
std::string header_problem(const HeaderFields& f, std::uint64_t object_bytes) {
  if (f.magic != RingHeader::kMagic) return "not a ring (magic)";
  if (f.layout_version != RingHeader::kLayoutVersion || f.header_bytes != sizeof(RingHeader)) {
    return fmt::format("ring layout {} with a {}-byte header, not this build's {} ({} bytes)",
                       f.layout_version, f.header_bytes, RingHeader::kLayoutVersion,
                       sizeof(RingHeader));
  }
  if (!std::has_single_bit(f.capacity) || f.capacity < kMinCapacity || f.capacity > kMaxCapacity) {
    return fmt::format("capacity {} is not a power of two in 4 KiB..4 GiB", f.capacity);
  }
  if (object_bytes != ring_bytes(f.capacity)) {
    return fmt::format("{} bytes, not the {} a {}-byte ring has", object_bytes,
                       ring_bytes(f.capacity), f.capacity);
  }
  if (f.max_frame != ring_max_frame(f.capacity)) {
    return fmt::format("max frame {} is not the {} of its capacity", f.max_frame,
                       ring_max_frame(f.capacity));
  }
  if (f.tail > f.head || f.head - f.tail > f.capacity || f.tail % 8 != 0 || f.head % 8 != 0) {
    return fmt::format("tail {} and head {} do not fit a {}-byte ring", f.tail, f.head, f.capacity);
  }
  return {};
}

// The frames from tail to head, as RingConsumer::next() reads them.
void walk_frames(const HeaderFields& f, const RingReadAt& read_at, bool keep_payloads,
                 LeftoverRing& ring) {
  const std::uint64_t data = sizeof(RingHeader);
  std::uint64_t pos = f.tail;
  while (pos < f.head) {
    const std::uint64_t offset = pos & (f.capacity - 1);
    const std::uint64_t available = f.head - pos;
    FrameHeader frame{};
    if (!read_at(data + offset, std::as_writable_bytes(std::span(&frame, 1)))) {
      ring.problem = fmt::format("cannot read the frame header at position {}", pos);
      return;
    }
    if (frame.length == FrameHeader::kWrapMarker &&
        frame.check == (FrameHeader::kWrapMarker ^ FrameHeader::kCheck) &&
        f.capacity - offset <= available) {
      pos += f.capacity - offset;
      continue;
    }
    const std::uint64_t need = sizeof(FrameHeader) + pad8(frame.length);
    if (frame.check != (frame.length ^ FrameHeader::kCheck) || frame.length > f.max_frame ||
        offset + need > f.capacity || need > available) {
      ring.problem = fmt::format(
          "the frame header at position {} fails its check: the {} bytes from there "
          "to the head are not counted as frames",
          pos, available);
      return;
    }
    if (keep_payloads) {
      std::vector<std::byte> payload(frame.length);
      if (!read_at(data + offset + sizeof(FrameHeader), payload)) {
        ring.problem = fmt::format("cannot read the frame at position {}", pos);
        return;
      }
      ring.payloads.push_back(std::move(payload));
    }
    ++ring.frames;
    ring.payload += frame.length;
    pos += need;
  }
}

std::string human(std::uint64_t bytes) {
  if (bytes < 1024) return fmt::format("{} B", bytes);
  if (bytes < (1u << 20)) return fmt::format("{:.1f} KiB", double(bytes) / 1024);
  return fmt::format("{:.1f} MiB", double(bytes) / (1 << 20));
}

// What the frames of an edge carry, by who reads them.
std::string held(const std::string& edge) {
  if (edge.starts_with("capture-")) return "packet batches not yet in flows";
  if (edge == kSealedEdge) return "sealed batches not yet stored";
  if (edge == kDedupEdge) return "flow records not yet sealed";
  return "flow records not yet deduplicated";
}

}  // namespace

LeftoverRing count_leftover_frames(std::uint64_t object_bytes, const RingReadAt& read_at,
                                   bool keep_payloads) {
  LeftoverRing ring;
  alignas(RingHeader) std::byte header[sizeof(RingHeader)];
  if (object_bytes < sizeof header || !read_at(0, header)) {
    ring.problem = fmt::format("{} bytes: shorter than a ring header", object_bytes);
    return ring;
  }
  const HeaderFields f = fields_of(header);
  ring.problem = header_problem(f, object_bytes);
  if (!ring.problem.empty()) return ring;
  ring.span_bytes = f.head - f.tail;
  walk_frames(f, read_at, keep_payloads, ring);
  return ring;
}

std::vector<LeftoverRing> read_leftover_rings(const std::string& instance,
                                              std::optional<uid_t> stage_user) {
  std::vector<std::string> edges;
  for (std::size_t s = 0; s < kMaxShards; ++s) {
    edges.push_back(packet_edge(s));
    edges.push_back(flow_edge(s));
  }
  edges.emplace_back(kDedupEdge);
  edges.emplace_back(kSealedEdge);
  std::vector<LeftoverRing> found;
  const uid_t self = geteuid();
  for (const auto& edge : edges) {
    const std::string path = ShmSegment::path_of(ring_name(instance, edge));
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK));
    if (fd.get() < 0) {
      if (errno == ENOENT) continue;
      found.push_back(
          {edge, 0, 0, 0, fmt::format("cannot open {}: {}", path, std::strerror(errno)), {}});
      continue;
    }
    struct stat st {};
    LeftoverRing ring;
    if (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode)) {
      ring.problem = fmt::format("{} is not a regular shared-memory object", path);
    } else if (st.st_uid != self && st.st_uid != stage_user) {
      ring.problem = fmt::format("{} belongs to {}: not read", path, describe_user(st.st_uid));
    } else if ((st.st_mode & 077) != 0) {
      ring.problem =
          fmt::format("{} has mode {:04o}, not 0600: not read", path, st.st_mode & 07777);
    } else {
      const RingReadAt read_at = [&](std::uint64_t offset, std::span<std::byte> out) {
        return ::pread(fd.get(), out.data(), out.size(), static_cast<off_t>(offset)) ==
               static_cast<ssize_t>(out.size());
      };
      ring = count_leftover_frames(static_cast<std::uint64_t>(st.st_size), read_at,
                                   edge == kSealedEdge);
    }
    ring.edge = edge;
    found.push_back(std::move(ring));
  }
  return found;
}

std::string describe(const LeftoverRing& ring) {
  std::string text = fmt::format("{} ({}): {} frame(s), {} of payload", ring.edge, held(ring.edge),
                                 ring.frames, human(ring.payload));
  if (!ring.problem.empty()) text += fmt::format("; {}", ring.problem);
  return text;
}

}  // namespace flowseal::supervisor
