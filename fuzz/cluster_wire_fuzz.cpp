// Fuzz target: what crosses processes outside CAF's own serialisation and arrives from the
// network or a file: the cluster join handshake (cluster/handshake.hpp: a join request read by
// the engine from any client of its join port, the engine's reply and the membership read by a
// worker) and stored fault schedules (transport/fault/schedule.hpp).
//
// Invariants: every refusal is one of the documented codes; an accepted message survives a
// serialise/parse round trip unchanged, and a parsed schedule re-serialises to bytes that parse
// to the same schedule.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "cluster/handshake.hpp"
#include "fuzz/fuzz_check.hpp"
#include "proto/cluster.pb.h"
#include "transport/fault/schedule.hpp"

namespace {

bool documented(helix::errc c) {
  return c == helix::errc::invalid_argument || c == helix::errc::failed_precondition ||
         c == helix::errc::resource_exhausted;
}

template <class Message>
void check_round_trip(const Message& m) {
  Message again;
  HELIX_FUZZ_CHECK(again.ParseFromString(helix::cluster::to_bytes(m)));
  HELIX_FUZZ_CHECK(again.SerializeAsString() == m.SerializeAsString());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  if (auto r = helix::cluster::read_join_request(bytes)) {
    check_round_trip(*r);
  } else {
    HELIX_FUZZ_CHECK(documented(r.error().code()));
  }
  if (auto r = helix::cluster::read_join_reply(bytes)) {
    check_round_trip(*r);
  } else {
    HELIX_FUZZ_CHECK(documented(r.error().code()));
  }
  // The world size a worker expects comes from its own join reply; any small one will do here.
  const std::int32_t world = size > 0 ? static_cast<std::int32_t>(data[0] % 9) : 1;
  if (auto m = helix::cluster::read_membership(bytes, world)) {
    HELIX_FUZZ_CHECK(m->members_size() == world);
    check_round_trip(*m);
  } else {
    HELIX_FUZZ_CHECK(documented(m.error().code()));
  }
  if (auto s = helix::transport::fault::parse_schedule(bytes)) {
    const auto again =
        helix::transport::fault::parse_schedule(helix::transport::fault::to_bytes(*s));
    HELIX_FUZZ_CHECK(again.has_value() && *again == *s);
  } else {
    HELIX_FUZZ_CHECK(documented(s.error().code()));
  }
  return 0;
}
