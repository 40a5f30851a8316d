// Block tables, model specs, the thread pool and status/expected.
#include <atomic>
#include <numeric>

#include <gtest/gtest.h>

#include "core/block_table.hpp"
#include "core/model_spec.hpp"
#include "core/status.hpp"
#include "core/tensor.hpp"
#include "core/thread_pool.hpp"

namespace helix {
namespace {

TEST(BlockTable, BlocksFillInOrderAndCoverConsecutivePositions) {
  block_table t(4);
  EXPECT_TRUE(t.needs_block());
  EXPECT_EQ(t.append_tokens(1).code(), errc::failed_precondition);  // no block yet
  ASSERT_TRUE(t.open_block(1, 7).ok());
  ASSERT_TRUE(t.append_tokens(3).ok());
  EXPECT_EQ(t.open_block(0, 1).code(), errc::failed_precondition);  // last block has room
  EXPECT_EQ(t.append_tokens(2).code(), errc::failed_precondition);  // only 1 fits
  ASSERT_TRUE(t.append_tokens(1).ok());
  ASSERT_TRUE(t.open_block(0, 2).ok());
  ASSERT_TRUE(t.append_tokens(2).ok());
  EXPECT_EQ(t.num_tokens(), 6);
  EXPECT_EQ(t.next_pos(), 6);
  ASSERT_EQ(t.blocks().size(), 2u);
  EXPECT_EQ(t.blocks()[0], (kv_block_ref{1, 7, 0, 4}));
  EXPECT_EQ(t.blocks()[1], (kv_block_ref{0, 2, 4, 2}));
  EXPECT_EQ(t.blocks_on(1).size(), 1u);
  ASSERT_TRUE(t.relocate(0, 3, 9).ok());
  EXPECT_EQ(t.blocks()[0], (kv_block_ref{3, 9, 0, 4}));
  EXPECT_EQ(t.relocate(5, 0, 0).code(), errc::invalid_argument);
}

// The list of one rank's blocks stays equal to a scan of the table through a seeded mix of
// appends (whole and partial blocks), opens on 4 ranks and relocations to, from and within it.
TEST(BlockTable, LocalBlocksStayEqualToAScanThroughAppendsAndRelocations) {
  for (std::int32_t local = 0; local < 4; ++local) {
    block_table t(4, local);
    EXPECT_EQ(t.local_rank(), local);
    std::uint64_t state = 0x9e3779b97f4a7c15ull + static_cast<std::uint64_t>(local);
    const auto next = [&](std::uint64_t n) {
      state = state * 6364136223846793005ull + 1442695040888963407ull;
      return (state >> 33) % n;
    };
    for (int op = 0; op < 400; ++op) {
      if (next(3) != 0 || t.blocks().empty()) {
        const auto n = static_cast<std::int64_t>(1 + next(6));
        for (std::int64_t done = 0; done < n;) {
          if (t.needs_block()) {
            ASSERT_TRUE(t.open_block(static_cast<std::int32_t>(next(4)), op).ok());
          }
          const std::int64_t room = 4 - t.blocks().back().num_tokens;
          const std::int64_t k = std::min(room, n - done);
          ASSERT_TRUE(t.append_tokens(k).ok());
          done += k;
        }
      } else {
        const auto idx = static_cast<std::size_t>(next(t.blocks().size()));
        ASSERT_TRUE(t.relocate(idx, static_cast<std::int32_t>(next(4)), 1000 + op).ok());
      }
      const std::vector<kv_block_ref> scan = t.blocks_on(local);
      ASSERT_EQ(std::vector<kv_block_ref>(t.local_blocks().begin(), t.local_blocks().end()), scan)
          << "rank " << local << " after operation " << op;
    }
  }
  block_table untracked(4);
  ASSERT_TRUE(untracked.open_block(0, 0).ok());
  EXPECT_EQ(untracked.local_rank(), -1);
  EXPECT_TRUE(untracked.local_blocks().empty());
}

TEST(ModelSpec, BuiltinsValidateAndHaveTheDocumentedShapes) {
  for (const std::string& name : builtin_model_names()) {
    auto s = builtin_model(name);
    ASSERT_TRUE(s.has_value()) << name;
    EXPECT_TRUE(s->validate().ok()) << name << ": " << s->validate().to_string();
  }
  EXPECT_EQ(builtin_model("gpt-5").error().code(), errc::not_found);
  const model_spec small = *builtin_model("small-llama");
  EXPECT_EQ(small.hidden, 1024);
  EXPECT_EQ(small.num_layers, 8);
  EXPECT_EQ(small.num_kv_heads, 2);
  EXPECT_EQ(small.head_dim, 128);
  EXPECT_EQ(small.ffn, 2816);
  EXPECT_EQ(small.vocab, 32000);
  // KV per token over all layers (HELIX-REFERENCE.md section 2.2).
  const model_spec llama = *builtin_model("llama-3.1-405b");
  EXPECT_EQ(llama.kv_values_per_token_per_layer() * llama.num_layers, 258048);
  const model_spec r1 = *builtin_model("deepseek-r1");
  EXPECT_EQ(r1.kv_values_per_token_per_layer() * r1.num_layers, 35136);
  EXPECT_EQ(r1.layout_kv_heads(), 1);
  EXPECT_FALSE(r1.layer_is_moe(2));
  EXPECT_TRUE(r1.layer_is_moe(3));
  // About 671B parameters (the MTP layer is not counted).
  EXPECT_NEAR(static_cast<double>(r1.num_params()) / 1e9, 671.0, 10.0);
  EXPECT_NEAR(static_cast<double>(llama.num_params()) / 1e9, 405.0, 5.0);
  // Both tiny models admit 8-worker layouts: 8 query heads.
  EXPECT_EQ(builtin_model("tiny-llama")->num_q_heads, 8);
  EXPECT_EQ(builtin_model("tiny-deepseek")->num_q_heads, 8);
}

TEST(ModelSpec, ValidateNamesTheBrokenField) {
  model_spec s = *builtin_model("tiny-llama");
  s.num_kv_heads = 3;
  EXPECT_NE(s.validate().message().find("num_key_value_heads"), std::string::npos);
  s = *builtin_model("tiny-deepseek");
  s.moe.topk_groups = 9;
  EXPECT_NE(s.validate().message().find("topk_group"), std::string::npos);
}

TEST(ThreadPool, RunsEveryTaskOnceAndIsReusable) {
  thread_pool pool(4);
  EXPECT_EQ(pool.num_threads(), 4);
  for (int round = 0; round < 50; ++round) {
    std::vector<std::atomic<int>> hits(97);
    pool.parallel_for(97, [&](std::int64_t i) { hits[static_cast<std::size_t>(i)]++; });
    for (auto& h : hits) ASSERT_EQ(h.load(), 1);
  }
  pool.parallel_for(0, [](std::int64_t) { FAIL(); });
}

// Runs of tasks are claimed atomically and tagged with their call: back-to-back calls of every
// size (fewer tasks than threads, not a multiple of the run length, thousands), spinning or not,
// run every task of their own call exactly once, and the caller sees every task done.
TEST(ThreadPool, BackToBackCallsOfEverySizeRunEachTaskOnce) {
  for (const bool spin : {false, true}) {
    thread_pool pool(3, spin);
    std::vector<std::atomic<int>> hits(5000);
    for (int round = 0; round < 300; ++round) {
      const std::int64_t n = (round * 37) % 5000 + 1;
      pool.parallel_for(n, [&](std::int64_t i) { hits[static_cast<std::size_t>(i)]++; });
      for (std::int64_t i = 0; i < n; ++i) {
        ASSERT_EQ(hits[static_cast<std::size_t>(i)].exchange(0), 1)
            << "spin " << spin << " round " << round << " task " << i << " of " << n;
      }
      for (std::int64_t i = n; i < 5000; ++i) ASSERT_EQ(hits[static_cast<std::size_t>(i)], 0);
    }
  }
}

TEST(Status, ExpectedCarriesValueOrError) {
  expected<int> v = 3;
  EXPECT_TRUE(v.has_value());
  EXPECT_EQ(*v, 3);
  expected<int> e = invalid_argument("bad {}", 7);
  EXPECT_FALSE(e.has_value());
  EXPECT_EQ(e.error().to_string(), "invalid_argument: bad 7");
  EXPECT_EQ(e.error().with_context("rank 2").message(), "rank 2: bad 7");
  expected<int> from_ok = ok_status();  // a programming error, reported not hidden
  EXPECT_EQ(from_ok.error().code(), errc::internal);
}

TEST(Tensor, DefaultIsEmptyAndBuffersMove) {
  tensor empty;
  EXPECT_EQ(empty.numel(), 0);
  tensor t(dtype::bf16, {3, 5});
  EXPECT_EQ(t.numel(), 15);
  EXPECT_EQ(t.bytes(), 30u);
  buffer a = buffer::host(100);
  void* p = a.data();
  buffer b = std::move(a);
  EXPECT_EQ(b.data(), p);
  EXPECT_EQ(a.data(),
            nullptr);  // NOLINT(bugprone-use-after-move): the moved-from state is the test
}

}  // namespace
}  // namespace helix
