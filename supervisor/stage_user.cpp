#include "stage_user.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

namespace flowseal::supervisor {

namespace fs = std::filesystem;

std::optional<Credentials> stage_credentials(const Config& config) {
  const std::string& name = config.supervisor.user;
  if (name.empty()) return std::nullopt;
  Credentials user = resolve_user(name, "supervisor.user");
  if (geteuid() != 0) {
    if (geteuid() != user.uid) {
      spdlog::warn("supervisor.user '{}' is ignored: only root can start the stages as another "
                   "user (running as uid {})",
                   name, geteuid());
    }
    return std::nullopt;
  }
  if (user.uid == 0) return std::nullopt;  // root: nothing to switch to
  return user;
}

void give_to(const Credentials& user, const fs::path& path) {
  if (::chown(path.c_str(), user.uid, user.gid) != 0) {
    throw std::runtime_error(fmt::format("cannot give {} to supervisor.user '{}' (uid {}): {}",
                                         path.string(), user.user, user.uid,
                                         std::strerror(errno)));
  }
}

void require_access(const Credentials& user, const fs::path& path, int mode,
                    std::string_view what) {
  if (const int err = access_as(user, path.string(), mode); err != 0) {
    throw ConfigError(fmt::format(
        "{} {}: not {} by supervisor.user '{}' (uid {}): {}; give it to that user (chown) or "
        "choose another",
        what, path.string(),
        (mode & W_OK) != 0 ? "writable" : "readable", user.user, user.uid, std::strerror(err)));
  }
}

void prepare_output_dir(const Config& config, const std::optional<Credentials>& user) {
  const fs::path dir(config.writer.dir);
  const bool existed = fs::exists(dir);
  fs::create_directories(dir);
  if (!user) return;
  if (!existed) give_to(*user, dir);
  require_access(*user, dir, W_OK | X_OK, "writer.dir");
}

}  // namespace flowseal::supervisor
