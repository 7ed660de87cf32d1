#include "http_server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <stdexcept>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "metrics.h"

namespace flowseal::supervisor {
namespace {

using Clock = std::chrono::steady_clock;
constexpr auto kMinRateWindow = std::chrono::milliseconds(500);

// A listening TCP socket on `address` (close-on-exec: the stages must not inherit it).
UniqueFd listen_on(const ListenAddress& address) {
  sockaddr_storage storage{};
  socklen_t length = 0;
  if (address.ipv6) {
    auto* in6 = reinterpret_cast<sockaddr_in6*>(&storage);
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons(address.port);
    ::inet_pton(AF_INET6, address.host.c_str(), &in6->sin6_addr);
    length = sizeof(sockaddr_in6);
  } else {
    auto* in4 = reinterpret_cast<sockaddr_in*>(&storage);
    in4->sin_family = AF_INET;
    in4->sin_port = htons(address.port);
    ::inet_pton(AF_INET, address.host.c_str(), &in4->sin_addr);
    length = sizeof(sockaddr_in);
  }
  const auto fail = [&](std::string_view step) {
    return ConfigError(fmt::format("supervisor.http_listen {}: cannot {}: {}", address.to_string(),
                                   step, std::strerror(errno)));
  };
  UniqueFd fd(::socket(storage.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) throw fail("create a socket");
  const int one = 1;
  ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (address.ipv6) ::setsockopt(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&storage), length) != 0) {
    throw fail(errno == EADDRINUSE ? "bind (the port is in use by another process)" : "bind");
  }
  if (::listen(fd.get(), 16) != 0) throw fail("listen");
  return fd;
}

std::uint16_t bound_port(int fd) {
  sockaddr_storage storage{};
  socklen_t length = sizeof storage;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&storage), &length) != 0) return 0;
  return storage.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&storage)->sin6_port)
                                       : ntohs(reinterpret_cast<sockaddr_in*>(&storage)->sin_port);
}

