#include "shipd/store_watch.h"

#include <poll.h>
#include <sys/inotify.h>
#include <unistd.h>

#include <array>
#include <thread>

#include <spdlog/spdlog.h>

namespace flowseal::shipd {

StoreWatch::StoreWatch(const std::filesystem::path& dir)
    : fd_(::inotify_init1(IN_NONBLOCK | IN_CLOEXEC)) {
  if (fd_ && ::inotify_add_watch(fd_.get(), dir.c_str(),
                                 IN_MODIFY | IN_CREATE | IN_MOVED_TO | IN_ONLYDIR) < 0) {
    spdlog::debug("cannot watch {} with inotify: polling it", dir.string());
    fd_.reset();
  }
}

void StoreWatch::wait(std::chrono::milliseconds at_most) {
  if (!fd_) {
    std::this_thread::sleep_for(at_most);
    return;
  }
  pollfd p{fd_.get(), POLLIN, 0};
  if (::poll(&p, 1, static_cast<int>(at_most.count())) <= 0) return;
  // Drained, not read: what changed is for the output to find (it reads the store anyway).
  alignas(inotify_event) std::array<char, 4096> events;
  while (::read(fd_.get(), events.data(), events.size()) > 0) {
  }
}

}  // namespace flowseal::shipd
