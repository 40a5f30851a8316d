// The protobuf side of the join handshake (proto/cluster.proto; the flow is in messages.hpp),
// without CAF: what a worker announces, how the engine judges a join request, how a worker judges
// the engine's reply and membership, and bounded parsing of every payload that crosses the
// process boundary. cluster.cpp (the registrar and run_worker) calls it; tests call it directly.
//
// Every function here is pure or reads only /proc and the host name; all are thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.hpp"
#include "proto/cluster.pb.h"

namespace helix::cluster {

/// Bounds on what a peer may send, checked before a byte is parsed. A join request or reply is a
/// few hundred bytes; a membership is about 1 KiB per worker (its UCX address).
inline constexpr std::size_t max_join_request_bytes = std::size_t{1} << 20;
inline constexpr std::size_t max_join_reply_bytes = std::size_t{1} << 20;
inline constexpr std::size_t max_membership_bytes = std::size_t{16} << 20;
inline constexpr std::size_t max_ucx_address_bytes = std::size_t{64} << 10;

/// The project version this binary was built as (CMake's PROJECT_VERSION, e.g. "0.1.0").
[[nodiscard]] std::string_view helix_version();

/// Parses `bytes` into `out`. `what` names the field in errors (e.g. "join_msg.request").
/// resource_exhausted when bytes.size() > max_bytes, returned before parsing (so nothing is
/// allocated for the payload); invalid_argument when the bytes are not a valid message.
[[nodiscard]] status parse_bounded(std::string_view bytes, std::size_t max_bytes,
                                   std::string_view what, google::protobuf::MessageLite& out);

/// What a joining worker says about itself.
struct worker_identity {
  std::int64_t pid = 0;
  std::string host;
  std::string name;
  int threads = 0;  // --threads; 0: the engine config's
  /// The UCX transports the worker is restricted to (UCX_TLS syntax); empty: any.
  std::string ucx_tls;
  bool standby = false;  // --standby: join without a rank
};

/// The JoinRequest a worker of this build sends: our protocol and helix versions, `id`, and the
/// host's capabilities (device "cpu", hardware threads, MemAvailable from /proc/meminfo).
[[nodiscard]] proto_v1::JoinRequest make_join_request(const worker_identity& id);

/// Engine side: parses a join request (bounded by max_join_request_bytes) and checks that the
/// worker speaks our protocol and runs our helix version (a different build may compute, or
/// generate seeded weights, differently). resource_exhausted / invalid_argument as
/// parse_bounded; failed_precondition naming the worker and both versions ("worker 'w3' (pid 7
/// on h2) speaks protocol 9 but the engine speaks protocol 2").
[[nodiscard]] expected<proto_v1::JoinRequest> read_join_request(std::string_view bytes);

/// Engine side: a reply refusing the join for `reason`; it carries the engine's versions.
[[nodiscard]] proto_v1::JoinReply refuse_join(std::string_view reason);
/// Engine side: a reply giving the worker `rank` of `world_size` in a cluster run by `config`;
/// rank -1 accepts it as a standby (JoinReply.standby), without a rank until a recovery.
[[nodiscard]] proto_v1::JoinReply accept_join(std::int32_t rank, std::int32_t world_size,
                                              proto_v1::ClusterConfig config);

/// Worker side: parses the engine's reply (bounded by max_join_reply_bytes) and returns it when
/// it accepted us. failed_precondition when the engine speaks another protocol or version
/// ("engine protocol 2 vs worker 3: ..."), or refused us (its reason); invalid_argument when it
/// does not parse or an acceptance lacks a valid rank or config.
[[nodiscard]] expected<proto_v1::JoinReply> read_join_reply(std::string_view bytes);

/// Worker side: parses the membership (bounded by max_membership_bytes) and checks it has
/// `world_size` members whose ranks are 0, 1, ... in order, each with a UCX address of at most
/// max_ucx_address_bytes. invalid_argument otherwise.
[[nodiscard]] expected<proto_v1::Membership> read_membership(std::string_view bytes,
                                                             std::int32_t world_size);

/// The serialized form of `m`. Every message here is bounded far below protobuf's 2 GiB limit,
/// so a failure is a broken invariant (HELIX_CHECK).
[[nodiscard]] std::string to_bytes(const google::protobuf::MessageLite& m);

}  // namespace helix::cluster
