// Batched generation on a single-worker decoder: chunked prefill, then decode steps with every
// active request in the batch, sampling each request's next token with its own options.
//
// Requests of different lengths run together: prefill chunks of several requests share a step,
// and a request that finishes its prompt joins the decode batch. A request stops at
// max_new_tokens or at one of its stop tokens (which is emitted). Called by the CLI and tests.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "kernels/sampling.hpp"
#include "model/decoder.hpp"

namespace helix::model {

struct generate_request {
  std::vector<std::int32_t> prompt;
  std::int64_t max_new_tokens = 16;
  kernels::sampling_options sampling;
  std::vector<std::int32_t> stop_tokens;
  std::uint64_t request_id = 0;  // keys the sampling noise together with the seed
};

struct generate_result {
  std::vector<std::int32_t> tokens;  // generated tokens
  bool stopped = false;              // ended on a stop token
  std::vector<float> last_logits;    // logits that chose the last token [vocab]
};

struct generate_options {
  std::int64_t prefill_chunk = 128;  // prompt tokens per request per step
};

struct generate_stats {
  double prefill_ms = 0;
  double decode_ms = 0;
  std::int64_t prefill_tokens = 0;
  std::int64_t decode_tokens = 0;
  std::int64_t steps = 0;
  std::vector<double> decode_step_ms;
};

/// invalid_argument for an empty prompt, an id outside the vocabulary, max_new_tokens < 1, bad
/// sampling options or a request longer than the KV capacity (each named by request index);
/// errors of the decoder otherwise. Sequences are closed whatever happens.
[[nodiscard]] expected<std::vector<generate_result>> generate(
    decoder& dec, std::span<const generate_request> requests, const generate_options& options,
    generate_stats* stats = nullptr);

}  // namespace helix::model
