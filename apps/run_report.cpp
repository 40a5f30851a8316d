// helix run's report: the workload report as JSON and as the human summary (run_cmd.hpp).
#include <set>
#include <string>

#include <fmt/format.h>

#include "apps/run_cmd.hpp"
#include "core/memory.hpp"

namespace helix::apps {

nlohmann::json workload_report_json(const workload_options& o, const workload_report& r) {
  const auto lat = [](const latency_summary& l) {
    return nlohmann::json{
        {"p50", l.p50}, {"p90", l.p90}, {"p99", l.p99}, {"mean", l.mean}, {"count", l.count}};
  };
  nlohmann::json procs = nlohmann::json::array();
  for (std::size_t i = 0; i < r.worker_info.size(); ++i) {
    const actors::worker_info& w = r.worker_info[i];
    nlohmann::json rss = nullptr;
    if (i < r.worker_rss_bytes.size() && r.worker_rss_bytes[i] >= 0) rss = r.worker_rss_bytes[i];
    procs.push_back(
        {{"rank", w.rank}, {"pid", w.pid}, {"host", w.host}, {"name", w.name}, {"rss_bytes", rss}});
  }
  nlohmann::json recoveries = nlohmann::json::array();
  for (const actors::recovery_stats& x : r.recoveries) {
    recoveries.push_back({{"rank", x.rank},
                          {"pid", x.pid},
                          {"why", x.why},
                          {"layout_before", x.layout_before},
                          {"layout_after", x.layout_after},
                          {"detect_ms", x.detect_ms},
                          {"replan_ms", x.replan_ms},
                          {"reload_ms", x.reload_ms},
                          {"rebuild_ms", x.rebuild_ms},
                          {"mode", x.mode},
                          {"requests_replayed", x.requests_replayed},
                          {"tokens_replayed", x.tokens_replayed},
                          {"blocks_kept", x.blocks_kept},
                          {"blocks_moved", x.blocks_moved},
                          {"blocks_rebuilt", x.blocks_rebuilt}});
  }
  nlohmann::json epochs = nlohmann::json::array();
  for (const actors::epoch_stats& e : r.epochs) {
    epochs.push_back({{"reason", e.reason},
                      {"layout_before", e.layout_before},
                      {"layout_after", e.layout_after},
                      {"kv_bytes_moved", e.kv_bytes_moved},
                      {"blocks_moved", e.blocks_moved},
                      {"blocks_rebuilt", e.blocks_rebuilt},
                      {"pause_ms", e.pause_ms},
                      {"note", e.note}});
  }
  nlohmann::json series = nlohmann::json::array();
  for (const kv_sample& k : r.kv_series) {
    series.push_back(
        {{"t_s", k.t_s}, {"used_blocks", k.used_blocks}, {"kv_imbalance", k.imbalance}});
  }
  return {{"model", r.model},
          {"layout", r.layout},
          {"workers", r.workers},
          {"workload",
           {{"agents", o.max_agents},
            {"rate_per_s", o.rate},
            {"duration_s", o.duration_s},
            {"requests", o.max_requests},
            {"context", o.context},
            {"turns", o.turns},
            {"max_tokens", o.max_tokens},
            {"seed", o.seed}}},
          {"sessions", r.sessions},
          {"requests", r.requests_planned},
          {"requests_submitted", r.requests_submitted},
          {"requests_completed", r.requests_completed},
          {"requests_failed", r.requests_failed},
          {"failures", r.failures},
          {"prompt_tokens", r.prompt_tokens},
          {"max_prompt_tokens", r.max_prompt_tokens},
          {"generated_tokens", r.generated_tokens},
          {"wall_s", r.wall_s},
          {"tokens_per_s", r.tokens_per_s},
          {"ttft_ms", lat(r.ttft_ms)},
          {"tpot_ms", lat(r.tpot_ms)},
          {"kv_capacity_blocks", r.kv_capacity_blocks},
          {"kv_peak_blocks", r.kv_peak_blocks},
          {"kv_series", std::move(series)},
          {"migrations", r.migrations},
          {"kv_imbalance_max", r.kv_imbalance_max},
          {"interrupted", r.interrupted},
          {"output_digest", r.output_digest},
          {"worker_processes", std::move(procs)},
          {"recoveries", std::move(recoveries)},
          {"epochs", std::move(epochs)},
          {"elastic_failures", r.elastic_failures}};
}

void print_workload_report(std::ostream& out, const workload_options& o, const workload_report& r,
                           std::size_t max_series_rows) {
  out << fmt::format("agents     {} on {} workers, layout {}{}\n", r.model, r.workers, r.layout,
                     r.interrupted ? " (INTERRUPTED: partial report)" : "");
  out << fmt::format(
      "  {} sessions (Poisson arrivals {:.1f}/s, at most {} live, ~{} turns each), mean first "
      "context {} tokens (longest prompt {}), {} tokens per turn\n",
      r.sessions, o.rate, o.max_agents, o.turns, o.context, r.max_prompt_tokens, o.max_tokens);
  out << fmt::format(
      "  {}/{} requests completed ({} failed) in {:.1f} s: {} tokens generated, {:.1f} tokens/s; "
      "{} prompt tokens prefilled\n",
      r.requests_completed, r.requests_planned, r.requests_failed, r.wall_s, r.generated_tokens,
      r.tokens_per_s, r.prompt_tokens);
  for (const std::string& f : r.failures) out << "  FAILED " << f << "\n";
  out << fmt::format("  {:<10} {:>9} {:>9} {:>9} {:>9}\n", "latency", "p50", "p90", "p99", "mean");
  for (const auto& [name, l] :
       {std::pair{"TTFT ms", &r.ttft_ms}, std::pair{"TPOT ms", &r.tpot_ms}}) {
    out << fmt::format("  {:<10} {:>9.1f} {:>9.1f} {:>9.1f} {:>9.1f}\n", name, l->p50, l->p90,
                       l->p99, l->mean);
  }
  out << fmt::format("  KV blocks used per worker (capacity {} blocks each):\n",
                     r.kv_capacity_blocks);
  std::string head = fmt::format("  {:>7}", "t (s)");
  for (std::size_t w = 0; w < r.kv_peak_blocks.size(); ++w)
    head += fmt::format(" {:>6}", fmt::format("w{}", w));
  out << head << fmt::format(" {:>10}\n", "imbalance");
  const std::size_t n = r.kv_series.size();
  const std::size_t rows = std::min(n, std::max<std::size_t>(2, max_series_rows));
  std::set<std::size_t> picked;
  for (std::size_t i = 0; i < rows && n > 0; ++i)
    picked.insert(rows == 1 ? 0 : i * (n - 1) / (rows - 1));
  for (const std::size_t i : picked) {
    const kv_sample& k = r.kv_series[i];
    std::string line = fmt::format("  {:>7.1f}", k.t_s);
    for (const std::int64_t b : k.used_blocks) line += fmt::format(" {:>6}", b);
    out << line << fmt::format(" {:>10.3f}\n", k.imbalance);
  }
  std::string peak = fmt::format("  {:>7}", "peak");
  for (const std::int64_t b : r.kv_peak_blocks) peak += fmt::format(" {:>6}", b);
  out << peak << "\n";
  out << fmt::format("  rebalancing: {} KV block migrations, kv_imbalance_max {:.3f}\n",
                     r.migrations, r.kv_imbalance_max);
  for (const actors::recovery_stats& x : r.recoveries) {
    out << fmt::format(
        "  recovery: worker {} (pid {}) lost, {} -> {} by {}: {} KV blocks kept, {} moved, {} "
        "rebuilt; detect {:.0f} ms, re-plan {:.0f} ms, weight reload {:.0f} ms, KV rebuild "
        "{:.0f} ms\n",
        x.rank, x.pid, x.layout_before, x.layout_after, x.mode, x.blocks_kept, x.blocks_moved,
        x.blocks_rebuilt, x.detect_ms, x.replan_ms, x.reload_ms, x.rebuild_ms);
  }
  for (const actors::epoch_stats& e : r.epochs) {
    if (e.reason != "join" && e.reason != "leave") continue;
    out << fmt::format(
        "  {}: {} -> {}, {} KV blocks moved ({}), {} rebuilt, paused {:.0f} ms{}{}\n", e.reason,
        e.layout_before, e.layout_after, e.blocks_moved,
        format_bytes(static_cast<std::uint64_t>(e.kv_bytes_moved)), e.blocks_rebuilt, e.pause_ms,
        e.note.empty() ? "" : "; ", e.note);
  }
  for (const std::string& f : r.elastic_failures) out << "  FAILED " << f << "\n";
}

}  // namespace helix::apps
