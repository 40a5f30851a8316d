// Planned changes of the workers (engine::add_workers, engine::drain_worker): a join or a leave
// is queued and carried out at a step boundary (no step, restore, migration or rebuild in
// flight), with the machinery of recovery (engine_recovery.cpp) but nothing lost:
//   * join: the source adds members as standbys; the layout grows to the largest member count
//     of its family with the same TPA size; every old KVP member keeps its index and its blocks,
//     column for column, and the new indices' ranks start empty; once restored, one rebalancing
//     pass (no minimum load) moves blocks onto the new members over the data plane;
//   * leave: the layout shrinks to the remaining members (the same TPA size where one is valid);
//     the leaver and any member left without a rank donate their blocks to the least-loaded new
//     owners (column for column), then the leaver ends; with several TPA columns, a member
//     whose other holders keep serving cannot donate and its blocks are rebuilt instead. A leave
//     after which the running requests would not fit is refused, or waits with admission paused
//     (engine_config::elastic_leave).
// A change that needs another TPA size (the tp family always does) re-slices the KV by head: every
// block's heads move from the old holders to the new columns that hold them (model/kv_reslice.hpp;
// every old member that leaves the layout sends its heads as a donor). Each change is an epoch in
// engine_stats::epochs, with the KV it moved and the pause it caused.
// The policy (consider_growth) queues joins of members that joined on their own (a listening
// source's late joins) when the cost model predicts a faster step for the load, or when the
// running requests use most of a member's KV and the larger layout holds them with room to
// spare (planner/elastic_policy.hpp); the decision must hold 2 s, 5 s after the last change.
#include <algorithm>

#include "actors/engine_state.hpp"
#include "core/log.hpp"
#include "planner/elastic_policy.hpp"
#include "planner/recovery_plan.hpp"

