// The embedding API over the actor runtime: builds the weights, the layout, the ranks' computes
// and the actors, and turns the API's calls into messages to the engine actor.
#include "actors/engine.hpp"

#include <atomic>

#include "actors/runtime.hpp"
#include "kernels/sampling.hpp"
#include "model/checkpoint.hpp"
#include "planner/cost_model.hpp"
#include "transport/transport.hpp"

namespace helix::actors {
namespace {

constexpr std::int64_t max_workers = 1024;  // threads of one process
// How long shutdown waits for a step in flight before it aborts the data plane.
constexpr auto drain_timeout = std::chrono::seconds(120);

status validate_config(const engine_config& c) {
  auto bad = [](std::string_view field, auto value, std::string_view rule) {
    return invalid_argument("engine config: {} = {} {}", field, value, rule);
  };
  if (c.num_workers < 1 || c.num_workers > max_workers) {
    return bad("num_workers", c.num_workers, fmt::format("must be in [1, {}]", max_workers));
  }
  if (c.device != "cpu") return bad("device", c.device, "is not available (this build: cpu)");
  if (c.kv_type != dtype::f32 && c.kv_type != dtype::bf16 && c.kv_type != dtype::f16 &&
      c.kv_type != dtype::fp8_e4m3) {
    return bad("kv_type", dtype_name(c.kv_type), "is not a KV storage dtype");
  }
  if (c.weight_type != dtype::f32 && c.weight_type != dtype::bf16 && c.weight_type != dtype::f16) {
    return bad("weight_type", dtype_name(c.weight_type), "must be f32, bf16 or f16");
  }
  if (c.block_tokens < 1 || c.block_tokens > (1 << 16)) {
    return bad("block_tokens", c.block_tokens, "must be in [1, 65536]");
  }
  if (c.kv_capacity_tokens_per_worker < c.block_tokens) {
    return bad("kv_capacity_tokens_per_worker", c.kv_capacity_tokens_per_worker,
               "must hold at least one block");
  }
  if (c.max_batch_tokens < 1 || c.max_batch_tokens > (1 << 20)) {
    return bad("max_batch_tokens", c.max_batch_tokens, "must be in [1, 1048576]");
  }
  if (c.prefill_chunk_tokens < 1)
    return bad("prefill_chunk_tokens", c.prefill_chunk_tokens, ">= 1");
  if (c.max_queued_requests < 1) return bad("max_queued_requests", c.max_queued_requests, ">= 1");
  if (c.threads_per_worker < 1) return bad("threads_per_worker", c.threads_per_worker, ">= 1");
  if (!(c.rebalance_threshold > 0.0)) {
    return bad("rebalance_threshold", c.rebalance_threshold, "must be > 0");
  }
  if (c.rebalance_min_blocks < 0)
    return bad("rebalance_min_blocks", c.rebalance_min_blocks, ">= 0");
  if (c.model.empty() && c.checkpoint.empty()) {
    return invalid_argument("engine config: give a model or a checkpoint");
  }
  return ok_status();
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

}  // namespace

struct engine::impl {
  engine_config config;
  layout grid;
  std::int64_t vocab = 0;
  std::int64_t capacity_blocks = 0;
  std::int64_t admission_blocks = 0;  // what admission may reserve per member (runtime.hpp)
  // Declared first, destroyed last: the workers' communicators belong to it.
  std::unique_ptr<transport::fabric> fab;
  caf::actor_system_config cfg;
  std::unique_ptr<caf::actor_system> sys;
  std::vector<caf::actor> workers;
  caf::actor planner;
  caf::actor engine_actor;
  std::shared_ptr<stream_registry> registry = std::make_shared<stream_registry>();
  std::atomic<std::uint64_t> next_id{1};

