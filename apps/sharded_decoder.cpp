// N rank threads, each owning one rank_program, driven by the caller through one mailbox per rank.
//
// Why threads that sleep on condition variables: eight ranks commonly share two cores, so a rank
// that waits for work (or for a peer inside a collective, which the local transport also does by
// blocking) must not burn a core. The caller posts the same job to every mailbox, then sleeps
// until the last rank reports completion.
//
// Why a rank aborts the fabric itself: a rank that fails in a way its peers cannot know about
// (a transport or kernel error) leaves them blocked in the next collective; aborting wakes them
// with `aborted`, so every call returns. Errors every rank detects identically before any
// collective (invalid_argument, not_found, resource_exhausted) need no abort.
#include "apps/sharded_decoder.hpp"

#include <condition_variable>
#include <mutex>
#include <system_error>
#include <thread>

#include "transport/transport.hpp"

namespace helix::apps {
namespace {

using model::decoder;
using model::model_weights;
using model::rank_program;
using model::rank_program_options;
using model::step_output;

std::size_t sz(std::int64_t n) {
  return static_cast<std::size_t>(n);
}

// Threads are real OS threads of this process; a four-digit rank count is a typo, not a layout.
constexpr std::int64_t max_ranks = 1024;

// Errors that rank_program guarantees to be a pure function of the call's inputs, hence the same
// on every rank and detected before any state changes: the decoder stays usable.
bool is_deterministic(errc code) {
  return code == errc::invalid_argument || code == errc::not_found ||
         code == errc::resource_exhausted;
}

enum class job_kind : std::uint8_t {
  create,
  open_sequence,
  close_sequence,
  append_synthetic,
  forward_logits,
  forward_output,
};

// What every rank does for one call. Written by the caller before posting; read-only while the
// ranks run (the mailbox mutex orders the write before the ranks' reads).
struct job {
  job_kind kind = job_kind::create;
  const model_weights* full = nullptr;  // create
  const rank_program_options* options = nullptr;
  std::uint64_t seq = 0;
  std::int64_t num_tokens = 0;
  std::uint64_t seed = 0;
  std::span<const decoder::batch_item> items;
  std::span<const std::int64_t> owners;  // placement of the blocks the call opens
  std::span<float> logits;               // forward_logits: rank 0's destination
  const step_output* out = nullptr;      // forward_output: rank 0's destination
};

// One rank: its thread, its mailbox and what its thread owns.
struct rank_slot {
  std::int64_t rank = 0;
  std::thread thread;

  // Mailbox. `posted` counts jobs handed to this rank; the thread runs one job per increment.
  std::mutex mu;
  std::condition_variable cv;
  std::uint64_t posted = 0;
  bool stop = false;

  // Touched only by the rank's thread while a job runs, and by the caller between jobs.
  std::unique_ptr<rank_program> program;
  status result;
  std::uint64_t seq_result = 0;
  // Ranks other than 0 write their (identical) copy of the outputs here; grown, never shrunk, so
  // steady-state steps allocate nothing.
  std::vector<float> logits_scratch;
  std::vector<std::int32_t> tokens_scratch;
};

}  // namespace

struct sharded_decoder::impl {
  helix::layout layout;
  model_spec spec;
  // Declared before the slots: communicators (owned by the programs) must die before the fabric.
  std::unique_ptr<transport::fabric> fab;
  std::vector<std::unique_ptr<rank_slot>> slots;

  job current;
  // Completion: the number of ranks still running the current job.
  std::mutex done_mu;
  std::condition_variable done_cv;
  std::int64_t pending = 0;

  status broken;  // not ok once a non-deterministic failure aborted the fabric

  // Placement (the engine's part): decided here, handed to every rank with each call.
  std::unique_ptr<planner::placement_book> book;
  std::vector<std::int64_t> owners;  // reused across steps

