// A NATS connection set up the way flowseal ships: mutual TLS by default (the CA that signed
// the server, this side's certificate chain and key, the server's host name checked against
// its certificate), plaintext only when the operator allowed it. Used by shipd (publisher)
// and `flowseal collect` (consumer).
//
// Guarantees: every libnats object is owned here and released in the destructor; a failed
// connect says why in one line (libnats' own error text, e.g. the TLS alert the server sent)
// and classifies it, so collect can exit 69 (no server) or 77 (certificate refused) and shipd
// can count and retry. Not thread-safe beyond what libnats itself is.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include <nats/nats.h>

namespace flowseal::ship {

struct NatsUrl {
  std::string scheme;  // "tls" or "nats"
  std::string host;
  int port = 4222;
};
// "tls://HOST:PORT" or "nats://HOST:PORT" (port optional); nullopt with `why` otherwise.
std::optional<NatsUrl> parse_nats_url(std::string_view url, std::string& why);

struct ClientTls {
  std::string ca_file;    // PEM: the CA the server's certificate must chain to
  std::string cert_file;  // PEM: this side's certificate chain (read by whoever may)
  std::string key_pem;    // PEM: its private key, already read (read_private_pem)
};

// Reads a private key like the signing key: a regular file, not a symlink (O_NOFOLLOW), owned
// by root or by us, mode without group/other bits. Throws std::runtime_error naming `what`
// (the config key or option) and the file.
std::string read_private_pem(const std::filesystem::path& file, std::string_view what);
// Reads a whole (public) file; throws std::runtime_error naming `what` and the file.
std::string read_text_file(const std::filesystem::path& file, std::string_view what);

struct ConnectSettings {
  std::string url;
  bool insecure = false;  // plaintext allowed (nats://)
  ClientTls tls;          // unused for nats://
  std::string name;       // client name the server shows (monitoring)
  bool reconnect_forever = true;
};

// Checks what needs no network: the URL's form, plaintext without `insecure`, the TLS files
// present and readable. Throws std::invalid_argument naming `key_prefix`'s key ("ship.url",
// "--url", ...), which callers turn into exit 78.
void check_connect_settings(const ConnectSettings& settings, std::string_view url_key);

enum class ConnectFailure {
  kNone,
  kNoServer,    // nothing listens, or it went away before the handshake
  kTlsRefused,  // the TLS handshake failed: our certificate refused, or theirs not trusted
  kOther,
};
std::string_view to_string(ConnectFailure failure);

class NatsClient {
 public:
  // One attempt. On failure returns nullptr with `failure` and `cause` set.
  static std::unique_ptr<NatsClient> connect(const ConnectSettings& settings,
                                             ConnectFailure& failure, std::string& cause);
  ~NatsClient();
  NatsClient(const NatsClient&) = delete;
  NatsClient& operator=(const NatsClient&) = delete;

  natsConnection* connection() const { return connection_; }
  struct Events;  // what libnats' connection callbacks write (nats_client.cpp)
  // JetStream context with `options` (copied by libnats), made on first use.
  jsCtx* jetstream(jsOptions* options = nullptr);
  bool connected() const;
  // Disconnections and reconnections libnats reported since the connect.
  std::uint64_t disconnects() const;
  std::uint64_t reconnects() const;

 private:
  NatsClient() = default;
  // How long the destructor waits for libnats' closed callback after closing.
  static constexpr std::chrono::seconds kClosedWait{10};
  natsOptions* options_ = nullptr;
  natsConnection* connection_ = nullptr;
  jsCtx* js_ = nullptr;
  std::unique_ptr<Events> events_;
};

// "NATS_SSL_ERROR: SSL handshake error: tlsv13 alert certificate required" from the
// status and the library's last error text.
std::string nats_error(natsStatus status);

}  // namespace flowseal::ship
