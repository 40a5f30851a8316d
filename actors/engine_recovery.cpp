// Recovery from a worker failure (engine_config::recovery): who is gone, the layout of the members
// that remain, the workers rebuilt on it (worker_source::relayout), then the KV that is gone:
//   * lost blocks only: the old placement record says where every block lived; survivors keep
//     theirs (their computes carried the KV over), KVP members whose holders were all left
//     without a rank donate theirs (column for column), every other block gets an owner on the
//     least-loaded member
//     (planner/recovery_plan.hpp); each worker restores its tables (restore_msg), receiving the
//     donated blocks and refilling synthetic positions, and the other lost positions are
//     computed again by rewrite items, in position order, before the requests go on;
//   * full replay: every running request prefills its prompt and generated tokens again.
// No step runs until every worker (and donor) answered the restore_msg; a lost-blocks restore
// that fails (a survivor or donor lost its KV, no room, a donor silent) falls back to the full
// replay. Planned joins and leaves (engine_elastic.cpp) share install_and_restore and the restore.
#include <algorithm>

#include "actors/engine_state.hpp"
#include "core/checked_math.hpp"
#include "core/log.hpp"
#include "model/kv_reslice.hpp"
#include "planner/recovery_plan.hpp"

namespace helix::actors::engine_impl {

expected<layout> layout_of(const layout& current, std::int64_t members, const model_spec& spec,
                           bool keep_tpa) {
  const layout_family family = current.family;
  auto g = default_layout(family, members, spec);
  if (g && keep_tpa && g->tpa != current.tpa && members % current.tpa == 0 &&
      family != layout_family::tp) {
    layout same = *g;
    same.tpa = current.tpa;
    same.kvp = members / current.tpa;
    if (family == layout_family::medha) same.tpf = same.tpa;
    if (validate(same, spec).ok()) return same;
  }
  return g;
}

// The layout in use when enough members remain (standbys took the free ranks); else the largest
// member count up to `members` with a valid layout of the same family for the model. With
// `keep_tpa` a layout with the current TPA size is preferred, since only then can KVP members
// keep their blocks.
expected<layout> layout_for_members(const layout& current, std::int64_t members,
                                    const model_spec& spec, bool keep_tpa) {
  if (members >= current.num_ranks) return current;
  status last = failed_precondition("no members remain");
  for (std::int64_t m = members; m >= 1; --m) {
    auto g = layout_of(current, m, spec, keep_tpa);
    if (g) return *g;
    last = g.error();
  }
  return last;
}

std::vector<std::int64_t> donor_ranks(const layout& before, const layout& after,
                                      const std::vector<std::int64_t>& standby) {
  std::vector<std::int64_t> out;
  if (before.tpa != after.tpa) return standby;  // a re-slice: every holder sends its heads
  const auto idle = [&](std::int64_t r) {
    return std::find(standby.begin(), standby.end(), r) != standby.end();
  };
  for (std::int64_t k = 0; k < before.kvp; ++k) {
    std::vector<std::int64_t> holders;
    for (std::int64_t c = 0; c < before.tpa; ++c) holders.push_back(before.attention_rank(c, k));
    if (std::all_of(holders.begin(), holders.end(), idle)) {
      out.insert(out.end(), holders.begin(), holders.end());
    }
  }
  return out;
}

bool whole_members_cover(const layout& before, const layout& after,
                         const std::vector<std::int64_t>& survivors,
                         const std::vector<std::int64_t>& donors) {
  if (before.tpa != after.tpa) return false;
  auto kept = planner::kept_members(before, after, survivors);
  if (!kept) return false;
  for (const std::int64_t d : donors) {
    (*kept)[static_cast<std::size_t>(before.attention_coords(d).kvp_idx)] = 0;
  }
  return std::none_of(kept->begin(), kept->end(), [](std::int64_t k) { return k < 0; });
}

recovery_stats& kv_record(engine_state& s) {
  return s.changing ? s.change_kv : s.stats.recoveries.back();
}

std::int64_t kv_bytes_moved(const engine_state& s, std::int64_t blocks_moved) {
  const std::int64_t whole = blocks_moved - s.reslice_blocks;  // whole blocks (migrations)
  return s.reslice_bytes + (s.setup.block_bytes ? whole * s.setup.block_bytes(s.setup.grid) : 0);
}

namespace {

// The bytes a re-slice's head pieces carry from one member to another (a member's pieces for
// itself are copies): what the workers will plan from the same restore.
std::int64_t resliced_bytes(const engine_state& s, const std::vector<restore_seq>& seqs) {
  const auto before = layout::parse(s.reslice_from);
  if (!before) return 0;
  std::vector<model::restored_sequence> restored;
  for (const restore_seq& r : seqs) {
    restored.push_back({r.seq, r.num_tokens, r.owner_kvp, r.kept_kvp, r.synthetic_tokens,
                        r.synthetic_seed, r.donor});
  }
  const auto pieces = model::reslice::plan(s.setup.spec, s.setup.grid,
                                           model::kv_reslice{*before, s.reslice_holders}, restored);
  if (!pieces) return 0;
  const model_spec& m = s.setup.spec;
  const std::int64_t per_head = s.setup.config.block_tokens * m.num_layers *
                                (m.is_mla() ? m.kv_key_dim() : 2 * m.head_dim) *
                                static_cast<std::int64_t>(dtype_bytes(s.setup.config.kv_type));
  std::int64_t bytes = 0;
  for (const model::reslice::piece& p : *pieces) {
    if (p.src != p.dst) bytes += p.heads * per_head;
  }
  return bytes;
}

// What the running relayout is, for the log.
std::string relayout_name(const engine_state& s) {
  if (s.changing) return s.change.join ? "join" : "leave";
  return fmt::format("recovery from worker {}", s.stats.recoveries.back().rank);
}

// Stops the donors (they stand by from then on).
void stop_donors(self_ptr self) {
  for (const caf::actor& d : self->state.donors)
    self->send_exit(d, caf::exit_reason::user_shutdown);
  self->state.donors.clear();
}

// Sends every worker the sequences as they are now (empty: a full replay, which frees whatever
// KV the workers carried over), and the donors when they hand blocks over; no step runs until
// all answered.
void send_restore(self_ptr self, std::vector<restore_seq> seqs, std::uint64_t next_seq) {
  engine_state& s = self->state;
  const bool handoff = !s.donors.empty() && !seqs.empty();
  if (!handoff) stop_donors(self);
  ++s.epoch;
  restore_msg m{s.epoch, s.next_op++, std::move(seqs), next_seq, handoff, {}, {}};
  if (!m.seqs.empty()) {
    m.reslice_from = s.reslice_from;
    m.reslice_holders = s.reslice_holders;
  }
  s.restore_op = m.op_id;
  s.restore_has_seqs = !m.seqs.empty();
  for (const caf::actor& w : s.workers) self->send(w, m);
  for (const caf::actor& d : s.donors) self->send(d, m);
  op_sent(self, m.op_id, s.donors.size());
}

// Full replay: a fresh placement record, and every running request replays its prompt and
// generated tokens ahead of the queue, in admission order.
void replay_everything(self_ptr self, const std::string& reason) {
  engine_state& s = self->state;
  recovery_stats& rec = kv_record(s);
  rec.mode = "full_replay";
  rec.requests_replayed = 0;
  rec.tokens_replayed = 0;
  rec.blocks_kept = 0;
  rec.blocks_moved = 0;
  rec.blocks_rebuilt = 0;
  s.reslice_from.clear();  // nothing moves: the restore frees what the workers carried
  s.reslice_holders.clear();
  s.reslice_bytes = 0;
  s.reslice_blocks = 0;
  if (s.setup.config.recovery == "lost_blocks") {
    logger()->warn("engine: full replay instead of rebuilding lost blocks: {}", reason);
  }
  const engine_config& c = s.setup.config;
  s.planner = self->spawn(planner_actor, s.setup.grid, c.block_tokens, c.rebalance_threshold,
                          c.rebalance_min_blocks);
  s.next_seq = 1;
  s.reserved_per_member = 0;
  send_restore(self, {}, s.next_seq);
  for (auto it = s.active.rbegin(); it != s.active.rend(); ++it) {
    request_state& r = *it;
    r.seq = 0;
    r.prefilled = 0;
    r.replay.clear();
    r.lost_runs.clear();
    if (r.generated > 0) {
      r.replay = r.req.prompt;
      r.replay.insert(r.replay.end(), r.outputs.begin(), r.outputs.end() - 1);
    }
    r.synthetic_pending = r.req.synthetic_tokens > 0;
    r.rebuilding = true;
    ++rec.requests_replayed;
    const std::int64_t positions =
        static_cast<std::int64_t>(feed(r).size()) + r.req.synthetic_tokens;
    rec.tokens_replayed += positions;
    rec.blocks_rebuilt += ceil_div(positions, c.block_tokens);
    s.queue.push_front(std::move(r));
  }
  s.active.clear();
  for (request_state& r : s.queue) {
    r.reserved = blocks_reserved_per_member(
        static_cast<std::int64_t>(r.req.prompt.size()) + r.req.synthetic_tokens, r.req.max_tokens,
        c.block_tokens, s.setup.grid.kvp);
  }
  s.rebuilding = rec.requests_replayed > 0;
  s.rebuild_started = std::chrono::steady_clock::now();
  logger()->log(s.changing ? spdlog::level::info : spdlog::level::warn,
                "engine: {}: {} -> {}, {} requests replay {} tokens", relayout_name(s),
                rec.layout_before, rec.layout_after, rec.requests_replayed, rec.tokens_replayed);
  publish(s);
}

// Lost blocks only, once the old placement record described every live sequence under the new
// layout (`seqs`, its step clock `step`): the new record, the workers' restore, and each request's
// lost positions to compute again. Falls back to a full replay when the running requests no
// longer fit the new layout's KV.
void rebuild_lost_blocks(self_ptr self, std::vector<restore_seq> seqs, std::int64_t step) {
  engine_state& s = self->state;
  const engine_config& c = s.setup.config;
  const std::int64_t bt = c.block_tokens;
  const std::int64_t admission = s.setup.admission_blocks_per_worker > 0
                                     ? s.setup.admission_blocks_per_worker
                                     : s.setup.capacity_blocks_per_worker;
  std::int64_t reserved = 0;
  for (const request_state& r : s.active) {
    reserved += blocks_reserved_per_member(
        static_cast<std::int64_t>(r.req.prompt.size()) + r.req.synthetic_tokens, r.req.max_tokens,
        bt, s.setup.grid.kvp);
  }
  if (reserved > admission) {
    replay_everything(self, fmt::format("the running requests need {} KV blocks per worker on {}, "
                                        "more than admission allows ({})",
                                        reserved, s.setup.grid.to_string(), admission));
    return;
  }
  std::map<std::uint64_t, restore_seq*> by_seq;
  for (restore_seq& e : seqs) by_seq[e.seq] = &e;
  for (const request_state& r : s.active) {
    if (by_seq.count(r.seq) == 0) {
      replay_everything(self,
                        fmt::format("request {} is not in the placement record", r.req.request_id));
      return;
    }
  }
  recovery_stats& rec = kv_record(s);
  rec.mode = "lost_blocks";
  std::vector<restore_seq> kept_seqs;
  for (request_state& r : s.active) {
    restore_seq& e = *by_seq[r.seq];
    const std::int64_t synth = r.synthetic_pending ? 0 : r.req.synthetic_tokens;
    e.synthetic_tokens = std::min(synth, e.num_tokens);
    e.synthetic_seed = r.req.synthetic_seed;
    r.lost_runs.clear();
    for (std::size_t b = 0; b < e.kept_kvp.size(); ++b) {
      const std::int64_t first = static_cast<std::int64_t>(b) * bt;
      const std::int64_t end = std::min(first + bt, e.num_tokens);
      if (e.kept_kvp[b] >= 0) {
        ++rec.blocks_kept;
        continue;
      }
      if (!e.donor.empty() && e.donor[b] >= 0) {
        ++rec.blocks_moved;
        continue;
      }
      ++rec.blocks_rebuilt;
      rec.tokens_replayed += end - first;
      const std::int64_t from = std::max(first, synth);
      if (from >= end) continue;
      if (!r.lost_runs.empty() && r.lost_runs.back().second == from) {
        r.lost_runs.back().second = end;
      } else {
        r.lost_runs.emplace_back(from, end);
      }
    }
    r.reserved = blocks_reserved_per_member(
        static_cast<std::int64_t>(r.req.prompt.size()) + r.req.synthetic_tokens, r.req.max_tokens,
        bt, s.setup.grid.kvp);
    r.rebuilding = !r.lost_runs.empty();
    bool rebuilt = false;  // some block neither kept nor moved (synthetic ones are refilled)
    for (std::size_t b = 0; b < e.kept_kvp.size(); ++b) {
      rebuilt = rebuilt || (e.kept_kvp[b] < 0 && (e.donor.empty() || e.donor[b] < 0));
    }
    if (r.rebuilding || rebuilt) ++rec.requests_replayed;
    kept_seqs.push_back(std::move(e));
  }
  s.reserved_per_member = reserved;
  for (request_state& r : s.queue) {  // admission checks them against the new KVP size
    r.reserved = blocks_reserved_per_member(
        static_cast<std::int64_t>(r.req.prompt.size()) + r.req.synthetic_tokens, r.req.max_tokens,
        bt, s.setup.grid.kvp);
  }
  s.reslice_bytes = s.reslice_from.empty() ? 0 : resliced_bytes(s, kept_seqs);
  s.reslice_blocks = s.reslice_from.empty() ? 0 : rec.blocks_moved;
  s.planner = self->spawn(planner_actor_recovered, s.setup.grid, bt, c.rebalance_threshold,
                          c.rebalance_min_blocks, kept_seqs, step);
  send_restore(self, std::move(kept_seqs), s.next_seq);
  s.rebuilding = std::any_of(s.active.begin(), s.active.end(),
                             [](const request_state& r) { return r.rebuilding; });
  s.rebuild_started = std::chrono::steady_clock::now();
  logger()->log(s.changing ? spdlog::level::info : spdlog::level::warn,
                "engine: {}: {} -> {}, {} KV blocks kept, {} moved, {} rebuilt ({} positions)",
                relayout_name(s), rec.layout_before, rec.layout_after, rec.blocks_kept,
                rec.blocks_moved, rec.blocks_rebuilt, rec.tokens_replayed);
  publish(s);
}

}  // namespace

// Worker `rank` failed (`why`): with recovery on, the step in flight is abandoned and the workers
// are rebuilt on a layout of the members that remain; then the KV that is gone is rebuilt (lost
// blocks only, or a full replay of every running request). Nothing accepted is lost and no token
// is emitted twice. Without recovery, or when it fails, the engine fails.
void recover(self_ptr self, std::int64_t rank, const status& why,
             const std::vector<std::int32_t>& suspects) {
  engine_state& s = self->state;
  // Idle at shutdown: the workers end anyway.
  if (!s.broken.ok() || (s.draining && !s.busy && s.restore_op == 0)) return;
  // A planned change in progress is over: its caller learns why.
  if (s.changing) abandon_change(self, why.with_context("a worker failed during the change"));
  // Shutting down (draining) or recovery off: the step in flight can never complete; every
  // request ends with the cause and a drain is answered now. The ranks still waiting in that
  // step's collectives are woken (not left to their peer timeout).
  if (!s.setup.relayout || s.setup.config.recovery == "off" || s.draining) {
    if (s.setup.abort_data_plane) s.setup.abort_data_plane(why);
    s.busy = false;
    s.pending = 0;
    s.restore_op = 0;
    fail_everything(self, why);
    answer_drains(s);
    return;
  }
  const auto noticed = std::chrono::steady_clock::now();
  s.recovery_started = noticed;
  // Who is gone: the members the source knows to be dead (a process that ended), when there are
  // any, since the rank that reported the failure may only have seen a dead peer; else the rank
  // its data plane waited for in vain most often (a hung rank: its peers time out first); else
  // `rank` itself.
  std::vector<std::int64_t> lost = s.setup.dead ? s.setup.dead() : std::vector<std::int64_t>{};
  if (lost.empty() && !suspects.empty() && suspects.front() >= 0 &&
      suspects.front() < static_cast<std::int32_t>(s.workers.size())) {
    lost = {suspects.front()};
  }
  if (lost.empty()) lost = {rank};
  rank = lost.front();
  recovery_stats rec;
  rec.rank = rank;
  rec.why = why.to_string();
  rec.layout_before = s.setup.grid.to_string();
  rec.detect_ms = s.busy ? ms_between(s.step_started, noticed) : 0.0;
  if (s.setup.workers_info) {
    for (const worker_info& w : s.setup.workers_info()) {
      if (w.rank == rank) rec.pid = w.pid;
    }
  }
  logger()->warn("engine: worker {} failed ({}); recovering ({})", rank, why,
                 s.setup.config.recovery);
  // The old step and workers: woken from any collective, their replies (and the old planner's
  // answers) from now on ignored; stopped once the source rebuilt its members (a worker process
  // that survives stops its old worker itself when told its new rank).
  if (s.setup.abort_data_plane) s.setup.abort_data_plane(why);
  ++s.epoch;
  ++s.generation;
  s.busy = false;
  s.pending = 0;
  s.ops_pending.clear();
  // A migration in flight leaves the ranks' tables and the record apart: nothing kept is trusted.
  const bool moving = !s.migrations_pending.empty();
  s.migrations_pending.clear();
  s.restore_op = -1;  // no step until the workers are restored
  const layout before = s.setup.grid;
  std::vector<std::int64_t> survivors;
  std::vector<std::int64_t> donors;  // old ranks left without a rank that hand their KV over
  stop_donors(self);                 // of an earlier recovery's restore
  const std::vector<caf::actor> old_workers = s.workers;
  const auto stop_old = [&] {
    for (const caf::actor& w : old_workers) {
      self->demonitor(w);
      self->send_exit(w, caf::exit_reason::user_shutdown);
    }
  };
  const auto give_up = [&](const std::string& what) {
    stop_old();
    fail_everything(self, why.with_context(fmt::format("recovery: {}", what)));
    answer_drains(s);
  };
  auto planned = noticed;
  expected<layout> grid = failed_precondition("no layout yet");
  expected<std::vector<caf::actor>> fresh = failed_precondition("no relayout yet");
  // A member that dies while the others rebuild makes the relayout fail: try again without it.
  // So does a standby the source found gone (it drops those): try again with the ones left.
  for (int attempt = 0;; ++attempt) {
    if (s.setup.prune_standbys) s.setup.prune_standbys();
    const std::int64_t standbys = s.setup.standbys ? s.setup.standbys() : 0;
    const auto members = static_cast<std::int64_t>(s.workers.size() - lost.size()) + standbys;
    grid = layout_for_members(s.setup.grid, members, s.setup.spec,
                              s.setup.config.recovery == "lost_blocks");
    if (!grid) {
      give_up(fmt::format("no {} layout for {} remaining workers: {}",
                          layout_family_name(s.setup.grid.family), members, grid.error()));
      return;
    }
    // Survivors keep serving (ordered so that as many KVP members as possible keep their
    // blocks), standbys fill the ranks they leave, the rest stand by.
    std::vector<std::int64_t> alive;
    for (std::int64_t r = 0; r < static_cast<std::int64_t>(s.workers.size()); ++r) {
      if (std::find(lost.begin(), lost.end(), r) == lost.end()) alive.push_back(r);
    }
    survivors = planner::order_survivors(before, *grid, alive);
    std::vector<std::int64_t> standby;
    for (std::int64_t r : alive) {
      if (std::find(survivors.begin(), survivors.end(), r) == survivors.end()) standby.push_back(r);
    }
    // Lost blocks only: members left without a rank (every column's holder) send their blocks on.
    donors.clear();
    if (s.setup.config.recovery == "lost_blocks" && !moving) {
      donors = donor_ranks(before, *grid, standby);
    }
    planned = std::chrono::steady_clock::now();
    if (attempt == 0) rec.replan_ms = ms_between(noticed, planned);
    fresh = s.setup.relayout(*grid, survivors, standby, donors, {});
    if (fresh) break;
    std::vector<std::int64_t> more;
    for (std::int64_t d : s.setup.dead ? s.setup.dead() : std::vector<std::int64_t>{}) {
      if (std::find(lost.begin(), lost.end(), d) == lost.end()) more.push_back(d);
    }
    const std::int64_t standbys_left = s.setup.standbys ? s.setup.standbys() : 0;
    if ((more.empty() && standbys_left >= standbys) || attempt >= 3) {
      give_up(fresh.error().to_string());
      return;
    }
    if (more.empty()) {
      logger()->warn("engine: {} of {} standbys are gone; planning again without them",
                     standbys - standbys_left, standbys);
      continue;
    }
    logger()->warn("engine: workers {} died during the recovery; trying without them",
                   fmt::join(more, ", "));
    lost.insert(lost.end(), more.begin(), more.end());
  }
  stop_old();
  const auto reloaded = std::chrono::steady_clock::now();
  rec.reload_ms = ms_between(planned, reloaded);
  rec.layout_after = grid->to_string();
  rec.mode = s.setup.config.recovery;
  s.stats.recoveries.push_back(std::move(rec));
  install_and_restore(self, before, *grid, std::move(*fresh), survivors, donors,
                      moving                                     ? "a KV migration was in flight"
                      : s.setup.config.recovery != "lost_blocks" ? "recovery = full_replay"
                                                                 : "");
}

void install_and_restore(self_ptr self, const layout& before, const layout& grid,
                         std::vector<caf::actor> fresh, const std::vector<std::int64_t>& survivors,
                         const std::vector<std::int64_t>& donors, const std::string& replay) {
  engine_state& s = self->state;
  s.workers.assign(fresh.begin(), fresh.begin() + grid.num_ranks);
  s.donors.assign(fresh.begin() + grid.num_ranks, fresh.end());
  for (const caf::actor& w : s.workers) self->monitor(w);
  s.kv_used.assign(s.workers.size(), 0);
  if (s.setup.roster) {
    std::lock_guard lk(s.setup.roster->mu);
    s.setup.roster->workers = s.workers;
    s.setup.roster->kvp = grid.kvp;
    if (s.setup.workers_info) s.setup.roster->info = s.setup.workers_info();
  }
  s.setup.grid = grid;
  s.stats.layout = grid.to_string();
  const caf::actor old_planner = s.planner;
  // Which old members keep their blocks; the old record then says, request by request, where
  // every block lived.
  std::vector<std::int64_t> kept;
  std::vector<std::int64_t> donated(static_cast<std::size_t>(before.kvp), -1);
  // Another TPA size: every old member's blocks move, re-sliced by head, from whichever members
  // hold them (survivors as their new ranks, donors after them). After a failure that works
  // when every head still has a live holder (the tp family duplicates heads over more ranks
  // than KV heads); else the workers refuse the restore and the requests replay.
  const bool reslice =
      replay.empty() && (before.tpa != grid.tpa || (s.changing && s.change_reslice));
  s.reslice_from.clear();
  s.reslice_holders.clear();
  s.reslice_bytes = 0;
  s.reslice_blocks = 0;
  if (reslice) {  // kept members stay (same TPA size only); the others' blocks move
    kept.assign(static_cast<std::size_t>(before.kvp), -1);
    if (auto k = planner::kept_members(before, grid, survivors)) kept = std::move(*k);
    for (std::int64_t k = 0; k < before.kvp; ++k) {
      if (kept[static_cast<std::size_t>(k)] < 0) donated[static_cast<std::size_t>(k)] = k;
    }
    s.reslice_from = before.to_string();
    for (std::int64_t r = 0; r < before.num_ranks; ++r) {
      const auto at = std::find(survivors.begin(), survivors.end(), r);
      const auto gave = std::find(donors.begin(), donors.end(), r);
      s.reslice_holders.push_back(at != survivors.end()  ? at - survivors.begin()
                                  : gave != donors.end() ? grid.num_ranks + (gave - donors.begin())
                                                         : -1);
    }
  } else if (replay.empty()) {
    if (auto k = planner::kept_members(before, grid, survivors)) kept = std::move(*k);
    for (std::size_t j = 0; j < donors.size(); j += static_cast<std::size_t>(before.tpa)) {
      const std::int64_t k = before.attention_coords(donors[j]).kvp_idx;
      donated[static_cast<std::size_t>(k)] = static_cast<std::int64_t>(j) / before.tpa;
    }
  }
  if (!reslice && std::none_of(kept.begin(), kept.end(), [](std::int64_t k) { return k >= 0; })) {
    self->send_exit(old_planner, caf::exit_reason::user_shutdown);
    replay_everything(
        self, !replay.empty() ? replay : "no KVP member kept its blocks under the new layout");
    return;
  }
  self->request(old_planner, std::chrono::milliseconds(s.setup.config.peer_timeout_ms),
                placement_atom::value, grid.to_string(), kept, donated)
      .then(
          [self, gen = s.generation, old_planner](std::vector<restore_seq>& seqs,
                                                  std::int64_t step) {
            if (self->state.generation != gen) return;  // a later recovery took over
            self->send_exit(old_planner, caf::exit_reason::user_shutdown);
            rebuild_lost_blocks(self, std::move(seqs), step);
          },
          [self, gen = s.generation, old_planner](caf::error& err) {
            if (self->state.generation != gen) return;
            self->send_exit(old_planner, caf::exit_reason::user_shutdown);
            replay_everything(
                self, fmt::format("the placement record did not answer: {}", caf::to_string(err)));
          });
}

bool restore_answered(self_ptr self, const op_done_msg& m) {
  engine_state& s = self->state;
  if (m.op_id == s.failed_restore_op) return true;  // the fallback below answered it already
  if (m.op_id != s.restore_op) return false;
  if (m.result.code != 0) {
    const status st = from_wire(m.result);
    const bool refused = st.code() == errc::failed_precondition ||
                         st.code() == errc::resource_exhausted ||
                         st.code() == errc::invalid_argument;
    // Every rank refuses a restore together (one all-reduce decides): not a worker failure. With
    // donors any failure may be a donor's (a dead donor times the handoff out): replay in full;
    // if a rank was the cause, that replay's restore fails and recovery takes it from there.
    const bool handoff = !s.donors.empty();
    if (!s.restore_has_seqs || (!refused && !handoff)) return false;
    s.failed_restore_op = s.restore_op;
    s.ops_pending.erase(s.restore_op);
    self->send_exit(s.planner, caf::exit_reason::user_shutdown);
    replay_everything(self, fmt::format("worker {}: {}", m.rank, st));
    return true;
  }
  if (s.ops_pending.count(s.restore_op) == 0) {  // every worker answered
    stop_donors(self);
    s.restore_op = 0;
    if (s.changing) {
      change_restored(self);
      return true;
    }
    if (!s.stats.recoveries.empty()) {
      const recovery_stats& rec = s.stats.recoveries.back();
      epoch_stats e;
      e.reason = "recovery";
      e.layout_before = rec.layout_before;
      e.layout_after = rec.layout_after;
      e.blocks_moved = rec.blocks_moved;
      e.blocks_rebuilt = rec.blocks_rebuilt;
      e.kv_bytes_moved = kv_bytes_moved(s, rec.blocks_moved);
      e.pause_ms = ms_between(s.recovery_started, std::chrono::steady_clock::now());
      e.note = fmt::format("worker {} failed: {}; {}", rec.rank, rec.why, rec.mode);
      s.stats.epochs.push_back(std::move(e));
    }
    // Nothing to compute again: the restore (synthetic refills) was the whole rebuild.
    if (!s.rebuilding && !s.stats.recoveries.empty()) {
      s.stats.recoveries.back().rebuild_ms =
          ms_between(s.rebuild_started, std::chrono::steady_clock::now());
    }
    start_step(self);
  }
  return true;
}

bool restore_timed_out(self_ptr self, std::int64_t op, std::int64_t rank) {
  engine_state& s = self->state;
  if (op != s.restore_op || rank < static_cast<std::int64_t>(s.workers.size())) return false;
  s.failed_restore_op = s.restore_op;
  self->send_exit(s.planner, caf::exit_reason::user_shutdown);
  replay_everything(self, fmt::format("donor {} did not answer the restore", rank));
  return true;
}

}  // namespace helix::actors::engine_impl
