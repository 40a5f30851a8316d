#include "cluster/tls.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <ostream>
#include <vector>

#include "cluster/cluster.hpp"
#include "core/log.hpp"

namespace helix::cluster {
namespace {

constexpr unsigned char admitted_byte = 0x48;  // 'H': the engine admitted this worker

// OpenSSL's queued errors as one line (emptied), or `fallback`.
std::string ssl_errors(const std::string& fallback) {
  std::string out;
  for (unsigned long e = ERR_get_error(); e != 0; e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof(buf));
    out += (out.empty() ? "" : "; ") + std::string(buf);
  }
  return out.empty() ? fallback : out;
}

// Why a handshake failed: the certificate verification result when there is one, else OpenSSL's
// errors (an alert from the peer: an unknown CA, a missing or expired certificate).
std::string handshake_error(SSL* ssl, int rc) {
  const long verify = SSL_get_verify_result(ssl);
  if (verify != X509_V_OK) {
    ERR_clear_error();
    return fmt::format("the peer's certificate: {}", X509_verify_cert_error_string(verify));
  }
  const int e = SSL_get_error(ssl, rc);
  if (e == SSL_ERROR_SYSCALL || e == SSL_ERROR_ZERO_RETURN) {
    return ssl_errors("the connection closed during the TLS handshake (is it a TLS endpoint?)");
  }
  return ssl_errors("TLS handshake failed");
}

// Waits until `fd` is ready for what `ssl`'s last call wants, up to `until`.
bool wait_for(int fd, int ssl_error, std::chrono::steady_clock::time_point until) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
      until - std::chrono::steady_clock::now());
  if (left.count() <= 0) return false;
  pollfd p{fd, static_cast<short>(ssl_error == SSL_ERROR_WANT_WRITE ? POLLOUT : POLLIN), 0};
  return ::poll(&p, 1, static_cast<int>(left.count())) > 0;
}

constexpr auto forever = std::chrono::steady_clock::time_point::max();

// Runs `op` (SSL_accept, SSL_connect, ...) until it completes, fails or `until` passes.
template <class Op>
int drive(SSL* ssl, int fd, std::chrono::steady_clock::time_point until, Op&& op) {
  for (;;) {
    const int rc = op();
    if (rc > 0) return rc;
    const int e = SSL_get_error(ssl, rc);
    if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) return rc;
    if (!wait_for(fd, e, until)) return 0;
  }
}

bool set_nonblocking(int fd) {
  const int flags = ::fcntl(fd, F_GETFL, 0);
  return flags >= 0 && ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) == 0;
}

