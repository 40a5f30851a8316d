// Fuzz target: the engine config file parser (actors/config_file.hpp parse_engine_config), built
// twice: HELIX_FUZZ_JSON=1 parses the input as JSON, 0 as protobuf text format.
//
// An accepted config must survive the conversions the engine and the wire use: to_proto then
// from_proto, and printing in the same format then parsing, give the same config.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include <google/protobuf/text_format.h>
#include <google/protobuf/util/json_util.h>

#include "actors/config_file.hpp"
#include "fuzz/fuzz_check.hpp"

#ifndef HELIX_FUZZ_JSON
#error "define HELIX_FUZZ_JSON to 0 (text format) or 1 (JSON)"
#endif

namespace {

// Two configs are the same when their wire forms are (to_proto sets every field).
std::string wire(const helix::actors::engine_config& c) {
  return helix::actors::to_proto(c).SerializeAsString();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  constexpr bool json = HELIX_FUZZ_JSON != 0;
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const auto c = helix::actors::parse_engine_config(text, json);
  if (!c.has_value()) {
    HELIX_FUZZ_CHECK(c.error().code() == helix::errc::invalid_argument);
    return 0;
  }
  const helix::proto_v1::EngineConfig m = helix::actors::to_proto(*c);
  const auto back = helix::actors::from_proto(m);
  HELIX_FUZZ_CHECK(back.has_value());
  HELIX_FUZZ_CHECK(wire(*back) == wire(*c));

  std::string printed;
  if (json) {
    HELIX_FUZZ_CHECK(google::protobuf::util::MessageToJsonString(m, &printed).ok());
  } else {
    HELIX_FUZZ_CHECK(google::protobuf::TextFormat::PrintToString(m, &printed));
  }
  const auto reparsed = helix::actors::parse_engine_config(printed, json);
  HELIX_FUZZ_CHECK(reparsed.has_value());
  HELIX_FUZZ_CHECK(wire(*reparsed) == wire(*c));
  return 0;
}
