#include "ship/nats_client.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <stdexcept>
#include <vector>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "unique_fd.h"

namespace flowseal::ship {

std::optional<NatsUrl> parse_nats_url(std::string_view url, std::string& why) {
  NatsUrl out;
  const auto sep = url.find("://");
  if (sep == std::string_view::npos) {
    why = fmt::format("'{}' is not a URL: want tls://HOST:PORT", url);
    return std::nullopt;
  }
  out.scheme = std::string(url.substr(0, sep));
  if (out.scheme != "tls" && out.scheme != "nats") {
    why = fmt::format("'{}': scheme '{}' is not tls or nats", url, out.scheme);
    return std::nullopt;
  }
  std::string_view rest = url.substr(sep + 3);
  if (rest.find_first_of("@/,") != std::string_view::npos) {
    why = fmt::format("'{}': want HOST:PORT after the scheme (no user, path or list)", url);
    return std::nullopt;
  }
  // [v6]:port, host:port, or a host alone.
  const auto bracket = rest.rfind(']');
  const auto colon = rest.rfind(':');
  if (colon != std::string_view::npos &&
      (bracket != std::string_view::npos ? colon > bracket : rest.find(':') == colon)) {
    const std::string_view port = rest.substr(colon + 1);
    int value = 0;
    auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
    if (ec != std::errc() || end != port.data() + port.size() || value < 1 || value > 65535) {
      why = fmt::format("'{}': port '{}' is not 1..65535", url, port);
      return std::nullopt;
    }
    out.port = value;
    rest = rest.substr(0, colon);
  }
  if (rest.size() >= 2 && rest.front() == '[' && rest.back() == ']') {
    rest = rest.substr(1, rest.size() - 2);
  }
  if (rest.empty()) {
    why = fmt::format("'{}': no host", url);
    return std::nullopt;
  }
  out.host = std::string(rest);
  return out;
}

std::string read_private_pem(const std::filesystem::path& file, std::string_view what) {
  UniqueFd fd(::open(file.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
  if (!fd) {
    throw std::runtime_error(fmt::format(
        "{}: {}: {}", what, file.string(),
        errno == ELOOP ? "is a symbolic link (refused: a key is read only from a real file)"
                       : std::strerror(errno)));
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode)) {
    throw std::runtime_error(fmt::format("{}: {}: not a regular file", what, file.string()));
  }
  if ((st.st_mode & 077) != 0) {
    throw std::runtime_error(fmt::format("{}: {} has mode {:04o}; chmod 600 it", what,
                                         file.string(), st.st_mode & 07777));
  }
  if (st.st_uid != 0 && st.st_uid != ::geteuid()) {
    throw std::runtime_error(fmt::format("{}: {} is owned by uid {}, neither root nor us", what,
                                         file.string(), st.st_uid));
  }
  std::string out;
  char buffer[4096];
  for (;;) {
    const ssize_t n = ::read(fd.get(), buffer, sizeof buffer);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      throw std::runtime_error(
          fmt::format("{}: {}: read failed: {}", what, file.string(), std::strerror(errno)));
    }
    if (n == 0) break;
    out.append(buffer, static_cast<std::size_t>(n));
    if (out.size() > (1u << 20)) {
      throw std::runtime_error(fmt::format("{}: {}: larger than 1 MiB", what, file.string()));
    }
  }
  return out;
}

std::string read_text_file(const std::filesystem::path& file, std::string_view what) {
  UniqueFd fd(::open(file.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) {
    throw std::runtime_error(fmt::format("{}: {}: {}", what, file.string(), std::strerror(errno)));
  }
  std::string out;
  char buffer[4096];
  for (;;) {
    const ssize_t n = ::read(fd.get(), buffer, sizeof buffer);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      throw std::runtime_error(
          fmt::format("{}: {}: read failed: {}", what, file.string(), std::strerror(errno)));
    }
    if (n == 0) break;
    out.append(buffer, static_cast<std::size_t>(n));
  }
  return out;
}

void check_connect_settings(const ConnectSettings& settings, std::string_view url_key) {
  std::string why;
  const auto url = parse_nats_url(settings.url, why);
  if (!url) throw std::invalid_argument(fmt::format("{}: {}", url_key, why));
  if (url->scheme == "nats" && !settings.insecure) {
    throw std::invalid_argument(fmt::format(
        "{} = '{}' is plaintext: use tls:// with a CA, certificate and key, or allow it "
        "explicitly (ship.insecure=true / --insecure)",
        url_key, settings.url));
  }
}

std::string_view to_string(ConnectFailure failure) {
  switch (failure) {
    case ConnectFailure::kNone: return "none";
    case ConnectFailure::kNoServer: return "no server";
    case ConnectFailure::kTlsRefused: return "TLS handshake refused";
    case ConnectFailure::kOther: return "connection failed";
  }
  return "unknown";
}

std::string nats_error(natsStatus status) {
  const char* text = nats_GetLastError(nullptr);
  std::string out = natsStatus_GetText(status);
  if (text != nullptr && *text != '\0' && out.find(text) == std::string::npos) {
    out += fmt::format(": {}", text);
  }
  return out;
}

// What libnats' callbacks write. They run on libnats' own callback thread, after
// natsConnection_Close() has returned too: the disconnected callback of a Close is queued,
// not run, by Close. So this lives until the closed callback (always the connection's last)
// has run, and the destructor waits for it.
struct NatsClient::Events {
  std::atomic<std::uint64_t> disconnects{0};
  std::atomic<std::uint64_t> reconnects{0};
  std::mutex mutex;
  std::condition_variable closed_cv;
  bool closed = false;
};

namespace {

void on_disconnected(natsConnection*, void* closure) {
  static_cast<NatsClient::Events*>(closure)->disconnects.fetch_add(1);
}

void on_reconnected(natsConnection*, void* closure) {
  static_cast<NatsClient::Events*>(closure)->reconnects.fetch_add(1);
}

void on_closed(natsConnection*, void* closure) {
  auto* events = static_cast<NatsClient::Events*>(closure);
  std::lock_guard lock(events->mutex);
  events->closed = true;
  events->closed_cv.notify_all();  // under the lock: the waiter frees `events` only after it
}

void on_async_error(natsConnection*, natsSubscription*, natsStatus status, void*) {
  spdlog::warn("nats: {}", natsStatus_GetText(status));
}

ConnectFailure classify(natsStatus status, const std::string& text, bool tls) {
  // With TLS 1.3 the client's side of the handshake completes before the server has checked
  // our certificate: a refusal then shows as the connection closed before the first PONG.
  if (tls && status == NATS_PROTOCOL_ERROR && text.find("PONG") != std::string::npos) {
    return ConnectFailure::kTlsRefused;
  }
  if (status == NATS_SSL_ERROR || text.find("SSL") != std::string::npos ||
      text.find("certificate") != std::string::npos || text.find("alert") != std::string::npos) {
    return ConnectFailure::kTlsRefused;
  }
  if (status == NATS_NO_SERVER || status == NATS_CONNECTION_CLOSED ||
      status == NATS_CONNECTION_DISCONNECTED || status == NATS_IO_ERROR || status == NATS_TIMEOUT) {
    return ConnectFailure::kNoServer;
  }
  return ConnectFailure::kOther;
}

}  // namespace

std::unique_ptr<NatsClient> NatsClient::connect(const ConnectSettings& settings,
                                                ConnectFailure& failure, std::string& cause) {
  failure = ConnectFailure::kNone;
  std::string why;
  const auto url = parse_nats_url(settings.url, why);
  if (!url) {
    failure = ConnectFailure::kOther;
    cause = why;
    return nullptr;
  }
  std::unique_ptr<NatsClient> client(new NatsClient());
  client->events_ = std::make_unique<Events>();
  natsStatus s = natsOptions_Create(&client->options_);
  const std::string plain = fmt::format(
      "nats://{}:{}", url->host.find(':') == std::string::npos ? url->host : "[" + url->host + "]",
      url->port);
  auto step = [&](natsStatus status, std::string_view what) {
    if (s == NATS_OK && status != NATS_OK) {
      s = status;
      cause = fmt::format("{}: {}", what, nats_error(status));
    }
  };
  if (s != NATS_OK) {
    cause = nats_error(s);
  }
  step(natsOptions_SetURL(client->options_, plain.c_str()), "url");
  if (!settings.name.empty())
    step(natsOptions_SetName(client->options_, settings.name.c_str()), "name");
  if (url->scheme == "tls") {
    step(natsOptions_SetSecure(client->options_, true), "tls");
    if (!settings.tls.ca_file.empty()) {
      step(natsOptions_LoadCATrustedCertificates(client->options_, settings.tls.ca_file.c_str()),
           fmt::format("CA {}", settings.tls.ca_file));
    }
    if (!settings.tls.cert_file.empty()) {
      std::string cert;
      try {
        cert = read_text_file(settings.tls.cert_file, "certificate");
      } catch (const std::exception& e) {
        failure = ConnectFailure::kOther;
        cause = e.what();
        return nullptr;
      }
      step(natsOptions_SetCertificatesChain(client->options_, cert.c_str(),
                                            settings.tls.key_pem.c_str()),
           fmt::format("certificate {} and its key", settings.tls.cert_file));
    }
    // The server's certificate must name the host we asked for.
    step(natsOptions_SetExpectedHostname(client->options_, url->host.c_str()), "host name");
  }
  step(natsOptions_SetMaxReconnect(client->options_, settings.reconnect_forever ? -1 : 0),
       "reconnect");
  step(natsOptions_SetReconnectWait(client->options_, 500), "reconnect wait");
  step(natsOptions_SetTimeout(client->options_, 2000), "timeout");
  step(natsOptions_SetDisconnectedCB(client->options_, on_disconnected, client->events_.get()),
       "callback");
  step(natsOptions_SetReconnectedCB(client->options_, on_reconnected, client->events_.get()),
       "callback");
  step(natsOptions_SetClosedCB(client->options_, on_closed, client->events_.get()), "callback");
  step(natsOptions_SetErrorHandler(client->options_, on_async_error, nullptr), "callback");
  if (s != NATS_OK) {
    failure = ConnectFailure::kOther;
    return nullptr;
  }
  s = natsConnection_Connect(&client->connection_, client->options_);
  if (s != NATS_OK) {
    cause = nats_error(s);
    failure = classify(s, cause, url->scheme == "tls");
    if (failure == ConnectFailure::kTlsRefused) {
      cause =
          "a certificate was refused, ours by the server or the server's by us (the "
          "session failed in or right after the TLS handshake): " +
          cause;
    }
    client->connection_ = nullptr;
    return nullptr;
  }
  return client;
}

NatsClient::~NatsClient() {
  if (js_ != nullptr) jsCtx_Destroy(js_);
  if (connection_ != nullptr) {
    natsConnection_Close(connection_);
    // Close() only queues the disconnected and closed callbacks; freeing events_ before they
    // ran let them write into freed heap (glibc's "unaligned fastbin chunk" at exit).
    std::unique_lock lock(events_->mutex);
    if (!events_->closed_cv.wait_for(lock, kClosedWait, [&] { return events_->closed; })) {
      spdlog::warn(
          "nats: the connection's closed callback did not come within {} s: its "
          "state is left allocated",
          kClosedWait.count());
      lock.unlock();
      (void)events_.release();  // a late callback must still find it
    }
    if (lock.owns_lock()) lock.unlock();
    natsConnection_Destroy(connection_);
  }
  if (options_ != nullptr) natsOptions_Destroy(options_);
}

jsCtx* NatsClient::jetstream(jsOptions* options) {
  if (js_ == nullptr && natsConnection_JetStream(&js_, connection_, options) != NATS_OK) {
    js_ = nullptr;
  }
  return js_;
}

bool NatsClient::connected() const {
  return connection_ != nullptr && natsConnection_Status(connection_) == NATS_CONN_STATUS_CONNECTED;
}

std::uint64_t NatsClient::disconnects() const { return events_->disconnects.load(); }
std::uint64_t NatsClient::reconnects() const { return events_->reconnects.load(); }

}  // namespace flowseal::ship