  // Plans the blocks the items open. Unknown sequences are skipped: the ranks reject the step
  // with the decoder's error for them before looking at the owners.
  status plan_step(std::span<const decoder::batch_item> items) {
    owners.clear();
    for (const decoder::batch_item& it : items) {
      if (!book->contains(it.seq)) continue;
      HELIX_RETURN_IF_ERROR(
          book->plan(it.seq, static_cast<std::int64_t>(it.tokens.size()), owners));
    }
    return ok_status();
  }
  // Records a step every rank completed, and advances the step clock.
  status commit_step(std::span<const decoder::batch_item> items) {
    for (const decoder::batch_item& it : items) {
      HELIX_RETURN_IF_ERROR(book->commit(it.seq, static_cast<std::int64_t>(it.tokens.size())));
    }
    book->tick();
    return ok_status();
  }

  ~impl() { stop_all(); }

  void stop_all() {
    for (auto& s : slots) {
      {
        std::lock_guard lk(s->mu);
        s->stop = true;
      }
      s->cv.notify_one();
    }
    for (auto& s : slots) {
      if (s->thread.joinable()) s->thread.join();
    }
  }

  // Runs `current` on every rank and returns when all have finished.
  void run_all() {
    {
      std::lock_guard lk(done_mu);
      pending = static_cast<std::int64_t>(slots.size());
    }
    for (auto& s : slots) {
      {
        std::lock_guard lk(s->mu);
        ++s->posted;
      }
      s->cv.notify_one();
    }
    std::unique_lock lk(done_mu);
    done_cv.wait(lk, [&] { return pending == 0; });
  }

  // The thread of one rank: sleep until a job is posted or stop is requested.
  void rank_loop(rank_slot& s) {
    std::uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock lk(s.mu);
        s.cv.wait(lk, [&] { return s.stop || s.posted != seen; });
        if (s.posted == seen) return;  // stop, and no job left
        seen = s.posted;
      }
      s.result = run_job(s);
      // Wake peers blocked in a collective this rank will never join.
      if (!s.result.ok() && !is_deterministic(s.result.code()) &&
          current.kind != job_kind::create) {
        fab->abort(s.result.with_context(fmt::format("rank {}", s.rank)));
      }
      std::lock_guard lk(done_mu);
      if (--pending == 0) done_cv.notify_one();
    }
  }

  status run_job(rank_slot& s) {
    const job& j = current;
    switch (j.kind) {
      case job_kind::create:
        return create_program(s);
      case job_kind::open_sequence:
        s.seq_result = s.program->open_sequence();
        return ok_status();
      case job_kind::close_sequence:
        return s.program->close_sequence(j.seq);
      case job_kind::append_synthetic:
        return s.program->append_synthetic(j.seq, j.num_tokens, j.seed, j.owners);
      case job_kind::forward_logits: {
        if (s.rank == 0) return s.program->forward(j.items, j.owners, j.logits);
        // The same span size as rank 0's, so a wrong size fails identically on every rank.
        return s.program->forward(j.items, j.owners, scratch_logits(s, j.logits.size()));
      }
      case job_kind::forward_output: {
        if (s.rank == 0) return s.program->forward(j.items, j.owners, *j.out);
        step_output o = *j.out;
        if (!o.logits.empty()) o.logits = scratch_logits(s, o.logits.size());
        if (!o.tokens.empty()) {
          if (s.tokens_scratch.size() < o.tokens.size()) s.tokens_scratch.resize(o.tokens.size());
          o.tokens = std::span<std::int32_t>(s.tokens_scratch.data(), o.tokens.size());
        }
        return s.program->forward(j.items, j.owners, o);
      }
    }
    return internal_error("sharded_decoder: unknown job");
  }

  static std::span<float> scratch_logits(rank_slot& s, std::size_t n) {
    if (s.logits_scratch.size() < n) s.logits_scratch.resize(n);
    return {s.logits_scratch.data(), n};
  }

  status create_program(rank_slot& s) {
    const int r = static_cast<int>(s.rank);
    HELIX_ASSIGN_OR_RETURN(auto world, fab->make_world(r));
    std::vector<int> group;
    for (std::int64_t g : layout.kvp_group(layout.attention_coords(s.rank).tpa_idx)) {
      group.push_back(static_cast<int>(g));
    }
    HELIX_ASSIGN_OR_RETURN(auto kvp, fab->make_communicator(r, group));
    HELIX_ASSIGN_OR_RETURN(s.program,
                           rank_program::create(*current.full, layout, s.rank, std::move(world),
                                                std::move(kvp), *current.options));
    return ok_status();
  }

  // Collects the ranks' outcome of the last job: ok, the shared deterministic error, or (after
  // marking the decoder broken) the first failure.
  status collect(std::string_view what) {
    const status& first = slots.front()->result;
    bool agree = true;
    for (const auto& s : slots) agree = agree && s->result.code() == first.code();
    if (agree && (first.ok() || is_deterministic(first.code()))) return first;
    // The first failure is the abort reason if some rank aborted; otherwise (ranks that disagree
    // on a deterministic error, which rank_program rules out) the lowest failing rank's error.
    status reason = fab->abort_status();
    if (reason.ok()) {
      for (const auto& s : slots) {
        if (!s->result.ok()) {
          reason = s->result.with_context(
              fmt::format("rank {} (ranks disagree on the outcome)", s->rank));
          break;
        }
      }
      // Ranks that disagree hold diverged state: stop every later collective.
      fab->abort(reason);
    }
    broken = reason;
    return reason.with_context(fmt::format("sharded_decoder: {}", what));
  }

  status check_usable() const {
    if (broken.ok()) return ok_status();
    return failed_precondition("sharded_decoder: broken by an earlier failure: {}",
                               broken.to_string());
  }
};

