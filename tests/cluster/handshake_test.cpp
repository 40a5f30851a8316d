// The join handshake's protobuf messages and checks (cluster/handshake.hpp), without processes:
// every message survives a round trip, a worker or engine of another protocol or build is refused
// naming both versions, bytes that are no message are refused, and an oversize payload is refused
// before protobuf allocates anything for it.
#include "cluster/handshake.hpp"

#include <malloc.h>

#include <google/protobuf/util/message_differencer.h>
#include <gtest/gtest.h>

#include "actors/config_file.hpp"
#include "cluster/cluster.hpp"

namespace helix::cluster {
namespace {

using google::protobuf::util::MessageDifferencer;

// Bytes the C heap holds now (glibc; a sanitizer's allocator may report nothing).
std::int64_t heap_bytes() {
  const struct mallinfo2 mi = ::mallinfo2();
  return static_cast<std::int64_t>(mi.uordblks + mi.hblkhd);
}

template <class Msg>
Msg round_trip(const Msg& m) {
  Msg back;
  EXPECT_TRUE(parse_bounded(to_bytes(m), std::size_t{1} << 30, "test", back).ok());
  EXPECT_TRUE(MessageDifferencer::Equals(m, back)) << "sent:\n"
                                                   << m.DebugString() << "got:\n"
                                                   << back.DebugString();
  return back;
}

proto_v1::ClusterConfig cluster_config() {
  actors::engine_config c;
  c.model = "tiny-llama";
  c.layout = "helix:kvp=2,tpa=2";
  c.num_workers = 4;
  c.kv_capacity_tokens_per_worker = 4096;
  proto_v1::ClusterConfig cc;
  *cc.mutable_engine() = actors::to_proto(c);
  cc.set_layout("helix:kvp=2,tpa=2");
  cc.set_heartbeat_interval_ms(500);
  cc.set_heartbeat_deadline_ms(2000);
  cc.set_kv_capacity_tokens_per_worker(4096);
  return cc;
}

proto_v1::JoinRequest request_as(std::int32_t protocol, const std::string& version) {
  proto_v1::JoinRequest r = make_join_request({42, "host-a", "w0", 2, "tcp,self"});
  r.set_protocol_version(protocol);
  r.set_helix_version(version);
  return r;
}

TEST(Handshake, JoinRequestCarriesVersionsAndCapabilitiesAndRoundTrips) {
  const proto_v1::JoinRequest r =
      round_trip(make_join_request({42, "host-a", "w0", 3, "tcp,self"}));
  EXPECT_EQ(r.protocol_version(), protocol_version);
  EXPECT_EQ(r.helix_version(), helix_version());
  EXPECT_FALSE(helix_version().empty());
  EXPECT_EQ(r.pid(), 42);
  EXPECT_EQ(r.host(), "host-a");
  EXPECT_EQ(r.name(), "w0");
  const auto& c = r.capabilities();
  ASSERT_EQ(c.ucx_transports_size(), 2);
  EXPECT_EQ(c.ucx_transports(0), "tcp");
  EXPECT_EQ(c.ucx_transports(1), "self");
  EXPECT_EQ(c.device(), "cpu");
  EXPECT_EQ(c.threads(), 3);
  EXPECT_GT(c.cpus(), 0);
  EXPECT_GT(c.memory_available_bytes(), 0);  // MemAvailable from /proc/meminfo
  EXPECT_EQ(make_join_request({1, "h", "n", 0, ""}).capabilities().ucx_transports_size(), 0);
}

TEST(Handshake, JoinRepliesRoundTrip) {
  const proto_v1::JoinReply a = round_trip(accept_join(3, 4, cluster_config()));
  EXPECT_TRUE(a.accepted());
  EXPECT_EQ(a.rank(), 3);
  EXPECT_EQ(a.world_size(), 4);
  EXPECT_EQ(a.protocol_version(), protocol_version);
  EXPECT_EQ(a.config().layout(), "helix:kvp=2,tpa=2");
  EXPECT_EQ(a.config().heartbeat_deadline_ms(), 2000);
  auto engine = actors::from_proto(a.config().engine());
  ASSERT_TRUE(engine.has_value()) << engine.error().to_string();
  EXPECT_EQ(engine->model, "tiny-llama");
  EXPECT_EQ(engine->kv_capacity_tokens_per_worker, 4096);
  const proto_v1::JoinReply r = round_trip(refuse_join("full"));
  EXPECT_FALSE(r.accepted());
  EXPECT_EQ(r.reason(), "full");
  EXPECT_EQ(r.helix_version(), helix_version());
}

TEST(Handshake, MembershipAndEventsRoundTrip) {
  proto_v1::Membership m;
  m.set_world_size(2);
  for (int r = 0; r < 2; ++r) {
    auto& w = *m.add_members();
    w.set_rank(r);
    w.set_name("w" + std::to_string(r));
    w.set_pid(100 + r);
    w.set_host("h");
    w.set_ucx_address(std::string("\0\1\2\xff", 4));  // binary, with a NUL
  }
  const auto back = read_membership(to_bytes(round_trip(m)), 2);
  ASSERT_TRUE(back.has_value()) << back.error().to_string();
  EXPECT_EQ(back->members(1).ucx_address(), std::string("\0\1\2\xff", 4));
  for (const auto kind :
       {proto_v1::MembershipEvent::KIND_JOINED, proto_v1::MembershipEvent::KIND_LOST,
        proto_v1::MembershipEvent::KIND_LEFT}) {
    proto_v1::MembershipEvent e;
    e.set_kind(kind);
    e.set_rank(2);
    e.set_name("w2");
    e.set_pid(7);
    e.set_host("h");
    e.set_reason("no heartbeat answer within 2000 ms");
    e.set_time_unix_ms(1'700'000'000'000);
    EXPECT_EQ(round_trip(e).kind(), kind);
  }
}

TEST(Handshake, EngineAcceptsItsOwnBuild) {
  const auto r = read_join_request(to_bytes(make_join_request({42, "host-a", "w0", 0, ""})));
  ASSERT_TRUE(r.has_value()) << r.error().to_string();
  EXPECT_EQ(r->name(), "w0");
}

TEST(Handshake, EngineRefusesAnotherProtocolNamingBoth) {
  const auto r = read_join_request(to_bytes(request_as(99, std::string(helix_version()))));
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), errc::failed_precondition);
  const std::string expect = fmt::format(
      "worker 'w0' (pid 42 on host-a) speaks protocol 99 but the engine speaks "
      "protocol {}",
      protocol_version);
  EXPECT_EQ(r.error().message(), expect);
  // An empty payload is a JoinRequest with every field zero: protocol 0.
  const auto empty = read_join_request("");
  ASSERT_FALSE(empty.has_value());
  EXPECT_NE(empty.error().message().find("speaks protocol 0"), std::string::npos);
}

