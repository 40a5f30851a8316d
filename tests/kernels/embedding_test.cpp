// Embedding lookup: the optimised CPU kernel against the reference (exact: conversions to f32 are
// exact), vocabulary sharding, and the dispatcher's errors.
#include <cstdint>
#include <vector>

#include <gtest/gtest.h>

#include "kernels/cpu/optimized.hpp"

#include "core/dtype.hpp"
#include "core/thread_pool.hpp"
#include "kernels/cpu/simd.hpp"
#include "kernels/embedding.hpp"

namespace helix::kernels {
namespace {

/// A table for vocabulary [begin, end) whose row for token id v holds v + (j % 4) / 4 (exact in
/// bf16 and f16 for the small ids used here).
std::vector<std::uint8_t> make_table(dtype t, std::int64_t begin, std::int64_t end,
                                     std::int64_t dim) {
  std::vector<std::uint8_t> bytes(static_cast<std::size_t>((end - begin) * dim) * dtype_bytes(t));
  for (std::int64_t v = begin; v < end; ++v) {
    for (std::int64_t j = 0; j < dim; ++j) {
      store_from_f32(bytes.data(), t, static_cast<std::size_t>((v - begin) * dim + j),
                     static_cast<float>(v) + static_cast<float>(j % 4) / 4.0f);
    }
  }
  return bytes;
}

TEST(EmbeddingCpu, MatchesReferenceAndZeroesOtherShards) {
  thread_pool pool(2);
  constexpr std::int64_t begin = 10;
  constexpr std::int64_t end = 50;
  const std::vector<std::int32_t> ids = {10, 49, 9,  50, 0,  25, 1000, 11, 30,
                                         10, 12, 13, 14, 49, 48, 47,   5,  20};
  for (dtype t : {dtype::f32, dtype::bf16, dtype::f16}) {
    for (std::int64_t dim : {1, 7, 64, 257}) {
      const std::vector<std::uint8_t> table = make_table(t, begin, end, dim);
      std::vector<float> out_ref(ids.size() * static_cast<std::size_t>(dim), 3.0f);
      std::vector<float> out_opt = out_ref;
      embedding_params p;
      p.ids = ids.data();
      p.rows = static_cast<std::int64_t>(ids.size());
      p.table = table.data();
      p.table_type = t;
      p.vocab_begin = begin;
      p.vocab_end = end;
      p.dim = dim;
      p.out = out_ref.data();
      ASSERT_TRUE(embedding(p, {.backend = backend::reference}).ok());
      p.out = out_opt.data();
      ASSERT_TRUE(embedding(p, {.backend = backend::cpu, .pool = &pool}).ok());
      EXPECT_EQ(out_opt, out_ref) << dtype_name(t) << " dim " << dim;
      std::vector<float> out_scalar(out_ref.size());
      p.out = out_scalar.data();
      ASSERT_TRUE(cpu::embedding_with_isa(p, nullptr, simd::isa::scalar).ok());
      EXPECT_EQ(out_scalar, out_ref) << "portable path, " << dtype_name(t) << " dim " << dim;
      for (std::size_t r = 0; r < ids.size(); ++r) {
        const bool here = ids[r] >= begin && ids[r] < end;
        for (std::int64_t j = 0; j < dim; ++j) {
          const float expected =
              here ? static_cast<float>(ids[r]) + static_cast<float>(j % 4) / 4.0f : 0.0f;
          ASSERT_EQ(out_opt[r * static_cast<std::size_t>(dim) + static_cast<std::size_t>(j)],
                    expected)
              << "id " << ids[r] << " j " << j << " " << dtype_name(t);
        }
      }
    }
  }
}

TEST(EmbeddingCpu, NegativeIdIsInvalidArgument) {
  const std::vector<std::int32_t> ids = {3, -1};
  const std::vector<float> table(4 * 2, 1.0f);
  std::vector<float> out(2 * 2);
  embedding_params p;
  p.ids = ids.data();
  p.rows = 2;
  p.table = table.data();
  p.vocab_begin = 0;
  p.vocab_end = 4;
  p.dim = 2;
  p.out = out.data();
  for (backend b : {backend::reference, backend::cpu}) {
    const status s = embedding(p, {.backend = b});
    EXPECT_EQ(s.code(), errc::invalid_argument) << backend_name(b);
    EXPECT_NE(s.message().find("-1"), std::string::npos) << s.message();
  }
}

}  // namespace
}  // namespace helix::kernels
