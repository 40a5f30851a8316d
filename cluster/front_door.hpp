// The engine's front door for joining workers: a TCP relay in front of CAF's middleman port that
// checks the framing of everything arriving before CAF reads it.
//
// Why: CAF 0.17's BASP reader allocates a message's payload at the size its header announces (up
// to 4 GiB) before it checks anything, so one malformed or hostile connection to the join port can
// make the engine allocate gigabytes. The front door listens on the public host:port, connects
// each accepted connection to the middleman on 127.0.0.1, and relays bytes both ways; inbound, it
// parses the BASP framing (a 32-byte header whose bytes 4..7 hold the payload length, network
// byte order, then the payload) and closes a connection whose frame announces more than
// `max_frame_bytes` (or whose first header is not a BASP handshake), logging who sent it.
//
// With TLS (tls.hpp) the door also terminates mutual TLS: a connection is relayed only once the
// worker's certificate verified against the cluster CA, and the checks above apply to the
// decrypted bytes.
//
// Threads: one acceptor thread, and two relay threads per plain connection or one per TLS
// connection (its handshake, then both directions with poll); all ended by the destructor
// (which shuts the sockets down). Connections stay up for the engine's lifetime
// (they carry the control messages to the workers); only accepting stops with stop_accepting().
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/status.hpp"

namespace helix::cluster {

class tls_context;

class front_door {
  struct passkey {};  // constructed through open() only

 public:
  /// Listens on host:port (0: any free port) and relays to 127.0.0.1:inner_port. With `tls`
  /// (tls.hpp), every connection must first complete mutual TLS with a certificate of the
  /// cluster's CA: refused ones are logged ("authentication failed: ...") and counted in
  /// refused(); admitted ones are relayed decrypted, with the same framing checks.
  [[nodiscard]] static expected<std::unique_ptr<front_door>> open(
      const std::string& host, std::uint16_t port, std::uint16_t inner_port,
      std::uint32_t max_frame_bytes, std::shared_ptr<const tls_context> tls = nullptr);
  explicit front_door(passkey) {}
  ~front_door();
  front_door(const front_door&) = delete;
  front_door& operator=(const front_door&) = delete;

  [[nodiscard]] std::uint16_t port() const { return port_; }
  /// Closes the listening socket; relayed connections stay.
  void stop_accepting();
  /// New connections go to 127.0.0.1:port from now on (another published actor).
  void set_inner_port(std::uint16_t port) { inner_port_ = port; }
  /// Connections closed for a frame over the limit or a bad first header, or refused by TLS.
  [[nodiscard]] std::int64_t refused() const { return refused_.load(); }

 private:
  void accept_loop();
  void relay(int from, int to, bool inbound);
  void serve_tls(int client);  // the handshake, then the relay, in the connection's thread
  [[nodiscard]] int connect_inner() const;

  int listen_fd_ = -1;
  std::uint16_t port_ = 0;
  std::atomic<std::uint16_t> inner_port_{0};
  std::uint32_t max_frame_ = 0;
  std::shared_ptr<const tls_context> tls_;
  std::atomic<bool> stopping_{false};
  std::atomic<std::int64_t> refused_{0};
  std::thread acceptor_;
  std::mutex mu_;
  std::vector<int> fds_;  // every relayed socket, for shutdown
  std::vector<std::thread> relays_;
};

}  // namespace helix::cluster