bool send_all(int fd, const unsigned char* p, std::size_t n) {
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

expected<std::shared_ptr<tls_context>> tls_context::load(const std::string& dir, role r) {
  const std::string ca = dir + "/ca.pem";
  const std::string cert = dir + "/cert.pem";
  const std::string key = dir + "/key.pem";
  for (const std::string& f : {ca, cert, key}) {
    std::error_code ec;
    if (!std::filesystem::is_regular_file(f, ec)) {
      return invalid_argument(
          "--tls-dir {}: {} is missing (helix cluster certs --out DIR makes "
          "ca.pem, cert.pem and key.pem)",
          dir, f);
    }
  }
  SSL_CTX* ctx = SSL_CTX_new(r == role::server ? TLS_server_method() : TLS_client_method());
  if (ctx == nullptr) return internal_error("TLS: {}", ssl_errors("SSL_CTX_new failed"));
  auto out = std::make_shared<tls_context>(passkey{}, ctx);
  SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
  SSL_CTX_set_num_tickets(ctx, 0);  // no session resumption: every join authenticates
  if (SSL_CTX_load_verify_locations(ctx, ca.c_str(), nullptr) != 1) {
    return invalid_argument("--tls-dir {}: ca.pem: {}", dir, ssl_errors("unreadable"));
  }
  if (SSL_CTX_use_certificate_chain_file(ctx, cert.c_str()) != 1) {
    return invalid_argument("--tls-dir {}: cert.pem: {}", dir, ssl_errors("unreadable"));
  }
  if (SSL_CTX_use_PrivateKey_file(ctx, key.c_str(), SSL_FILETYPE_PEM) != 1) {
    return invalid_argument("--tls-dir {}: key.pem: {}", dir, ssl_errors("unreadable"));
  }
  if (SSL_CTX_check_private_key(ctx) != 1) {
    return invalid_argument("--tls-dir {}: key.pem does not match cert.pem", dir);
  }
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
  return out;
}

tls_context::~tls_context() {
  SSL_CTX_free(ctx_);
}

expected<std::unique_ptr<tls_stream>> tls_stream::handshake(
    int fd, const tls_context& ctx, std::chrono::steady_clock::time_point until, bool server) {
  if (!set_nonblocking(fd)) return internal_error("TLS: fcntl: {}", std::strerror(errno));
  SSL* ssl = SSL_new(ctx.native());
  if (ssl == nullptr) return internal_error("TLS: {}", ssl_errors("SSL_new failed"));
  auto s = std::make_unique<tls_stream>(passkey{}, fd, ssl);
  SSL_set_fd(ssl, fd);
  const int rc = drive(ssl, fd, until, [&] { return server ? SSL_accept(ssl) : SSL_connect(ssl); });
  if (rc <= 0) {
    return make_error(errc::unauthenticated, "{}",
                      rc == 0 && std::chrono::steady_clock::now() >= until
                          ? std::string("no TLS handshake in time")
                          : handshake_error(ssl, rc));
  }
  return s;
}

expected<std::unique_ptr<tls_stream>> tls_stream::accept(int fd, const tls_context& ctx,
                                                         std::chrono::milliseconds timeout) {
  const auto until = std::chrono::steady_clock::now() + timeout;
  auto made = handshake(fd, ctx, until, true);
  if (!made) {
    return status(made.error().code(),
                  fmt::format("authentication failed: {}", made.error().message()));
  }
  std::unique_ptr<tls_stream> s = std::move(*made);
  if (!s->write_all(&admitted_byte, 1)) {
    return make_error(errc::unauthenticated, "authentication failed: the peer left");
  }
  return s;
}

expected<std::unique_ptr<tls_stream>> tls_stream::connect(int fd, const tls_context& ctx,
                                                          std::chrono::milliseconds timeout,
                                                          const std::string& peer) {
  const auto until = std::chrono::steady_clock::now() + timeout;
  auto made = handshake(fd, ctx, until, false);
  if (!made) {
    return status(made.error().code(),
                  fmt::format("authentication with {} failed: {}", peer, made.error().message()));
  }
  std::unique_ptr<tls_stream> s = std::move(*made);
  SSL* ssl = s->ssl_;
  // TLS 1.3: the engine checks our certificate after our side of the handshake finished; its
  // verdict is the admission byte or an alert.
  unsigned char b = 0;
  const int got = drive(ssl, fd, until, [&] { return SSL_read(ssl, &b, 1); });
  if (got <= 0 || b != admitted_byte) {
    return make_error(errc::unauthenticated, "authentication with {} failed: refused: {}", peer,
                      got <= 0 ? handshake_error(ssl, got) : "an unexpected admission reply");
  }
  return s;
}

tls_stream::~tls_stream() {
  SSL_free(ssl_);
}

long tls_stream::read(void* buf, std::size_t n) {
  const int rc =
      drive(ssl_, fd_, forever, [&] { return SSL_read(ssl_, buf, static_cast<int>(n)); });
  if (rc > 0) return rc;
  ERR_clear_error();
  return SSL_get_error(ssl_, rc) == SSL_ERROR_ZERO_RETURN ? 0 : -1;
}

bool tls_stream::pending() const {
  return SSL_pending(ssl_) > 0;
}

bool tls_stream::write_all(const void* buf, std::size_t n) {
  const auto* p = static_cast<const unsigned char*>(buf);
  while (n > 0) {
    const int rc =
        drive(ssl_, fd_, forever, [&] { return SSL_write(ssl_, p, static_cast<int>(n)); });
    if (rc <= 0) {
      ERR_clear_error();
      return false;
    }
    p += rc;
    n -= static_cast<std::size_t>(rc);
  }
  return true;
}

void tls_stream::shutdown() {
  ::shutdown(fd_, SHUT_RDWR);
}

void relay_tls(tls_stream& tls, int plain,
               const std::function<bool(const unsigned char*, std::size_t)>& inbound) {
  std::vector<unsigned char> buf(64 * 1024);
  for (;;) {
    pollfd fds[2] = {{tls.fd(), POLLIN, 0}, {plain, POLLIN, 0}};
    if (!tls.pending() && ::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (tls.pending() || (fds[0].revents & (POLLIN | POLLHUP | POLLERR)) != 0) {
      const long n = tls.read(buf.data(), buf.size());
      if (n <= 0) break;
      const auto len = static_cast<std::size_t>(n);
      if (inbound && !inbound(buf.data(), len)) break;
      if (!send_all(plain, buf.data(), len)) break;
    }
    if ((fds[1].revents & (POLLIN | POLLHUP | POLLERR)) != 0) {
      const ssize_t n = ::recv(plain, buf.data(), buf.size(), 0);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      if (!tls.write_all(buf.data(), static_cast<std::size_t>(n))) break;
    }
  }
  tls.shutdown();
  ::shutdown(plain, SHUT_RDWR);
}

expected<std::unique_ptr<tls_tunnel>> tls_tunnel::open(const std::string& host, std::uint16_t port,
                                                       const tls_context& ctx,
                                                       std::chrono::milliseconds timeout) {
  const std::string peer = fmt::format("the engine at {}:{}", host, port);
  addrinfo hints{};
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (const int rc = ::getaddrinfo(host.c_str(), nullptr, &hints, &res); rc != 0) {
    return make_error(errc::unavailable, "cannot resolve {}: {}", host, ::gai_strerror(rc));
  }
  sockaddr_in addr = *reinterpret_cast<sockaddr_in*>(res->ai_addr);
  ::freeaddrinfo(res);
  addr.sin_port = htons(port);
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0 || ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    const std::string why = std::strerror(errno);
    if (fd >= 0) ::close(fd);
    return make_error(errc::unavailable, "cannot reach {}: {}", peer, why);
  }
  const int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  auto t = std::make_unique<tls_tunnel>(passkey{});
  t->remote_fd_ = fd;
  HELIX_ASSIGN_OR_RETURN(t->tls_, tls_stream::connect(fd, ctx, timeout, peer));
  t->listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in local{};
  local.sin_family = AF_INET;
  local.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(local);
  if (t->listen_fd_ < 0 ||
      ::bind(t->listen_fd_, reinterpret_cast<sockaddr*>(&local), sizeof(local)) != 0 ||
      ::listen(t->listen_fd_, 1) != 0 ||
      ::getsockname(t->listen_fd_, reinterpret_cast<sockaddr*>(&local), &len) != 0) {
    return internal_error("TLS tunnel: cannot listen on loopback: {}", std::strerror(errno));
  }
  t->local_port_ = ntohs(local.sin_port);
  t->thread_ = std::thread([p = t.get()] { p->run(); });
  return t;
}

void tls_tunnel::run() {
  // One CAF connection: the worker's to its engine.
  const int local = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
  {
    std::lock_guard lk(mu_);
    if (listen_fd_ >= 0) {
      ::close(listen_fd_);
      listen_fd_ = -1;
    }
    if (local < 0 || stopping_) {
      if (local >= 0) ::close(local);
      return;
    }
    local_fd_ = local;
  }
  const int one = 1;
  ::setsockopt(local, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  relay_tls(*tls_, local, nullptr);
}

tls_tunnel::~tls_tunnel() {
  {
    std::lock_guard lk(mu_);
    stopping_ = true;
    if (listen_fd_ >= 0) ::shutdown(listen_fd_, SHUT_RDWR);  // wakes accept()
    if (local_fd_ >= 0) ::shutdown(local_fd_, SHUT_RDWR);
    if (tls_) tls_->shutdown();
  }
  if (thread_.joinable()) thread_.join();
  tls_.reset();
  if (listen_fd_ >= 0) ::close(listen_fd_);
  if (local_fd_ >= 0) ::close(local_fd_);
  if (remote_fd_ >= 0) ::close(remote_fd_);
}

namespace {

struct pkey_free {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
struct x509_free {
  void operator()(X509* x) const { X509_free(x); }
};
using pkey_ptr = std::unique_ptr<EVP_PKEY, pkey_free>;
using x509_ptr = std::unique_ptr<X509, x509_free>;

status add_ext(X509* cert, X509* issuer, int nid, const char* value) {
  X509V3_CTX v3;
  X509V3_set_ctx_nodb(&v3);
  X509V3_set_ctx(&v3, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &v3, nid, value);
  if (ext == nullptr || X509_add_ext(cert, ext, -1) != 1) {
    if (ext != nullptr) X509_EXTENSION_free(ext);
    return internal_error("certificate extension {}: {}", value, ssl_errors("failed"));
  }
  X509_EXTENSION_free(ext);
  return ok_status();
}

// A certificate for `key` named `cn`, signed by `issuer_key` (issuer: null for self-signed).
expected<x509_ptr> make_cert(EVP_PKEY* key, const std::string& cn, X509* issuer,
                             EVP_PKEY* issuer_key, bool ca, long from_s, long to_s) {
  x509_ptr cert(X509_new());
  X509_set_version(cert.get(), 2);
  unsigned char serial[16];
  RAND_bytes(serial, sizeof(serial));
  serial[0] &= 0x7f;
  BIGNUM* bn = BN_bin2bn(serial, sizeof(serial), nullptr);
  BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(cert.get()));
  BN_free(bn);
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), from_s);
  X509_gmtime_adj(X509_getm_notAfter(cert.get()), to_s);
  X509_set_pubkey(cert.get(), key);
  X509_NAME* name = X509_get_subject_name(cert.get());
  X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>("helix"), -1, -1, 0);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
  X509_set_issuer_name(cert.get(), issuer != nullptr ? X509_get_subject_name(issuer) : name);
  X509* signer = issuer != nullptr ? issuer : cert.get();
  if (ca) {
    HELIX_RETURN_IF_ERROR(add_ext(cert.get(), signer, NID_basic_constraints, "critical,CA:TRUE"));
    HELIX_RETURN_IF_ERROR(
        add_ext(cert.get(), signer, NID_key_usage, "critical,keyCertSign,cRLSign"));
  } else {
    HELIX_RETURN_IF_ERROR(add_ext(cert.get(), signer, NID_basic_constraints, "critical,CA:FALSE"));
    HELIX_RETURN_IF_ERROR(
        add_ext(cert.get(), signer, NID_key_usage, "critical,digitalSignature,keyEncipherment"));
    HELIX_RETURN_IF_ERROR(add_ext(cert.get(), signer, NID_ext_key_usage, "serverAuth,clientAuth"));
  }
  if (X509_sign(cert.get(), issuer_key, EVP_sha256()) == 0) {
    return internal_error("signing the certificate: {}", ssl_errors("failed"));
  }
  return cert;
}

