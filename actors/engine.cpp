// The embedding API over the actor runtime: builds the weights, the layout, the ranks' computes
// and the actors, and turns the API's calls into messages to the engine actor.
#include "actors/engine.hpp"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <thread>

#include "actors/runtime.hpp"
#include "actors/worker_source.hpp"
#include "core/checked_math.hpp"
#include "core/log.hpp"
#include "core/memory.hpp"
#include "kernels/sampling.hpp"
#include "model/checkpoint.hpp"
#include "model/hf_config.hpp"
#include "model/sharding.hpp"
#include "model/weights.hpp"
#include "planner/cost_model.hpp"
#include "transport/transport.hpp"

namespace helix::actors {
namespace {

constexpr std::int64_t max_workers = 1024;  // threads of one process
constexpr std::int64_t max_capacity_tokens = std::int64_t{1} << 40;
constexpr std::int64_t max_step_tokens = std::int64_t{1} << 20;
constexpr std::int64_t max_queue = std::int64_t{1} << 24;
constexpr int max_threads_per_worker = 256;
constexpr double max_rebalance_threshold = 1.0;
// How long shutdown waits for a step in flight before it aborts the data plane.
constexpr auto drain_timeout = std::chrono::seconds(120);
// How long stats() from a client thread waits for the engine actor before it answers with the
// snapshot the actor published last.
constexpr auto stats_timeout = std::chrono::seconds(5);
// Room kept free beside weights and KV for workspaces, the actor system and the host program.
constexpr double memory_slack_bytes = 256.0 * (1 << 20);

std::shared_ptr<spdlog::logger> logger() {
  static const auto l = module_logger("actors");
  return l;
}

// The built-in model of a config: its name, or tiny-llama when neither model nor checkpoint is
// given.
std::string builtin_name(const engine_config& c) {
  return c.model.empty() ? "tiny-llama" : c.model;
}

// KV bytes one token takes on a worker holding `kv_heads` heads (all layers).
std::int64_t kv_bytes_per_token(const model_spec& s, const layout& l, dtype kv_type) {
  const std::int64_t per_layer =
      s.is_mla() ? s.kv_key_dim()
                 : 2 * s.head_dim *
                       std::max<std::int64_t>(1, s.num_kv_heads / std::min(l.tpa, s.num_kv_heads));
  return per_layer * s.num_layers * static_cast<std::int64_t>(dtype_bytes(kv_type));
}

planner::precision to_precision(dtype t) {
  switch (t) {
    case dtype::f32:
      return planner::precision::f32;
    case dtype::fp8_e4m3:
      return planner::precision::fp8;
    default:
      return planner::precision::bf16;
  }
}

// "auto": the layout the planner's cost model finds fastest for this machine (the `cpu` preset,
// the device this build's workers run on) at a context as long as a worker's KV capacity and a
// batch of 8, among the layouts the runtime runs.
expected<layout> choose_auto_layout(const model_spec& s, const engine_config& c) {
  HELIX_ASSIGN_OR_RETURN(const planner::hardware hw, planner::hardware_preset("cpu"));
  return planner::choose_runtime_layout(s, hw, c.num_workers, c.kv_capacity_tokens_per_worker, 8,
                                        to_precision(c.weight_type), to_precision(c.kv_type));
}

// Peak memory of create(): the full weights (held while the ranks copy their slices), every
// rank's slices, every rank's KV store, and some slack. resource_exhausted naming both figures
// when it exceeds what this process may allocate.
status check_memory(const model_spec& s, const layout& grid, const engine_config& c,
                    std::int64_t slots) {
  const model::weights_size w = model::weights_bytes(s, c.weight_type);
  const double n = static_cast<double>(grid.num_ranks);
  const double shards = n * w.replicated + static_cast<double>(grid.kvp) * w.per_column + w.split;
  const double kv = static_cast<double>(slots) * static_cast<double>(c.block_tokens) *
                    static_cast<double>(kv_bytes_per_token(s, grid, c.kv_type)) * n;
  const double need = w.total() + shards + kv + memory_slack_bytes;
  const memory_headroom avail = available_memory();
  if (need <= static_cast<double>(avail.bytes)) return ok_status();
  const auto bytes = [](double v) {
    return format_bytes(static_cast<std::uint64_t>(std::min(v, 1.8e19)));
  };
  return resource_exhausted(
      "engine config: model '{}' on {} workers ({}) needs about {} (weights {}, their {} rank "
      "slices {}, KV stores {}), more than the {} this process can allocate ({}); use fewer "
      "workers, a smaller weight_type or kv_capacity_tokens_per_worker",
      s.name, grid.num_ranks, grid.to_string(), bytes(need), bytes(w.total()), grid.num_ranks,
      bytes(shards), bytes(kv), format_bytes(avail.bytes), avail.limited_by);
}

}  // namespace

status validate(const engine_config& c) {
  auto bad = [](std::string_view field, auto value, std::string_view rule) {
    return invalid_argument("{} = {} {}", field, value, rule);
  };
  auto in_range = [&](std::string_view field, std::int64_t v, std::int64_t lo,
                      std::int64_t hi) -> status {
    if (v >= lo && v <= hi) return ok_status();
    return bad(field, v, fmt::format("must be in [{}, {}]", lo, hi));
  };
  if (!c.model.empty() && !c.checkpoint.empty()) {
    return invalid_argument(
        "model = '{}' and checkpoint = '{}' are both set; give one (a checkpoint's config.json "
        "names its model)",
        c.model, c.checkpoint);
  }
  HELIX_RETURN_IF_ERROR(in_range("num_workers", c.num_workers, 1, max_workers));
  if (c.device != "cpu") return bad("device", c.device, "is not available (this build: cpu)");
  if (c.kv_type != dtype::f32 && c.kv_type != dtype::bf16 && c.kv_type != dtype::f16 &&
      c.kv_type != dtype::fp8_e4m3) {
    return bad("kv_type", dtype_name(c.kv_type), "is not a KV storage dtype");
  }
  if (c.weight_type != dtype::f32 && c.weight_type != dtype::bf16 && c.weight_type != dtype::f16 &&
      c.weight_type != dtype::fp8_e4m3) {
    return bad("weight_type", dtype_name(c.weight_type), "must be f32, bf16, f16 or fp8_e4m3");
  }
  HELIX_RETURN_IF_ERROR(in_range("block_tokens", c.block_tokens, 1, 1 << 16));
  if (c.kv_capacity_tokens_per_worker < c.block_tokens ||
      c.kv_capacity_tokens_per_worker > max_capacity_tokens) {
    return bad(
        "kv_capacity_tokens_per_worker", c.kv_capacity_tokens_per_worker,
        fmt::format("must be in [block_tokens = {}, {}]", c.block_tokens, max_capacity_tokens));
  }
  HELIX_RETURN_IF_ERROR(in_range("max_batch_tokens", c.max_batch_tokens, 1, max_step_tokens));
  HELIX_RETURN_IF_ERROR(
      in_range("prefill_chunk_tokens", c.prefill_chunk_tokens, 1, max_step_tokens));
  HELIX_RETURN_IF_ERROR(in_range("max_queued_requests", c.max_queued_requests, 1, max_queue));
  HELIX_RETURN_IF_ERROR(
      in_range("threads_per_worker", c.threads_per_worker, 1, max_threads_per_worker));
  if (!std::isfinite(c.rebalance_threshold) || !(c.rebalance_threshold > 0.0) ||
      c.rebalance_threshold > max_rebalance_threshold) {
    return bad("rebalance_threshold", c.rebalance_threshold,
               fmt::format("must be in (0, {}]", max_rebalance_threshold));
  }
  HELIX_RETURN_IF_ERROR(
      in_range("rebalance_min_blocks", c.rebalance_min_blocks, 0, max_capacity_tokens));
  const std::int64_t slots = ceil_div(c.kv_capacity_tokens_per_worker, c.block_tokens);
  if (admission_blocks(slots, c.rebalance_threshold) < 2) {
    return bad("kv_capacity_tokens_per_worker", c.kv_capacity_tokens_per_worker,
               fmt::format("is too small: {} blocks of {} tokens leave no room for a request "
                           "beside rebalancing's reserve",
                           slots, c.block_tokens));
  }
  if (!c.log_level.empty()) {
    const std::string_view levels[] = {"trace", "debug", "info", "warn", "error", "off"};
    if (std::find(std::begin(levels), std::end(levels), c.log_level) == std::end(levels)) {
      return bad("log_level", c.log_level, "must be trace, debug, info, warn, error or off");
    }
  }
  HELIX_RETURN_IF_ERROR(in_range("peer_timeout_ms", c.peer_timeout_ms, 1, 3600000));
  if (c.recovery != "off" && c.recovery != "lost_blocks" && c.recovery != "full_replay") {
    return bad("recovery", c.recovery, "must be off, lost_blocks or full_replay");
  }
  if (c.elastic_leave != "refuse" && c.elastic_leave != "wait") {
    return bad("elastic_leave", c.elastic_leave, "must be refuse or wait");
  }
  if (c.elastic_policy != "auto" && c.elastic_policy != "off") {
    return bad("elastic_policy", c.elastic_policy, "must be auto or off");
  }
  return ok_status();
}

// CAF 0.17 keeps the actor system's logger in a thread-local of every thread that built the
// system or a scoped actor, and ~actor_system waits until each such reference is gone: a
// caller's thread that ever called stats() and lives on would block the engine's destructor
// forever. Every API call that touched CAF on a caller's thread drops that reference after.
void forget_system_on_this_thread() {
  caf::logger::set_current_actor_system(nullptr);
}

struct engine::impl {
  engine_config config;
  layout grid;
  std::int64_t vocab = 0;
  std::int64_t capacity_blocks = 0;
  std::int64_t admission_blocks = 0;  // what admission may reserve per member (runtime.hpp)
  // Declared first, destroyed last: it owns what the workers use (data plane, processes).
  std::unique_ptr<worker_source> source;
  caf::actor_system_config cfg;
  std::unique_ptr<caf::actor_system> sys;
  // The current workers (recovery replaces them) and the KVP size admission checks against.
  std::shared_ptr<worker_roster> roster = std::make_shared<worker_roster>();
  caf::actor planner;
  caf::actor engine_actor;
  std::shared_ptr<stream_registry> registry = std::make_shared<stream_registry>();
  std::atomic<std::uint64_t> next_id{1};
  std::atomic<std::int64_t> refused{0};

