// The engine actor: queue, KV admission, continuous batching and the step loop.
//
// One step at a time: compose the batch (decode tokens of running requests first, then prefill
// chunks, within max_batch_tokens), ask the planner where the step's new KV blocks go, send the
// step to every worker, and when all have answered commit the placement, deliver the sampled
// tokens and let finished requests leave. Requests join (admission) and leave (finish, cancel)
// only between steps. Opens and closes are sent to the workers before the step that depends on
// them; a worker's mailbox keeps their order.
//
// Admission reserves, on every KVP member, the blocks a request may occupy there at its full
// length (prompt + max_tokens), so a running request never runs out of KV: a request whose
// reservation exceeds a worker's capacity is refused at submit (by the API), one that does not
// fit next to the running ones waits in the queue (FIFO).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <deque>
#include <limits>
#include <map>
#include <optional>

#include "actors/engine_state.hpp"
#include "core/checked_math.hpp"
#include "core/log.hpp"

namespace helix::actors {

std::int64_t blocks_reserved_per_member(std::int64_t prompt_len, std::int64_t max_tokens,
                                        std::int64_t block_tokens, std::int64_t kvp) {
  const std::optional<std::int64_t> tokens = checked_add(prompt_len, max_tokens);
  if (!tokens || *tokens < 0 || block_tokens < 1 || kvp < 1) {
    return std::numeric_limits<std::int64_t>::max();
  }
  return ceil_div(ceil_div(*tokens, block_tokens), kvp) + 1;
}

std::int64_t admission_blocks(std::int64_t capacity_blocks, double threshold) {
  return std::max<std::int64_t>(
      0, static_cast<std::int64_t>(static_cast<double>(capacity_blocks - 1) / (1.0 + threshold)));
}

std::int64_t kv_capacity_for(std::int64_t requests, std::int64_t tokens_per_request,
                             std::int64_t kvp, std::int64_t block_tokens,
                             double rebalance_threshold) {
  constexpr auto too_many = std::numeric_limits<std::int64_t>::max();
  const std::int64_t one = blocks_reserved_per_member(tokens_per_request, 0, block_tokens, kvp);
  const std::optional<std::int64_t> all = checked_mul(one, requests);
  if (one == too_many || !all || requests < 0 || !(rebalance_threshold >= 0.0)) return too_many;
  // admission_blocks(capacity) = floor((capacity - 1) / (1 + threshold)) >= all.
  const double blocks = std::ceil(static_cast<double>(*all) * (1.0 + rebalance_threshold)) + 2.0;
  if (blocks * static_cast<double>(block_tokens) >= 9.0e18) return too_many;
  return static_cast<std::int64_t>(blocks) * block_tokens;
}

namespace engine_impl {

std::shared_ptr<spdlog::logger> logger() {
  static const auto l = module_logger("actors");
  return l;
}

engine_stats current_stats(const engine_state& s) {
  engine_stats out = s.stats;
  out.queued = static_cast<std::int64_t>(s.queue.size());
  out.active = static_cast<std::int64_t>(s.active.size());
  out.epoch = s.epoch;
  out.workers.clear();
  for (std::size_t i = 0; i < s.kv_used.size(); ++i) {
    out.workers.push_back(
        {static_cast<std::int64_t>(i), s.kv_used[i], s.setup.capacity_blocks_per_worker});
  }
  out.health = s.broken.ok() ? engine_health::serving : engine_health::failed;
  out.failure = s.broken;
  out.standbys = s.setup.standbys ? s.setup.standbys() : 0;
  return out;
}

void publish(const engine_state& s) {
  s.registry->publish(current_stats(s));
}

// A token that does not end the request. Not ok when the client's callback threw: the caller
// ends the request.
status emit_token(engine_state& s, const request_state& r, std::int32_t token,
                  std::vector<float> logits) {
  token_event e;
  e.request_id = r.req.request_id;
  e.token = token;
  e.index = r.generated - 1;
  e.logits = std::move(logits);
  return s.registry->deliver(e);
}

// The request's last event (with `token`, or -1 for none) and its counters. A cancel the API
// accepted earlier turns any other ending into `cancelled` (stream_registry::close).
void end_request(engine_state& s, const request_state& r, std::int32_t token, finish_reason reason,
                 status error, std::vector<float> logits) {
  const finish_reason final_reason = s.registry->close(r.req.request_id, reason);
  if (final_reason != reason) {
    token = -1;  // cancelled before this step's token was due: it is not delivered
    error = ok_status();
  }
  token_event e;
  e.request_id = r.req.request_id;
  e.token = token;
  e.index = token >= 0 ? r.generated - 1 : 0;
  e.last = true;
  e.reason = final_reason;
  e.error = error;
  if (token >= 0) e.logits = std::move(logits);
  switch (final_reason) {
    case finish_reason::length:
    case finish_reason::stop_token:
      ++s.stats.completed;
      break;
    case finish_reason::cancelled:
      ++s.stats.cancelled;
      break;
    default:
      ++s.stats.failed;
      if (s.broken.ok()) logger()->warn("engine: request {} failed: {}", r.req.request_id, error);
      break;
  }
  const status cb = s.registry->deliver(e);
  if (!cb.ok()) logger()->warn("engine: request {}: last event: {}", r.req.request_id, cb);
}

// Sends the close of a running request's sequence to every worker and the planner, and frees its
// reservation.
void leave(self_ptr self, request_state& r) {
  engine_state& s = self->state;
  for (const caf::actor& w : s.workers) {
    self->send(w, close_seq_msg{s.epoch, s.next_op, r.seq});
  }
  op_sent(self, s.next_op++);
  self->send(s.planner, leave_atom::value, r.seq);
  s.reserved_per_member -= r.reserved;
  r.seq = 0;  // marks it for removal from `active`
}

void remove_left(engine_state& s) {
  s.active.erase(std::remove_if(s.active.begin(), s.active.end(),
                                [](const request_state& r) { return r.seq == 0; }),
                 s.active.end());
}

// A worker or the data plane failed: the ranks' state can no longer be trusted. Every request
// ends with the cause, the API refuses new ones, and stats() reports it.
void fail_everything(self_ptr self, const status& error) {
  engine_state& s = self->state;
  if (s.broken.ok()) logger()->error("engine: failed, no further steps run: {}", error);
  s.broken = error;
  s.registry->set_failure(error);
  for (request_state& r : s.active) end_request(s, r, -1, finish_reason::error, error);
  for (request_state& r : s.queue) end_request(s, r, -1, finish_reason::error, error);
  s.active.clear();
  s.queue.clear();
  abandon_change(self, error);
  while (!s.changes.empty()) {
    planned_change& c = s.changes.front();
    if (c.promise.pending()) c.promise.deliver(to_wire(error));
    s.changes.pop_front();
  }
  publish(s);
}

void answer_drains(engine_state& s) {
  for (caf::response_promise& p : s.drain_waiters) p.deliver(caf::unit);
  s.drain_waiters.clear();
}

double ms_between(std::chrono::steady_clock::time_point a,
                  std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

// Whether the message being handled comes from one of the current workers (not one that a
// recovery replaced).
bool from_current_worker(self_ptr self) {
  const caf::actor_addr from = caf::actor_cast<caf::actor_addr>(self->current_sender());
  for (const caf::actor& w : self->state.workers) {
    if (w.address() == from) return true;
  }
  for (const caf::actor& w : self->state.donors) {
    if (w.address() == from) return true;
  }
  return false;
}

// After requests left: the planner decides block migrations (recording them in its placement);
// the workers apply them in a new epoch before the next step.
void rebalance_then_step(self_ptr self) {
  engine_state& s = self->state;
  s.busy = true;
  self->request(s.planner, caf::infinite, rebal_atom::value)
      .then(
          [self, gen = s.generation](std::vector<move_item>& moves, double imbalance,
                                     double mean_blocks) {
            engine_state& st = self->state;
            if (st.generation != gen) return;  // a recovery replaced planner and workers
            if (!moves.empty()) {
              ++st.epoch;
              logger()->info("engine: rebalancing moves {} KV blocks, epoch {}, imbalance {:.3f}",
                             moves.size(), st.epoch, imbalance);
              migrate_msg m{st.epoch, st.next_op++, std::move(moves)};
              const auto moved = static_cast<std::int64_t>(m.moves.size());
              st.stats.migrations += moved;
              epoch_stats e;
              e.reason = "rebalance";
              e.layout_before = st.setup.grid.to_string();
              e.layout_after = e.layout_before;
              e.blocks_moved = moved;
              e.kv_bytes_moved =
                  st.setup.block_bytes ? moved * st.setup.block_bytes(st.setup.grid) : 0;
              e.note = fmt::format("kv_imbalance {:.3f} after", imbalance);
              st.migration_epochs[m.op_id] = {st.stats.epochs.size(),
                                              std::chrono::steady_clock::now()};
              st.stats.epochs.push_back(std::move(e));
              for (const caf::actor& w : st.workers) self->send(w, m);
              op_sent(self, m.op_id);
              st.migrations_pending.insert(m.op_id);
            }
            st.stats.kv_imbalance = imbalance;
            if (mean_blocks >= static_cast<double>(st.setup.config.rebalance_min_blocks)) {
              st.stats.kv_imbalance_max = std::max(st.stats.kv_imbalance_max, imbalance);
            }
            st.busy = false;
            start_step(self);
          },
          [self, gen = s.generation](caf::error& err) {
            if (self->state.generation != gen) return;
            self->state.busy = false;
            fail_everything(self, internal_error("engine: planner: {}", caf::to_string(err)));
            answer_drains(self->state);
          });
}

void finish_step(self_ptr self) {
  engine_state& s = self->state;
  s.busy = false;
  if (!s.step_error.ok() || !s.replies_agree) {
    fail_everything(self,
                    s.step_error.ok()
                        ? internal_error("engine: workers disagree on step {}'s results", s.step_id)
                        : s.step_error);
    answer_drains(s);
    return;
  }
  ++s.stats.steps;
  self->send(s.planner, commit_atom::value, s.step_seqs, s.step_counts);
  const auto vocab = static_cast<std::size_t>(s.setup.vocab);
  std::size_t logits_row = 0;  // rank 0's rows, one per item that wants them
  for (std::size_t i = 0; i < s.step_members.size(); ++i) {
    request_state& r = s.active[s.step_members[i]];
    if (s.step_synthetic[i]) {
      r.synthetic_pending = false;
      continue;
    }
    if (s.step_rewrites[i] > 0) {  // lost positions computed again after a recovery
      auto& run = r.lost_runs.front();
      run.first += s.step_rewrites[i];
      if (run.first >= run.second) r.lost_runs.pop_front();
      r.rebuilding = !r.lost_runs.empty();
      continue;
    }
    std::vector<float> logits;
    if (s.step_wants_logits[i]) {
      if ((logits_row + 1) * vocab <= s.step_logits.size()) {
        const auto at = s.step_logits.begin() + static_cast<std::ptrdiff_t>(logits_row * vocab);
        logits.assign(at, at + static_cast<std::ptrdiff_t>(vocab));
      }
      ++logits_row;
    }
    r.prefilled = std::min<std::int64_t>(r.prefilled + s.step_counts[i],
                                         static_cast<std::int64_t>(feed(r).size()));
    if (r.rebuilding && r.prefilled == static_cast<std::int64_t>(feed(r).size())) {
      r.rebuilding = false;
    }
    if (i < s.step_item_errors.size() && s.step_item_errors[i].code != 0) {
      // This request's own failure (its logits): it ends alone, the step and the others go on.
      end_request(s, r, -1, finish_reason::error,
                  from_wire(s.step_item_errors[i])
                      .with_context(fmt::format("request {}", r.req.request_id)));
      leave(self, r);
      continue;
    }
    const std::int32_t token = s.step_tokens[i];
    if (token < 0) continue;  // a prefill chunk before the last
    if (s.registry->cancel_requested(r.req.request_id)) {
      end_request(s, r, -1, finish_reason::cancelled);
      leave(self, r);
      continue;
    }
    ++r.generated;
    ++s.stats.tokens_generated;
    r.last_token = token;
    r.outputs.push_back(token);
    const bool stop = std::find(r.req.stop_tokens.begin(), r.req.stop_tokens.end(), token) !=
                      r.req.stop_tokens.end();
    if (stop || r.generated >= r.req.max_tokens) {
      end_request(s, r, token, stop ? finish_reason::stop_token : finish_reason::length,
                  ok_status(), std::move(logits));
      leave(self, r);
      continue;
    }
    const status cb = emit_token(s, r, token, std::move(logits));
    if (!cb.ok()) {
      end_request(s, r, -1, finish_reason::error,
                  cb.with_context(fmt::format("request {}", r.req.request_id)));
      leave(self, r);
    }
  }
  const bool someone_left = std::any_of(s.active.begin(), s.active.end(),
                                        [](const request_state& r) { return r.seq == 0; });
  remove_left(s);
  if (s.rebuilding) {
    const auto replaying = [](const request_state& r) { return r.rebuilding; };
    if (std::none_of(s.active.begin(), s.active.end(), replaying) &&
        std::none_of(s.queue.begin(), s.queue.end(), replaying)) {
      s.rebuilding = false;
      if (!s.stats.recoveries.empty()) {
        s.stats.recoveries.back().rebuild_ms =
            ms_between(s.rebuild_started, std::chrono::steady_clock::now());
      }
    }
  }
  if (someone_left) {
    rebalance_then_step(self);
  } else {
    start_step(self);
  }
}

// The token a request fed at KV position `pos` (past its synthetic context): its prompt, then its
// generated tokens (each fed as the next decode input).
std::int32_t token_at(const request_state& r, std::int64_t pos) {
  const auto i = static_cast<std::size_t>(pos - r.req.synthetic_tokens);
  return i < r.req.prompt.size() ? r.req.prompt[i] : r.outputs[i - r.req.prompt.size()];
}

// Cancellations, expired deadlines and admissions (between steps), then the next step if there
// is work.
void start_step(self_ptr self) {
  engine_state& s = self->state;
  if (s.busy || s.restore_op != 0 || !s.broken.ok()) return;
  consider_growth(self);
  if (run_change(self)) return;  // a planned join or leave runs first
  const engine_config& c = s.setup.config;

  for (request_state& r : s.active) {
    if (r.cancelled || s.registry->cancel_requested(r.req.request_id)) {
      end_request(s, r, -1, finish_reason::cancelled);
      leave(self, r);
    } else if (r.expired) {
      end_request(s, r, -1, finish_reason::error,
                  deadline_exceeded("request {}: its deadline passed after {} generated tokens",
                                    r.req.request_id, r.generated));
      leave(self, r);
    }
  }
  remove_left(s);

  const std::int64_t admission = s.setup.admission_blocks_per_worker > 0
                                     ? s.setup.admission_blocks_per_worker
                                     : s.setup.capacity_blocks_per_worker;
  // After a recovery to fewer KVP members a request may need more blocks per member than any
  // member has: it can never run again.
  while (!s.queue.empty() && s.queue.front().reserved > admission) {
    request_state& r = s.queue.front();
    end_request(
        s, r, -1, finish_reason::error,
        resource_exhausted("request {}: needs {} KV blocks per worker on layout {}, more "
                           "than a worker can hold ({})",
                           r.req.request_id, r.reserved, s.setup.grid.to_string(), admission));
    s.queue.pop_front();
  }
  while (!s.draining && !s.admission_paused && !s.queue.empty() &&
         s.reserved_per_member + s.queue.front().reserved <= admission) {
    request_state r = std::move(s.queue.front());
    s.queue.pop_front();
    r.seq = s.next_seq++;
    s.reserved_per_member += r.reserved;
    for (const caf::actor& w : s.workers) self->send(w, open_seq_msg{s.epoch, s.next_op, r.seq});
    op_sent(self, s.next_op++);
    self->send(s.planner, join_atom::value, r.seq);
    s.active.push_back(std::move(r));
  }

  // Decode tokens first (each running request's next token), then prefill chunks.
  step_msg m;
  m.epoch = s.epoch;
  m.step_id = ++s.step_id;
  s.step_members.clear();
  s.step_counts.clear();
  s.step_seqs.clear();
  s.step_synthetic.clear();
  s.step_rewrites.clear();
  s.step_wants_logits.clear();
  // Synthetic contexts first (no model runs for them, so they take no batch budget); such a
  // request's prompt follows in a later step.
  for (std::size_t i = 0; i < s.active.size(); ++i) {
    request_state& r = s.active[i];
    if (!r.synthetic_pending) continue;
    step_item it;
    it.seq = r.seq;
    it.synthetic_tokens = r.req.synthetic_tokens;
    it.synthetic_seed = r.req.synthetic_seed;
    it.request_id = r.req.request_id;
    s.step_members.push_back(i);
    s.step_counts.push_back(it.synthetic_tokens);
    s.step_seqs.push_back(it.seq);
    s.step_synthetic.push_back(true);
    s.step_rewrites.push_back(0);
    s.step_wants_logits.push_back(false);
    m.items.push_back(std::move(it));
  }
  std::int64_t budget = c.max_batch_tokens;
  for (int pass = 0; pass < 2 && budget > 0; ++pass) {
    for (std::size_t i = 0; i < s.active.size() && budget > 0; ++i) {
      request_state& r = s.active[i];
      if (r.synthetic_pending) continue;
      if (!r.lost_runs.empty()) {
        // Lost positions first, in order, as prefill chunks over everything before them;
        // nothing else of the request runs until they are back.
        if (pass == 0) continue;
        const auto [from, to] = r.lost_runs.front();
        const std::int64_t n = std::min({c.prefill_chunk_tokens, to - from, budget});
        step_item it;
        it.seq = r.seq;
        it.request_id = r.req.request_id;
        it.rewrite_from = from;
        for (std::int64_t p = from; p < from + n; ++p) it.tokens.push_back(token_at(r, p));
        budget -= n;
        s.step_members.push_back(i);
        s.step_counts.push_back(0);  // opens no block
        s.step_seqs.push_back(it.seq);
        s.step_synthetic.push_back(false);
        s.step_rewrites.push_back(n);
        s.step_wants_logits.push_back(false);
        m.items.push_back(std::move(it));
        continue;
      }
      const std::vector<std::int32_t>& tokens = feed(r);
      const auto prompt_len = static_cast<std::int64_t>(tokens.size());
      const bool decoding = r.prefilled == prompt_len;
      if (decoding != (pass == 0)) continue;
      step_item it;
      it.seq = r.seq;
      if (decoding) {
        it.tokens = {r.last_token};
        it.sample = true;
      } else {
        const std::int64_t n = std::min({c.prefill_chunk_tokens, prompt_len - r.prefilled, budget});
        it.tokens.assign(tokens.begin() + r.prefilled, tokens.begin() + r.prefilled + n);
        // A replay after a recovery samples nothing: its next token is already known.
        it.sample = r.prefilled + n == prompt_len && r.generated == 0;
      }
      it.temperature = r.req.temperature;
      it.top_k = r.req.top_k;
      it.top_p = r.req.top_p;
      it.seed = r.req.seed;
      it.request_id = r.req.request_id;
      it.want_logits = it.sample && r.req.return_logits;
      budget -= static_cast<std::int64_t>(it.tokens.size());
      s.step_members.push_back(i);
      s.step_counts.push_back(static_cast<std::int64_t>(it.tokens.size()));
      s.step_seqs.push_back(it.seq);
      s.step_synthetic.push_back(false);
      s.step_rewrites.push_back(0);
      s.step_wants_logits.push_back(it.want_logits);
      m.items.push_back(std::move(it));
    }
  }
  publish(s);
  if (m.items.empty()) {
    if (s.draining) answer_drains(s);
    return;
  }
  s.busy = true;
  s.step_started = std::chrono::steady_clock::now();
  s.pending = s.workers.size();
  s.step_error = ok_status();
  s.replies_agree = true;
  s.step_tokens.clear();
  s.step_item_errors.clear();
  s.step_logits.clear();
  s.step_replied.assign(s.workers.size(), false);
  self->request(s.planner, caf::infinite, plan_atom::value, s.step_seqs, s.step_counts)
      .then(
          [self, m, gen = s.generation](std::vector<std::int64_t>& owners) mutable {
            engine_state& st = self->state;
            if (st.generation != gen) return;  // a recovery replaced planner and workers
            m.new_block_kvp = std::move(owners);
            for (const caf::actor& w : st.workers) self->send(w, m);
            // A step no worker answers (lost on its way to every worker, or to the only one)
            // starts no reply watch: probe for it after the peer timeout (step_probe_atom).
            self->delayed_send(self, std::chrono::milliseconds(st.setup.config.peer_timeout_ms),
                               step_probe_atom::value, m.step_id, gen);
          },
          [self, gen = s.generation](caf::error& err) {
            if (self->state.generation != gen) return;
            self->state.pending = 0;
            self->state.step_error = internal_error("engine: planner: {}", caf::to_string(err));
            finish_step(self);
          });
}

// Ends a queued request now, or marks a running one to end at the next step boundary.
template <class Ending>
bool end_or_mark(self_ptr self, std::uint64_t id, Ending&& end_queued, bool request_state::*mark) {
  engine_state& st = self->state;
  for (auto it = st.queue.begin(); it != st.queue.end(); ++it) {
    if (it->req.request_id != id) continue;
    end_queued(*it);
    st.queue.erase(it);
    publish(st);
    return true;
  }
  for (request_state& r : st.active) {
    if (r.req.request_id != id) continue;
    r.*mark = true;
    start_step(self);  // takes effect now if no step is in flight
    return true;
  }
  return false;
}

// Operation `op` went to every worker: each must answer within peer_timeout_ms.
void op_sent(self_ptr self, std::int64_t op, std::size_t extra) {
  engine_state& s = self->state;
  s.ops_pending[op].assign(s.workers.size() + extra, false);
  self->delayed_send(self, std::chrono::milliseconds(s.setup.config.peer_timeout_ms),
                     op_watch_atom::value, op, s.generation);
}

// Worker `rank` ended or stopped answering while the engine serves.
void worker_lost(self_ptr self, std::int64_t rank, const std::string& why) {
  recover(self, rank, make_error(errc::unavailable, "worker {} lost: {}", rank, why));
}

caf::behavior engine_actor(self_ptr self, engine_setup setup, std::vector<caf::actor> workers,
                           caf::actor planner, std::shared_ptr<stream_registry> registry) {
  engine_state& s = self->state;
  s.stats.layout = setup.grid.to_string();
  s.setup = std::move(setup);
  s.workers = std::move(workers);
  s.planner = std::move(planner);
  s.registry = std::move(registry);
  s.kv_used.assign(s.workers.size(), 0);
  s.stats.epochs.push_back({"initial", "", s.stats.layout, 0, 0, 0, 0.0, ""});
  publish(s);
  // A worker that ends while the engine serves (its process died, its host went away, its
  // connection broke) fails the engine naming it; recovery is not implemented yet.
  for (const caf::actor& w : s.workers) self->monitor(w);
  self->set_down_handler([self](caf::down_msg& dm) {
    engine_state& st = self->state;
    for (std::size_t r = 0; r < st.workers.size(); ++r) {
      if (st.workers[r].address() != dm.source) continue;
      worker_lost(self, static_cast<std::int64_t>(r), caf::to_string(dm.reason));
      return;
    }
  });
  return {
      [self](submit_msg& m) {
        engine_state& st = self->state;
        request_state r;
        r.reserved = blocks_reserved_per_member(
            static_cast<std::int64_t>(m.prompt.size()) + m.synthetic_tokens, m.max_tokens,
            st.setup.config.block_tokens, st.setup.grid.kvp);
        r.synthetic_pending = m.synthetic_tokens > 0;
        r.req = std::move(m);
        ++st.stats.submitted;
        if (!st.broken.ok() || st.draining) {
          const status why =
              st.broken.ok() ? failed_precondition("engine: shutting down") : st.broken;
          end_request(st, r, -1, finish_reason::error, why);
          publish(st);
          return;
        }
        if (r.req.deadline_ns != 0) {
          const auto left = std::chrono::nanoseconds(r.req.deadline_ns) -
                            std::chrono::steady_clock::now().time_since_epoch();
          if (left <= std::chrono::nanoseconds(0)) {
            end_request(st, r, -1, finish_reason::error,
                        deadline_exceeded("request {}: its deadline passed in the queue",
                                          r.req.request_id));
            publish(st);
            return;
          }
          self->delayed_send(self, left, deadline_atom::value, r.req.request_id);
        }
        st.queue.push_back(std::move(r));
        start_step(self);
      },
      [self](step_done_msg& m) {
        engine_state& st = self->state;
        if (!st.busy || m.step_id != st.step_id) return;  // stale: an older step's reply
        if (!from_current_worker(self)) return;           // a worker a recovery replaced
        if (m.rank < 0 || m.rank >= static_cast<std::int64_t>(st.step_replied.size()) ||
            st.step_replied[static_cast<std::size_t>(m.rank)]) {
          return;  // not a rank of this step, or a duplicate
        }
        if (st.pending == st.workers.size()) {
          // The ranks of a step finish within a collective's reach of each other: once one
          // answered, a rank silent for peer_timeout_ms has lost its step or its reply.
          self->delayed_send(self, std::chrono::milliseconds(st.setup.config.peer_timeout_ms),
                             step_watch_atom::value, st.step_id, st.generation);
        }
        st.step_replied[static_cast<std::size_t>(m.rank)] = true;
        if (m.result.code != 0 && st.setup.relayout) {
          // The first failure decides: the step is abandoned and the workers rebuilt (the others
          // may be blocked in a collective with the failed one; recovery wakes them).
          recover(self, m.rank, from_wire(m.result).with_context(fmt::format("worker {}", m.rank)),
                  m.suspects);
          return;
        }
        if (m.rank >= 0 && m.rank < static_cast<std::int64_t>(st.kv_used.size())) {
          st.kv_used[static_cast<std::size_t>(m.rank)] = m.kv_used_blocks;
        }
        if (m.rank == 0) {
          st.step_logits = std::move(m.logits);
          if (m.phase_seconds.size() == 4) {
            st.stats.step_phases.attention += m.phase_seconds[0];
            st.stats.step_phases.all_to_all += m.phase_seconds[1];
            st.stats.step_phases.ffn += m.phase_seconds[2];
            st.stats.step_phases.sampling += m.phase_seconds[3];
          }
        }
        const status r = from_wire(m.result);
        if (!r.ok() && st.step_error.ok()) {
          st.step_error = r.with_context(fmt::format("worker {}", m.rank));
          // The others may wait for the failed rank in a collective: wake them, so that every
          // reply arrives and the engine fails now rather than never.
          if (st.setup.abort_data_plane) st.setup.abort_data_plane(st.step_error);
        }
        if (r.ok()) {
          // Every rank samples the same tokens and sees the same rows fail; a difference means
          // the ranks' state diverged.
          if (st.pending == st.workers.size() || st.step_tokens.empty()) {
            st.step_tokens = std::move(m.tokens);
            st.step_item_errors = std::move(m.item_errors);
          } else if (st.step_tokens != m.tokens ||
                     st.step_item_errors.size() != m.item_errors.size()) {
            st.replies_agree = false;
          }
        }
        if (--st.pending == 0) finish_step(self);
      },
      [self](op_done_msg& m) {
        engine_state& st = self->state;
        if (!from_current_worker(self)) return;  // a worker a recovery replaced
        if (auto it = st.ops_pending.find(m.op_id);
            it != st.ops_pending.end() && m.rank >= 0 &&
            m.rank < static_cast<std::int64_t>(it->second.size())) {
          it->second[static_cast<std::size_t>(m.rank)] = true;
          if (std::all_of(it->second.begin(), it->second.end(), [](bool b) { return b; })) {
            st.ops_pending.erase(it);
            if (st.migrations_pending.erase(m.op_id) > 0 && m.result.code == 0) {
              migration_done(self, m.op_id);
            }
          }
        }
        if (m.rank >= 0 && m.rank < static_cast<std::int64_t>(st.kv_used.size()) &&
            m.result.code == 0) {
          st.kv_used[static_cast<std::size_t>(m.rank)] = m.kv_used_blocks;
        }
        if (restore_answered(self, m)) return;
        if (m.result.code != 0 && st.setup.relayout) {
          recover(self, m.rank, from_wire(m.result).with_context(fmt::format("worker {}", m.rank)));
          return;
        }
        if (m.rank >= 0 && m.rank < static_cast<std::int64_t>(st.kv_used.size())) {
          st.kv_used[static_cast<std::size_t>(m.rank)] = m.kv_used_blocks;
        }
        const status r = from_wire(m.result);
        if (!r.ok() && self->state.broken.ok()) {
          fail_everything(self, r.with_context(fmt::format("worker {}", m.rank)));
        }
      },
      [self](cancel_atom, std::uint64_t id) -> caf::result<void> {
        engine_state& st = self->state;
        const bool found = end_or_mark(
            self, id, [&](request_state& r) { end_request(st, r, -1, finish_reason::cancelled); },
            &request_state::cancelled);
        if (found) return caf::unit;
        return caf::make_error(caf::sec::runtime_error,
                               fmt::format("not_found: request {} is not queued or running", id));
      },
      [self](deadline_atom, std::uint64_t id) {
        engine_state& st = self->state;
        (void)end_or_mark(
            self, id,
            [&](request_state& r) {
              end_request(st, r, -1, finish_reason::error,
                          deadline_exceeded("request {}: its deadline passed in the queue", id));
            },
            &request_state::expired);
      },
      [self](stats_atom) { return current_stats(self->state); },
      [self](lost_atom, caf::actor& worker, std::string& why) {
        engine_state& st = self->state;
        for (std::size_t r = 0; r < st.workers.size(); ++r) {
          if (st.workers[r] == worker) worker_lost(self, static_cast<std::int64_t>(r), why);
        }
      },
      [self](op_watch_atom, std::int64_t op, std::int64_t generation) {
        engine_state& st = self->state;
        const auto it = st.ops_pending.find(op);
        if (it == st.ops_pending.end() || st.generation != generation) return;
        const auto silent = std::find(it->second.begin(), it->second.end(), false);
        const auto rank = static_cast<std::int64_t>(silent - it->second.begin());
        st.ops_pending.erase(it);
        if (restore_timed_out(self, op, rank)) return;
        worker_lost(self, rank,
                    fmt::format("no answer to operation {} within {} ms", op,
                                st.setup.config.peer_timeout_ms));
      },
      [self](step_probe_atom, std::int64_t step_id, std::int64_t generation) {
        // Each worker that has not answered the step gets a probe behind it in its mailbox: a
        // worker handles messages in order, so its acknowledgement before its reply to the step
        // means the step never reached it (or was dropped as a repeat) and can never complete.
        // A worker still computing acknowledges later, after its reply.
        engine_state& st = self->state;
        if (!st.busy || st.step_id != step_id || st.generation != generation) return;
        for (std::size_t r = 0; r < st.workers.size(); ++r) {
          if (!st.step_replied[r]) self->send(st.workers[r], step_probe_atom::value, step_id);
        }
      },
      [self](probe_ack_atom, std::int64_t step_id, std::int64_t rank) {
        engine_state& st = self->state;
        if (!from_current_worker(self) || !st.busy || st.step_id != step_id || rank < 0 ||
            rank >= static_cast<std::int64_t>(st.step_replied.size()) ||
            st.step_replied[static_cast<std::size_t>(rank)]) {
          return;
        }
        worker_lost(self, rank, fmt::format("step {} never reached it", step_id));
      },
      [self](step_watch_atom, std::int64_t step_id, std::int64_t generation) {
        engine_state& st = self->state;
        if (!st.busy || st.step_id != step_id || st.generation != generation || st.pending == 0) {
          return;
        }
        const auto silent = std::find(st.step_replied.begin(), st.step_replied.end(), false);
        const auto rank = static_cast<std::int64_t>(silent - st.step_replied.begin());
        worker_lost(self, rank,
                    fmt::format("no answer to step {} within {} ms of the first worker's", step_id,
                                st.setup.config.peer_timeout_ms));
      },
      [self](grow_atom, std::int64_t count, std::int64_t timeout_ms) -> caf::result<wire_status> {
        planned_change c;
        c.join = true;
        c.count = count;
        c.deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
        c.promise = self->make_response_promise();
        queue_change(self, std::move(c));
        return caf::delegated<wire_status>();
      },
      [self](shrink_atom, caf::actor& worker) -> caf::result<wire_status> {
        planned_change c;
        c.leaver = worker.address();
        c.deadline = std::chrono::steady_clock::now() + std::chrono::minutes(2);
        c.promise = self->make_response_promise();
        queue_change(self, std::move(c));
        return caf::delegated<wire_status>();
      },
      [self](shrink_atom, std::int64_t rank, std::int64_t timeout_ms) -> caf::result<wire_status> {
        planned_change c;
        c.rank = rank;
        c.deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
        c.promise = self->make_response_promise();
        queue_change(self, std::move(c));
        return caf::delegated<wire_status>();
      },
      [self](member_atom) {
        self->state.unasked_join = true;
        start_step(self);
      },
      [self](drain_atom) -> caf::result<void> {
        engine_state& st = self->state;
        st.draining = true;
        while (!st.changes.empty()) {
          planned_change& c = st.changes.front();
          if (c.promise.pending()) {
            c.promise.deliver(to_wire(unavailable("the engine is shutting down")));
          }
          st.changes.pop_front();
        }
        for (request_state& r : st.queue) end_request(st, r, -1, finish_reason::cancelled);
        st.queue.clear();
        for (request_state& r : st.active) r.cancelled = true;
        auto promise = self->make_response_promise();
        st.drain_waiters.push_back(promise);
        if (!st.busy) start_step(self);
        if (!st.busy && st.active.empty()) answer_drains(st);
        return promise;
      },
  };
}

}  // namespace engine_impl

caf::actor spawn_engine(caf::actor_system& sys, engine_setup setup, std::vector<caf::actor> workers,
                        caf::actor planner, std::shared_ptr<stream_registry> registry) {
  return sys.spawn(engine_impl::engine_actor, std::move(setup), std::move(workers),
                   std::move(planner), std::move(registry));
}

}  // namespace helix::actors