TEST(Handshake, EngineRefusesAnotherBuild) {
  const auto r = read_join_request(to_bytes(request_as(protocol_version, "0.0.0-other")));
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), errc::failed_precondition);
  EXPECT_NE(r.error().message().find("runs helix version '0.0.0-other' but the engine runs helix "
                                     "version '" +
                                     std::string(helix_version()) + "'"),
            std::string::npos)
      << r.error().to_string();
}

TEST(Handshake, EngineRefusesBytesThatAreNoJoinRequest) {
  const auto r = read_join_request(std::string(4096, '\xff'));
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), errc::invalid_argument);
  EXPECT_EQ(r.error().message(),
            "join_msg.request (JoinRequest) (4096 bytes) does not parse as "
            "helix.proto_v1.JoinRequest");
}

TEST(Handshake, OversizeJoinRequestIsRefusedBeforeParsing) {
  // A well-formed request, only too large: refused for its size, not its content.
  proto_v1::JoinRequest big = make_join_request({42, "host-a", "w0", 0, ""});
  big.set_name(std::string(max_join_request_bytes, 'n'));
  const std::string bytes = to_bytes(big);
  const auto r = read_join_request(bytes);
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), errc::resource_exhausted);
  EXPECT_EQ(r.error().message(),
            fmt::format("join_msg.request (JoinRequest) is {} bytes, over its limit of {} bytes; "
                        "not parsed",
                        bytes.size(), max_join_request_bytes));
  // Nothing is allocated for the refused payload: the C heap does not grow (protobuf keeps a
  // string field's bytes there, so a parse would add a megabyte).
  proto_v1::JoinRequest m;
  const std::int64_t before = heap_bytes();
  EXPECT_EQ(parse_bounded(bytes, max_join_request_bytes, "join", m).code(),
            errc::resource_exhausted);
  EXPECT_LT(heap_bytes() - before, 16 * 1024);
  // The same bytes under a larger limit do parse, and the probe sees their megabyte.
  ASSERT_TRUE(parse_bounded(bytes, 2 * max_join_request_bytes, "join", m).ok());
  if (heap_bytes() - before < static_cast<std::int64_t>(max_join_request_bytes)) {
    GTEST_SKIP() << "this allocator hides its usage from mallinfo2 (a sanitizer build?)";
  }
}