expected<std::unique_ptr<sharded_decoder>> sharded_decoder::create(
    const model_weights& full, const sharded_decoder_options& options) {
  // Checked here, once, so that a bad layout never starts a thread; every rank would fail the
  // same way in rank_program::create.
  HELIX_RETURN_IF_ERROR(full.spec.validate());
  HELIX_RETURN_IF_ERROR(validate(options.layout, full.spec));
  if (options.layout.num_ranks > max_ranks) {
    return invalid_argument("sharded_decoder: {} ranks (at most {} threads of one process)",
                            options.layout.num_ranks, max_ranks);
  }
  auto p = std::make_unique<impl>();
  p->layout = options.layout;
  p->spec = full.spec;
  HELIX_ASSIGN_OR_RETURN(p->fab,
                         transport::make_local_fabric(static_cast<int>(options.layout.num_ranks)));
  p->slots.reserve(sz(options.layout.num_ranks));
  impl& self = *p;
  for (std::int64_t r = 0; r < options.layout.num_ranks; ++r) {
    auto slot = std::make_unique<rank_slot>();
    slot->rank = r;
    rank_slot& s = *slot;
    p->slots.push_back(std::move(slot));
    // std::thread reports failure by throwing; this is the edge where that becomes a status
    // (the impl's destructor joins the threads already started).
    try {
      s.thread = std::thread([&self, &s] { self.rank_loop(s); });
    } catch (const std::system_error& e) {
      return resource_exhausted("sharded_decoder: cannot start the thread of rank {}: {}", r,
                                e.what());
    }
  }
  p->current = job{};
  p->current.kind = job_kind::create;
  p->current.full = &full;
  p->current.options = &options.rank;
  p->run_all();
  // rank_program::create does not communicate, so a failing rank leaves no peer waiting.
  for (const auto& s : p->slots) HELIX_RETURN_IF_ERROR(s->result);
  // After the ranks accepted the options (block_tokens among them).
  p->book = std::make_unique<planner::placement_book>(options.layout, options.rank.block_tokens);
  return std::make_unique<sharded_decoder>(passkey{}, std::move(p));
}

sharded_decoder::sharded_decoder(passkey, std::unique_ptr<impl> p) : p_(std::move(p)) {}

// impl's destructor stops and joins the rank threads; every rank is idle between calls (a call
// returns only after all ranks finished, aborted ones included), so the joins cannot hang.
sharded_decoder::~sharded_decoder() = default;

const helix::layout& sharded_decoder::grid() const {
  return p_->layout;
}
const model_spec& sharded_decoder::spec() const {
  return p_->spec;
}
std::int64_t sharded_decoder::num_ranks() const {
  return p_->layout.num_ranks;
}

