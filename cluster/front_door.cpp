#include "cluster/front_door.hpp"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "cluster/tls.hpp"
#include "core/log.hpp"

namespace helix::cluster {
namespace {

constexpr std::size_t basp_header_bytes = 32;
constexpr std::uint8_t basp_last_operation = 0x06;  // heartbeat (caf/io/basp/message_type.hpp)

// The inbound framing: a 32-byte header whose bytes 4..7 hold the payload length (network byte
// order), then the payload. pass() sees the bytes in order, in any chunks, and says whether they
// may go on (no header announcing more than the limit or an unknown operation).
class frame_check {
 public:
  explicit frame_check(std::uint32_t max_frame) : max_frame_(max_frame) {}
  bool pass(const unsigned char* p, std::size_t n) {
    std::size_t pos = 0;
    while (pos < n) {
      if (payload_left_ > 0) {
        const auto take = static_cast<std::size_t>(std::min<std::uint64_t>(payload_left_, n - pos));
        pos += take;
        payload_left_ -= take;
        continue;
      }
      const std::size_t take = std::min(basp_header_bytes - header_have_, n - pos);
      std::memcpy(header_ + header_have_, p + pos, take);
      header_have_ += take;
      pos += take;
      if (header_have_ < basp_header_bytes) break;
      header_have_ = 0;
      const std::uint32_t len = (std::uint32_t{header_[4]} << 24) |
                                (std::uint32_t{header_[5]} << 16) |
                                (std::uint32_t{header_[6]} << 8) | std::uint32_t{header_[7]};
      if (header_[0] > basp_last_operation || len > max_frame_) {
        module_logger("cluster")->warn(
            "front door: closed a connection whose frame (operation {}) announces {} bytes "
            "(limit {})",
            header_[0], len, max_frame_);
        return false;
      }
      payload_left_ = len;
    }
    return true;
  }