  ~impl() {
    if (!sys) return;
    {
      caf::scoped_actor self{*sys};
      bool drained = false;
      self->request(engine_actor, drain_timeout, drain_atom::value)
          .receive([&] { drained = true; }, [&](caf::error&) {});
      // A step that never finished (a worker stuck in a collective) is woken by the abort.
      if (!drained && source) source->abort(status(errc::cancelled, "engine shutting down"));
      self->send_exit(engine_actor, caf::exit_reason::user_shutdown);
      self->send_exit(planner, caf::exit_reason::user_shutdown);
      std::lock_guard lk(roster->mu);
      for (const caf::actor& w : roster->workers) {
        self->send_exit(w, caf::exit_reason::user_shutdown);
      }
    }
    forget_system_on_this_thread();
    engine_actor = nullptr;
    planner = nullptr;
    {
      std::lock_guard lk(roster->mu);
      roster->workers.clear();
    }
    sys->await_all_actors_done();
    sys.reset();
  }
};

expected<std::unique_ptr<engine>> engine::create(const engine_config& config) {
  return create(config, nullptr);
}

expected<std::unique_ptr<engine>> engine::create(const engine_config& config,
                                                 std::unique_ptr<worker_source> source) {
  // Allocation failures the checks in build() did not foresee (std::bad_alloc from a container)
  // end here as errors: the engine is a library inside someone else's process and never takes it
  // down.
  try {
    HELIX_ASSIGN_OR_RETURN(auto p, build(config, std::move(source)));
    return std::make_unique<engine>(passkey{}, std::move(p));
  } catch (const std::bad_alloc&) {
    return resource_exhausted("engine::create: out of memory while building the engine");
  } catch (const std::exception& e) {
    return internal_error("engine::create: {}", e.what());
  }
}

expected<std::unique_ptr<engine::impl>> engine::build(const engine_config& config,
                                                      std::unique_ptr<worker_source> source) {
  HELIX_RETURN_IF_ERROR(validate(config).with_context("engine config"));
  if (!config.log_level.empty()) HELIX_RETURN_IF_ERROR(set_log_level(config.log_level));
  // Everything that needs no weights is checked before any is built: the model's shape, the
  // layout's rules, and whether weights and KV fit in memory.
  model_spec s;
  if (!config.checkpoint.empty()) {
    HELIX_ASSIGN_OR_RETURN(s, model::load_hf_config(config.checkpoint));
  } else {
    HELIX_ASSIGN_OR_RETURN(s, builtin_model(builtin_name(config)));
  }
  layout grid;
  if (config.layout == "auto") {
    HELIX_ASSIGN_OR_RETURN(grid, choose_auto_layout(s, config));
  } else {
    HELIX_ASSIGN_OR_RETURN(grid, layout::parse(config.layout));
    HELIX_RETURN_IF_ERROR(validate(grid, s).with_context("engine config: layout"));
    if (grid.num_ranks != config.num_workers) {
      return invalid_argument("engine config: layout {} has {} ranks but num_workers = {}",
                              grid.to_string(), grid.num_ranks, config.num_workers);
    }
  }
  const std::int64_t slots = ceil_div(config.kv_capacity_tokens_per_worker, config.block_tokens);
  HELIX_RETURN_IF_ERROR(check_memory(s, grid, config, slots));

  auto p = std::make_unique<impl>();
  p->config = config;
  p->config.layout = grid.to_string();
  p->config.num_workers = static_cast<int>(grid.num_ranks);
  p->grid = grid;
  p->vocab = s.vocab;
  p->capacity_blocks = slots;
  p->admission_blocks = admission_blocks(slots, config.rebalance_threshold);
  p->source = source ? std::move(source) : in_process_workers();
  p->source->configure(p->cfg);
  p->cfg.add_message_types<caf::id_block::helix_actors>();
  p->cfg.set("scheduler.max-threads", 2);
  // Work sharing wakes an idle scheduler thread at once; work stealing's idle threads poll with
  // sleeps of up to 10 ms, which put ~10 ms on every control message between processes.
  p->cfg.set("scheduler.policy", caf::atom("sharing"));
  p->cfg.set("logger.verbosity", caf::atom("quiet"));
  p->sys = std::make_unique<caf::actor_system>(p->cfg);
  auto workers = p->source->start(*p->sys, p->config, grid);
  if (!workers) {
    p->sys->await_all_actors_done();
    return workers.error();
  }
  {
    std::lock_guard lk(p->roster->mu);
    p->roster->workers = *workers;
    p->roster->kvp = grid.kvp;
    p->roster->info = p->source->workers();
  }
  p->planner = p->sys->spawn(planner_actor, grid, config.block_tokens, config.rebalance_threshold,
                             config.rebalance_min_blocks);
  engine_setup setup;
  setup.config = p->config;
  setup.grid = grid;
  setup.spec = s;
  setup.vocab = s.vocab;
  setup.capacity_blocks_per_worker = slots;
  setup.admission_blocks_per_worker = p->admission_blocks;
  setup.roster = p->roster;
  worker_source* source_ptr = p->source.get();  // outlives the actor system (impl's order)
  caf::actor_system* sys_ptr = p->sys.get();
  setup.workers_info = [source_ptr] { return source_ptr->workers(); };
  setup.abort_data_plane = [source_ptr](const status& why) { source_ptr->abort(why); };
  // Recoveries (engine_config::recovery) and planned joins and leaves rebuild the workers.
  setup.relayout = [source_ptr, sys_ptr, cfg = p->config](
                       const layout& g, const std::vector<std::int64_t>& survivors,
                       const std::vector<std::int64_t>& standby,
                       const std::vector<std::int64_t>& donors,
                       const std::vector<std::int64_t>& leaving) {
    engine_config c = cfg;
    c.layout = g.to_string();
    c.num_workers = static_cast<int>(g.num_ranks);
    return source_ptr->relayout(*sys_ptr, c, g, survivors, standby, donors, leaving);
  };
  setup.standbys = [source_ptr] { return source_ptr->standbys(); };
  setup.prune_standbys = [source_ptr, sys_ptr] { source_ptr->prune_standbys(*sys_ptr); };
  setup.dead = [source_ptr] { return source_ptr->dead(); };
  // A join adds ranks: their shards and KV stores must fit (checked as at create, for the
  // largest layout the members could take).
  setup.add_members = [source_ptr, sys_ptr, cfg = p->config, s, slots](const layout& g,
                                                                       std::int64_t count) {
    const std::int64_t members = g.num_ranks + source_ptr->standbys() + count;
    if (auto bigger = default_layout(g.family, members, s)) {
      HELIX_RETURN_IF_ERROR(check_memory(s, *bigger, cfg, slots));
    }
    engine_config c = cfg;
    c.layout = g.to_string();
    c.num_workers = static_cast<int>(g.num_ranks);
    return source_ptr->add_members(*sys_ptr, c, g, count);
  };
  setup.block_bytes = [s, bt = config.block_tokens, kv = config.kv_type](const layout& g) {
    return bt * kv_bytes_per_token(s, g, kv) * g.tpa;
  };
  // The elastic policy's prediction: the planner's step time on this machine's preset.
  setup.predict_step_s = [s, w = to_precision(config.weight_type),
                          kv = to_precision(config.kv_type)](const layout& g, std::int64_t batch,
                                                             std::int64_t context) {
    static const auto hw = planner::hardware_preset("cpu");
    if (!hw || batch < 1 || context < 1) return -1.0;
    planner::plan_workload wl;
    wl.context = context;
    wl.weights = w;
    wl.kv = kv;
    wl.compute = std::max(w, kv);
    wl.activations = planner::precision::bf16;
    planner::plan_config c;
    c.family = g.family == layout_family::tp      ? planner::plan_family::tp
               : g.family == layout_family::medha ? planner::plan_family::medha
                                                  : planner::plan_family::helix;
    c.num_devices = g.num_ranks;
    c.kvp = g.kvp;
    c.tpa = g.tpa;
    c.tpf = g.tpf;
    c.ep = g.ep;
    c.batch = batch;
    const auto cost = planner::estimate_step(s, *hw, wl, c);
    return cost ? cost->step_s : -1.0;
  };
  p->engine_actor = spawn_engine(*p->sys, setup, std::move(*workers), p->planner, p->registry);
  p->source->watch(*p->sys, p->engine_actor);
  logger()->info("engine: {} on {} workers, layout {}, {} KV blocks of {} tokens per worker",
                 s.name, grid.num_ranks, grid.to_string(), slots, config.block_tokens);
  forget_system_on_this_thread();
  return p;
}

engine::engine(passkey, std::unique_ptr<impl> p) : p_(std::move(p)) {}
engine::~engine() = default;

std::int64_t engine::vocab() const {
  return p_->vocab;
}

std::int64_t engine::max_request_tokens() const {
  // blocks_reserved_per_member(t) = ceil(ceil(t / block) / kvp) + 1 <= admission_blocks.
  return std::max<std::int64_t>(0, (p_->admission_blocks - 1) * p_->roster->kvp.load()) *
         p_->config.block_tokens;
}

expected<request_handle> engine::submit(request_options request,
                                        std::function<void(const token_event&)> on_token) {
  expected<request_handle> h = try_submit(std::move(request), std::move(on_token));
  if (!h) {
    p_->refused.fetch_add(1);
    logger()->info("engine: request refused: {}", h.error());
  }
  return h;
}

expected<request_handle> engine::try_submit(request_options request,
                                            std::function<void(const token_event&)> on_token) {
  if (status failure = p_->registry->failure(); !failure.ok()) {
    return unavailable("submit: the engine failed and accepts no new requests: {}", failure);
  }
  if (request.prompt.empty()) return invalid_argument("submit: prompt is empty");
  for (std::size_t i = 0; i < request.prompt.size(); ++i) {
    const std::int32_t t = request.prompt[i];
    if (t < 0 || t >= p_->vocab) {
      return invalid_argument("submit: prompt[{}] = {} is outside the vocabulary [0, {})", i, t,
                              p_->vocab);
    }
  }
  for (std::size_t i = 0; i < request.stop_tokens.size(); ++i) {
    const std::int32_t t = request.stop_tokens[i];
    if (t < 0 || t >= p_->vocab) {
      return invalid_argument("submit: stop_tokens[{}] = {} is outside the vocabulary [0, {})", i,
                              t, p_->vocab);
    }
  }
  if (request.max_tokens < 1) {
    return invalid_argument("submit: max_tokens = {} must be >= 1", request.max_tokens);
  }
  const sampling_params& sp = request.sampling;
  HELIX_RETURN_IF_ERROR(
      kernels::validate(kernels::sampling_options{sp.temperature, sp.top_k, sp.top_p, sp.seed})
          .with_context("submit: sampling"));
  if (sp.top_k > p_->vocab) {
    return invalid_argument("submit: sampling: top_k = {} exceeds the vocabulary ({})", sp.top_k,
                            p_->vocab);
  }
  std::int64_t deadline_ns = 0;
  if (request.deadline) {
    const auto now = std::chrono::steady_clock::now();
    if (*request.deadline <= now) {
      return deadline_exceeded(
          "submit: deadline already passed {} ms ago",
          std::chrono::duration_cast<std::chrono::milliseconds>(now - *request.deadline).count());
    }
    deadline_ns =
        std::chrono::duration_cast<std::chrono::nanoseconds>(request.deadline->time_since_epoch())
            .count();
  }
  constexpr std::int64_t max_synthetic = std::int64_t{1} << 40;
  if (request.synthetic_context_tokens < 0 || request.synthetic_context_tokens > max_synthetic) {
    return invalid_argument("submit: synthetic_context_tokens = {} is outside [0, 2^40]",
                            request.synthetic_context_tokens);
  }
  // Both terms are at most 2^40 here (the prompt is a vector in memory), so the sum is exact.
  const auto prompt_len =
      static_cast<std::int64_t>(request.prompt.size()) + request.synthetic_context_tokens;
  const std::int64_t kvp = p_->roster->kvp.load();  // recovery may change it
  const std::int64_t need =
      blocks_reserved_per_member(prompt_len, request.max_tokens, p_->config.block_tokens, kvp);
  if (need > p_->admission_blocks) {
    return resource_exhausted(
        "submit: {} prompt tokens (synthetic context included) + max_tokens = {} need {} KV "
        "blocks on each of the {} KVP workers; each holds {}, of which {} can be reserved (the "
        "rest is room for rebalancing): this request can never fit",
        prompt_len, request.max_tokens,
        need == std::numeric_limits<std::int64_t>::max() ? std::string("more than INT64_MAX")
                                                         : std::to_string(need),
        kvp, p_->capacity_blocks, p_->admission_blocks);
  }
  if (static_cast<std::int64_t>(p_->registry->size()) >= p_->config.max_queued_requests) {
    return resource_exhausted("submit: {} requests in flight, the configured maximum",
                              p_->registry->size());
  }
  request_handle h;
  h.id = p_->next_id.fetch_add(1);
  h.stream = std::make_shared<token_stream>();
  p_->registry->add(h.id, h.stream, std::move(on_token));
  submit_msg m;
  m.request_id = h.id;
  m.prompt = std::move(request.prompt);
  m.temperature = sp.temperature;
  m.top_k = sp.top_k;
  m.top_p = sp.top_p;
  m.seed = sp.seed;
  m.max_tokens = request.max_tokens;
  m.stop_tokens = std::move(request.stop_tokens);
  m.deadline_ns = deadline_ns;
  m.synthetic_tokens = request.synthetic_context_tokens;
  m.synthetic_seed = request.synthetic_seed;
  m.return_logits = request.return_logits;
  caf::anon_send(p_->engine_actor, std::move(m));
  return h;
}

status engine::cancel(std::uint64_t request_id) {
  // The registry decides, so that an ok here always ends the request with `cancelled`; the
  // message only wakes the engine actor to act on it at the next step boundary.
  HELIX_RETURN_IF_ERROR(p_->registry->request_cancel(request_id));
  caf::anon_send(p_->engine_actor, cancel_atom::value, request_id);
  return ok_status();
}

namespace {

// More workers than one engine ever runs (each is a thread or a process with its KV store).
constexpr std::int64_t max_added_workers = 1024;

// Sends a planned change to the engine actor and waits for its end (or `timeout`).
template <class Atom>
status await_change(caf::actor_system& sys, const caf::actor& engine, const char* what, Atom atom,
                    std::int64_t arg, std::chrono::milliseconds timeout) {
  if (stream_registry::in_callback()) {
    return failed_precondition("{} cannot be called from a token callback", what);
  }
  if (timeout.count() <= 0) return invalid_argument("{}: timeout must be positive", what);
  status out = deadline_exceeded("{}: not done within {} ms", what, timeout.count());
  {
    caf::scoped_actor self{sys};
    self->request(engine, caf::timespan{timeout} + std::chrono::seconds(1), atom, arg,
                  static_cast<std::int64_t>(timeout.count()))
        .receive([&](wire_status& w) { out = from_wire(w); },
                 [&](caf::error& e) {
                   if (e != caf::sec::request_timeout) {
                     out = unavailable("{}: {}", what, caf::to_string(e));
                   }
                 });
  }
  forget_system_on_this_thread();
  return out;
}

}  // namespace

status engine::add_workers(std::int64_t count, std::chrono::milliseconds timeout) {
  if (count < 1 || count > max_added_workers) {
    return invalid_argument("add_workers: count = {} must be in [1, {}]", count, max_added_workers);
  }
  return await_change(*p_->sys, p_->engine_actor, "add_workers", grow_atom::value, count, timeout);
}

status engine::drain_worker(std::int64_t rank, std::chrono::milliseconds timeout) {
  if (rank < -1) return invalid_argument("drain_worker: rank = {} must be -1 or a rank", rank);
  return await_change(*p_->sys, p_->engine_actor, "drain_worker", shrink_atom::value, rank,
                      timeout);
}

engine_stats engine::stats() {
  engine_stats out;
  bool answered = false;
  if (!stream_registry::in_callback()) {
    caf::scoped_actor self{*p_->sys};
    self->request(p_->engine_actor, stats_timeout, stats_atom::value)
        .receive(
            [&](engine_stats& s) {
              out = std::move(s);
              answered = true;
            },
            [](caf::error&) {});
    forget_system_on_this_thread();
  }
  if (!answered) out = p_->registry->snapshot();
  // Health, failure and refusals live on this side (see messages.hpp).
  out.failure = p_->registry->failure();
  out.health = out.failure.ok() ? engine_health::serving : engine_health::failed;
  out.refused = p_->refused.load();
  return out;
}

namespace {

// The full model of `config`: loaded from its checkpoint, or seeded for a built-in model.
expected<model::model_weights> build_weights(const engine_config& config) {
  if (!config.checkpoint.empty()) {
    return model::load_checkpoint(config.checkpoint, config.weight_type);
  }
  HELIX_ASSIGN_OR_RETURN(const model_spec s, builtin_model(builtin_name(config)));
  return model::init_seeded_weights(s, config.weight_type, config.weight_seed);
}

model::rank_program_options program_options(const engine_config& config) {
  model::rank_program_options ro;
  ro.kv_type = config.kv_type;
  ro.block_tokens = config.block_tokens;
  ro.kv_capacity_tokens = config.kv_capacity_tokens_per_worker;
  ro.max_batch_tokens = config.max_batch_tokens;
  ro.num_threads = config.threads_per_worker;
  // Every worker's kernel threads fit on this host's cores (workers on other hosts are counted
  // too: the conservative side): they may spin between kernels instead of sleeping.
  const auto cores = static_cast<std::int64_t>(std::max(1u, std::thread::hardware_concurrency()));
  ro.spin_threads =
      static_cast<std::int64_t>(config.num_workers) * config.threads_per_worker <= cores;
  ro.hopb = config.hopb;
  return ro;
}

// Rank r's world and KVP-group communicators, and its handoff communicator when the fabric holds
// donors after the layout's ranks (null otherwise).
struct rank_communicators {
  std::unique_ptr<transport::communicator> world;
  std::unique_ptr<transport::communicator> kvp;
  std::unique_ptr<transport::communicator> handoff;
};

expected<rank_communicators> communicators_for(const layout& grid, std::int64_t r,
                                               transport::fabric& fab) {
  const int rank = static_cast<int>(r);
  rank_communicators out;
  if (fab.world_size() > grid.num_ranks) {
    std::vector<int> ranks;
    for (int i = 0; i < static_cast<int>(grid.num_ranks); ++i) ranks.push_back(i);
    HELIX_ASSIGN_OR_RETURN(out.world, fab.make_communicator(rank, ranks));
    HELIX_ASSIGN_OR_RETURN(out.handoff, fab.make_world(rank));
  } else {
    HELIX_ASSIGN_OR_RETURN(out.world, fab.make_world(rank));
  }
  std::vector<int> group;
  for (std::int64_t g : grid.kvp_group(grid.attention_coords(r).tpa_idx)) {
    group.push_back(static_cast<int>(g));
  }
  HELIX_ASSIGN_OR_RETURN(out.kvp, fab.make_communicator(rank, group));
  return out;
}

// Donor `rank` (>= grid.num_ranks) of a fabric that holds donors after the layout's ranks.
expected<std::shared_ptr<worker_compute>> donor_for(const layout& grid, std::int64_t rank,
                                                    transport::fabric& fab,
                                                    std::unique_ptr<model::carried_kv> carried) {
  HELIX_ASSIGN_OR_RETURN(auto handoff, fab.make_world(static_cast<int>(rank)));
  return std::shared_ptr<worker_compute>(
      std::make_shared<donor_compute>(std::move(carried), std::move(handoff), grid, rank));
}

expected<std::shared_ptr<worker_compute>> compute_for(const model::model_weights& weights,
                                                      const engine_config& config,
                                                      const layout& grid, std::int64_t r,
                                                      transport::fabric& fab,
                                                      std::unique_ptr<model::carried_kv> carried) {
  if (r >= grid.num_ranks) return donor_for(grid, r, fab, std::move(carried));
  HELIX_ASSIGN_OR_RETURN(rank_communicators comms, communicators_for(grid, r, fab));
  HELIX_ASSIGN_OR_RETURN(model::rank_weights w, model::shard_weights(weights, grid, r));
  HELIX_ASSIGN_OR_RETURN(
      auto compute, rank_compute::create(std::move(w), std::move(comms.world), std::move(comms.kvp),
                                         program_options(config), std::move(carried)));
  compute->set_handoff(std::move(comms.handoff));
  return std::shared_ptr<worker_compute>(std::move(compute));
}

// Stops `workers` and waits, at most `limit` in all, for each to end; which ones did.
std::vector<bool> stop_and_wait(caf::actor_system& sys, const std::vector<caf::actor_addr>& workers,
                                std::chrono::milliseconds limit) {
  std::vector<bool> ended(workers.size(), false);
  caf::scoped_actor self{sys};
  std::size_t left = workers.size();
  for (std::size_t i = 0; i < workers.size(); ++i) {
    const auto w = caf::actor_cast<caf::actor>(workers[i]);
    if (!w) {  // already gone
      ended[i] = true;
      --left;
      continue;
    }
    self->monitor(w);
    self->send_exit(w, caf::exit_reason::user_shutdown);
  }
  const auto until = std::chrono::steady_clock::now() + limit;
  while (left > 0) {
    const auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(
        until - std::chrono::steady_clock::now());
    if (wait.count() <= 0) break;
    bool timed_out = false;
    self->receive(
        [&](caf::down_msg& dm) {
          for (std::size_t i = 0; i < workers.size(); ++i) {
            if (workers[i] == dm.source && !ended[i]) {
              ended[i] = true;
              --left;
            }
          }
        },
        caf::after(wait) >> [&] { timed_out = true; });
    if (timed_out) break;
  }
  return ended;
}

// Every worker a detached actor of the engine's own system; one local fabric for them all.
class in_process_source final : public worker_source {
 public:
  explicit in_process_source(in_process_options o) : opt_(std::move(o)) {}