expected<std::uint64_t> sharded_decoder::open_sequence() {
  HELIX_RETURN_IF_ERROR(p_->check_usable());
  p_->current = job{};
  p_->current.kind = job_kind::open_sequence;
  p_->run_all();
  HELIX_RETURN_IF_ERROR(p_->collect("open_sequence"));
  const std::uint64_t id = p_->slots.front()->seq_result;
  for (const auto& s : p_->slots) {
    if (s->seq_result != id) {
      p_->fab->abort(internal_error("sharded_decoder: rank {} opened sequence {}, rank 0 {}",
                                    s->rank, s->seq_result, id));
      p_->broken = p_->fab->abort_status();
      return p_->broken;
    }
  }
  HELIX_RETURN_IF_ERROR(p_->book->join(id));
  return id;
}

status sharded_decoder::close_sequence(std::uint64_t seq) {
  HELIX_RETURN_IF_ERROR(p_->check_usable());
  p_->current = job{};
  p_->current.kind = job_kind::close_sequence;
  p_->current.seq = seq;
  p_->run_all();
  HELIX_RETURN_IF_ERROR(p_->collect("close_sequence"));
  return p_->book->leave(seq);
}

expected<std::int64_t> sharded_decoder::sequence_length(std::uint64_t seq) const {
  HELIX_RETURN_IF_ERROR(p_->check_usable());
  // Every rank holds the same table view, and the ranks are idle between calls: rank 0's answer
  // is everyone's, read without a round trip through the mailboxes.
  return p_->slots.front()->program->sequence_length(seq);
}

status sharded_decoder::append_synthetic(std::uint64_t seq, std::int64_t num_tokens,
                                         std::uint64_t seed) {
  HELIX_RETURN_IF_ERROR(p_->check_usable());
  if (!p_->book->contains(seq)) return not_found("sharded_decoder: unknown sequence {}", seq);
  if (num_tokens < 0) return invalid_argument("sharded_decoder: {} synthetic tokens", num_tokens);
  p_->owners.clear();
  HELIX_RETURN_IF_ERROR(p_->book->plan(seq, num_tokens, p_->owners));
  p_->current = job{};
  p_->current.kind = job_kind::append_synthetic;
  p_->current.seq = seq;
  p_->current.num_tokens = num_tokens;
  p_->current.seed = seed;
  p_->current.owners = p_->owners;
  p_->run_all();
  HELIX_RETURN_IF_ERROR(p_->collect("append_synthetic"));
  return p_->book->commit(seq, num_tokens);
}

status sharded_decoder::forward(std::span<const batch_item> items, std::span<float> logits) {
  HELIX_RETURN_IF_ERROR(p_->check_usable());
  p_->current = job{};
  HELIX_RETURN_IF_ERROR(p_->plan_step(items));
  p_->current.kind = job_kind::forward_logits;
  p_->current.items = items;
  p_->current.owners = p_->owners;
  p_->current.logits = logits;
  p_->run_all();
  HELIX_RETURN_IF_ERROR(p_->collect("forward"));
  return p_->commit_step(items);
}

status sharded_decoder::forward(std::span<const batch_item> items, const step_output& out) {
  HELIX_RETURN_IF_ERROR(p_->check_usable());
  p_->current = job{};
  HELIX_RETURN_IF_ERROR(p_->plan_step(items));
  p_->current.kind = job_kind::forward_output;
  p_->current.items = items;
  p_->current.owners = p_->owners;
  p_->current.out = &out;
  p_->run_all();
  HELIX_RETURN_IF_ERROR(p_->collect("forward"));
  return p_->commit_step(items);
}

void sharded_decoder::abort(const status& reason) {
  p_->fab->abort(reason);
}

std::vector<rank_stats> sharded_decoder::stats() const {
  // Read from the caller's thread: the ranks are idle between calls and the completion handshake
  // (done_mu) orders their last writes before these reads.
  std::vector<rank_stats> out;
  out.reserve(p_->slots.size());
  for (const auto& s : p_->slots) {
    const rank_program& prog = *s->program;
    rank_stats st;
    st.rank = s->rank;
    st.kv_used_slots = prog.kv().used_slots();
    st.kv_num_slots = prog.kv().num_slots();
    st.kv_bytes_used = st.kv_used_slots * static_cast<std::int64_t>(prog.kv().slot_bytes());
    st.kv_bytes_read_last_step = prog.kv_bytes_read_last_step();
    out.push_back(st);
  }
  return out;
}

}  // namespace helix::apps
