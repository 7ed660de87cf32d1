#include "capnp_frame.h"

#include <cstring>

#include <kj/io.h>

namespace flowseal {

capnp::ReaderOptions frame_reader_options() {
  capnp::ReaderOptions options;
  options.traversalLimitInWords = 64 * 1024 * 1024 / sizeof(capnp::word);
  options.nestingLimit = 16;
  return options;
}

kj::ArrayPtr<const capnp::word> as_words(std::span<const std::byte> frame) {
  return kj::ArrayPtr<const capnp::word>(reinterpret_cast<const capnp::word*>(frame.data()),
                                         frame.size() / sizeof(capnp::word));
}

bool write_message(RingProducer& producer, capnp::MessageBuilder& message,
                   const std::function<bool()>& give_up, std::chrono::milliseconds wait) {
  const std::size_t bytes = capnp::computeSerializedSizeInWords(message) * sizeof(capnp::word);
  if (bytes > producer.max_frame()) return false;
  std::span<std::byte> slot;
  while ((slot = producer.reserve(bytes, wait)).empty()) {
    if (give_up()) return false;
  }
  kj::ArrayOutputStream stream(
      kj::ArrayPtr<kj::byte>(reinterpret_cast<kj::byte*>(slot.data()), slot.size()));
  capnp::writeMessage(stream, message);
  producer.commit(bytes);
  return true;
}

}  // namespace flowseal