  expected<std::vector<caf::actor>> start(caf::actor_system& sys, const engine_config& config,
                                          const layout& grid) override {
    return make_workers(sys, config, grid, {});
  }
  // Every thread is still usable after a failure: the workers are rebuilt on the new layout
  // with a new data plane; the old fabric stays alive for the old workers until the end.
  expected<std::vector<caf::actor>> relayout(caf::actor_system& sys, const engine_config& config,
                                             const layout& grid,
                                             const std::vector<std::int64_t>& survivors,
                                             const std::vector<std::int64_t>& standby,
                                             const std::vector<std::int64_t>& donors,
                                             const std::vector<std::int64_t>& leaving) override {
    // The old workers end first (one may still be finishing the step the abort woke), so that
    // the survivors' KV can pass to their next computes (recovery, lost blocks only).
    const std::vector<bool> ended = stop_and_wait(sys, raw_, std::chrono::seconds(10));
    // Survivors' KV to their new ranks, donors' to the donor computes after them.
    std::vector<std::unique_ptr<model::carried_kv>> carried(
        static_cast<std::size_t>(grid.num_ranks) + donors.size());
    for (std::size_t i = 0; i < carried.size(); ++i) {
      const std::int64_t from = i < survivors.size() ? survivors[i]
                                : i >= static_cast<std::size_t>(grid.num_ranks)
                                    ? donors[i - static_cast<std::size_t>(grid.num_ranks)]
                                    : -1;
      const auto old = static_cast<std::size_t>(from);
      if (from >= 0 && old < computes_.size() && ended[old]) {
        carried[i] = computes_[old]->release_kv();
      }
    }
    if (fab_) retired_.push_back(std::move(fab_));
    const std::int64_t fresh = grid.num_ranks - static_cast<std::int64_t>(std::count_if(
                                                    survivors.begin(), survivors.end(),
                                                    [](std::int64_t r) { return r >= 0; }));
    auto out = make_workers(sys, config, grid, std::move(carried));
    if (!out) return out;
    // Threads without a rank: the standbys a relayout used up leave, the old members left
    // without one stand by, a leaver's thread ends.
    spare_ = std::max<std::int64_t>(0, spare_ - std::max<std::int64_t>(0, fresh)) +
             static_cast<std::int64_t>(standby.size() - leaving.size());
    return out;
  }
  status add_members(caf::actor_system&, const engine_config&, const layout&,
                     std::int64_t count) override {
    spare_ += count;
    return ok_status();
  }
  std::int64_t standbys() const override { return spare_; }
  void abort(const status& why) override {
    if (fab_) fab_->abort(why);
  }
  std::vector<worker_info> workers() const override {
    std::vector<worker_info> out;
    for (std::int64_t r = 0; r < count_; ++r) {
      out.push_back(
          {r, static_cast<std::int64_t>(::getpid()), "localhost", fmt::format("thread-{}", r)});
    }
    return out;
  }

