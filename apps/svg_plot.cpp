#include "apps/svg_plot.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>

#include <fmt/format.h>

namespace helix::apps {
namespace {

// Tableau 10: distinct on screen and in print; the marker shape differs per series as well, so
// the chart stays readable without colour.
constexpr std::array<const char*, 10> palette = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728",
                                                 "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                                                 "#bcbd22", "#17becf"};

struct tick {
  double value = 0;
  bool major = true;  // labelled, with a solid grid line
};

struct axis {
  double lo = 0;
  double hi = 1;
  bool log = false;
  std::vector<tick> ticks;

  // Position of `v` in [0, 1] along the axis.
  [[nodiscard]] double unit(double v) const {
    if (log) return (std::log10(v) - std::log10(lo)) / (std::log10(hi) - std::log10(lo));
    return (v - lo) / (hi - lo);
  }
};

// 1, 2 or 5 times a power of ten, at least `raw`.
double nice_step(double raw) {
  const double p = std::pow(10.0, std::floor(std::log10(raw)));
  for (const double m : {1.0, 2.0, 5.0, 10.0}) {
    if (m * p >= raw * (1 - 1e-9)) return m * p;
  }
  return 10.0 * p;
}

axis make_axis(double min_v, double max_v, double log_factor) {
  axis a;
  if (min_v > 0 && max_v / min_v > log_factor) {
    a.log = true;
    // Bounds on the 1-2-5 sequence around the data (not whole decades: less empty space).
    const double lo_p = std::pow(10.0, std::floor(std::log10(min_v)));
    a.lo = lo_p;
    for (const double m : {2.0, 5.0}) {
      if (m * lo_p <= min_v * (1 + 1e-9)) a.lo = m * lo_p;
    }
    const double hi_p = std::pow(10.0, std::floor(std::log10(max_v)));
    a.hi = 10 * hi_p;
    for (const double m : {5.0, 2.0, 1.0}) {
      if (m * hi_p >= max_v * (1 - 1e-9)) a.hi = m * hi_p;
    }
    // Labels on 1, 2 and 5 times each power of ten for up to 3 decades, on every decade up to 8,
    // on every other one beyond; unlabelled ticks on the other multiples up to 6 decades.
    const double decades = std::log10(a.hi / a.lo);
    const bool label_125 = decades <= 3.0;
    const int label_every = decades > 8 ? 2 : 1;
    for (double p = lo_p; p <= a.hi * (1 + 1e-9); p *= 10) {
      const int decade_idx = static_cast<int>(std::lround(std::log10(p / lo_p)));
      for (int m = 1; m <= 9; ++m) {
        const double v = p * m;
        if (v < a.lo * (1 - 1e-9) || v > a.hi * (1 + 1e-9)) continue;
        const bool major = m == 1 ? decade_idx % label_every == 0 : label_125 && (m == 2 || m == 5);
        if (major || decades <= 6.0) a.ticks.push_back({v, major});
      }
    }
    return a;
  }
  if (max_v <= min_v) {
    const double pad = min_v == 0 ? 1.0 : std::abs(min_v) * 0.1;
    min_v -= pad;
    max_v += pad;
  }
  // Start at zero when the data is positive and zero is not far away: easier to read ratios.
  if (min_v > 0 && min_v < 0.3 * max_v) min_v = 0;
  const double step = nice_step((max_v - min_v) / 6.0);
  a.lo = std::floor(min_v / step + 1e-9) * step;
  a.hi = std::ceil(max_v / step - 1e-9) * step;
  if (a.hi <= a.lo) a.hi = a.lo + step;
  for (double v = a.lo; v <= a.hi + step * 1e-6; v += step) {
    a.ticks.push_back({std::abs(v) < step * 1e-9 ? 0.0 : v, true});
  }
  return a;
}

// Compact tick label: 0.01, 2.5, 40, 1.5k, 10k, 2M.
std::string tick_label(double v) {
  const double a = std::abs(v);
  if (a >= 1e9) return fmt::format("{:.4g}G", v / 1e9);
  if (a >= 1e6) return fmt::format("{:.4g}M", v / 1e6);
  if (a >= 1e3) return fmt::format("{:.4g}k", v / 1e3);
  return fmt::format("{:.4g}", v);
}

// Marker `shape` centred at (x, y).
std::string marker(int shape, double x, double y, const char* colour) {
  constexpr double r = 4.0;
  switch (shape % 5) {
    case 0:
      return fmt::format(R"(<circle cx="{:.1f}" cy="{:.1f}" r="{}" fill="{}"/>)", x, y, r, colour);
    case 1:
      return fmt::format(R"(<rect x="{:.1f}" y="{:.1f}" width="{}" height="{}" fill="{}"/>)", x - r,
                         y - r, 2 * r, 2 * r, colour);
    case 2:
      return fmt::format(
          R"(<polygon points="{:.1f},{:.1f} {:.1f},{:.1f} {:.1f},{:.1f}" fill="{}"/>)", x,
          y - r - 1, x - r - 1, y + r, x + r + 1, y + r, colour);
    case 3:
      return fmt::format(
          R"(<polygon points="{:.1f},{:.1f} {:.1f},{:.1f} {:.1f},{:.1f} {:.1f},{:.1f}" fill="{}"/>)",
          x, y - r - 1, x + r + 1, y, x, y + r + 1, x - r - 1, y, colour);
    default:
      return fmt::format(
          R"(<circle cx="{:.1f}" cy="{:.1f}" r="{}" fill="white" stroke="{}" stroke-width="2"/>)",
          x, y, r, colour);
  }
}

}  // namespace

std::string xml_escape(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  for (const char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&apos;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

expected<std::string> render_svg_plot(const svg_plot_options& opts,
                                      const std::vector<svg_series>& series) {
  double min_x = std::numeric_limits<double>::infinity();
  double max_x = -min_x;
  double min_y = min_x;
  double max_y = -min_x;
  for (const svg_series& s : series) {
    for (const svg_point& p : s.points) {
      if (!std::isfinite(p.x) || !std::isfinite(p.y)) {
        return invalid_argument("plot: series '{}' has a non-finite point ({}, {})", s.name, p.x,
                                p.y);
      }
      min_x = std::min(min_x, p.x);
      max_x = std::max(max_x, p.x);
      min_y = std::min(min_y, p.y);
      max_y = std::max(max_y, p.y);
    }
  }
  if (!std::isfinite(min_x)) return invalid_argument("plot: no series has a point");
  if (opts.width < 300 || opts.height < 200) {
    return invalid_argument("plot: {}x{} pixels is too small", opts.width, opts.height);
  }
  const axis ax = make_axis(min_x, max_x, opts.log_when_range_exceeds);
  const axis ay = make_axis(min_y, max_y, opts.log_when_range_exceeds);

  // Plot area: room for the title on top, tick labels and the axis label below and to the left,
  // the legend on the right.
  const double left = 90;
  // About 7 px per character of 13 px text, plus the swatch.
  std::size_t longest = 0;
  for (const svg_series& s : series) longest = std::max(longest, s.name.size() + 12);
  const double legend_width =
      std::clamp(7.0 * static_cast<double>(longest) + 50.0, 150.0, opts.width / 2.0);
  const double right = opts.width - legend_width;
  std::vector<std::string> subtitle_lines;
  for (std::size_t start = 0; start < opts.subtitle.size();) {
    const std::size_t nl = std::min(opts.subtitle.find('\n', start), opts.subtitle.size());
    subtitle_lines.push_back(opts.subtitle.substr(start, nl - start));
    start = nl + 1;
  }
  const double top = 50.0 + 18.0 * static_cast<double>(subtitle_lines.size());
  const double bottom = opts.height - 60.0;
  auto px = [&](double v) { return left + ax.unit(v) * (right - left); };
  auto py = [&](double v) { return bottom - ay.unit(v) * (bottom - top); };

  std::string svg;
  svg += fmt::format(
      "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{0}\" height=\"{1}\" "
      "viewBox=\"0 0 {0} {1}\" font-family=\"Helvetica, Arial, sans-serif\">\n",
      opts.width, opts.height);
  svg +=
      fmt::format("<rect width=\"{}\" height=\"{}\" fill=\"white\"/>\n", opts.width, opts.height);
  svg += fmt::format(
      "<text x=\"{:.1f}\" y=\"28\" text-anchor=\"middle\" font-size=\"17\" "
      "font-weight=\"bold\">{}</text>\n",
      opts.width / 2.0, xml_escape(opts.title));
  for (std::size_t i = 0; i < subtitle_lines.size(); ++i) {
    svg += fmt::format(
        "<text x=\"{:.1f}\" y=\"{}\" text-anchor=\"middle\" font-size=\"13\" "
        "fill=\"#444\">{}</text>\n",
        opts.width / 2.0, 48 + 18 * i, xml_escape(subtitle_lines[i]));
  }
  svg += fmt::format(
      "<defs><clipPath id=\"plot-area\"><rect x=\"{:.1f}\" y=\"{:.1f}\" "
      "width=\"{:.1f}\" height=\"{:.1f}\"/></clipPath></defs>\n",
      left - 6, top - 6, right - left + 12, bottom - top + 12);

  // Grid and ticks.
  svg += "<g class=\"grid\" stroke-width=\"1\">\n";
  for (const tick& t : ax.ticks) {
    const double x = px(t.value);
    svg += fmt::format(
        "<line x1=\"{0:.1f}\" y1=\"{1:.1f}\" x2=\"{0:.1f}\" y2=\"{2:.1f}\" stroke=\"{3}\"/>\n", x,
        top, bottom, t.major ? "#d0d0d0" : "#eeeeee");
    if (!t.major) continue;
    svg += fmt::format(
        "<line x1=\"{0:.1f}\" y1=\"{1:.1f}\" x2=\"{0:.1f}\" y2=\"{2:.1f}\" stroke=\"black\"/>\n", x,
        bottom, bottom + 5);
    svg += fmt::format(
        "<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"middle\" font-size=\"12\">{}</text>\n", x,
        bottom + 19, xml_escape(tick_label(t.value)));
  }
  for (const tick& t : ay.ticks) {
    const double y = py(t.value);
    svg += fmt::format(
        "<line x1=\"{1:.1f}\" y1=\"{0:.1f}\" x2=\"{2:.1f}\" y2=\"{0:.1f}\" stroke=\"{3}\"/>\n", y,
        left, right, t.major ? "#d0d0d0" : "#eeeeee");
    if (!t.major) continue;
    svg += fmt::format(
        "<line x1=\"{1:.1f}\" y1=\"{0:.1f}\" x2=\"{2:.1f}\" y2=\"{0:.1f}\" stroke=\"black\"/>\n", y,
        left - 5, left);
    svg += fmt::format(
        "<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"end\" font-size=\"12\">{}</text>\n",
        left - 8, y + 4, xml_escape(tick_label(t.value)));
  }
  svg += "</g>\n";
  svg += fmt::format(
      "<rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"{:.1f}\" height=\"{:.1f}\" fill=\"none\" "
      "stroke=\"black\"/>\n",
      left, top, right - left, bottom - top);
  svg += fmt::format(
      "<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"middle\" font-size=\"14\">{}{}</text>\n",
      (left + right) / 2, bottom + 44, xml_escape(opts.x_label), ax.log ? " (log scale)" : "");
  svg += fmt::format(
      "<text x=\"22\" y=\"{0:.1f}\" text-anchor=\"middle\" font-size=\"14\" "
      "transform=\"rotate(-90 22 {0:.1f})\">{1}{2}</text>\n",
      (top + bottom) / 2, xml_escape(opts.y_label), ay.log ? " (log scale)" : "");

  // Series: the line, then the markers on top of it.
  svg += "<g clip-path=\"url(#plot-area)\">\n";
  for (std::size_t i = 0; i < series.size(); ++i) {
    const svg_series& s = series[i];
    const char* colour = palette[i % palette.size()];
    svg += fmt::format("<g class=\"series\" data-name=\"{}\">\n", xml_escape(s.name));
    if (s.points.size() > 1) {
      std::string pts;
      for (const svg_point& p : s.points) pts += fmt::format("{:.1f},{:.1f} ", px(p.x), py(p.y));
      pts.pop_back();
      svg += fmt::format(
          "<polyline points=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"2\" "
          "stroke-opacity=\"0.8\"/>\n",
          pts, colour);
    }
    for (const svg_point& p : s.points) {
      svg += marker(static_cast<int>(i), px(p.x), py(p.y), colour) + "\n";
    }
    svg += "</g>\n";
  }
  svg += "</g>\n";

  // Legend, right of the plot area.
  const double lx = right + 18;
  double ly = top + 8;
  svg += fmt::format("<g class=\"legend\" font-size=\"13\">\n");
  for (std::size_t i = 0; i < series.size(); ++i) {
    const svg_series& s = series[i];
    const char* colour = palette[i % palette.size()];
    svg += fmt::format(
        "<g class=\"legend-entry\"><line x1=\"{:.1f}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\" "
        "stroke=\"{}\" stroke-width=\"2\"/>{}<text x=\"{:.1f}\" y=\"{:.1f}\">{}{}</text></g>\n",
        lx, ly, lx + 26, ly, colour, marker(static_cast<int>(i), lx + 13, ly, colour), lx + 34,
        ly + 4.5, xml_escape(s.name), s.points.empty() ? " (no points)" : "");
    ly += 22;
  }
  svg += "</g>\n</svg>\n";
  return svg;
}

}  // namespace helix::apps