 private:
  std::uint32_t max_frame_;
  unsigned char header_[basp_header_bytes] = {};
  std::size_t header_have_ = 0;
  std::uint64_t payload_left_ = 0;
};

bool write_all(int fd, const unsigned char* p, std::size_t n) {
  while (n > 0) {
    const ssize_t k = ::send(fd, p, n, MSG_NOSIGNAL);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return false;
    p += k;
    n -= static_cast<std::size_t>(k);
  }
  return true;
}

}  // namespace

expected<std::unique_ptr<front_door>> front_door::open(const std::string& host, std::uint16_t port,
                                                       std::uint16_t inner_port,
                                                       std::uint32_t max_frame_bytes,
                                                       std::shared_ptr<const tls_context> tls) {
  auto d = std::make_unique<front_door>(passkey{});
  d->tls_ = std::move(tls);
  d->inner_port_ = inner_port;
  d->max_frame_ = max_frame_bytes;
  addrinfo hints{};
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  addrinfo* res = nullptr;
  if (const int rc = ::getaddrinfo(host.c_str(), nullptr, &hints, &res); rc != 0) {
    return invalid_argument("cannot listen on '{}': {}", host, ::gai_strerror(rc));
  }
  sockaddr_in addr = *reinterpret_cast<sockaddr_in*>(res->ai_addr);
  ::freeaddrinfo(res);
  addr.sin_port = htons(port);
  d->listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  const int one = 1;
  ::setsockopt(d->listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (d->listen_fd_ < 0 ||
      ::bind(d->listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::listen(d->listen_fd_, 64) != 0) {
    return make_error(errc::unavailable, "cannot listen on {}:{}: {}", host, port,
                      std::strerror(errno));
  }
  socklen_t len = sizeof(addr);
  ::getsockname(d->listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
  d->port_ = ntohs(addr.sin_port);
  d->acceptor_ = std::thread([p = d.get()] { p->accept_loop(); });
  return d;
}

front_door::~front_door() {
  stop_accepting();
  if (acceptor_.joinable()) acceptor_.join();
  {
    std::lock_guard lk(mu_);
    stopping_ = true;
    for (int fd : fds_) ::shutdown(fd, SHUT_RDWR);
  }
  for (auto& t : relays_) t.join();
  for (int fd : fds_) ::close(fd);
}

void front_door::stop_accepting() {
  std::lock_guard lk(mu_);
  if (listen_fd_ >= 0) {
    ::shutdown(listen_fd_, SHUT_RDWR);  // wakes accept()
    ::close(listen_fd_);
    listen_fd_ = -1;
  }
}

void front_door::accept_loop() {
  for (;;) {
    int lfd = -1;
    {
      std::lock_guard lk(mu_);
      lfd = listen_fd_;
    }
    if (lfd < 0) return;
    const int client = ::accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
    if (client < 0) {
      if (errno == EINTR) continue;
      return;  // closed by stop_accepting
    }
    if (tls_) {
      // The handshake runs in the connection's thread: a slow or silent client holds no one up.
      std::lock_guard lk(mu_);
      if (stopping_) {
        ::close(client);
        return;
      }
      fds_.push_back(client);
      relays_.emplace_back([this, client] { serve_tls(client); });
      continue;
    }
    const int inner = connect_inner();
    if (inner < 0) {
      ::close(client);
      continue;
    }
    const int one = 1;
    ::setsockopt(client, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    std::lock_guard lk(mu_);
    if (stopping_) {
      ::close(client);
      ::close(inner);
      return;
    }
    fds_.push_back(client);
    fds_.push_back(inner);
    relays_.emplace_back([this, client, inner] { relay(client, inner, true); });
    relays_.emplace_back([this, client, inner] { relay(inner, client, false); });
  }
}

int front_door::connect_inner() const {
  const int inner = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(inner_port_.load());
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (inner < 0 || ::connect(inner, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    module_logger("cluster")->warn("front door: cannot reach the middleman: {}",
                                   std::strerror(errno));
    if (inner >= 0) ::close(inner);
    return -1;
  }
  const int one = 1;
  ::setsockopt(inner, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  return inner;
}

void front_door::serve_tls(int client) {
  sockaddr_in from{};
  socklen_t len = sizeof(from);
  char ip[INET_ADDRSTRLEN] = "?";
  if (::getpeername(client, reinterpret_cast<sockaddr*>(&from), &len) == 0) {
    ::inet_ntop(AF_INET, &from.sin_addr, ip, sizeof(ip));
  }
  const int one = 1;
  ::setsockopt(client, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  auto tls = tls_stream::accept(client, *tls_, std::chrono::seconds(10));
  if (!tls) {
    ++refused_;
    module_logger("cluster")->warn("front door: refused a worker from {}: {}", ip,
                                   tls.error().message());
    {
      std::lock_guard lk(mu_);
      fds_.erase(std::remove(fds_.begin(), fds_.end(), client), fds_.end());
    }
    ::close(client);  // the refused peer learns it now, and nothing piles up
    return;
  }
  const int inner = connect_inner();
  if (inner < 0) return;
  {
    std::lock_guard lk(mu_);
    if (stopping_) {
      ::close(inner);
      return;
    }
    fds_.push_back(inner);
  }
  frame_check check(max_frame_);
  relay_tls(**tls, inner, [&](const unsigned char* p, std::size_t n) {
    if (check.pass(p, n)) return true;
    ++refused_;
    return false;
  });
}

void front_door::relay(int from, int to, bool inbound) {
  std::vector<unsigned char> buf(64 * 1024);
  frame_check check(max_frame_);
  for (;;) {
    const ssize_t k = ::recv(from, buf.data(), buf.size(), 0);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) break;
    const auto n = static_cast<std::size_t>(k);
    if (inbound && !check.pass(buf.data(), n)) {
      ++refused_;
      break;
    }
    if (!write_all(to, buf.data(), n)) break;
  }
  // Either side ending ends the pair.
  ::shutdown(from, SHUT_RDWR);
  ::shutdown(to, SHUT_RDWR);
}

}  // namespace helix::cluster