 private:
  expected<std::vector<caf::actor>> make_workers(
      caf::actor_system& sys, const engine_config& config, const layout& grid,
      std::vector<std::unique_ptr<model::carried_kv>> carried) {
    // Ranks of the layout, then donors (recovery): the fabric spans them all.
    const auto members =
        std::max<std::int64_t>(grid.num_ranks, static_cast<std::int64_t>(carried.size()));
    carried.resize(static_cast<std::size_t>(members));
    HELIX_ASSIGN_OR_RETURN(const model::model_weights weights, build_weights(config));
    HELIX_ASSIGN_OR_RETURN(
        fab_, transport::make_local_fabric(
                  {static_cast<int>(members), std::chrono::milliseconds(config.peer_timeout_ms)}));
    if (opt_.wrap_fabric) fab_ = opt_.wrap_fabric(std::move(fab_));
    std::vector<std::shared_ptr<worker_compute>> computes;
    for (std::int64_t r = 0; r < members; ++r) {
      HELIX_ASSIGN_OR_RETURN(auto c, compute_for(weights, config, grid, r, *fab_,
                                                 std::move(carried[static_cast<std::size_t>(r)])));
      computes.push_back(std::move(c));
    }
    std::vector<caf::actor> out;
    raw_.clear();
    const suspects_fn suspects = [f = fab_.get()] { return f->suspects(); };
    for (auto& c : computes) {
      caf::actor w = sys.spawn<caf::detached>(worker_actor, c, suspects);
      if (c->rank() < grid.num_ranks) raw_.push_back(w.address());  // donors end on their own
      if (opt_.wrap_worker && c->rank() < grid.num_ranks) {
        w = opt_.wrap_worker(sys, c->rank(), std::move(w));
      }
      out.push_back(std::move(w));
    }
    computes.resize(static_cast<std::size_t>(grid.num_ranks));
    computes_ = std::move(computes);
    count_ = grid.num_ranks;
    return out;
  }

