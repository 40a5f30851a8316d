#include "cluster/handshake.hpp"

#include <fstream>
#include <thread>

#include "cluster/cluster.hpp"

#ifndef HELIX_VERSION
#error "HELIX_VERSION must be defined by the build (cluster/CMakeLists.txt)"
#endif

namespace helix::cluster {
namespace {

std::int64_t mem_available_bytes() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  std::int64_t kib = 0;
  std::string unit;
  while (in >> key >> kib >> unit) {
    if (key == "MemAvailable:") return kib * 1024;
  }
  return 0;
}

std::vector<std::string> split_commas(std::string_view s) {
  std::vector<std::string> out;
  while (!s.empty()) {
    const auto comma = s.find(',');
    const std::string_view item = s.substr(0, comma);
    if (!item.empty()) out.emplace_back(item);
    if (comma == std::string_view::npos) break;
    s.remove_prefix(comma + 1);
  }
  return out;
}

}  // namespace

std::string_view helix_version() {
  return HELIX_VERSION;
}

status parse_bounded(std::string_view bytes, std::size_t max_bytes, std::string_view what,
                     google::protobuf::MessageLite& out) {
  if (bytes.size() > max_bytes) {
    return resource_exhausted("{} is {} bytes, over its limit of {} bytes; not parsed", what,
                              bytes.size(), max_bytes);
  }
  if (!out.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    return invalid_argument("{} ({} bytes) does not parse as {}", what, bytes.size(),
                            out.GetTypeName());
  }
  return ok_status();
}

std::string to_bytes(const google::protobuf::MessageLite& m) {
  std::string out;
  HELIX_CHECK(m.SerializeToString(&out), "cannot serialise a {}", m.GetTypeName());
  return out;
}

proto_v1::JoinRequest make_join_request(const worker_identity& id) {
  proto_v1::JoinRequest r;
  r.set_protocol_version(protocol_version);
  r.set_helix_version(std::string(helix_version()));
  r.set_pid(id.pid);
  r.set_host(id.host);
  r.set_name(id.name);
  r.set_standby(id.standby);
  auto& c = *r.mutable_capabilities();
  for (auto& t : split_commas(id.ucx_tls)) c.add_ucx_transports(std::move(t));
  c.set_device("cpu");
  c.set_threads(id.threads);
  c.set_cpus(static_cast<std::int32_t>(std::thread::hardware_concurrency()));
  c.set_memory_available_bytes(mem_available_bytes());
  return r;
}

expected<proto_v1::JoinRequest> read_join_request(std::string_view bytes) {
  proto_v1::JoinRequest r;
  HELIX_RETURN_IF_ERROR(
      parse_bounded(bytes, max_join_request_bytes, "join_msg.request (JoinRequest)", r));
  if (r.protocol_version() != protocol_version) {
    return failed_precondition(
        "worker '{}' (pid {} on {}) speaks protocol {} but the engine "
        "speaks protocol {}",
        r.name(), r.pid(), r.host(), r.protocol_version(), protocol_version);
  }
  if (r.helix_version() != helix_version()) {
    return failed_precondition(
        "worker '{}' (pid {} on {}) runs helix version '{}' but the "
        "engine runs helix version '{}'",
        r.name(), r.pid(), r.host(), r.helix_version(), helix_version());
  }
  return r;
}

proto_v1::JoinReply refuse_join(std::string_view reason) {
  proto_v1::JoinReply r;
  r.set_protocol_version(protocol_version);
  r.set_helix_version(std::string(helix_version()));
  r.set_accepted(false);
  r.set_reason(std::string(reason));
  return r;
}

proto_v1::JoinReply accept_join(std::int32_t rank, std::int32_t world_size,
                                proto_v1::ClusterConfig config) {
  proto_v1::JoinReply r;
  r.set_protocol_version(protocol_version);
  r.set_helix_version(std::string(helix_version()));
  r.set_accepted(true);
  r.set_rank(rank);
  r.set_world_size(world_size);
  r.set_standby(rank < 0);
  *r.mutable_config() = std::move(config);
  return r;
}

expected<proto_v1::JoinReply> read_join_reply(std::string_view bytes) {
  proto_v1::JoinReply r;
  HELIX_RETURN_IF_ERROR(
      parse_bounded(bytes, max_join_reply_bytes, "join_reply_msg.reply (JoinReply)", r));
  const std::string why = r.reason().empty() ? std::string() : ": " + r.reason();
  if (r.protocol_version() != protocol_version) {
    return failed_precondition("engine protocol {} vs worker {}{}", r.protocol_version(),
                               protocol_version, why);
  }
  if (r.helix_version() != helix_version()) {
    return failed_precondition("engine helix version '{}' vs worker '{}'{}", r.helix_version(),
                               helix_version(), why);
  }
  if (!r.accepted()) return failed_precondition("refused by the engine{}", why);
  const bool rank_ok = r.standby() ? r.rank() == -1 : r.rank() >= 0 && r.rank() < r.world_size();
  if (r.world_size() < 1 || !rank_ok || !r.has_config()) {
    return invalid_argument("the engine accepted us as rank {} of {}{}", r.rank(), r.world_size(),
                            r.has_config() ? "" : " without a cluster config");
  }
  return r;
}

expected<proto_v1::Membership> read_membership(std::string_view bytes, std::int32_t world_size) {
  proto_v1::Membership m;
  HELIX_RETURN_IF_ERROR(
      parse_bounded(bytes, max_membership_bytes, "membership_msg.membership (Membership)", m));
  if (m.world_size() != world_size || m.members_size() != world_size) {
    return invalid_argument("membership of {} workers ({} listed) but the world has {}",
                            m.world_size(), m.members_size(), world_size);
  }
  for (std::int32_t r = 0; r < world_size; ++r) {
    const proto_v1::Member& w = m.members(r);
    if (w.rank() != r) {
      return invalid_argument("membership entry {} is rank {}, not {}", r, w.rank(), r);
    }
    if (w.ucx_address().empty() || w.ucx_address().size() > max_ucx_address_bytes) {
      return invalid_argument("rank {} ({}) has a {}-byte UCX address (1 to {} bytes allowed)", r,
                              w.name(), w.ucx_address().size(), max_ucx_address_bytes);
    }
  }
  return m;
}

}  // namespace helix::cluster