status write_pem(const std::string& path, bool secret, const std::function<int(FILE*)>& write) {
  const int fd =
      ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, secret ? 0600 : 0644);
  FILE* f = fd >= 0 ? ::fdopen(fd, "w") : nullptr;
  if (f == nullptr) {
    if (fd >= 0) ::close(fd);
    return make_error(errc::unavailable, "cannot write {}: {}", path, std::strerror(errno));
  }
  const bool ok = write(f) == 1;
  if (std::fclose(f) != 0 || !ok) {
    return make_error(errc::unavailable, "cannot write {}: {}", path, ssl_errors("write failed"));
  }
  return ok_status();
}

template <class Read>
auto read_pem(const std::string& path, Read&& read) -> decltype(read(static_cast<FILE*>(nullptr))) {
  FILE* f = std::fopen(path.c_str(), "r");
  if (f == nullptr) return nullptr;
  auto out = read(f);
  std::fclose(f);
  return out;
}

}  // namespace

status make_cluster_certs(const std::string& dir, const std::string& ca_dir, int days) {
  if (days == 0 || days < -3650 || days > 36500) {
    return invalid_argument("--days = {} must be in [1, 36500] (or negative: already expired)",
                            days);
  }
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return make_error(errc::unavailable, "cannot create {}: {}", dir, ec.message());
  pkey_ptr ca_key;
  x509_ptr ca_cert;
  if (!ca_dir.empty()) {
    ca_key.reset(read_pem(ca_dir + "/ca.key", [](FILE* f) {
      return PEM_read_PrivateKey(f, nullptr, nullptr, nullptr);
    }));
    ca_cert.reset(read_pem(ca_dir + "/ca.pem",
                           [](FILE* f) { return PEM_read_X509(f, nullptr, nullptr, nullptr); }));
    if (!ca_key || !ca_cert) {
      return invalid_argument("--ca {}: ca.pem and ca.key of a cluster CA are needed", ca_dir);
    }
  } else {
    ca_key.reset(EVP_EC_gen("P-256"));
    if (!ca_key) return internal_error("CA key: {}", ssl_errors("EC key generation failed"));
    HELIX_ASSIGN_OR_RETURN(ca_cert, make_cert(ca_key.get(), "helix cluster CA", nullptr,
                                              ca_key.get(), true, 0, 3650L * 86400));
  }
  pkey_ptr key(EVP_EC_gen("P-256"));
  if (!key) return internal_error("node key: {}", ssl_errors("EC key generation failed"));
  const long from = days > 0 ? 0 : (days - 1) * 86400L;
  const long to = days * 86400L;
  HELIX_ASSIGN_OR_RETURN(x509_ptr cert, make_cert(key.get(), "helix node", ca_cert.get(),
                                                  ca_key.get(), false, from, to));
  HELIX_RETURN_IF_ERROR(
      write_pem(dir + "/ca.pem", false, [&](FILE* f) { return PEM_write_X509(f, ca_cert.get()); }));
  HELIX_RETURN_IF_ERROR(write_pem(dir + "/ca.key", true, [&](FILE* f) {
    return PEM_write_PrivateKey(f, ca_key.get(), nullptr, nullptr, 0, nullptr, nullptr);
  }));
  HELIX_RETURN_IF_ERROR(
      write_pem(dir + "/cert.pem", false, [&](FILE* f) { return PEM_write_X509(f, cert.get()); }));
  return write_pem(dir + "/key.pem", true, [&](FILE* f) {
    return PEM_write_PrivateKey(f, key.get(), nullptr, nullptr, 0, nullptr, nullptr);
  });
}

