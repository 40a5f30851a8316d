// The planner actor: the engine's placement record (planner::placement_book) behind messages,
// and the rebalancing decisions. Pure policy lives in planner/; this file only sequences it.
#include <set>

#include "actors/runtime.hpp"
#include "planner/placement_book.hpp"
#include "planner/rebalance.hpp"
#include "planner/recovery_plan.hpp"

namespace helix::actors {
namespace {

struct planner_state {
  planner::placement_book book;
  std::set<std::uint64_t> live;  // ordered: every pass over the requests is deterministic
  double threshold = 0.10;
  std::int64_t min_blocks = 64;
  std::int64_t kvp = 1;
};

caf::error to_caf(const status& st) {
  return caf::make_error(caf::sec::runtime_error, st.to_string());
}

// Blocks held by each KVP member over the live requests (a block lives on the same member in
// every column).
std::vector<std::int64_t> member_blocks(const planner_state& s) {
  std::vector<std::int64_t> counts(static_cast<std::size_t>(s.kvp), 0);
  for (std::uint64_t id : s.live) {
    for (const kv_block_ref& b : s.book.table(id).blocks()) {
      ++counts[static_cast<std::size_t>(b.rank)];
    }
  }
  return counts;
}

double imbalance(const std::vector<std::int64_t>& counts) {
  std::int64_t total = 0;
  std::int64_t max = 0;
  for (std::int64_t c : counts) {
    total += c;
    max = std::max(max, c);
  }
  if (total == 0) return 0.0;
  const double mean = static_cast<double>(total) / static_cast<double>(counts.size());
  return (static_cast<double>(max) - mean) / mean;
}

// Decides, records in the placement (the workers apply the same moves before the next step:
// their mailboxes keep the order), and reports the column's state afterwards.
caf::message rebalance(const std::shared_ptr<planner_state>& st, double threshold,
                       std::int64_t min_blocks) {
  planner::rebalance_options o;
  o.threshold = threshold;
  o.min_blocks_per_rank = min_blocks;
  std::vector<move_item> moves;
  auto plan = planner::plan_rebalance(st->book, o);
  if (plan) {
    for (const planner::planned_move& mv : *plan) {
      if (!st->book.relocate(mv.request_id, mv.block_idx, mv.to_kvp).ok()) break;
      moves.push_back({mv.request_id, mv.block_idx, mv.to_kvp});
    }
  }
  const std::vector<std::int64_t> counts = member_blocks(*st);
  std::int64_t total = 0;
  for (std::int64_t c : counts) total += c;
  const double mean = static_cast<double>(total) / static_cast<double>(counts.size());
  return caf::make_message(std::move(moves), imbalance(counts), mean);
}

caf::behavior planner_behavior(std::shared_ptr<planner_state> st) {
  return {
      [=](join_atom, std::uint64_t seq) -> caf::result<void> {
        const status s = st->book.join(seq);
        if (!s.ok()) return to_caf(s);
        st->live.insert(seq);
        return caf::unit;
      },
      [=](leave_atom, std::uint64_t seq) -> caf::result<void> {
        const status s = st->book.leave(seq);
        if (!s.ok()) return to_caf(s);
        st->live.erase(seq);
        return caf::unit;
      },
      [=](plan_atom, const std::vector<std::uint64_t>& seqs,
          const std::vector<std::int64_t>& counts) -> caf::result<std::vector<std::int64_t>> {
        std::vector<std::int64_t> owners;
        for (std::size_t i = 0; i < seqs.size() && i < counts.size(); ++i) {
          const status s = st->book.plan(seqs[i], counts[i], owners);
          if (!s.ok()) return to_caf(s);
        }
        return owners;
      },
      [=](commit_atom, const std::vector<std::uint64_t>& seqs,
          const std::vector<std::int64_t>& counts) -> caf::result<void> {
        for (std::size_t i = 0; i < seqs.size() && i < counts.size(); ++i) {
          const status s = st->book.commit(seqs[i], counts[i]);
          if (!s.ok()) return to_caf(s);
        }
        st->book.tick();
        return caf::unit;
      },
      [=](rebal_atom) -> caf::message { return rebalance(st, st->threshold, st->min_blocks); },
      [=](rebal_atom, double threshold, std::int64_t min_blocks) -> caf::message {
        return rebalance(st, threshold, min_blocks);
      },
      [=](placement_atom, const std::string& after_text, const std::vector<std::int64_t>& kept,
          const std::vector<std::int64_t>& donated) -> caf::result<caf::message> {
        auto after = layout::parse(after_text);
        if (!after) return to_caf(after.error());
        std::vector<restore_seq> out;
        for (planner::recovered_request& r :
             planner::plan_recovery(st->book, *after, kept, donated)) {
          restore_seq e;
          e.seq = r.id;
          e.offset = r.offset;
          e.num_tokens = r.num_tokens;
          e.owner_kvp = std::move(r.owner_kvp);
          e.kept_kvp = std::move(r.kept_kvp);
          e.donor = std::move(r.donor);
          out.push_back(std::move(e));
        }
        return caf::make_message(std::move(out), st->book.step());
      },
  };
}

}  // namespace

caf::behavior planner_actor(caf::event_based_actor* self, layout l, std::int64_t block_tokens,
                            double rebalance_threshold, std::int64_t rebalance_min_blocks) {
  (void)self;
  return planner_behavior(
      std::make_shared<planner_state>(planner_state{planner::placement_book(l, block_tokens),
                                                    {},
                                                    rebalance_threshold,
                                                    rebalance_min_blocks,
                                                    l.kvp}));
}

caf::behavior planner_actor_recovered(caf::event_based_actor* self, layout l,
                                      std::int64_t block_tokens, double rebalance_threshold,
                                      std::int64_t rebalance_min_blocks,
                                      std::vector<restore_seq> restored, std::int64_t step) {
  std::vector<planner::recovered_request> requests;
  for (restore_seq& e : restored) {
    requests.push_back({e.seq, e.offset, e.num_tokens, std::move(e.owner_kvp), {}});
  }
  auto book = planner::recovered_book(l, block_tokens, requests, step);
  if (!book) {
    // The engine computed these from a record of the same shape: a bug, reported on every call.
    self->quit(caf::make_error(caf::sec::runtime_error, book.error().to_string()));
    return {};
  }
  auto st = std::make_shared<planner_state>(
      planner_state{std::move(*book), {}, rebalance_threshold, rebalance_min_blocks, l.kvp});
  for (const planner::recovered_request& r : requests) st->live.insert(r.id);
  return planner_behavior(st);
}

}  // namespace helix::actors
