// A small SVG line-and-marker chart writer for the CLI (`helix plan --plot`), with no dependency
// beyond the standard library: a title and subtitle, axis labels, ticks (logarithmic decades when
// the data spans a wide range, "nice" 1/2/5 steps otherwise), one colour per series and a legend.
//
// Who calls it: apps/plan_cmd.cpp. Pure function of its inputs; thread-safe.
#pragma once

#include <string>
#include <vector>

#include "core/status.hpp"

namespace helix::apps {

struct svg_point {
  double x = 0;
  double y = 0;
};

/// One series: drawn as markers joined by a line in the order given (callers sort by x).
struct svg_series {
  std::string name;  // the legend entry
  std::vector<svg_point> points;
};

struct svg_plot_options {
  std::string title;
  std::string subtitle;  // smaller lines under the title, separated by '\n' (empty: none)
  std::string x_label;
  std::string y_label;
  int width = 960;  // pixels
  int height = 640;
  /// A logarithmic axis is used when the positive data spans more than this factor.
  double log_when_range_exceeds = 30.0;
};

/// The whole SVG document. Series without points still get a legend entry (marked "no points").
/// An axis is logarithmic only when all its values are positive. invalid_argument when no series
/// has a point or a coordinate is not finite.
[[nodiscard]] expected<std::string> render_svg_plot(const svg_plot_options& opts,
                                                    const std::vector<svg_series>& series);

/// Escapes &, <, >, " and ' for SVG/XML text and attribute values.
[[nodiscard]] std::string xml_escape(const std::string& text);

}  // namespace helix::apps