TEST(Handshake, WorkerRefusesAnEngineOfAnotherProtocolNamingBoth) {
  proto_v1::JoinReply r = refuse_join("worker 'w0' speaks protocol 2 but the engine speaks 99");
  r.set_protocol_version(99);
  const auto got = read_join_reply(to_bytes(r));
  ASSERT_FALSE(got.has_value());
  EXPECT_EQ(got.error().code(), errc::failed_precondition);
  EXPECT_EQ(got.error().message(),
            fmt::format("engine protocol 99 vs worker {}: worker 'w0' speaks protocol 2 but the "
                        "engine speaks 99",
                        protocol_version));
  // Even an acceptance from another protocol is refused: its config may mean something else.
  proto_v1::JoinReply a = accept_join(0, 1, cluster_config());
  a.set_protocol_version(protocol_version + 1);
  EXPECT_EQ(read_join_reply(to_bytes(a)).error().message(),
            fmt::format("engine protocol {} vs worker {}", protocol_version + 1, protocol_version));
}

TEST(Handshake, WorkerReadsTheEnginesVerdict) {
  const auto ok = read_join_reply(to_bytes(accept_join(1, 2, cluster_config())));
  ASSERT_TRUE(ok.has_value()) << ok.error().to_string();
  EXPECT_EQ(ok->rank(), 1);
  const auto full = read_join_reply(to_bytes(refuse_join("the engine already has its 2 workers")));
  ASSERT_FALSE(full.has_value());
  EXPECT_EQ(full.error().message(), "refused by the engine: the engine already has its 2 workers");
  proto_v1::JoinReply bad = accept_join(2, 2, cluster_config());  // rank out of range
  EXPECT_EQ(read_join_reply(to_bytes(bad)).error().code(), errc::invalid_argument);
  bad = accept_join(0, 2, cluster_config());
  bad.clear_config();
  EXPECT_EQ(read_join_reply(to_bytes(bad)).error().code(), errc::invalid_argument);
  EXPECT_EQ(read_join_reply(std::string(64, '\xff')).error().code(), errc::invalid_argument);
  EXPECT_EQ(read_join_reply(std::string(max_join_reply_bytes + 1, '\0')).error().code(),
            errc::resource_exhausted);
}

TEST(Handshake, WorkerChecksTheMembership) {
  proto_v1::Membership m;
  m.set_world_size(2);
  for (int r = 0; r < 2; ++r) {
    auto& w = *m.add_members();
    w.set_rank(r);
    w.set_name("w" + std::to_string(r));
    w.set_ucx_address("addr");
  }
  EXPECT_TRUE(read_membership(to_bytes(m), 2).has_value());
  EXPECT_EQ(read_membership(to_bytes(m), 3).error().message(),
            "membership of 2 workers (2 listed) but the world has 3");
  proto_v1::Membership swapped = m;
  swapped.mutable_members(0)->set_rank(1);
  EXPECT_EQ(read_membership(to_bytes(swapped), 2).error().message(),
            "membership entry 0 is rank 1, not 0");
  proto_v1::Membership no_address = m;
  no_address.mutable_members(1)->clear_ucx_address();
  EXPECT_EQ(read_membership(to_bytes(no_address), 2).error().code(), errc::invalid_argument);
  proto_v1::Membership huge = m;
  huge.mutable_members(1)->set_ucx_address(std::string(max_ucx_address_bytes + 1, 'a'));
  EXPECT_EQ(read_membership(to_bytes(huge), 2).error().code(), errc::invalid_argument);
  EXPECT_EQ(read_membership(std::string(max_membership_bytes + 1, '\0'), 2).error().code(),
            errc::resource_exhausted);
}

}  // namespace
}  // namespace helix::cluster