int run_cluster_cmd(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
  constexpr const char* usage =
      "usage: helix cluster certs --out DIR [--ca DIR] [--days 365]\n"
      "  Credentials for a cluster's mutual TLS (--tls-dir DIR on helix run and helix worker):\n"
      "  DIR/ca.pem and DIR/ca.key (a new cluster CA, or --ca DIR's), DIR/cert.pem and\n"
      "  DIR/key.pem (a node certificate the CA signed, valid --days days; negative: expired,\n"
      "  for tests). Keys are written mode 0600; give each node a directory without ca.key.\n";
  if (args.empty() || args[0] == "--help" || args[0] == "-h") {
    (args.empty() ? err : out) << usage;
    return args.empty() ? 2 : 0;
  }
  if (args[0] != "certs") {
    err << "error: unknown cluster command '" << args[0] << "'\n" << usage;
    return 2;
  }
  std::string dir;
  std::string ca;
  int days = 365;
  for (std::size_t i = 1; i < args.size(); ++i) {
    if (i + 1 >= args.size()) {
      err << "error: " << args[i] << " needs a value\n" << usage;
      return 2;
    }
    const std::string& v = args[++i];
    if (args[i - 1] == "--out") {
      dir = v;
    } else if (args[i - 1] == "--ca") {
      ca = v;
    } else if (args[i - 1] == "--days") {
      char* end = nullptr;
      const long d = std::strtol(v.c_str(), &end, 10);
      if (*end != '\0' || v.empty()) {
        err << "error: --days takes a whole number\n" << usage;
        return 2;
      }
      days = static_cast<int>(std::clamp<long>(d, -100000, 100000));
    } else {
      err << "error: unknown flag " << args[i - 1] << "\n" << usage;
      return 2;
    }
  }
  if (dir.empty()) {
    err << "error: --out DIR is required\n" << usage;
    return 2;
  }
  const status st = make_cluster_certs(dir, ca, days);
  if (!st.ok()) {
    err << "error: " << st.to_string() << "\n";
    return st.code() == errc::invalid_argument ? 2 : 1;
  }
  out << "wrote " << dir << "/ca.pem, ca.key, cert.pem, key.pem (node certificate valid " << days
      << " days)\n";
  return 0;
}

}  // namespace helix::cluster