namespace helix::actors::engine_impl {
namespace {

void answer(planned_change& c, const status& st) {
  if (c.promise.pending()) c.promise.deliver(to_wire(st));
}

// A join's layout: the largest member count up to `members`, above the current one, with a valid
// layout of the family that keeps the TPA size (every old member keeps its blocks); else one
// that changes it (the KV is re-sliced by head); `current` when no larger count is valid.
layout layout_for_growth(const layout& current, std::int64_t members, const model_spec& spec) {
  for (const bool same_tpa : {true, false}) {
    for (std::int64_t m = members; m > current.num_ranks; --m) {
      auto g = layout_of(current, m, spec, true);
      if (!g) continue;
      if (same_tpa && g->tpa != current.tpa) continue;
      return *g;
    }
  }
  return current;
}

std::int64_t admission_of(const engine_state& s) {
  return s.setup.admission_blocks_per_worker > 0 ? s.setup.admission_blocks_per_worker
                                                 : s.setup.capacity_blocks_per_worker;
}

// What the running requests would reserve per member on `grid`.
std::int64_t reserved_on(const engine_state& s, const layout& grid) {
  std::int64_t reserved = 0;
  for (const request_state& r : s.active) {
    reserved += blocks_reserved_per_member(
        static_cast<std::int64_t>(r.req.prompt.size()) + r.req.synthetic_tokens, r.req.max_tokens,
        s.setup.config.block_tokens, grid.kvp);
  }
  return reserved;
}

void finish_change(self_ptr self) {
  engine_state& s = self->state;
  epoch_stats e = std::move(s.change_epoch);
  e.layout_after = s.setup.grid.to_string();
  e.blocks_moved = s.change_kv.blocks_moved;
  e.blocks_rebuilt = s.change_kv.blocks_rebuilt;
  e.kv_bytes_moved = kv_bytes_moved(s, e.blocks_moved);
  e.pause_ms = ms_between(s.change_started, std::chrono::steady_clock::now());
  if (s.change_kv.mode == "full_replay") {
    e.note += fmt::format("{}the running requests replay ({} tokens)", e.note.empty() ? "" : "; ",
                          s.change_kv.tokens_replayed);
  } else if (const auto old = layout::parse(s.reslice_from); old) {
    e.note += old->tpa != s.setup.grid.tpa
                  ? fmt::format("{}KV re-sliced by head (TPA {} -> {})", e.note.empty() ? "" : "; ",
                                old->tpa, s.setup.grid.tpa)
                  : fmt::format("{}KV re-sliced from every column's holder (TPA {})",
                                e.note.empty() ? "" : "; ", old->tpa);
  }
  logger()->info("engine: {} done: {} -> {}, {} KV blocks moved ({} bytes), paused {:.1f} ms{}{}",
                 e.reason, e.layout_before, e.layout_after, e.blocks_moved, e.kv_bytes_moved,
                 e.pause_ms, e.note.empty() ? "" : "; ", e.note);
  s.stats.epochs.push_back(std::move(e));
  s.changing = false;
  s.change_migration = 0;
  answer(s.change, ok_status());
  publish(s);
  start_step(self);
}

// Relayouts the workers for the change `c` (already the running one) onto `grid`: survivors
// keep serving, `standby` members stand by, `donors` hand their blocks over, `leaving` end.
void relayout_for_change(self_ptr self, const layout& before, const layout& grid,
                         const std::vector<std::int64_t>& survivors,
                         const std::vector<std::int64_t>& standby,
                         const std::vector<std::int64_t>& donors,
                         const std::vector<std::int64_t>& leaving) {
  engine_state& s = self->state;
  ++s.epoch;
  ++s.generation;
  s.ops_pending.clear();
  s.restore_op = -1;  // no step until the workers are restored
  s.change_kv = recovery_stats{};
  s.change_kv.layout_before = before.to_string();
  s.change_kv.layout_after = grid.to_string();
  const std::vector<caf::actor> old_workers = s.workers;
  auto fresh = s.setup.relayout(grid, survivors, standby, donors, leaving);
  if (!fresh) {
    // The source may have stopped old workers already: from here on it is a failure.
    const status why = fresh.error().with_context(
        fmt::format("engine: {} to {}", s.change_epoch.reason, grid.to_string()));
    abandon_change(self, why);
    s.restore_op = 0;
    recover(self, 0, why);
    return;
  }
  for (const caf::actor& w : old_workers) {
    self->demonitor(w);
    self->send_exit(w, caf::exit_reason::user_shutdown);
  }
  s.change_kv.mode = "lost_blocks";
  install_and_restore(self, before, grid, std::move(*fresh), survivors, donors, "");
}

// Starts `c` (popped from the queue); false when it ended at once (refused, nothing to do) or
// waits (a leave waiting for room, put back at the front).
bool start_change(self_ptr self, planned_change& c) {
  engine_state& s = self->state;
  // No step runs from here (adding members blocks too: spawned processes join meanwhile).
  const auto started = std::chrono::steady_clock::now();
  const layout before = s.setup.grid;
  const std::int64_t n = before.num_ranks;
  if (s.setup.prune_standbys) s.setup.prune_standbys();  // plan with live standbys only
  const std::int64_t standbys = s.setup.standbys ? s.setup.standbys() : 0;
  if (!s.setup.relayout) {
    answer(c, failed_precondition("this engine's workers cannot change"));
    return false;
  }
  std::vector<std::int64_t> alive;
  std::vector<std::int64_t> leaving;
  expected<layout> grid = before;
  epoch_stats e;
  e.layout_before = before.to_string();
  if (c.join) {
    e.reason = "join";
    const status added = c.count == 0          ? ok_status()  // the policy: members joined
                         : s.setup.add_members ? s.setup.add_members(before, c.count)
                                               : failed_precondition("the workers cannot grow");
    if (!added.ok()) {
      answer(c, added.with_context(fmt::format("adding {} workers", c.count)));
      return false;
    }
    const std::int64_t members = n + (s.setup.standbys ? s.setup.standbys() : 0);
    grid = layout_for_growth(before, members, s.setup.spec);
    if (*grid == before) {
      logger()->info("engine: {} members, no larger {} layout than {}: the new ones stand by",
                     members, layout_family_name(before.family), before.to_string());
      answer(c, ok_status());
      return false;
    }
    for (std::int64_t r = 0; r < n; ++r) alive.push_back(r);
    e.note = c.count > 0 ? fmt::format("{} workers joined", c.count) : c.note;
    if (members > grid->num_ranks) {
      e.note +=
          fmt::format("; {} stand by (no valid layout for {})", members - grid->num_ranks, members);
    }
  } else {
    e.reason = "leave";
    std::int64_t rank = c.rank < 0 ? n - 1 : c.rank;
    if (c.leaver) {
      const auto it = std::find_if(s.workers.begin(), s.workers.end(),
                                   [&](const caf::actor& w) { return w.address() == c.leaver; });
      if (it == s.workers.end()) {  // a relayout replaced it: asked again by then, or gone
        answer(c, ok_status());
        return false;
      }
      rank = it - s.workers.begin();
    }
    if (rank >= n) {
      answer(c, invalid_argument("drain_worker: rank {} is not in layout {} ({} ranks)", rank,
                                 before.to_string(), n));
      return false;
    }
    if (n + standbys <= 1) {
      answer(c, failed_precondition("drain_worker: worker {} is the last one", rank));
      return false;
    }
    grid = layout_for_members(before, n - 1 + standbys, s.setup.spec, true);
    if (!grid) {
      answer(c, grid.error().with_context(fmt::format("drain_worker {}", rank)));
      return false;
    }
    const std::int64_t need = reserved_on(s, *grid);
    const std::int64_t admission = admission_of(s);
    if (need > admission) {
      const status refused = resource_exhausted(
          "drain_worker: leave of worker {} refused: the running requests would need {} KV blocks "
          "per worker on {}, more than admission allows ({})",
          rank, need, grid->to_string(), admission);
      if (s.setup.config.elastic_leave == "wait" && std::chrono::steady_clock::now() < c.deadline) {
        if (!s.admission_paused) logger()->info("engine: {}; waiting for room", refused.message());
        s.admission_paused = true;
        s.changes.push_front(std::move(c));
        return false;
      }
      s.admission_paused = false;
      logger()->warn("engine: {}", refused.message());
      answer(c, refused);
      return false;
    }
    s.admission_paused = false;
    for (std::int64_t r = 0; r < n; ++r) {
      if (r != rank) alive.push_back(r);
    }
    leaving = {rank};
    e.note = fmt::format("worker {} left", rank);
  }
  std::vector<std::int64_t> survivors;
  if (c.join && grid->tpa == before.tpa) {
    // Every old member keeps its place, column for column; the new members fill the new KVP
    // indices (-1: a fresh member takes that rank).
    survivors.assign(static_cast<std::size_t>(grid->num_ranks), -1);
    for (std::int64_t k = 0; k < before.kvp; ++k) {
      for (std::int64_t t = 0; t < before.tpa; ++t) {
        survivors[static_cast<std::size_t>(grid->attention_rank(t, k))] =
            before.attention_rank(t, k);
      }
    }
    while (!survivors.empty() && survivors.back() < 0) survivors.pop_back();
  } else {
    survivors = planner::order_survivors(before, *grid, alive);
  }
  std::vector<std::int64_t> standby;
  for (std::int64_t r : alive) {
    if (std::find(survivors.begin(), survivors.end(), r) == survivors.end()) standby.push_back(r);
  }
  standby.insert(standby.end(), leaving.begin(), leaving.end());
  // Every member left without a rank (all its columns' holders) sends its blocks on. A member
  // that is neither kept nor left whole without a rank (a column-mate keeps serving) cannot
  // donate whole: the change re-slices then, every holder sending its columns' pages.
  std::vector<std::int64_t> donors = donor_ranks(before, *grid, standby);
  s.change_reslice =
      grid->tpa != before.tpa || !whole_members_cover(before, *grid, survivors, donors);
  if (s.change_reslice) donors = standby;
  logger()->info("engine: {}: {} -> {} ({} survivors, {} donors)", e.reason, before.to_string(),
                 grid->to_string(), survivors.size(), donors.size());
  s.changing = true;
  s.last_change = std::chrono::steady_clock::now();
  s.change = std::move(c);
  s.change_epoch = std::move(e);
  s.change_started = started;
  s.change_migration = 0;
  relayout_for_change(self, before, *grid, survivors, standby, donors, leaving);
  return true;
}

}  // namespace

void queue_change(self_ptr self, planned_change c) {
  engine_state& s = self->state;
  if (!s.broken.ok()) {
    answer(c, failed_precondition("the engine has failed: {}", s.broken.message()));
    return;
  }
  if (s.draining) {
    answer(c, unavailable("the engine is shutting down"));
    return;
  }
  s.changes.push_back(std::move(c));
  start_step(self);
}

bool run_change(self_ptr self) {
  engine_state& s = self->state;
  if (s.changing) return true;
  while (!s.changes.empty()) {
    if (s.busy || s.restore_op != 0 || !s.migrations_pending.empty() || s.rebuilding ||
        !s.broken.ok()) {
      return false;
    }
    planned_change c = std::move(s.changes.front());
    s.changes.pop_front();
    if (s.draining) {
      answer(c, unavailable("the engine is shutting down"));
      continue;
    }
    if (start_change(self, c)) return true;
    if (s.admission_paused) return false;  // a leave waits for room: steps go on
  }
  return false;
}

void change_restored(self_ptr self) {
  engine_state& s = self->state;
  if (!s.change.join || s.change_kv.mode == "full_replay") {
    finish_change(self);
    return;
  }
  // Spread the blocks over the new members, whatever the configured minimum load.
  self->request(s.planner, caf::infinite, rebal_atom::value, s.setup.config.rebalance_threshold,
                std::int64_t{0})
      .then(
          [self, gen = s.generation](std::vector<move_item>& moves, double imbalance, double) {
            engine_state& st = self->state;
            if (st.generation != gen || !st.changing) return;
            st.stats.kv_imbalance = imbalance;
            if (moves.empty()) {
              finish_change(self);
              return;
            }
            ++st.epoch;
            migrate_msg m{st.epoch, st.next_op++, std::move(moves)};
            st.stats.migrations += static_cast<std::int64_t>(m.moves.size());
            st.change_kv.blocks_moved += static_cast<std::int64_t>(m.moves.size());
            for (const caf::actor& w : st.workers) self->send(w, m);
            op_sent(self, m.op_id);
            st.migrations_pending.insert(m.op_id);
            st.change_migration = m.op_id;
          },
          [self, gen = s.generation](caf::error& err) {
            if (self->state.generation != gen) return;
            fail_everything(self, internal_error("engine: planner: {}", caf::to_string(err)));
            answer_drains(self->state);
          });
}

void migration_done(self_ptr self, std::int64_t op) {
  engine_state& s = self->state;
  if (s.changing && op == s.change_migration) {
    finish_change(self);
    return;
  }
  if (const auto it = s.migration_epochs.find(op); it != s.migration_epochs.end()) {
    if (it->second.first < s.stats.epochs.size()) {
      s.stats.epochs[it->second.first].pause_ms =
          ms_between(it->second.second, std::chrono::steady_clock::now());
    }
    s.migration_epochs.erase(it);
  }
  if (!s.busy && (!s.changes.empty())) start_step(self);
}

void consider_growth(self_ptr self) {
  engine_state& s = self->state;
  constexpr auto hold = std::chrono::seconds(2);
  constexpr auto cooldown = std::chrono::seconds(5);
  if (s.setup.config.elastic_policy != "auto" || !s.unasked_join || s.changing ||
      !s.changes.empty() || !s.setup.standbys || !s.setup.predict_step_s) {
    return;
  }
  const auto now = std::chrono::steady_clock::now();
  if (now - s.policy_checked < std::chrono::milliseconds(100)) return;
  s.policy_checked = now;
  const layout before = s.setup.grid;
  const std::int64_t members = before.num_ranks + s.setup.standbys();
  const layout after = layout_for_growth(before, members, s.setup.spec);
  // The load: the running requests, their mean length so far and the KV they reserve.
  std::int64_t tokens = 0;
  for (const request_state& r : s.active) {
    tokens += static_cast<std::int64_t>(r.req.prompt.size()) + r.req.synthetic_tokens + r.generated;
  }
  const auto batch = static_cast<std::int64_t>(s.active.size());
  if (after == before || batch == 0) {
    s.policy_since = {};
    return;
  }
  planner::growth_inputs in;
  in.layout_now = before.to_string();
  in.layout_then = after.to_string();
  in.new_members = after.num_ranks - before.num_ranks;
  in.requests = batch;
  in.context = tokens / batch;
  in.step_now_s = s.setup.predict_step_s(before, batch, in.context);
  in.step_then_s = s.setup.predict_step_s(after, batch, in.context);
  const auto admission = static_cast<double>(std::max<std::int64_t>(1, admission_of(s)));
  in.kv_use_now = static_cast<double>(reserved_on(s, before)) / admission;
  in.kv_use_then = static_cast<double>(reserved_on(s, after)) / admission;
  const planner::growth_decision d = planner::decide_growth(in);
  if (!d.grow) {
    if (s.policy_since != std::chrono::steady_clock::time_point{}) {
      logger()->info("engine: policy: {} -> {}: {}", in.layout_now, in.layout_then, d.why);
    }
    s.policy_since = {};
    return;
  }
  if (s.policy_since == std::chrono::steady_clock::time_point{}) s.policy_since = now;
  if (now - s.policy_since < hold || now - s.last_change < cooldown) return;
  planned_change c;
  c.join = true;
  c.count = 0;
  c.deadline = now + std::chrono::minutes(2);
  c.note = "policy: " + d.why;
  logger()->info("engine: {} -> {}: {}", in.layout_now, in.layout_then, c.note);
  s.unasked_join = false;
  s.policy_since = {};
  s.changes.push_back(std::move(c));
}

void abandon_change(self_ptr self, const status& error) {
  engine_state& s = self->state;
  if (!s.changing) return;
  logger()->warn("engine: {} abandoned: {}", s.change_epoch.reason, error);
  s.changing = false;
  s.change_migration = 0;
  answer(s.change, error);
}

}  // namespace helix::actors::engine_impl