  in_process_options opt_;
  std::unique_ptr<transport::fabric> fab_;
  std::vector<std::unique_ptr<transport::fabric>> retired_;  // used by stopped workers
  // The workers by rank, weakly: a strong handle here would keep a stopped detached worker's
  // thread waiting, and the actor system's shutdown with it.
  std::vector<caf::actor_addr> raw_;
  std::vector<std::shared_ptr<worker_compute>> computes_;  // theirs, by rank
  std::int64_t count_ = 0;
  std::int64_t spare_ = 0;  // members without a rank: a thread each once a relayout uses them
};

}  // namespace

expected<std::vector<caf::actor>> worker_source::relayout(caf::actor_system&, const engine_config&,
                                                          const layout&,
                                                          const std::vector<std::int64_t>&,
                                                          const std::vector<std::int64_t>&,
                                                          const std::vector<std::int64_t>&,
                                                          const std::vector<std::int64_t>&) {
  return failed_precondition("this worker source cannot rebuild its workers");
}

status worker_source::add_members(caf::actor_system&, const engine_config&, const layout&,
                                  std::int64_t) {
  return failed_precondition("this worker source cannot add workers");
}

std::unique_ptr<worker_source> in_process_workers() {
  return in_process_workers(in_process_options{});
}

std::unique_ptr<worker_source> in_process_workers(in_process_options options) {
  return std::make_unique<in_process_source>(std::move(options));
}

expected<std::shared_ptr<worker_compute>> make_rank_compute(
    const engine_config& config, const layout& grid, std::int64_t rank, transport::fabric& fab,
    std::unique_ptr<model::carried_kv> carried) {
  if (rank >= grid.num_ranks) return donor_for(grid, rank, fab, std::move(carried));
  // Only this rank's shards are ever built: read from the checkpoint's mapped files, or seeded
  // one full tensor at a time.
  model::rank_weights w;
  if (!config.checkpoint.empty()) {
    HELIX_ASSIGN_OR_RETURN(
        w, model::checkpoint_rank_weights(config.checkpoint, config.weight_type, grid, rank));
  } else {
    HELIX_ASSIGN_OR_RETURN(const model_spec s, builtin_model(builtin_name(config)));
    HELIX_ASSIGN_OR_RETURN(
        w, model::seeded_rank_weights(s, config.weight_type, config.weight_seed, grid, rank));
  }
  HELIX_ASSIGN_OR_RETURN(rank_communicators comms, communicators_for(grid, rank, fab));
  HELIX_ASSIGN_OR_RETURN(
      auto compute, rank_compute::create(std::move(w), std::move(comms.world), std::move(comms.kvp),
                                         program_options(config), std::move(carried)));
  compute->set_handoff(std::move(comms.handoff));
  return std::shared_ptr<worker_compute>(std::move(compute));
}

std::vector<worker_info> engine::workers() const {
  // The engine actor updates the roster at every relayout; the source is its to touch.
  std::lock_guard lk(p_->roster->mu);
  return p_->roster->info;
}

}  // namespace helix::actors
