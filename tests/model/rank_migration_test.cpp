// KV block migration between KVP members (rank_program::migrate_blocks): N ranks as threads of one
// process over the local fabric run prefill and decode, migrate blocks (emptying a member, then
// filling it from several sequences, moving open blocks, or as planner::plan_rebalance decides
// after requests left), keep decoding, and must still give the single-worker decoder's logits
// (f32, max abs diff <= 1e-4) on GQA (tiny-llama) and MLA + MoE (tiny-deepseek). Every rank's
// table must agree with the engine's record (planner::placement_book, which follows the moves with
// relocate()), and every rank must hold exactly the slots of its blocks (sources freed theirs).
// Invalid moves and a destination without free slots fail on every rank with nothing moved.
#include <algorithm>
#include <cctype>
#include <cmath>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <variant>

#include <gtest/gtest.h>

#include "model/decoder.hpp"
#include "model/rank_program.hpp"
#include "planner/kv_placement.hpp"
#include "planner/placement_book.hpp"
#include "planner/rebalance.hpp"
#include "tests/support/model_fixtures.hpp"
#include "transport/transport.hpp"

namespace helix::model {
namespace {

using test_support::random_tokens;

constexpr float tolerance = 1e-4f;

std::size_t sz_of(std::int64_t n) {
  return static_cast<std::size_t>(n);
}

struct script_item {
  std::uint64_t seq = 0;
  std::vector<std::int32_t> tokens;
};
using script_step = std::vector<script_item>;

// What a migration script does, in order. Moves are chosen from the engine's record as it stands
// at that point (the whole script is planned before the ranks start).
struct forward_action {
  script_step items;
};
struct migrate_action {
  std::function<std::vector<block_move>(const planner::placement_book&)> choose;
  errc expect = errc::ok;
};
struct rebalance_action {
  planner::rebalance_options options;
};
struct close_action {
  std::uint64_t seq = 0;
};
using action = std::variant<forward_action, migrate_action, rebalance_action, close_action>;

struct migration_script {
  std::int64_t num_seqs = 1;
  std::vector<action> actions;
};

// One action as the ranks run it.
struct planned_action {
  enum class kind { forward, migrate, close } k = kind::forward;
  script_step items;                 // forward
  std::vector<std::int64_t> owners;  // forward: kvp of every block the step opens
  std::vector<block_move> moves;     // migrate
  errc expect = errc::ok;            // migrate
  std::uint64_t seq = 0;             // close
};

struct planned_script {
  std::vector<planned_action> actions;
  std::vector<std::size_t> rebalance_moves;  // moves of each rebalance action
  std::vector<double> imbalance_after;       // kv_imbalance of the record after each rebalance
  planner::placement_book book;              // the record at the end
};

std::vector<decoder::batch_item> to_items(const script_step& step) {
  std::vector<decoder::batch_item> items;
  for (const script_item& it : step) items.push_back({it.seq, it.tokens, false});
  return items;
}

double record_imbalance(const planner::placement_book& book) {
  std::vector<block_table> tables;
  for (std::uint64_t id : book.live_ids()) tables.push_back(book.table(id));
  std::vector<std::int64_t> members;
  for (std::int64_t j = 0; j < book.kvp(); ++j) members.push_back(j);
  return planner::kv_imbalance(tables, members);
}

// The engine's part: placement of every new block, the moves, the record following them.
expected<planned_script> plan(const layout& l, const rank_program_options& options,
                              const migration_script& s) {
  planned_script out{{}, {}, {}, planner::placement_book(l, options.block_tokens)};
  planner::placement_book& book = out.book;
  for (std::int64_t i = 0; i < s.num_seqs; ++i) {
    HELIX_RETURN_IF_ERROR(book.join(static_cast<std::uint64_t>(i + 1)));
  }
  auto record_moves = [&](std::vector<block_move> moves, errc expect) -> status {
    if (expect == errc::ok) {
      for (const block_move& m : moves) {
        HELIX_RETURN_IF_ERROR(book.relocate(m.seq, m.block_idx, m.to_kvp));
      }
    }
    planned_action a;
    a.k = planned_action::kind::migrate;
    a.moves = std::move(moves);
    a.expect = expect;
    out.actions.push_back(std::move(a));
    return ok_status();
  };
  for (const action& act : s.actions) {
    if (const auto* f = std::get_if<forward_action>(&act)) {
      planned_action a;
      a.items = f->items;
      for (const script_item& it : f->items) {
        const auto n = static_cast<std::int64_t>(it.tokens.size());
        HELIX_RETURN_IF_ERROR(book.plan(it.seq, n, a.owners));
        HELIX_RETURN_IF_ERROR(book.commit(it.seq, n));
      }
      book.tick();
      out.actions.push_back(std::move(a));
    } else if (const auto* m = std::get_if<migrate_action>(&act)) {
      HELIX_RETURN_IF_ERROR(record_moves(m->choose(book), m->expect));
    } else if (const auto* r = std::get_if<rebalance_action>(&act)) {
      HELIX_ASSIGN_OR_RETURN(const auto moves, planner::plan_rebalance(book, r->options));
      std::vector<block_move> bm;
      for (const planner::planned_move& pm : moves) {
        bm.push_back({pm.request_id, pm.block_idx, pm.to_kvp});
      }
      out.rebalance_moves.push_back(bm.size());
      HELIX_RETURN_IF_ERROR(record_moves(std::move(bm), errc::ok));
      out.imbalance_after.push_back(record_imbalance(book));
    } else {
      const auto& c = std::get<close_action>(act);
      HELIX_RETURN_IF_ERROR(book.leave(c.seq));
      planned_action a;
      a.k = planned_action::kind::close;
      a.seq = c.seq;
      out.actions.push_back(std::move(a));
    }
  }
  return out;
}

// Logits of every forward action from the single-worker decoder (which never migrates).
expected<std::vector<std::vector<float>>> run_reference(const model_weights& w,
                                                        const planned_script& p,
                                                        std::int64_t num_seqs) {
  decoder_options o;
  o.num_threads = 1;
  HELIX_ASSIGN_OR_RETURN(auto dec, decoder::create(w, o));
  for (std::int64_t i = 0; i < num_seqs; ++i) (void)dec->open_sequence();
  std::vector<std::vector<float>> out;
  for (const planned_action& a : p.actions) {
    if (a.k == planned_action::kind::close) HELIX_RETURN_IF_ERROR(dec->close_sequence(a.seq));
    if (a.k != planned_action::kind::forward) continue;
    const auto items = to_items(a.items);
    std::vector<float> logits(sz_of(decoder::logits_rows(items) * w.spec.vocab));
    HELIX_RETURN_IF_ERROR(dec->forward(items, logits));
    out.push_back(std::move(logits));
  }
  return out;
}

struct sharded_result {
  std::vector<std::vector<float>> logits;  // per forward action, from rank 0
  bool ranks_agree = true;                 // bit-identical logits on every rank
  // Per rank: each live sequence's table at the end, and the slots in use.
  std::vector<std::map<std::uint64_t, std::vector<kv_block_ref>>> tables;
  std::vector<std::int64_t> used_slots;
};

using table_snapshot = std::map<std::uint64_t, std::vector<kv_block_ref>>;

table_snapshot snapshot(const rank_program& prog, const std::set<std::uint64_t>& live) {
  table_snapshot t;
  for (std::uint64_t id : live) {
    const auto b = prog.table(id).blocks();
    t.emplace(id, std::vector<kv_block_ref>(b.begin(), b.end()));
  }
  return t;
}

// One thread per rank, each driving its rank_program through the planned script. A migration
// must return the expected code on every rank; when it fails, the rank's tables and slots must be
// unchanged. A failing rank aborts the fabric so that its peers return.
expected<sharded_result> run_sharded(const model_weights& w, const layout& l,
                                     const planned_script& p, std::int64_t num_seqs,
                                     const rank_program_options& options) {
  const auto n = static_cast<int>(l.num_ranks);
  HELIX_ASSIGN_OR_RETURN(auto fab, transport::make_local_fabric(n));
  std::vector<status> results(sz_of(n), ok_status());
  std::vector<std::vector<std::vector<float>>> logits(sz_of(n));
  sharded_result res;
  res.tables.resize(sz_of(n));
  res.used_slots.assign(sz_of(n), 0);
  auto body = [&](int r) -> status {
    HELIX_ASSIGN_OR_RETURN(auto world, fab->make_world(r));
    std::vector<int> group;
    for (std::int64_t g : l.kvp_group(l.attention_coords(r).tpa_idx)) {
      group.push_back(static_cast<int>(g));
    }
    HELIX_ASSIGN_OR_RETURN(auto kvp, fab->make_communicator(r, group));
    HELIX_ASSIGN_OR_RETURN(
        auto prog, rank_program::create(w, l, r, std::move(world), std::move(kvp), options));
    std::set<std::uint64_t> live;
    for (std::int64_t i = 0; i < num_seqs; ++i) live.insert(prog->open_sequence());
    for (std::size_t i = 0; i < p.actions.size(); ++i) {
      const planned_action& a = p.actions[i];
      if (a.k == planned_action::kind::forward) {
        const auto items = to_items(a.items);
        std::vector<float> out(sz_of(decoder::logits_rows(items) * w.spec.vocab));
        HELIX_RETURN_IF_ERROR(prog->forward(items, a.owners, out));
        logits[sz_of(r)].push_back(std::move(out));
      } else if (a.k == planned_action::kind::close) {
        HELIX_RETURN_IF_ERROR(prog->close_sequence(a.seq));
        live.erase(a.seq);
      } else {
        const table_snapshot before = snapshot(*prog, live);
        const std::int64_t used_before = prog->kv().used_slots();
        const status st = prog->migrate_blocks(a.moves);
        if (st.code() != a.expect) {
          return internal_error("rank {} action {}: migrate_blocks returned {}, expected {}", r, i,
                                st.to_string(), errc_name(a.expect));
        }
        if (!st.ok() &&
            (snapshot(*prog, live) != before || prog->kv().used_slots() != used_before)) {
          return internal_error("rank {} action {}: a failed migration changed the tables", r, i);
        }
      }
    }
    res.tables[sz_of(r)] = snapshot(*prog, live);
    res.used_slots[sz_of(r)] = prog->kv().used_slots();
    return ok_status();
  };
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) {
    threads.emplace_back([&, r] {
      results[sz_of(r)] = body(r);
      if (!results[sz_of(r)].ok()) fab->abort(results[sz_of(r)]);
    });
  }
  for (std::thread& t : threads) t.join();
  // The first failure is the cause; the others are the abort it triggered.
  for (const status& st : results) {
    if (!st.ok() && st.code() != errc::aborted) return st;
  }
  for (const status& st : results) HELIX_RETURN_IF_ERROR(st);
  res.logits = logits[0];
  for (int r = 1; r < n; ++r) res.ranks_agree = res.ranks_agree && logits[sz_of(r)] == logits[0];
  return res;
}

float max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return INFINITY;
  float m = 0.0f;
  for (std::size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

// Every rank's tables equal the record (same kvp member, in the rank's own column, same
// positions), and every rank holds exactly the slots of its blocks, each once.
void expect_tables_follow_record(const layout& l, const planned_script& p,
                                 const sharded_result& res) {
  const std::vector<std::uint64_t> live = p.book.live_ids();
  for (std::int64_t r = 0; r < l.num_ranks; ++r) {
    const attention_coord me = l.attention_coords(r);
    const auto& tables = res.tables[sz_of(r)];
    ASSERT_EQ(tables.size(), live.size()) << "rank " << r;
    std::set<std::int32_t> slots;
    std::int64_t held = 0;
    for (std::uint64_t id : live) {
      const auto want = p.book.table(id).blocks();
      const auto& got = tables.at(id);
      ASSERT_EQ(got.size(), want.size()) << "rank " << r << " seq " << id;
      for (std::size_t i = 0; i < got.size(); ++i) {
        const attention_coord c = l.attention_coords(got[i].rank);
        EXPECT_EQ(c.kvp_idx, want[i].rank) << "rank " << r << " seq " << id << " block " << i;
        EXPECT_EQ(c.tpa_idx, me.tpa_idx) << "rank " << r << " seq " << id << " block " << i;
        EXPECT_EQ(got[i].first_pos, want[i].first_pos);
        EXPECT_EQ(got[i].num_tokens, want[i].num_tokens);
        if (got[i].rank == r) {
          ++held;
          slots.insert(got[i].slot);
        }
      }
    }
    EXPECT_EQ(static_cast<std::int64_t>(slots.size()), held) << "rank " << r << ": shared slots";
    EXPECT_EQ(res.used_slots[sz_of(r)], held) << "rank " << r << ": slots not freed";
  }
}

// Runs the script on the reference and on the layout; logits within tolerance, tables as
// recorded. Returns the plan for further checks.
planned_script expect_exact(const model_weights& w, std::string_view layout_text,
                            const migration_script& s, const rank_program_options& options = {}) {
  auto l = layout::parse(layout_text);
  EXPECT_TRUE(l.has_value()) << layout_text;
  auto p = plan(*l, options, s);
  EXPECT_TRUE(p.has_value()) << p.error().to_string();
  if (!l.has_value() || !p.has_value()) {
    return {{}, {}, {}, planner::placement_book(layout{}, options.block_tokens)};
  }
  auto ref = run_reference(w, *p, s.num_seqs);
  EXPECT_TRUE(ref.has_value()) << ref.error().to_string();
  auto got = run_sharded(w, *l, *p, s.num_seqs, options);
  EXPECT_TRUE(got.has_value()) << layout_text << ": " << got.error().to_string();
  if (ref.has_value() && got.has_value()) {
    EXPECT_EQ(got->logits.size(), ref->size());
    for (std::size_t i = 0; i < ref->size() && i < got->logits.size(); ++i) {
      EXPECT_LE(max_abs_diff(got->logits[i], (*ref)[i]), tolerance)
          << layout_text << " forward " << i;
    }
    EXPECT_TRUE(got->ranks_agree) << layout_text;
    expect_tables_follow_record(*l, *p, *got);
  }
  return std::move(p).value();
}

// Blocks on each member of the record: [kvp].
std::vector<std::int64_t> member_counts(const planner::placement_book& book) {
  std::vector<std::int64_t> c(sz_of(book.kvp()), 0);
  for (std::uint64_t id : book.live_ids()) {
    for (const kv_block_ref& b : book.table(id).blocks()) ++c[sz_of(b.rank)];
  }
  return c;
}

// Decode `steps` tokens for each of `seqs` in one batch per step.
void add_decode(migration_script& s, const std::vector<std::vector<std::int32_t>>& tokens,
                const std::vector<std::uint64_t>& seqs, std::int64_t first, std::int64_t steps) {
  for (std::int64_t i = 0; i < steps; ++i) {
    forward_action f;
    for (std::uint64_t q : seqs) f.items.push_back({q, {tokens[q - 1][sz_of(first + i)]}});
    s.actions.emplace_back(std::move(f));
  }
}

class RankMigration : public ::testing::TestWithParam<std::pair<std::string, std::string>> {};

// Three sequences of 40, 21 and 5 tokens, 4 decode steps; then every block of the least loaded
// member moves away (emptying it), 3 decode steps; then blocks of all three sequences, including
// open blocks, move onto the empty member, plus a no-op move; 20 more decode steps cross block
// boundaries, so new blocks open by the rule while moved open blocks keep filling where they are.
TEST_P(RankMigration, DecodeStaysExactAcrossMigrations) {
  const model_weights w = test_support::seeded_weights(GetParam().first);
  std::vector<std::vector<std::int32_t>> tok;
  for (std::uint64_t q = 1; q <= 3; ++q) tok.push_back(random_tokens(80, w.spec.vocab, 10 + q));
  migration_script s;
  s.num_seqs = 3;
  s.actions.emplace_back(forward_action{{{1, {tok[0].begin(), tok[0].begin() + 40}},
                                         {2, {tok[1].begin(), tok[1].begin() + 21}},
                                         {3, {tok[2].begin(), tok[2].begin() + 5}}}});
  add_decode(s, tok, {1, 2, 3}, 45, 4);
  std::int64_t emptied = -1;
  s.actions.emplace_back(migrate_action{[&](const planner::placement_book& book) {
    const auto c = member_counts(book);
    emptied = 0;
    for (std::int64_t j = 1; j < book.kvp(); ++j) {
      if (c[sz_of(j)] > 0 && (c[sz_of(emptied)] == 0 || c[sz_of(j)] < c[sz_of(emptied)])) {
        emptied = j;
      }
    }
    std::vector<block_move> moves;
    for (std::uint64_t id : book.live_ids()) {
      const auto b = book.table(id).blocks();
      for (std::size_t i = 0; i < b.size(); ++i) {
        if (b[i].rank == emptied) {
          moves.push_back({id, static_cast<std::int64_t>(i), (emptied + 1) % book.kvp()});
        }
      }
    }
    EXPECT_FALSE(moves.empty());
    return moves;
  }});
  add_decode(s, tok, {1, 2, 3}, 49, 3);
  s.actions.emplace_back(migrate_action{[&](const planner::placement_book& book) {
    EXPECT_EQ(member_counts(book)[sz_of(emptied)], 0);
    const auto last = [&](std::uint64_t id) {
      return static_cast<std::int64_t>(book.table(id).blocks().size()) - 1;
    };
    return std::vector<block_move>{
        {1, 0, emptied},        // a full block
        {2, last(2), emptied},  // sequence 2's open block
        {3, 0, emptied},        // sequence 3's only (open) block
        {1, last(1), book.table(1).blocks()[sz_of(last(1))].rank},  // already there: no-op
    };
  }});
  add_decode(s, tok, {1, 2, 3}, 52, 20);
  expect_exact(w, GetParam().second, s);
  EXPECT_GE(emptied, 0);
}

INSTANTIATE_TEST_SUITE_P(GqaAndMla, RankMigration,
                         ::testing::Values(std::pair<std::string, std::string>{"tiny-llama",
                                                                               "helix:kvp=4,tpa=2"},
                                           std::pair<std::string, std::string>{
                                               "tiny-deepseek", "helix:kvp=4,tpa=1,tpf=2,ep=2"}),
                         [](const auto& info) {
                           std::string n = info.param.first + "_" + info.param.second;
                           std::replace_if(
                               n.begin(), n.end(), [](char c) { return !std::isalnum(c); }, '_');
                           return n;
                         });

// The planner decides: a long sequence and eight one-block sequences; the short ones on three of
// the four members leave, plan_rebalance (min_blocks_per_rank lowered to fit a tiny model) moves
// blocks until the record is within 10%, and the survivors keep decoding exactly.
TEST(RankMigrationRebalance, PlannerMovesKeepDecodeExact) {
  for (const auto& [model, layout_text] :
       {std::pair<const char*, const char*>{"tiny-llama", "helix:kvp=4,tpa=2"},
        std::pair<const char*, const char*>{"tiny-deepseek", "helix:kvp=4,tpa=1,tpf=2,ep=2"}}) {
    const model_weights w = test_support::seeded_weights(model);
    auto l = layout::parse(layout_text);
    ASSERT_TRUE(l.has_value());
    std::vector<std::vector<std::int32_t>> tok;
    for (std::uint64_t q = 1; q <= 9; ++q) tok.push_back(random_tokens(120, w.spec.vocab, 20 + q));
    migration_script s;
    s.num_seqs = 9;
    forward_action prefill;
    prefill.items.push_back({1, {tok[0].begin(), tok[0].begin() + 96}});
    for (std::uint64_t q = 2; q <= 9; ++q) {
      prefill.items.push_back({q, {tok[q - 1].begin(), tok[q - 1].begin() + 16}});
    }
    // Where the record puts the short sequences (plan() does the same joins and commits).
    planner::placement_book dry(*l, default_block_tokens);
    for (std::uint64_t q = 1; q <= 9; ++q) ASSERT_TRUE(dry.join(q).ok());
    for (const script_item& it : prefill.items) {
      ASSERT_TRUE(dry.commit(it.seq, static_cast<std::int64_t>(it.tokens.size())).ok());
    }
    s.actions.emplace_back(std::move(prefill));
    std::vector<std::uint64_t> stay = {1};
    for (std::uint64_t q = 2; q <= 9; ++q) {
      if (dry.table(q).blocks()[0].rank == 0) {
        stay.push_back(q);
      } else {
        s.actions.emplace_back(close_action{q});
      }
    }
    ASSERT_GE(stay.size(), 2u) << model;
    planner::rebalance_options ro;
    ro.min_blocks_per_rank = 1;
    s.actions.emplace_back(rebalance_action{ro});
    for (std::int64_t i = 0; i < 20; ++i) {
      forward_action f;
      for (std::uint64_t q : stay) f.items.push_back({q, {tok[q - 1][sz_of(96 + i)]}});
      s.actions.emplace_back(std::move(f));
    }
    const planned_script p = expect_exact(w, layout_text, s);
    ASSERT_EQ(p.rebalance_moves.size(), 1u);
    EXPECT_GT(p.rebalance_moves[0], 0u) << model;
    ASSERT_EQ(p.imbalance_after.size(), 1u);
    EXPECT_LE(p.imbalance_after[0], ro.threshold) << model;
  }
}

// Bad moves are refused identically on every rank before anything moves (the harness checks the
// code on every rank and that tables and slots are unchanged); the program then migrates and
// decodes exactly as if they had never been asked.
TEST(RankMigrationErrors, InvalidMovesChangeNothing) {
  const model_weights w = test_support::seeded_weights("tiny-llama");
  std::vector<std::vector<std::int32_t>> tok;
  for (std::uint64_t q = 1; q <= 2; ++q) tok.push_back(random_tokens(60, w.spec.vocab, 30 + q));
  migration_script s;
  s.num_seqs = 2;
  s.actions.emplace_back(forward_action{
      {{1, {tok[0].begin(), tok[0].begin() + 37}}, {2, {tok[1].begin(), tok[1].begin() + 20}}}});
  const auto bad = [&](std::vector<block_move> moves) {
    s.actions.emplace_back(migrate_action{[moves](const planner::placement_book&) { return moves; },
                                          errc::invalid_argument});
  };
  // A valid move first in each list: nothing may move when a later one is bad.
  bad({{1, 0, 1}, {99, 0, 0}});  // unknown sequence
  bad({{1, 0, 1}, {2, 2, 0}});   // block out of range (sequence 2 has 2 blocks)
  bad({{1, 0, 1}, {2, -1, 0}});  // negative block
  bad({{1, 0, 1}, {2, 0, 2}});   // member outside [0, KVP = 2)
  bad({{1, 0, 1}, {2, 0, -1}});  // negative member
  bad({{1, 0, 1}, {1, 0, 0}});   // the same block twice
  bad({{1, 1, 0}, {1, 1, 1}});   // twice, once as a no-op either way
  s.actions.emplace_back(migrate_action{[](const planner::placement_book& book) {
    std::vector<block_move> moves;
    for (std::int64_t i = 0; i < 3; ++i) {
      moves.push_back({1, i, 1 - book.table(1).blocks()[sz_of(i)].rank});
    }
    return moves;
  }});
  s.actions.emplace_back(migrate_action{[](const planner::placement_book&) {
    return std::vector<block_move>{};  // nothing to do: ok
  }});
  for (std::int64_t i = 0; i < 12; ++i) {
    s.actions.emplace_back(
        forward_action{{{1, {tok[0][sz_of(37 + i)]}}, {2, {tok[1][sz_of(20 + i)]}}}});
  }
  expect_exact(w, "helix:kvp=2,tpa=2", s);
}

// A destination member without a free slot fails the migration on every rank (the source ranks
// have room, yet they fail too, and nobody hangs) with nothing moved; decoding continues exactly.
TEST(RankMigrationErrors, FullDestinationFailsOnEveryRank) {
  const model_weights w = test_support::seeded_weights("tiny-llama");
  rank_program_options o;
  o.kv_capacity_tokens = 4 * 16;  // 4 slots per rank
  std::vector<std::vector<std::int32_t>> tok;
  for (std::uint64_t q = 1; q <= 3; ++q) tok.push_back(random_tokens(80, w.spec.vocab, 40 + q));
  migration_script s;
  s.num_seqs = 3;
  // 64 + 30 + 16 tokens: 4 + 2 + 1 blocks over 2 members, 2 + 1 on each plus sequence 3's.
  s.actions.emplace_back(forward_action{{{1, {tok[0].begin(), tok[0].begin() + 64}},
                                         {2, {tok[1].begin(), tok[1].begin() + 30}},
                                         {3, {tok[2].begin(), tok[2].begin() + 16}}}});
  std::int64_t full_member = -1;
  s.actions.emplace_back(migrate_action{
      [&](const planner::placement_book& book) {
        const auto c = member_counts(book);
        EXPECT_EQ(std::max(c[0], c[1]), 4);
        EXPECT_EQ(std::min(c[0], c[1]), 3);
        full_member = c[0] == 4 ? 0 : 1;
        // A block of sequence 1 from the other member onto the full one.
        const auto b = book.table(1).blocks();
        for (std::size_t i = 0; i < b.size(); ++i) {
          if (b[i].rank != full_member) {
            return std::vector<block_move>{{1, static_cast<std::int64_t>(i), full_member}};
          }
        }
        return std::vector<block_move>{};
      },
      errc::resource_exhausted});
  // The open block of sequence 2 keeps filling (no new block: the stores are nearly full).
  for (std::int64_t i = 0; i < 2; ++i) {
    s.actions.emplace_back(forward_action{{{2, {tok[1][sz_of(30 + i)]}}}});
  }
  expect_exact(w, "helix:kvp=2,tpa=2", s, o);
  EXPECT_GE(full_member, 0);
}

}  // namespace
}  // namespace helix::model
