// Conversions between the embedding API's C++ types (actors/engine.hpp) and their protobuf
// messages (proto/helix.proto), and the engine config file loader.
//
// Apps call load_engine_config() to read an engine_config from a protobuf text-format file or,
// when the path ends in ".json", a JSON file (message helix.proto_v1.EngineConfig; JSON accepts
// the proto field names and their lowerCamelCase forms). Fields absent from the file keep
// engine_config's C++ defaults. Clients and servers that move requests, token events and stats
// across a process boundary use the to_proto / from_proto pairs.
//
// The loader checks what it can without a model: dtype names and that sizes and counts are
// positive; engine::create still validates the whole config (model, layout rules, capacity).
//
// Thread-safety: every function is a pure function of its arguments and may be called from any
// thread. Nothing here throws.
#pragma once

#include <string>
#include <string_view>

#include "actors/engine.hpp"
#include "core/status.hpp"
#include "proto/helix.pb.h"

namespace helix::actors {

/// Sampling parameters. Every field is set on the way out; absent fields read back as defaults.
[[nodiscard]] proto_v1::SamplingParams to_proto(const sampling_params& s);
[[nodiscard]] sampling_params from_proto(const proto_v1::SamplingParams& m);

/// A request. Absent `sampling` and `max_tokens` read back as request_options' defaults; the
/// prompt and the limits are validated by engine::submit, not here.
[[nodiscard]] proto_v1::Request to_proto(const request_options& r);
[[nodiscard]] request_options from_proto(const proto_v1::Request& m);

/// A token event, its finish reason and its error status. invalid_argument for a finish reason
/// or status code outside the enums (proto3 enums keep unknown numbers).
[[nodiscard]] proto_v1::TokenEvent to_proto(const token_event& e);
[[nodiscard]] expected<token_event> from_proto(const proto_v1::TokenEvent& m);

/// Stats, with every worker's entry in order.
[[nodiscard]] proto_v1::WorkerStats to_proto(const worker_stats& w);
[[nodiscard]] worker_stats from_proto(const proto_v1::WorkerStats& m);
[[nodiscard]] proto_v1::EngineStats to_proto(const engine_stats& s);
[[nodiscard]] engine_stats from_proto(const proto_v1::EngineStats& m);

/// The engine config. Every field is set on the way out (dtypes by name). On the way in, absent
/// fields keep engine_config's defaults; invalid_argument naming the field for an unknown dtype
/// name, a size or count below 1 (num_workers, kv_capacity_tokens_per_worker, block_tokens,
/// max_batch_tokens, prefill_chunk_tokens, max_queued_requests, threads_per_worker), a negative
/// rebalance_min_blocks, or a rebalance_threshold that is negative or not finite.
[[nodiscard]] proto_v1::EngineConfig to_proto(const engine_config& c);
[[nodiscard]] expected<engine_config> from_proto(const proto_v1::EngineConfig& m);

/// Parses an EngineConfig from JSON (`json`) or protobuf text format and converts it as
/// from_proto does. invalid_argument for a syntax error, an unknown field or a field given twice
/// (text format: with the parser's 1-based line and column), or a bad value.
[[nodiscard]] expected<engine_config> parse_engine_config(std::string_view text, bool json);

/// Reads the config file at `path`: JSON when the name ends in ".json" (any case), protobuf text
/// format otherwise. not_found when there is no such file; invalid_argument when it cannot be
/// read (a directory, no permission) or does not parse; every message names the path.
[[nodiscard]] expected<engine_config> load_engine_config(const std::string& path);

}  // namespace helix::actors
