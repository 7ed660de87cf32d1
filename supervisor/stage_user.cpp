#include "stage_user.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "command_error.h"
#include "segment/store.h"
#include "stage_runtime.h"

namespace flowseal::supervisor {

namespace fs = std::filesystem;

std::optional<Credentials> stage_credentials(const Config& config) {
  const std::string& name = config.supervisor.user;
  if (name.empty()) return std::nullopt;
  Credentials user = resolve_user(name, "supervisor.user");
  if (geteuid() != 0) {
    if (geteuid() != user.uid) {
      spdlog::warn(
          "supervisor.user '{}' is ignored: only root can start the stages as another "
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
                                         path.string(), user.user, user.uid, std::strerror(errno)));
  }
}

void share_read_only(const Credentials& user, const fs::path& dir, const fs::path& file) {
  auto fail = [&](const fs::path& what) {
    return std::runtime_error(fmt::format("cannot share {} with supervisor.user '{}': {}",
                                          what.string(), user.user, std::strerror(errno)));
  };
  if (::chmod(dir.c_str(), 0711) != 0) throw fail(dir);
  if (::chown(file.c_str(), geteuid(), user.gid) != 0) throw fail(file);
  if (::chmod(file.c_str(), 0640) != 0) throw fail(file);
}

fs::path default_key_file(const Config& config, bool with_user) {
  const fs::path dir(config.writer.dir);
  if (!with_user) return dir / "keys" / "flowseal.key";
  fs::path beside = dir.lexically_normal();
  if (beside.filename().empty()) beside = beside.parent_path();  // "out/" -> "out"
  return fs::path(beside.string() + ".keys") / "flowseal.key";
}

void require_key_out_of_reach(const Credentials& user, const fs::path& key) {
  for (fs::path dir = fs::absolute(key).parent_path();; dir = dir.parent_path()) {
    struct stat st {};
    if (::lstat(dir.c_str(), &st) != 0) {
      throw ConfigError(fmt::format("seal.key_file {}: {}: {}", key.string(), dir.string(),
                                    std::strerror(errno)));
    }
    if (S_ISLNK(st.st_mode)) {
      throw ConfigError(
          fmt::format("seal.key_file {}: {} is a symbolic link; with supervisor.user set the key's "
                      "directories must be real ones that only root can change",
                      key.string(), dir.string()));
    }
    const bool sticky_root = (st.st_mode & S_ISVTX) != 0 && st.st_uid == 0;
    if (!sticky_root && access_as(user, dir.string(), W_OK) == 0) {
      throw ConfigError(fmt::format(
          "seal.key_file {}: {} is writable by supervisor.user '{}' (uid {}), which could "
          "swap the signing key; keep the key in a directory only root can change",
          key.string(), dir.string(), user.user, user.uid));
    }
    if (dir == dir.root_path() || dir.parent_path() == dir) break;
  }
}

void require_access(const Credentials& user, const fs::path& path, int mode,
                    std::string_view what) {
  if (const int err = access_as(user, path.string(), mode); err != 0) {
    throw ConfigError(fmt::format(
        "{} {}: not {} by supervisor.user '{}' (uid {}): {}; give it to that user (chown) or "
        "choose another",
        what, path.string(), (mode & W_OK) != 0 ? "writable" : "readable", user.user, user.uid,
        std::strerror(err)));
  }
}

void prepare_output_dir(const Config& config, const std::optional<Credentials>& user) {
  const fs::path dir(config.writer.dir);
  std::error_code ec;
  if (fs::is_symlink(fs::symlink_status(dir, ec)) && !fs::exists(dir, ec)) {
    throw CommandError(exit_code::kCantCreate,
                       fmt::format("writer.dir {}: a symbolic link to {}, which does not exist",
                                   dir.string(), fs::read_symlink(dir, ec).string()));
  }
  const bool existed = fs::exists(dir, ec);
  if (existed && !fs::is_directory(dir, ec)) {
    throw CommandError(exit_code::kCantCreate,
                       fmt::format("writer.dir {} exists and is not a directory", dir.string()));
  }
  if (!existed) {
    // Every directory made here gets writer.file_mode's directory mode (0750 by default).
    if (const std::error_code made = segment::make_directories(
            dir, static_cast<unsigned>(directory_mode(config.writer.file_mode)));
        made) {
      const bool denied =
          made == std::errc::permission_denied || made == std::errc::operation_not_permitted;
      throw CommandError(
          denied ? exit_code::kNoPermission : exit_code::kCantCreate,
          fmt::format("writer.dir {}: cannot create it: {}", dir.string(), made.message()));
    }
  }
  if (!user && ::access(dir.c_str(), W_OK | X_OK) != 0) {
    const int err = errno;
    throw CommandError(
        err == EACCES || err == EPERM ? exit_code::kNoPermission : exit_code::kCantCreate,
        fmt::format("writer.dir {}: cannot write there: {}", dir.string(), std::strerror(err)));
  }
  if (!user) return;
  if (!existed) give_to(*user, dir);
  require_access(*user, dir, W_OK | X_OK, "writer.dir");
}

}  // namespace flowseal::supervisor