  ~impl() {
    if (!sys) return;
    {
      caf::scoped_actor self{*sys};
      bool drained = false;
      self->request(engine_actor, drain_timeout, drain_atom::value)
          .receive([&] { drained = true; }, [&](caf::error&) {});
      // A step that never finished (a worker stuck in a collective) is woken by the abort.
      if (!drained && fab) fab->abort(status(errc::cancelled, "engine shutting down"));
      self->send_exit(engine_actor, caf::exit_reason::user_shutdown);
      self->send_exit(planner, caf::exit_reason::user_shutdown);
      for (const caf::actor& w : workers) self->send_exit(w, caf::exit_reason::user_shutdown);
    }
    engine_actor = nullptr;
    planner = nullptr;
    workers.clear();
    sys->await_all_actors_done();
    sys.reset();
  }
};

expected<std::unique_ptr<engine>> engine::create(const engine_config& config) {
  HELIX_RETURN_IF_ERROR(validate_config(config));
  model::model_weights weights;
  if (!config.checkpoint.empty()) {
    HELIX_ASSIGN_OR_RETURN(weights, model::load_checkpoint(config.checkpoint, config.weight_type));
  } else {
    HELIX_ASSIGN_OR_RETURN(const model_spec spec, builtin_model(config.model));
    HELIX_ASSIGN_OR_RETURN(
        weights, model::init_seeded_weights(spec, config.weight_type, config.weight_seed));
  }
  const model_spec& s = weights.spec;
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
  const std::int64_t slots =
      (config.kv_capacity_tokens_per_worker + config.block_tokens - 1) / config.block_tokens;
  const double kv_total = static_cast<double>(slots * config.block_tokens) *
                          static_cast<double>(kv_bytes_per_token(s, grid, config.kv_type)) *
                          static_cast<double>(config.num_workers);
  const std::size_t phys = physical_memory_bytes();
  if (phys > 0 && kv_total > 0.8 * static_cast<double>(phys)) {
    return resource_exhausted(
        "engine config: the KV stores of {} workers need {:.1f} GiB, more than 80% of this "
        "machine's {:.1f} GiB; lower kv_capacity_tokens_per_worker",
        config.num_workers, kv_total / (1 << 30), static_cast<double>(phys) / (1 << 30));
  }

  auto p = std::make_unique<impl>();
  p->config = config;
  p->grid = grid;
  p->vocab = s.vocab;
  p->capacity_blocks = slots;
  p->admission_blocks = admission_blocks(slots, config.rebalance_threshold);
  HELIX_ASSIGN_OR_RETURN(p->fab, transport::make_local_fabric(static_cast<int>(grid.num_ranks)));
  model::rank_program_options ro;
  ro.kv_type = config.kv_type;
  ro.block_tokens = config.block_tokens;
  ro.kv_capacity_tokens = config.kv_capacity_tokens_per_worker;
  ro.max_batch_tokens = config.max_batch_tokens;
  ro.num_threads = config.threads_per_worker;
  ro.hopb = config.hopb;
  std::vector<std::shared_ptr<worker_compute>> computes;
  for (std::int64_t r = 0; r < grid.num_ranks; ++r) {
    const int rank = static_cast<int>(r);
    HELIX_ASSIGN_OR_RETURN(auto world, p->fab->make_world(rank));
    std::vector<int> group;
    for (std::int64_t g : grid.kvp_group(grid.attention_coords(r).tpa_idx)) {
      group.push_back(static_cast<int>(g));
    }
    HELIX_ASSIGN_OR_RETURN(auto kvp, p->fab->make_communicator(rank, group));
    HELIX_ASSIGN_OR_RETURN(
        auto compute, rank_compute::create(weights, grid, r, std::move(world), std::move(kvp), ro));
    computes.push_back(std::move(compute));
  }

  p->cfg.add_message_types<caf::id_block::helix_actors>();
  p->cfg.set("scheduler.max-threads", 2);
  p->cfg.set("logger.verbosity", caf::atom("quiet"));
  p->sys = std::make_unique<caf::actor_system>(p->cfg);
  for (auto& c : computes) p->workers.push_back(p->sys->spawn<caf::detached>(worker_actor, c));
  computes.clear();
  p->planner = p->sys->spawn(planner_actor, grid, config.block_tokens, config.rebalance_threshold,
                             config.rebalance_min_blocks);
  engine_setup setup{config, grid, s.vocab, slots, p->admission_blocks};
  p->engine_actor = spawn_engine(*p->sys, setup, p->workers, p->planner, p->registry);
  return std::make_unique<engine>(passkey{}, std::move(p));
}

engine::engine(passkey, std::unique_ptr<impl> p) : p_(std::move(p)) {}
engine::~engine() = default;

std::int64_t engine::vocab() const {
  return p_->vocab;
}

expected<request_handle> engine::submit(request_options request,
                                        std::function<void(const token_event&)> on_token) {
  if (request.prompt.empty()) return invalid_argument("submit: empty prompt");
  for (std::int32_t t : request.prompt) {
    if (t < 0 || t >= p_->vocab) {
      return invalid_argument("submit: prompt token {} outside the vocabulary [0, {})", t,
                              p_->vocab);
    }
  }
  for (std::int32_t t : request.stop_tokens) {
    if (t < 0 || t >= p_->vocab) {
      return invalid_argument("submit: stop token {} outside the vocabulary [0, {})", t, p_->vocab);
    }
  }
  if (request.max_tokens < 1) {
    return invalid_argument("submit: max_tokens = {} must be >= 1", request.max_tokens);
  }
  const sampling_params& sp = request.sampling;
  HELIX_RETURN_IF_ERROR(
      kernels::validate(kernels::sampling_options{sp.temperature, sp.top_k, sp.top_p, sp.seed})
          .with_context("submit: sampling"));
  const auto prompt_len = static_cast<std::int64_t>(request.prompt.size());
  const std::int64_t need = blocks_reserved_per_member(prompt_len, request.max_tokens,
                                                       p_->config.block_tokens, p_->grid.kvp);
  if (need > p_->admission_blocks) {
    return resource_exhausted(
        "submit: {} prompt tokens + {} to generate need {} KV blocks on each of the {} KVP "
        "workers; each holds {}, of which {} can be reserved (the rest is room for "
        "rebalancing): this request can never fit",
        prompt_len, request.max_tokens, need, p_->grid.kvp, p_->capacity_blocks,
        p_->admission_blocks);
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
  caf::anon_send(p_->engine_actor, std::move(m));
  return h;
}

status engine::cancel(std::uint64_t request_id) {
  caf::scoped_actor self{*p_->sys};
  status result = ok_status();
  self->request(p_->engine_actor, caf::infinite, cancel_atom::value, request_id)
      .receive([] {},
               [&](caf::error& err) {
                 result = not_found("cancel: request {}: {}", request_id, caf::to_string(err));
               });
  return result;
}

engine_stats engine::stats() {
  caf::scoped_actor self{*p_->sys};
  engine_stats out;
  self->request(p_->engine_actor, caf::infinite, stats_atom::value)
      .receive([&](engine_stats& s) { out = std::move(s); }, [](caf::error&) {});
  return out;
}

}  // namespace helix::actors