MHD_Result queue(MHD_Connection* connection, const HttpServer::Reply& reply) {
  MHD_Response* response = MHD_create_response_from_buffer(
      reply.body.size(), const_cast<char*>(reply.body.data()), MHD_RESPMEM_MUST_COPY);
  if (response == nullptr) return MHD_NO;
  MHD_add_response_header(response, MHD_HTTP_HEADER_CONTENT_TYPE, reply.content_type.c_str());
  MHD_add_response_header(response, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
  MHD_add_response_header(response, "X-Content-Type-Options", "nosniff");
  if (reply.status == MHD_HTTP_METHOD_NOT_ALLOWED) {
    MHD_add_response_header(response, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
  }
  const MHD_Result result = MHD_queue_response(connection, reply.status, response);
  MHD_destroy_response(response);
  return result;
}

MHD_Result on_request(void* self, MHD_Connection* connection, const char* url, const char* method,
                      const char* /*version*/, const char* /*upload_data*/,
                      size_t* upload_data_size, void** /*request_state*/) {
  if (std::strcmp(method, MHD_HTTP_METHOD_GET) != 0 &&
      std::strcmp(method, MHD_HTTP_METHOD_HEAD) != 0) {
    *upload_data_size = 0;  // a body is not read
    return queue(connection, {MHD_HTTP_METHOD_NOT_ALLOWED, "text/plain; charset=utf-8",
                              "read-only: GET /metrics, /status.json, /log.json or /\n"});
  }
  try {
    return queue(connection, static_cast<HttpServer*>(self)->answer(url));
  } catch (const std::exception& e) {
    return queue(connection, {MHD_HTTP_INTERNAL_SERVER_ERROR, "text/plain; charset=utf-8",
                              fmt::format("{}\n", e.what())});
  }
}

// libmicrohttpd's own complaints go to our log.
void on_mhd_error(void* /*cls*/, const char* format, va_list args) {
  char line[512];
  std::vsnprintf(line, sizeof line, format, args);
  std::string text(line);
  while (!text.empty() && text.back() == '\n') text.pop_back();
  spdlog::warn("http: {}", text);
}

}  // namespace

void HttpServer::DaemonDeleter::operator()(MHD_Daemon* daemon) const { MHD_stop_daemon(daemon); }

HttpServer::HttpServer(const ListenAddress& address, std::string instance,
                       const ControlBlock& control, std::uint64_t memory_budget_bytes,
                       const LogTail& log)
    : instance_(std::move(instance)),
      control_(control),
      memory_budget_bytes_(memory_budget_bytes),
      log_(log),
      socket_(listen_on(address)) {
  port_ = bound_port(socket_.get());
  base_ = prev_ = {Clock::now(), sample_slots(control_, control_.slot_count())};
  // libmicrohttpd closes the socket it is given when it stops: it gets its own descriptor.
  const int fd = ::fcntl(socket_.get(), F_DUPFD_CLOEXEC, 0);
  if (fd < 0) {
    throw std::runtime_error(fmt::format("supervisor.http_listen {}: dup: {}", address.to_string(),
                                         std::strerror(errno)));
  }
  const unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_AUTO | MHD_USE_ERROR_LOG |
                         (address.ipv6 ? MHD_USE_IPv6 : 0);
  daemon_.reset(MHD_start_daemon(flags, 0, nullptr, nullptr, &on_request, this,
                                 MHD_OPTION_EXTERNAL_LOGGER, &on_mhd_error, nullptr,
                                 MHD_OPTION_LISTEN_SOCKET, fd, MHD_OPTION_CONNECTION_LIMIT, 64U,
                                 MHD_OPTION_CONNECTION_TIMEOUT, 10U, MHD_OPTION_END));
  if (!daemon_) {
    ::close(fd);
    throw std::runtime_error(
        fmt::format("supervisor.http_listen {}: libmicrohttpd did not start", address.to_string()));
  }
  spdlog::info("http: serving /metrics, /status.json, /log.json and / on {}",
               ListenAddress{
                   address.host,
                   port_,
                   address.ipv6,
               }
                   .to_string());
}

HttpServer::~HttpServer() = default;

std::string HttpServer::status_document() {
  const Sample now{Clock::now(), sample_slots(control_, control_.slot_count())};
  const RingFill fill = ring_fill(instance_, control_.shard_count());
  std::lock_guard lock(samples_mutex_);
  const Sample& then = now.at - base_.at >= kMinRateWindow ? base_ : prev_;
  const double dt = std::chrono::duration<double>(now.at - then.at).count();
  nlohmann::ordered_json document =
      status_json(instance_, control_, then.slots, now.slots, dt, fill);
  document["memory_budget_bytes"] = memory_budget_bytes_;
  if (now.at - base_.at >= kMinRateWindow) {
    prev_ = std::move(base_);
    base_ = now;
  }
  return document.dump() + "\n";
}

std::string HttpServer::log_document() const {
  nlohmann::ordered_json document;
  document["lines"] = log_.lines();
  document["added"] = log_.added();
  // A line may hold any bytes a stage printed (a file name, a capture's contents): bytes that
  // are not UTF-8 become U+FFFD rather than failing the whole document.
  return document.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

HttpServer::Reply HttpServer::answer(std::string_view url) {
  if (url == "/metrics") {
    return {200, "text/plain; version=0.0.4; charset=utf-8",
            render_metrics(control_, ring_fill(instance_, control_.shard_count()),
                           memory_budget_bytes_)};
  }
  if (url == "/status.json") return {200, "application/json", status_document()};
  if (url == "/log.json") return {200, "application/json", log_document()};
  if (url == "/" || url == "/index.html") {
    return {200, "text/html; charset=utf-8", std::string(status_page_html())};
  }
  return {404, "text/plain; charset=utf-8",
          "not found: try /metrics, /status.json, /log.json or /\n"};
}

}  // namespace flowseal::supervisor
