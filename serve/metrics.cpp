#include "serve/metrics.hpp"

#include <cmath>

#include <fmt/format.h>

#include "core/status.hpp"

namespace helix::serve {
namespace {

std::string label_key(const std::vector<std::pair<std::string, std::string>>& labels) {
  std::string out;
  for (const auto& [k, v] : labels) {
    out += fmt::format("{}{}=\"{}\"", out.empty() ? "" : ",", k, escape_label_value(v));
  }
  return out;
}

// A sample value as the text format writes it: integers without a fraction, +Inf / NaN spelled.
std::string number(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  if (v == std::floor(v) && std::fabs(v) < 1e15)
    return fmt::format("{}", static_cast<long long>(v));
  return fmt::format("{}", v);
}

std::string with_labels(const std::string& key, const std::string& extra) {
  if (key.empty() && extra.empty()) return "";
  if (key.empty()) return "{" + extra + "}";
  if (extra.empty()) return "{" + key + "}";
  return "{" + key + "," + extra + "}";
}

}  // namespace

std::string escape_label_value(std::string_view v) {
  std::string out;
  out.reserve(v.size());
  for (const char c : v) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

std::vector<double> metrics_registry::latency_buckets() {
  return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0};
}

void metrics_registry::declare(std::string name, metric_kind kind, std::string help,
                               std::vector<double> buckets) {
  std::lock_guard lk(mu_);
  for (const family& f : families_) {
    if (f.name == name) {
      HELIX_CHECK(f.kind == kind, "metric {} declared twice with different kinds", name);
      return;
    }
  }
  families_.push_back({std::move(name), kind, std::move(help), std::move(buckets), {}});
}

metrics_registry::family* metrics_registry::find(std::string_view name, metric_kind kind) {
  for (family& f : families_) {
    if (f.name == name) {
      HELIX_CHECK(f.kind == kind, "metric {} used as another kind", name);
      return &f;
    }
  }
  HELIX_CHECK(false, "metric {} used before it was declared", name);
  return nullptr;
}

metrics_registry::family* metrics_registry::find_any(std::string_view name) {
  for (family& f : families_) {
    if (f.name == name) return &f;
  }
  HELIX_CHECK(false, "metric {} used before it was declared", name);
  return nullptr;
}

void metrics_registry::add(std::string_view name, double v,
                           const std::vector<std::pair<std::string, std::string>>& labels) {
  std::lock_guard lk(mu_);
  family* f = find(name, metric_kind::counter);
  f->by_labels[label_key(labels)].value += v;
}

void metrics_registry::set(std::string_view name, double v,
                           const std::vector<std::pair<std::string, std::string>>& labels) {
  std::lock_guard lk(mu_);
  family* f = find_any(name);
  HELIX_CHECK(f->kind != metric_kind::histogram, "metric {} is a histogram: observe() it", name);
  f->by_labels[label_key(labels)].value = v;
}

void metrics_registry::observe(std::string_view name, double v,
                               const std::vector<std::pair<std::string, std::string>>& labels) {
  std::lock_guard lk(mu_);
  family* f = find(name, metric_kind::histogram);
  series& s = f->by_labels[label_key(labels)];
  if (s.counts.empty()) s.counts.assign(f->buckets.size() + 1, 0);
  std::size_t b = 0;
  while (b < f->buckets.size() && v > f->buckets[b]) ++b;
  ++s.counts[b];
  s.sum += v;
  ++s.count;
}

void metrics_registry::clear(std::string_view name) {
  std::lock_guard lk(mu_);
  find(name, metric_kind::gauge)->by_labels.clear();
}

std::string metrics_registry::render() const {
  std::lock_guard lk(mu_);
  std::string out;
  for (const family& f : families_) {
    const char* type = f.kind == metric_kind::counter ? "counter"
                       : f.kind == metric_kind::gauge ? "gauge"
                                                      : "histogram";
    out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", f.name, f.help, f.name, type);
    if (f.kind != metric_kind::histogram) {
      if (f.by_labels.empty() && f.kind == metric_kind::counter) {
        out += fmt::format("{} 0\n", f.name);  // a counter exists from the start
      }
      for (const auto& [key, s] : f.by_labels) {
        out += fmt::format("{}{} {}\n", f.name, with_labels(key, ""), number(s.value));
      }
      continue;
    }
    for (const auto& [key, s] : f.by_labels) {
      std::uint64_t cumulative = 0;
      for (std::size_t b = 0; b <= f.buckets.size(); ++b) {
        cumulative += s.counts[b];
        const std::string le = b < f.buckets.size() ? number(f.buckets[b]) : "+Inf";
        out += fmt::format("{}_bucket{} {}\n", f.name,
                           with_labels(key, fmt::format("le=\"{}\"", le)), cumulative);
      }
      out += fmt::format("{}_sum{} {}\n", f.name, with_labels(key, ""), number(s.sum));
      out += fmt::format("{}_count{} {}\n", f.name, with_labels(key, ""), s.count);
    }
  }
  return out;
}

}  // namespace helix::serve
