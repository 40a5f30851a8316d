// Recovery by rebuilding lost KV blocks only (rank_program::release_kv / restore / rewrite items,
// planner/recovery_plan.hpp): ranks as threads over the local fabric run a synthetic context,
// prefill and decode on one layout; one rank dies; the survivors carry their KV into the programs
// of the layout that follows, the lost blocks are refilled (synthetic) or computed again (rewrite
// chunks in position order), and decoding goes on. Every logit after the recovery must equal the
// single-worker decoder's that never failed (f32, max abs diff <= 1e-4), on GQA with one and two
// TPA columns and on MLA + MoE, to the same layout (a fresh rank taking the lost one's place) and
// to a smaller one (a survivor left without a rank). Every rank must hold exactly the slots of its
// blocks afterwards. A survivor that lost its carried KV fails the restore on every rank.
#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <string>
#include <thread>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "model/decoder.hpp"
#include "model/kv_reslice.hpp"
#include "model/rank_program.hpp"
#include "planner/placement_book.hpp"
#include "planner/recovery_plan.hpp"
#include "tests/support/model_fixtures.hpp"
#include "transport/transport.hpp"

namespace helix::model {
namespace {

using test_support::random_tokens;

constexpr float tolerance = 1e-4f;
constexpr std::int64_t synthetic_tokens = 40;  // seq 1 only; 2.5 blocks, so one block straddles
constexpr std::uint64_t synthetic_seed = 77;

std::size_t sz_of(std::int64_t n) {
  return static_cast<std::size_t>(n);
}

struct item {
  std::uint64_t seq = 0;
  std::vector<std::int32_t> tokens;
  std::int64_t rewrite_from = -1;
};
using step = std::vector<item>;

std::vector<batch_item> to_items(const step& s) {
  std::vector<batch_item> out;
  for (const item& it : s) out.push_back({it.seq, it.tokens, false, it.rewrite_from});
  return out;
}

// Two sequences: seq 1 a synthetic context, a 20-token prompt and decode; seq 2 a 37-token prompt
// and decode. `tokens[seq]` is everything each sequence was fed after its synthetic context.
struct workload {
  std::vector<step> before;  // before the failure
  std::vector<step> after;   // decode after the recovery
  std::map<std::uint64_t, std::vector<std::int32_t>> fed;
};

workload make_workload(std::int64_t vocab) {
  workload w;
  const auto p1 = random_tokens(20, vocab, 11);
  const auto p2 = random_tokens(37, vocab, 12);
  const auto d1 = random_tokens(10, vocab, 13);
  const auto d2 = random_tokens(10, vocab, 14);
  w.before.push_back({{1, p1}, {2, p2}});
  for (std::size_t i = 0; i < 6; ++i) w.before.push_back({{1, {d1[i]}}, {2, {d2[i]}}});
  for (std::size_t i = 6; i < 10; ++i) w.after.push_back({{1, {d1[i]}}, {2, {d2[i]}}});
  w.fed[1] = p1;
  w.fed[2] = p2;
  for (std::size_t i = 0; i < 6; ++i) {
    w.fed[1].push_back(d1[i]);
    w.fed[2].push_back(d2[i]);
  }
  return w;
}

// The decoder's logits for every step after the recovery (it never fails).
std::vector<std::vector<float>> reference_after(const model_weights& w, const workload& wl) {
  decoder_options o;
  o.num_threads = 1;
  auto dec = decoder::create(w, o);
  EXPECT_TRUE(dec.has_value());
  (void)(*dec)->open_sequence();
  (void)(*dec)->open_sequence();
  EXPECT_TRUE((*dec)->append_synthetic(1, synthetic_tokens, synthetic_seed).ok());
  std::vector<std::vector<float>> out;
  for (const step& s : wl.before) {
    const auto items = to_items(s);
    std::vector<float> logits(sz_of(logits_rows(items) * w.spec.vocab));
    EXPECT_TRUE((*dec)->forward(items, logits).ok());
  }
  for (const step& s : wl.after) {
    const auto items = to_items(s);
    std::vector<float> logits(sz_of(logits_rows(items) * w.spec.vocab));
    EXPECT_TRUE((*dec)->forward(items, logits).ok());
    out.push_back(std::move(logits));
  }
  return out;
}

// Runs `body(rank)` on one thread per rank of a fresh local fabric; the first failure aborts it.
template <class Body>
std::vector<status> on_ranks(std::int64_t n, Body body) {
  auto fab = transport::make_local_fabric(static_cast<int>(n));
  EXPECT_TRUE(fab.has_value());
  std::vector<status> results(sz_of(n), ok_status());
  std::vector<std::thread> threads;
  for (std::int64_t r = 0; r < n; ++r) {
    threads.emplace_back([&, r] {
      results[sz_of(r)] = body(**fab, r);
      if (!results[sz_of(r)].ok() && results[sz_of(r)].code() != errc::failed_precondition) {
        (*fab)->abort(results[sz_of(r)]);
      }
    });
  }
  for (std::thread& t : threads) t.join();
  return results;
}

// Rank r of `l` on `fab`, whose first l.num_ranks ranks are the layout's (donors follow).
expected<std::unique_ptr<rank_program>> make_program(const model_weights& w, const layout& l,
                                                     std::int64_t r, transport::fabric& fab,
                                                     std::unique_ptr<carried_kv> carried) {
  const int rank = static_cast<int>(r);
  std::vector<int> everyone;
  for (int i = 0; i < static_cast<int>(l.num_ranks); ++i) everyone.push_back(i);
  HELIX_ASSIGN_OR_RETURN(auto world, fab.make_communicator(rank, everyone));
  std::vector<int> group;
  for (std::int64_t g : l.kvp_group(l.attention_coords(r).tpa_idx)) {
    group.push_back(static_cast<int>(g));
  }
  HELIX_ASSIGN_OR_RETURN(auto kvp, fab.make_communicator(rank, group));
  rank_program_options o;
  o.kv_capacity_tokens = 1024;
  HELIX_ASSIGN_OR_RETURN(rank_weights rw, shard_weights(w, l, r));
  return rank_program::create(std::move(rw), std::move(world), std::move(kvp), o,
                              std::move(carried));
}

// Lost positions past the synthetic context, as rewrite chunks of at most `chunk` tokens, in
// position order per sequence; one chunk per sequence per step.
std::vector<step> rewrite_steps(const std::vector<planner::recovered_request>& plan,
                                const workload& wl, std::int64_t block_tokens, std::int64_t chunk) {
  std::map<std::uint64_t, std::vector<std::pair<std::int64_t, std::int64_t>>> runs;  // [from, to)
  for (const planner::recovered_request& r : plan) {
    const std::int64_t synth = r.id == 1 ? synthetic_tokens : 0;
    for (std::size_t b = 0; b < r.kept_kvp.size(); ++b) {
      if (r.kept_kvp[b] >= 0 || r.donor[b] >= 0) continue;
      const std::int64_t from =
          std::max<std::int64_t>(static_cast<std::int64_t>(b) * block_tokens, synth);
      const std::int64_t to =
          std::min<std::int64_t>(static_cast<std::int64_t>(b + 1) * block_tokens, r.num_tokens);
      if (from >= to) continue;
      auto& v = runs[r.id];
      if (!v.empty() && v.back().second == from) {
        v.back().second = to;
      } else {
        v.emplace_back(from, to);
      }
    }
  }
  std::vector<step> steps;
  for (bool more = true; more;) {
    more = false;
    step s;
    for (auto& [id, v] : runs) {
      if (v.empty()) continue;
      auto& [from, to] = v.front();
      const std::int64_t n = std::min(chunk, to - from);
      const std::int64_t synth = id == 1 ? synthetic_tokens : 0;
      const auto& fed = wl.fed.at(id);
      item it{
          id,
          std::vector<std::int32_t>(fed.begin() + (from - synth), fed.begin() + (from - synth + n)),
          from};
      s.push_back(std::move(it));
      from += n;
      if (from == to) v.erase(v.begin());
      more = true;
    }
    if (!s.empty()) steps.push_back(std::move(s));
  }
  return steps;
}

struct recovery_case {
  std::string model;
  std::string before;
  std::string after;
  std::int64_t lost = 0;    // the old rank that dies
  bool drop_carry = false;  // survivor 0 loses its carried KV (restore must fail everywhere)
  bool donate = false;      // survivors left without a rank send their blocks (tpa = 1)
  bool reslice = false;     // blocks not kept move re-sliced by head (kv_reslice)
  bool leaves = false;      // `lost` leaves instead of dying: it sends as a donor
};

struct recovery_outcome {
  std::int64_t donated_blocks = 0;
  std::int64_t lost_blocks = 0;
  std::int64_t kept_blocks = 0;
  std::int64_t rewrite_steps = 0;
  std::int64_t pieces = 0;  // re-slice: head runs planned
};

recovery_outcome expect_recovers_exactly(const recovery_case& c) {
  recovery_outcome outcome;
  const model_weights w = test_support::seeded_weights(c.model);
  const workload wl = make_workload(w.spec.vocab);
  const auto before = layout::parse(c.before);
  const auto after = layout::parse(c.after);
  EXPECT_TRUE(before.has_value() && after.has_value());
  const std::int64_t bt = rank_program_options{}.block_tokens;

  // The old layout: plan every step with the engine's record, run it, keep the programs.
  planner::placement_book book(*before, bt);
  EXPECT_TRUE(book.join(1).ok());
  EXPECT_TRUE(book.join(2).ok());
  std::vector<std::int64_t> synthetic_owners;
  EXPECT_TRUE(book.plan(1, synthetic_tokens, synthetic_owners).ok());
  EXPECT_TRUE(book.commit(1, synthetic_tokens).ok());
  std::vector<std::vector<std::int64_t>> owners;
  for (const step& s : wl.before) {
    owners.emplace_back();
    for (const item& it : s) {
      const auto n = static_cast<std::int64_t>(it.tokens.size());
      EXPECT_TRUE(book.plan(it.seq, n, owners.back()).ok());
      EXPECT_TRUE(book.commit(it.seq, n).ok());
    }
    book.tick();
  }
  std::vector<std::unique_ptr<rank_program>> old(sz_of(before->num_ranks));
  for (const status& st : on_ranks(before->num_ranks, [&](transport::fabric&fab, std::int64_t r) {
         HELIX_ASSIGN_OR_RETURN(auto prog, make_program(w, *before, r, fab, nullptr));
         (void)prog->open_sequence();
         (void)prog->open_sequence();
         HELIX_RETURN_IF_ERROR(
             prog->append_synthetic(1, synthetic_tokens, synthetic_seed, synthetic_owners));
         for (std::size_t i = 0; i < wl.before.size(); ++i) {
           const auto items = to_items(wl.before[i]);
           std::vector<float> logits(sz_of(logits_rows(items) * w.spec.vocab));
           HELIX_RETURN_IF_ERROR(prog->forward(items, owners[i], logits));
         }
         old[sz_of(r)] = std::move(prog);
         return ok_status();
       })) {
    EXPECT_TRUE(st.ok()) << st.to_string();
  }

  // Rank `lost` dies; the others carry their KV into the new layout.
  std::vector<std::int64_t> alive;
  for (std::int64_t r = 0; r < before->num_ranks; ++r) {
    if (r != c.lost) alive.push_back(r);
  }
  const std::vector<std::int64_t> survivors = planner::order_survivors(*before, *after, alive);
  const auto kept = planner::kept_members(*before, *after, survivors);
  EXPECT_TRUE(kept.has_value());
  std::vector<std::int64_t> rankless;  // alive, without a new rank: donors when c.donate
  for (std::int64_t r : alive) {
    if (std::find(survivors.begin(), survivors.end(), r) == survivors.end()) rankless.push_back(r);
  }
  if (c.leaves) rankless.push_back(c.lost);
  std::vector<std::int64_t> donated(sz_of(before->kvp), -1);
  const auto donors = c.donate || c.reslice ? static_cast<std::int64_t>(rankless.size()) : 0;
  kv_reslice reslice{*before, {}};
  if (c.reslice) {  // members not kept: their blocks from whichever members hold their heads
    for (std::int64_t k = 0; k < before->kvp; ++k) {
      if ((*kept)[sz_of(k)] < 0) donated[sz_of(k)] = k;
    }
    for (std::int64_t r = 0; r < before->num_ranks; ++r) {
      const auto at = std::find(survivors.begin(), survivors.end(), r);
      const auto gave = std::find(rankless.begin(), rankless.end(), r);
      reslice.holders.push_back(at != survivors.end() ? at - survivors.begin()
                                : gave != rankless.end()
                                    ? after->num_ranks + (gave - rankless.begin())
                                    : -1);
    }
  } else {
    for (std::int64_t j = 0; j < donors; ++j) {
      donated[sz_of(before->attention_coords(rankless[sz_of(j)]).kvp_idx)] = j;
    }
  }
  const auto plan = planner::plan_recovery(book, *after, *kept, donated);
  for (const auto& r : plan) {
    outcome.lost_blocks += r.lost_blocks();
    outcome.donated_blocks += r.donated_blocks();
    outcome.kept_blocks +=
        static_cast<std::int64_t>(r.kept_kvp.size()) - r.lost_blocks() - r.donated_blocks();
  }
  auto book2 = planner::recovered_book(*after, bt, plan, book.step());
  EXPECT_TRUE(book2.has_value());
  std::vector<restored_sequence> restored;
  for (const auto& r : plan) {
    restored.push_back({r.id, r.num_tokens, r.owner_kvp, r.kept_kvp,
                        r.id == 1 ? synthetic_tokens : 0, synthetic_seed, r.donor});
  }
  if (c.reslice) {
    const auto pieces = reslice::plan(w.spec, *after, reslice, restored);
    EXPECT_TRUE(pieces.has_value()) << pieces.error().to_string();
    if (pieces) outcome.pieces = static_cast<std::int64_t>(pieces->size());
  }
  const kv_reslice* resliced = c.reslice ? &reslice : nullptr;
  std::vector<std::unique_ptr<carried_kv>> carried(sz_of(after->num_ranks));
  for (std::size_t i = 0; i < survivors.size(); ++i) {
    carried[i] = old[sz_of(survivors[i])]->release_kv();
  }
  if (c.drop_carry) carried[0].reset();
  std::vector<std::unique_ptr<carried_kv>> donor_kv;
  for (std::int64_t j = 0; j < donors; ++j) {
    donor_kv.push_back(old[sz_of(rankless[sz_of(j)])]->release_kv());
  }
  old.clear();

  const std::vector<step> rewrites = rewrite_steps(plan, wl, bt, 8);
  outcome.rewrite_steps = static_cast<std::int64_t>(rewrites.size());
  std::vector<std::vector<std::int64_t>> owners2;
  for (const step& s : wl.after) {
    owners2.emplace_back();
    for (const item& it : s) {
      EXPECT_TRUE(book2->plan(it.seq, 1, owners2.back()).ok());
      EXPECT_TRUE(book2->commit(it.seq, 1).ok());
    }
  }
  std::vector<std::vector<std::vector<float>>> logits(sz_of(after->num_ranks));
  std::vector<std::int64_t> used(sz_of(after->num_ranks + donors), -1);
  std::vector<std::int64_t> held(sz_of(after->num_ranks + donors), -2);
  const auto results =
      on_ranks(after->num_ranks + donors, [&](transport::fabric& fab, std::int64_t r) -> status {
        std::unique_ptr<transport::communicator> handoff;
        if (donors > 0) {
          HELIX_ASSIGN_OR_RETURN(handoff, fab.make_world(static_cast<int>(r)));
        }
        if (r >= after->num_ranks) {  // a donor: its blocks to their new owners, then it is done
          const std::int64_t j = r - after->num_ranks;
          return donate_kv(*donor_kv[sz_of(j)], *handoff, *after, j, restored, resliced);
        }
        HELIX_ASSIGN_OR_RETURN(auto prog,
                               make_program(w, *after, r, fab, std::move(carried[sz_of(r)])));
        const status restored_st = prog->restore(restored, 3, handoff.get(), resliced);
        used[sz_of(r)] = prog->kv().used_slots();
        HELIX_RETURN_IF_ERROR(restored_st);
        for (const step& s : rewrites) {
          const auto items = to_items(s);
          HELIX_RETURN_IF_ERROR(prog->forward(items, {}, step_output{}));
        }
        for (std::size_t i = 0; i < wl.after.size(); ++i) {
          const auto items = to_items(wl.after[i]);
          std::vector<float> out(sz_of(logits_rows(items) * w.spec.vocab));
          HELIX_RETURN_IF_ERROR(prog->forward(items, owners2[i], out));
          logits[sz_of(r)].push_back(std::move(out));
        }
        std::set<std::int32_t> slots;
        for (std::uint64_t id : {1, 2}) {
          for (const kv_block_ref& b : prog->table(id).blocks()) {
            if (b.rank == r) slots.insert(b.slot);
          }
        }
        held[sz_of(r)] = static_cast<std::int64_t>(slots.size());
        used[sz_of(r)] = prog->kv().used_slots();
        return ok_status();
      });
  if (c.drop_carry) {
    for (std::size_t r = 0; r < sz_of(after->num_ranks); ++r) {
      EXPECT_EQ(results[r].code(), errc::failed_precondition)
          << "rank " << r << ": " << results[r].to_string();
      EXPECT_EQ(used[r], 0) << "rank " << r << " kept slots after a failed restore";
    }
    return outcome;
  }
  for (const status& st : results) EXPECT_TRUE(st.ok()) << st.to_string();
  const auto ref = reference_after(w, wl);
  for (std::int64_t r = 0; r < after->num_ranks; ++r) {
    EXPECT_EQ(used[sz_of(r)], held[sz_of(r)]) << "rank " << r << ": slots not freed";
    EXPECT_EQ(logits[sz_of(r)].size(), ref.size()) << "rank " << r;
    if (logits[sz_of(r)].size() != ref.size()) continue;
    for (std::size_t i = 0; i < ref.size(); ++i) {
      float diff = 0.0f;
      for (std::size_t j = 0; j < ref[i].size(); ++j) {
        diff = std::max(diff, std::fabs(logits[sz_of(r)][i][j] - ref[i][j]));
      }
      EXPECT_LE(diff, tolerance) << c.before << " -> " << c.after << " rank " << r << " step " << i;
    }
  }
  return outcome;
}

TEST(RankRecovery, FreshRankRebuildsTheLostBlocksOfTheSameLayout) {
  const auto o =
      expect_recovers_exactly({"tiny-llama", "helix:kvp=4,tpa=1", "helix:kvp=4,tpa=1", 2});
  EXPECT_GT(o.lost_blocks, 0);
  EXPECT_GT(o.kept_blocks, 2 * o.lost_blocks);  // about a quarter lost
  EXPECT_GT(o.rewrite_steps, 0);
}

TEST(RankRecovery, SmallerLayoutRebuildsWhatTheDeadAndTheRanklessHeld) {
  const auto o =
      expect_recovers_exactly({"tiny-llama", "helix:kvp=4,tpa=1", "helix:kvp=2,tpa=1", 3});
  EXPECT_GT(o.lost_blocks, 0);
  EXPECT_GT(o.kept_blocks, 0);
}

// The survivor left without a rank sends its blocks to their new owners: only the dead
// member's blocks are rebuilt.
TEST(RankRecovery, RanklessSurvivorDonatesItsBlocks) {
  const auto o = expect_recovers_exactly(
      {"tiny-llama", "helix:kvp=4,tpa=1", "helix:kvp=2,tpa=1", 3, false, true});
  EXPECT_GT(o.donated_blocks, 0);
  EXPECT_GT(o.lost_blocks, 0);
  EXPECT_GT(o.kept_blocks, o.lost_blocks);
}

TEST(RankRecovery, MlaMoeDonatesExactly) {
  const auto o = expect_recovers_exactly(
      {"tiny-deepseek", "helix:kvp=4,tpa=1", "helix:kvp=2,tpa=1", 1, false, true});
  EXPECT_GT(o.donated_blocks, 0);
}

TEST(RankRecovery, TwoColumnsKeepTheMemberWhoseColumnsAllSurvived) {
  const auto o =
      expect_recovers_exactly({"tiny-llama", "helix:kvp=2,tpa=2", "helix:kvp=1,tpa=2", 3});
  EXPECT_GT(o.lost_blocks, 0);
  EXPECT_GT(o.kept_blocks, 0);
}

TEST(RankRecovery, MlaMoeRebuildsExactly) {
  const auto o =
      expect_recovers_exactly({"tiny-deepseek", "helix:kvp=4,tpa=1", "helix:kvp=2,tpa=1", 0});
  EXPECT_GT(o.lost_blocks, 0);
  EXPECT_GT(o.kept_blocks, 0);
}

// Another TPA size moves every block re-sliced by head, none rebuilt. Planned (nobody lost: rank
// -1): tp=2 -> 4 copies each of tiny-llama's 2 KV heads onto two ranks, tp=4 -> 2 joins them
// (the rankless survivors send as donors), helix tpa=2 -> 1 joins two columns' heads in one page
// and tpa=1 -> 2 splits them. After a failure: tp=4 -> 2 without rank 3 still finds every head
// (each is held twice); MLA's one latent "head" goes to every column.
TEST(RankRecovery, AnotherTpaSizeReslicesEveryBlockByHead) {
  const struct {
    const char* model;
    const char* before;
    const char* after;
    std::int64_t lost;
  } cases[] = {{"tiny-llama", "tp:tp=2", "tp:tp=4", -1},
               {"tiny-llama", "tp:tp=4", "tp:tp=2", -1},
               {"tiny-llama", "helix:kvp=2,tpa=2", "helix:kvp=2,tpa=1", -1},
               {"tiny-llama", "helix:kvp=2,tpa=1", "helix:kvp=1,tpa=2", -1},
               {"tiny-llama", "tp:tp=4", "tp:tp=2", 3},
               {"tiny-deepseek", "tp:tp=2", "tp:tp=1", -1}};
  for (const auto& k : cases) {
    SCOPED_TRACE(fmt::format("{}: {} -> {}, lost {}", k.model, k.before, k.after, k.lost));
    const auto o =
        expect_recovers_exactly({k.model, k.before, k.after, k.lost, false, false, true});
    EXPECT_EQ(o.lost_blocks, 0);
    EXPECT_EQ(o.kept_blocks, 0);
    EXPECT_GT(o.donated_blocks, 0);
    EXPECT_GT(o.pieces, 0);
  }
}

// The same TPA size, a leaver replaced by a fresh rank: the leaver's member still has a serving
// holder in the other column, so it cannot donate whole; its blocks move from both holders (the
// survivor reads them from the store it took over, where its fresh slots land too), the others
// stay where they are.
TEST(RankRecovery, ALeaversMemberMovesFromEveryColumnsHolder) {
  const auto o = expect_recovers_exactly(
      {"tiny-llama", "helix:kvp=2,tpa=2", "helix:kvp=2,tpa=2", 3, false, false, true, true});
  EXPECT_EQ(o.lost_blocks, 0);
  EXPECT_GT(o.kept_blocks, 0);
  EXPECT_GT(o.donated_blocks, 0);
  EXPECT_GT(o.pieces, 0);
}

// Every holder of a head gone: the plan says which head has none, the same on every rank.
TEST(RankRecovery, ResliceWithoutAHoldersHeadIsRefused) {
  const model_spec spec = test_support::seeded_weights("tiny-llama").spec;
  const auto before = layout::parse("tp:tp=2");
  const auto after = layout::parse("tp:tp=1");
  ASSERT_TRUE(before.has_value() && after.has_value());
  const restored_sequence seq{1, 20, {0, 0}, {-1, -1}, 0, 0, {0, 0}};
  const kv_reslice from{*before, {0, -1}};  // rank 1 (KV head 1) is gone
  const auto pieces = reslice::plan(spec, *after, from, std::span(&seq, 1));
  ASSERT_FALSE(pieces.has_value());
  EXPECT_EQ(pieces.error().code(), errc::failed_precondition);
  EXPECT_NE(pieces.error().message().find("KV head 1"), std::string::npos)
      << pieces.error().message();
}

// Donor d's holder of TPA column c must be handoff rank N + d * TPA + c: a donor whose KV holds
// another column than its handoff index says refuses, naming both columns, rather than leave the
// new owners waiting for pages it would never send (the agreement then fails every rank, as for
// missing blocks above). The donor's own check, on a handoff group of one.
TEST(RankRecovery, ADonorHoldingAnotherColumnRefuses) {
  auto before = layout::parse("helix:kvp=2,tpa=2");
  auto after = layout::parse("helix:kvp=1,tpa=2");
  ASSERT_TRUE(before.has_value() && after.has_value());
  std::int64_t rank = 0;  // a member of column 1
  while (before->attention_coords(rank).tpa_idx != 1) ++rank;
  auto store = kv_store::create(
      {.num_kv_heads = 1, .key_dim = 4, .value_dim = 4, .block_tokens = 4, .type = dtype::f32}, 2,
      4);
  ASSERT_TRUE(store.has_value()) << store.error().to_string();
  carried_kv kv{*before, rank, std::move(*store), {}};
  auto fab = transport::make_local_fabric({1, std::chrono::milliseconds(5000)});
  ASSERT_TRUE(fab.has_value());
  auto handoff = (*fab)->make_world(0);
  ASSERT_TRUE(handoff.has_value());
  // Donor 0 of the new layout: its column-1 holder is donor index 0 * 2 + 1 = 1; index 0 is
  // column 0's, which this member does not hold.
  const status wrong = donate_kv(kv, **handoff, *after, 0, {});
  EXPECT_EQ(wrong.code(), errc::failed_precondition) << wrong.to_string();
  EXPECT_NE(wrong.message().find("it holds column 1, not 0"), std::string::npos) << wrong.message();
  EXPECT_TRUE(donate_kv(kv, **handoff, *after, 1, {}).ok());
}

TEST(RankRecovery, ASurvivorWithoutItsKvFailsTheRestoreEverywhere) {
  expect_recovers_exactly({"tiny-llama", "helix:kvp=4,tpa=1", "helix:kvp=4,tpa=1", 2, true});
}

// Lost blocks are spread over the members: 4 -> 2 with members 1 and 3 gone, every lost block
// has an odd index (offset 0), and plain round-robin would put all of them on member 1.
TEST(RankRecovery, LostBlocksAreSpreadOverTheNewMembers) {
  const auto l4 = layout::parse("helix:kvp=4,tpa=1");
  const auto l2 = layout::parse("helix:kvp=2,tpa=1");
  ASSERT_TRUE(l4.has_value() && l2.has_value());
  planner::placement_book book(*l4, 16);
  ASSERT_TRUE(book.join(1).ok());
  ASSERT_TRUE(book.commit(1, 16 * 40).ok());
  const auto kept = planner::kept_members(*l4, *l2, std::vector<std::int64_t>{0, 2});
  ASSERT_TRUE(kept.has_value());
  const auto plan = planner::plan_recovery(book, *l2, *kept);
  ASSERT_EQ(plan.size(), 1u);
  std::int64_t on[2] = {0, 0};
  for (std::int64_t o : plan[0].owner_kvp) ++on[o];
  EXPECT_EQ(on[0], 20);
  EXPECT_EQ(on[1], 20);
  EXPECT_EQ(plan[0].lost_blocks(), 20);
}

TEST(RankRecovery, KeptMembersFollowTheColumns) {
  const auto l4 = layout::parse("helix:kvp=4,tpa=1");
  const auto l2 = layout::parse("helix:kvp=2,tpa=1");
  ASSERT_TRUE(l4.has_value() && l2.has_value());
  // 4 -> 4 with rank 2 dead: 0, 1 stay, 3 becomes member 2, member 3 is fresh.
  const std::vector<std::int64_t> alive{0, 1, 3};
  const auto s = planner::order_survivors(*l4, *l4, alive);
  EXPECT_EQ(s, (std::vector<std::int64_t>{0, 1, 3}));
  EXPECT_EQ(*planner::kept_members(*l4, *l4, s), (std::vector<std::int64_t>{0, 1, -1, 2}));
  // 4 -> 2: only two survivors keep a rank.
  const auto s2 = planner::order_survivors(*l4, *l2, alive);
  EXPECT_EQ(s2, (std::vector<std::int64_t>{0, 1}));
  EXPECT_EQ(*planner::kept_members(*l4, *l2, s2), (std::vector<std::int64_t>{0, 1, -1, -1}));
  // Different TPA: nothing is kept.
  const auto t2 = layout::parse("helix:kvp=2,tpa=2");
  ASSERT_TRUE(t2.has_value());
  EXPECT_EQ(*planner::kept_members(*t2, *l2, std::vector<std::int64_t>{0, 1}),
            (std::vector<std::int64_t>{-1, -1}));
  // Two columns, rank 3 (column 1, member 1) dead: 0 and 2 hold member 0 in both columns.
  const auto t1 = layout::parse("helix:kvp=1,tpa=2");
  ASSERT_TRUE(t1.has_value());
  const auto s3 = planner::order_survivors(*t2, *t1, std::vector<std::int64_t>{0, 1, 2});
  EXPECT_EQ(s3, (std::vector<std::int64_t>{0, 2}));
  EXPECT_EQ(*planner::kept_members(*t2, *t1, s3), (std::vector<std::int64_t>{0, -1}));
  // Rank 0 (column 0, member 0) dead: member 1 survived whole (ranks 1 and 3) and moves onto
  // new member 0; the lowest rank of each column (1 and 2) would keep nothing.
  const auto s4 = planner::order_survivors(*t2, *t1, std::vector<std::int64_t>{1, 2, 3});
  EXPECT_EQ(s4, (std::vector<std::int64_t>{1, 3}));
  EXPECT_EQ(*planner::kept_members(*t2, *t1, s4), (std::vector<std::int64_t>{-1, 0}));
}

}  // namespace
}  // namespace helix::model
