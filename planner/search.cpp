// Layout search, Pareto frontier, headline ratios and the runtime's "auto" layout
// (planner/cost_model.hpp).
//
// The search enumerates, for every device count 1..max_devices, every grid of each family that
// passes its rules, times every batch, and keeps the configurations that fit in memory:
//   helix: TPA | K and TPA | N, KVP = N / TPA; MoE: every EP | N with EP | E, TPF = N / EP;
//          dense: EP = 1, TPF = N.
//   tp:    tp = N.          medha: TPA | K and TPA | N, KVP = N / TPA.
//   tp_pp: tp = t | N with pp = N / t >= 2 (pp = 1 is tp).
//   dp_ep: attention TP t | N, dp = N / t; MoE: EP = N (whole experts, needs N | E); dense: TP = N.
// Rules that need the model (Q % N, K and TP, E % EP) are left to estimate_step, which rejects a
// configuration with invalid_argument; those are skipped.
#include <algorithm>
#include <limits>

#include "planner/cost_model.hpp"

namespace helix::planner {
namespace {

std::vector<std::int64_t> divisors(std::int64_t n) {
  std::vector<std::int64_t> out;
  for (std::int64_t i = 1; i <= n; ++i) {
    if (n % i == 0) out.push_back(i);
  }
  return out;
}

// Every grid of `family` on exactly `n` devices (batch and hopb left at their defaults).
std::vector<plan_config> grids(const model_spec& spec, plan_family family, std::int64_t n) {
  std::vector<plan_config> out;
  plan_config c;
  c.family = family;
  c.num_devices = n;
  const std::int64_t k = spec.layout_kv_heads();
  switch (family) {
    case plan_family::helix:
    case plan_family::medha:
      for (std::int64_t tpa : divisors(n)) {
        if (k % tpa != 0) continue;
        c.tpa = tpa;
        c.kvp = n / tpa;
        if (family == plan_family::medha) {
          c.tpf = tpa;
          c.ep = 1;
          out.push_back(c);
          continue;
        }
        for (std::int64_t ep : divisors(n)) {
          if (!spec.is_moe() && ep > 1) break;
          if (spec.is_moe() && spec.moe.num_experts % ep != 0) continue;
          c.ep = ep;
          c.tpf = n / ep;
          out.push_back(c);
        }
      }
      break;
    case plan_family::tp:
      c.tpa = c.tpf = n;
      out.push_back(c);
      break;
    case plan_family::tp_pp:
      for (std::int64_t t : divisors(n)) {
        if (n / t < 2) continue;
        c.tpa = c.tpf = t;
        c.pp = n / t;
        out.push_back(c);
      }
      break;
    case plan_family::dp_ep:
      for (std::int64_t t : divisors(n)) {
        c.tpa = t;
        c.dp = n / t;
        c.ep = spec.is_moe() ? n : 1;
        c.tpf = spec.is_moe() ? 1 : n;
        out.push_back(c);
      }
      break;
  }
  return out;
}

bool better_throughput(const plan_point& a, const plan_point& b) {
  if (a.cost.tokens_per_s_per_device != b.cost.tokens_per_s_per_device) {
    return a.cost.tokens_per_s_per_device > b.cost.tokens_per_s_per_device;
  }
  return a.cost.step_s < b.cost.step_s;
}

}  // namespace

expected<std::vector<plan_point>> search_layouts(const model_spec& spec, const hardware& hw,
                                                 const plan_workload& w, const search_options& o) {
  if (o.max_devices < 1) return invalid_argument("search: max_devices {} < 1", o.max_devices);
  std::vector<std::int64_t> batches = o.batches;
  if (batches.empty()) {
    for (std::int64_t b = 1; b <= 4096; b *= 2) batches.push_back(b);
  }
  for (std::int64_t b : batches) {
    if (b < 1) return invalid_argument("search: batch {} < 1", b);
  }
  std::vector<plan_family> families = o.families;
  if (families.empty()) {
    families = {plan_family::helix, plan_family::tp, plan_family::tp_pp, plan_family::dp_ep,
                plan_family::medha};
  }
  // One plain configuration first, so that a hardware without bandwidth, FLOPs or a context < 1
  // is an error rather than an empty answer.
  plan_config probe;
  probe.family = plan_family::tp;
  if (auto st = estimate_step(spec, hw, w, probe); !st) return st.error();

  const std::int64_t max_n = std::min(o.max_devices, std::max<std::int64_t>(1, hw.max_devices));
  std::vector<plan_point> out;
  for (plan_family f : families) {
    for (std::int64_t n = 1; n <= max_n; ++n) {
      for (plan_config c : grids(spec, f, n)) {
        c.hopb = f == plan_family::helix && o.hopb;
        for (std::int64_t b : batches) {
          c.batch = b;
          auto cost = estimate_step(spec, hw, w, c);
          if (!cost) break;  // the grid breaks a rule for this model: no batch fixes that
          if (!cost->fits) continue;
          out.push_back({c, *cost});
        }
      }
    }
  }
  return out;
}

std::vector<plan_point> pareto_frontier(std::vector<plan_point> points) {
  // Highest tokens/s/user first (ties: highest tokens/s/device first); a point is on the
  // frontier iff it beats every point before it on tokens/s/device.
  std::sort(points.begin(), points.end(), [](const plan_point& a, const plan_point& b) {
    if (a.cost.tokens_per_s_per_user != b.cost.tokens_per_s_per_user) {
      return a.cost.tokens_per_s_per_user > b.cost.tokens_per_s_per_user;
    }
    return a.cost.tokens_per_s_per_device > b.cost.tokens_per_s_per_device;
  });
  std::vector<plan_point> front;
  double best = -1;
  for (plan_point& p : points) {
    if (p.cost.tokens_per_s_per_device > best) {
      best = p.cost.tokens_per_s_per_device;
      front.push_back(std::move(p));
    }
  }
  std::reverse(front.begin(), front.end());
  return front;
}

expected<headline> headline_ratios(const std::vector<plan_point>& points) {
  double helix_user = 0;
  double base_user = 0;
  for (const plan_point& p : points) {
    double& best = p.config.family == plan_family::helix ? helix_user : base_user;
    best = std::max(best, p.cost.tokens_per_s_per_user);
  }
  if (helix_user <= 0 || base_user <= 0) {
    return failed_precondition(
        "headline_ratios: need helix and baseline points (helix: {}, "
        "baseline: {})",
        helix_user > 0 ? "yes" : "none", base_user > 0 ? "yes" : "none");
  }
  headline h;
  h.interactivity_ratio = helix_user / base_user;

  // Sweep the budgets in increasing TTL: the best throughput within a budget only changes at a
  // point's TTL, so evaluating after each group of equal TTLs covers every budget.
  std::vector<const plan_point*> order;
  order.reserve(points.size());
  for (const plan_point& p : points) order.push_back(&p);
  std::sort(order.begin(), order.end(), [](const plan_point* a, const plan_point* b) {
    return a->cost.step_s < b->cost.step_s;
  });
  double best_helix = 0;
  double best_base = 0;
  h.throughput_ratio_at_equal_ttl = 0;
  for (std::size_t i = 0; i < order.size(); ++i) {
    const plan_point& p = *order[i];
    double& best = p.config.family == plan_family::helix ? best_helix : best_base;
    best = std::max(best, p.cost.tokens_per_s_per_device);
    if (i + 1 < order.size() && order[i + 1]->cost.step_s == p.cost.step_s) continue;
    if (best_helix > 0 && best_base > 0 &&
        best_helix / best_base > h.throughput_ratio_at_equal_ttl) {
      h.throughput_ratio_at_equal_ttl = best_helix / best_base;
      h.ttl_ms_at_max_ratio = p.cost.step_s * 1e3;
    }
  }
  return h;
}

expected<plan_point> best_within_ttl(const std::vector<plan_point>& points, double ttl_ms) {
  const plan_point* best = nullptr;
  for (const plan_point& p : points) {
    if (p.cost.step_s * 1e3 > ttl_ms) continue;
    if (best == nullptr || better_throughput(p, *best)) best = &p;
  }
  if (best == nullptr) {
    return not_found("no configuration among {} within a TTL of {} ms", points.size(), ttl_ms);
  }
  return *best;
}

expected<helix::layout> choose_runtime_layout(const model_spec& spec, const hardware& hw,
                                              std::int64_t num_devices, std::int64_t context,
                                              std::int64_t batch, precision weights, precision kv) {
  if (num_devices < 1 || context < 1 || batch < 1) {
    return invalid_argument(
        "choose_runtime_layout: num_devices ({}), context ({}) and batch ({}) must be >= 1",
        num_devices, context, batch);
  }
  plan_workload w;
  w.context = context;
  w.weights = weights;
  w.kv = kv;
  // The runtime computes at the wider of its storage precisions (ASSUMPTION; the CPU kernels
  // compute in f32 anyway, and the cpu preset gives every precision the f32 rate).
  w.compute = std::max(weights, kv);
  w.activations = precision::bf16;

  const plan_point* best = nullptr;
  std::vector<plan_point> candidates;
  double least_memory = std::numeric_limits<double>::infinity();
  status last_error;
  for (plan_family f : {plan_family::helix, plan_family::tp, plan_family::medha}) {
    for (plan_config c : grids(spec, f, num_devices)) {
      c.batch = batch;
      c.hopb = false;  // the engine's default
      auto cost = estimate_step(spec, hw, w, c);
      if (!cost) {
        last_error = cost.error();
        continue;
      }
      least_memory = std::min(least_memory, cost->memory_bytes_per_device);
      if (cost->fits) candidates.push_back({c, *cost});
    }
  }
  // Candidates are in the order helix, tp, medha and, within a family, smaller TPA then smaller
  // EP first; a strict comparison leaves ties to the earlier one.
  for (const plan_point& p : candidates) {
    if (best == nullptr || p.cost.step_s < best->cost.step_s) best = &p;
  }
  if (best == nullptr) {
    if (least_memory == std::numeric_limits<double>::infinity()) {
      return invalid_argument(
          "choose_runtime_layout: no helix, tp or medha layout is valid for "
          "'{}' on {} ranks (last: {})",
          spec.name, num_devices, last_error.message());
    }
    return resource_exhausted(
        "choose_runtime_layout: no layout of '{}' on {} x {} fits {} requests of {} tokens: the "
        "smallest needs {:.3g} GB per device, capacity {:.3g} GB",
        spec.name, num_devices, hw.name, batch, context, least_memory / 1e9,
        hw.hbm_capacity_bytes / 1e9);
  }
  return to_runtime_layout(best->config, spec);
}

}  // namespace helix::planner
