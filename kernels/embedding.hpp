// Embedding lookup, vocabulary-parallel aware.
// The table holds vocabulary rows [vocab_begin, vocab_end) ([vocab_end - vocab_begin, dim] of
// dtype table_type). For each id: out row = table[id - vocab_begin] as f32 if the id is in range,
// zeros otherwise (another shard owns it). Shapes: ids [rows] int32, out [rows, dim].
// invalid_argument if an id is negative.
#pragma once

#include <cstdint>

#include "core/dtype.hpp"
#include "kernels/exec.hpp"

namespace helix::kernels {

struct embedding_params {
  const std::int32_t* ids = nullptr;
  std::int64_t rows = 0;
  const void* table = nullptr;
  dtype table_type = dtype::f32;
  std::int64_t vocab_begin = 0;
  std::int64_t vocab_end = 0;
  std::int64_t dim = 0;
  float* out = nullptr;
};

[[nodiscard]] status embedding(const embedding_params& p, const exec_context& ctx);

}  // namespace helix::kernels
