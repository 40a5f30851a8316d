// Prometheus metrics of `helix serve` in the text exposition format (version 0.0.4,
// https://prometheus.io/docs/instrumenting/exposition_formats/): counters, gauges and histograms
// with labels, rendered on `GET /metrics`.
//
// Names follow Prometheus' conventions: a `helix_` prefix, base units (seconds, bytes) in the
// name, `_total` on counters. A family is declared once with its help text and label names;
// values are set or added per label set. Thread-safe: every call takes the registry's lock.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

namespace helix::serve {

enum class metric_kind : std::uint8_t { counter, gauge, histogram };

class metrics_registry {
 public:
  /// Declares a family (idempotent for the same name and kind). Histogram families take their
  /// upper bucket bounds, increasing; +Inf is implied.
  void declare(std::string name, metric_kind kind, std::string help,
               std::vector<double> buckets = {});

  /// Adds `v` (>= 0) to a counter; sets a gauge, or a counter that mirrors a cumulative count
  /// kept elsewhere (the engine's). `labels`: name="value" pairs in order.
  void add(std::string_view name, double v,
           const std::vector<std::pair<std::string, std::string>>& labels = {});
  void set(std::string_view name, double v,
           const std::vector<std::pair<std::string, std::string>>& labels = {});
  /// Observes one value of a histogram.
  void observe(std::string_view name, double v,
               const std::vector<std::pair<std::string, std::string>>& labels = {});
  /// Drops every series of a gauge family (before re-setting one whose label sets change, such
  /// as per-worker gauges after a re-layout).
  void clear(std::string_view name);

  /// The whole registry in the text format, families in declaration order.
  [[nodiscard]] std::string render() const;

  /// Latency buckets in seconds from 1 ms to 60 s.
  [[nodiscard]] static std::vector<double> latency_buckets();

 private:
  struct series {
    double value = 0.0;                 // counter / gauge
    std::vector<std::uint64_t> counts;  // histogram: per bucket (not cumulative), +Inf last
    double sum = 0.0;
    std::uint64_t count = 0;
  };
  struct family {
    std::string name;
    metric_kind kind = metric_kind::counter;
    std::string help;
    std::vector<double> buckets;
    std::map<std::string, series> by_labels;  // key: the rendered label set ("" when none)
  };
  family* find(std::string_view name, metric_kind kind);
  family* find_any(std::string_view name);

  mutable std::mutex mu_;
  std::vector<family> families_;
};

/// Escapes a label value as the text format requires (backslash, double quote, newline).
[[nodiscard]] std::string escape_label_value(std::string_view v);

}  // namespace helix::serve
