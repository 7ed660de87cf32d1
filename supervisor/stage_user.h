// Running the stages that need no privileges as supervisor.user.
//
// When the supervisor runs as root and supervisor.user is set, flowd, dedupd, signerd and
// writerd are started as that user (ChildProcess::spawn switches in the child before exec);
// capture starts as root and drops to capture.user itself once its handle is open. What the
// unprivileged stages must reach is made theirs here, and nothing more:
//   - the instance's shared-memory objects are created owned by the user, still mode 0600
//     (Instance, with the owner from here);
//   - the effective config in the run directory is made readable by the user's group
//     (root:group 0640 in a root 0711 directory): readable, never replaceable — capture is
//     restarted as root with it;
//   - writer.dir, if the supervisor creates it, is given to the user; an existing one must
//     already be writable by the user (checked, as the user, before any stage starts);
//   - the signing key stays root's and 0600: the supervisor opens it and signerd inherits
//     the descriptor (--key-fd), so a compromised flowd or writerd of the same uid still
//     cannot read it from disk. Nor can one swap it: the key's directory and every one above
//     it must not be writable by the user (a sticky directory such as /tmp excepted), so the
//     default key moves out of writer.dir (the user's) to a root directory beside it,
//     <writer.dir>.keys/.
#pragma once

#include <filesystem>
#include <optional>

#include "child_process.h"
#include "config.h"
#include "shm.h"

namespace flowseal::supervisor {

// The user the unprivileged stages run as: none if supervisor.user is empty, or if the
// supervisor is not root (it cannot switch; a warning says so unless it already is that
// user). Throws ConfigError naming supervisor.user if the user does not exist.
std::optional<Credentials> stage_credentials(const Config& config);

inline std::optional<FileOwner> owner_of(const std::optional<Credentials>& c) {
  if (!c) return std::nullopt;
  return FileOwner{c->uid, c->gid};
}

// Creates writer.dir if missing (given to the user if there is one). Throws ConfigError
// naming the directory and the user if writerd could not write there.
void prepare_output_dir(const Config& config, const std::optional<Credentials>& user);

// Gives `path` (a directory the supervisor made) to the user; throws naming it on failure.
void give_to(const Credentials& user, const std::filesystem::path& path);

// Makes `file` (the supervisor's, in `dir`) readable but not replaceable by the user:
// root:group 0640 in a 0711 directory. Throws naming it on failure.
void share_read_only(const Credentials& user, const std::filesystem::path& dir,
                     const std::filesystem::path& file);

// The default key location with a user (see above) when seal.key_file is empty.
std::filesystem::path default_key_file(const Config& config, bool with_user);

// Throws ConfigError naming seal.key_file and the directory if the user could replace the
// key: a directory on its path (the key's own and up) is a symbolic link, or is writable by
// the user without being a root-owned sticky directory.
void require_key_out_of_reach(const Credentials& user, const std::filesystem::path& key);

// Throws ConfigError naming `what`, the path and the user if `user` cannot access
// `path` with `mode` (R_OK, W_OK, X_OK).
void require_access(const Credentials& user, const std::filesystem::path& path, int mode,
                    std::string_view what);

}  // namespace flowseal::supervisor
