// Mutual TLS for the control plane: a cluster admits only workers that prove membership.
//
// Every node of a cluster holds, in one directory (`--tls-dir DIR`), the cluster CA's certificate
// (ca.pem) and its own certificate signed by that CA with its key (cert.pem, key.pem);
// make_cluster_certs (`helix cluster certs`) makes them for a test cluster. TLS 1.3 with
// certificates required on both sides: the engine verifies each worker's certificate against the
// CA and the worker the engine's.
//
// Where it sits: CAF's middleman stays on loopback on both sides. On the engine, the front door
// (front_door.hpp) terminates TLS, admits the worker (one byte after the handshake, so that a
// refused worker learns it at once rather than from a closed CAF connection) and relays the
// decrypted BASP frames, still checking their framing, to the middleman. On the worker, a
// tls_tunnel listens on 127.0.0.1 for its CAF connection and carries it over one authenticated TLS
// connection to the engine. UCX endpoints are opened only to members admitted through this
// control plane (their addresses come from the registrar); the data plane itself is not
// encrypted.
//
// Errors name authentication ("authentication failed: ...") with OpenSSL's reason; key material
// is never logged.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "core/status.hpp"

struct ssl_ctx_st;
struct ssl_st;

namespace helix::cluster {

class tls_context {
  struct passkey {};

 public:
  enum class role : std::uint8_t { server, client };
  /// Loads DIR/ca.pem, DIR/cert.pem and DIR/key.pem. invalid_argument naming the file and the
  /// problem (missing, unreadable, key not matching the certificate).
  [[nodiscard]] static expected<std::shared_ptr<tls_context>> load(const std::string& dir, role r);
  tls_context(passkey, ssl_ctx_st* ctx) : ctx_(ctx) {}
  ~tls_context();
  tls_context(const tls_context&) = delete;
  tls_context& operator=(const tls_context&) = delete;
  [[nodiscard]] ssl_ctx_st* native() const { return ctx_; }

 private:
  ssl_ctx_st* ctx_;
};

/// One TLS connection over a connected TCP socket (made non-blocking; reads and writes wait with
/// poll). The caller owns the socket and closes it after the stream is gone.
class tls_stream {
  struct passkey {};

 public:
  /// Engine side: the handshake (within `timeout`), the peer's certificate verified against the
  /// CA, then the admission byte. unauthenticated "authentication failed: ..." otherwise.
  [[nodiscard]] static expected<std::unique_ptr<tls_stream>> accept(
      int fd, const tls_context& ctx, std::chrono::milliseconds timeout);
  /// Worker side: the handshake and the engine's certificate verified, then the admission byte
  /// read (a refused certificate shows here, as the engine's alert). unauthenticated
  /// "authentication ... failed: ..." naming `peer`.
  [[nodiscard]] static expected<std::unique_ptr<tls_stream>> connect(
      int fd, const tls_context& ctx, std::chrono::milliseconds timeout, const std::string& peer);
  tls_stream(passkey, int fd, ssl_st* ssl) : fd_(fd), ssl_(ssl) {}
  ~tls_stream();
  tls_stream(const tls_stream&) = delete;
  tls_stream& operator=(const tls_stream&) = delete;

  [[nodiscard]] int fd() const { return fd_; }
  /// Reads what is available (waits for at least one byte); 0 at the end, -1 on an error.
  [[nodiscard]] long read(void* buf, std::size_t n);
  /// Whether decrypted bytes wait inside TLS (poll would not show them).
  [[nodiscard]] bool pending() const;
  /// Writes all of it; false on an error or the end.
  [[nodiscard]] bool write_all(const void* buf, std::size_t n);
  /// Wakes any wait (the socket is shut down).
  void shutdown();

 private:
  // The handshake of either side, without the admission byte.
  [[nodiscard]] static expected<std::unique_ptr<tls_stream>> handshake(
      int fd, const tls_context& ctx, std::chrono::steady_clock::time_point until, bool server);
  int fd_;
  ssl_st* ssl_;
};

/// Relays between `tls` and the plain socket `plain` in this thread until either side ends (then
/// both are shut down). Bytes from tls are shown to `inbound` before they pass (false ends the
/// relay without them), e.g. the front door's framing check; null: no check.
void relay_tls(tls_stream& tls, int plain,
               const std::function<bool(const unsigned char*, std::size_t)>& inbound);

/// Worker side: the worker's CAF connects to 127.0.0.1:local_port(), and the tunnel carries that
/// one connection to host:port over an authenticated TLS connection made by open().
class tls_tunnel {
  struct passkey {};

 public:
  [[nodiscard]] static expected<std::unique_ptr<tls_tunnel>> open(
      const std::string& host, std::uint16_t port, const tls_context& ctx,
      std::chrono::milliseconds timeout);
  explicit tls_tunnel(passkey) {}
  ~tls_tunnel();
  tls_tunnel(const tls_tunnel&) = delete;
  tls_tunnel& operator=(const tls_tunnel&) = delete;
  [[nodiscard]] std::uint16_t local_port() const { return local_port_; }

 private:
  void run();
  std::unique_ptr<tls_stream> tls_;
  int listen_fd_ = -1;
  int local_fd_ = -1;
  int remote_fd_ = -1;
  std::uint16_t local_port_ = 0;
  std::mutex mu_;
  bool stopping_ = false;
  std::thread thread_;
};

/// `helix cluster certs`: writes DIR/ca.pem and DIR/ca.key (a new cluster CA, or `ca_dir`'s
/// copied when given) and DIR/cert.pem, DIR/key.pem (a node certificate signed by that CA, valid
/// for `days`; negative: it expired that many days ago, for tests). Keys are written 0600.
[[nodiscard]] status make_cluster_certs(const std::string& dir, const std::string& ca_dir,
                                        int days);

}  // namespace helix::cluster
