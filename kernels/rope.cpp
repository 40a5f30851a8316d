#include "kernels/rope.hpp"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "kernels/cpu/optimized.hpp"
#include "kernels/cpu/reference.hpp"

namespace helix::kernels {

status rope(const rope_params& p, const exec_context& ctx) {
  if (p.rows < 0 || p.num_heads <= 0 || p.rot_dim <= 0 || p.rot_dim % 2 != 0) {
    return invalid_argument("rope: rows {}, num_heads {}, rot_dim {} (must be even)", p.rows,
                            p.num_heads, p.rot_dim);
  }
  if (p.x == nullptr || p.positions == nullptr || p.inv_freq == nullptr) {
    return invalid_argument("rope: null x, positions or inv_freq");
  }
  switch (ctx.backend) {
    case backend::reference:
      return reference::rope(p);
    case backend::cpu:
      return cpu::rope(p, ctx.pool);
    case backend::cuda:
      return failed_precondition("rope: no CUDA implementation yet");
  }
  return internal_error("rope: unknown backend");
}

namespace {
double yarn_get_mscale(double scale, double mscale) {
  return scale <= 1.0 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0;
}
}  // namespace

rope_table make_rope_table(const rope_spec& spec, std::int64_t rot_dim) {
  rope_table t;
  const std::int64_t half = rot_dim / 2;
  t.inv_freq.resize(static_cast<std::size_t>(half));
  std::vector<double> base(static_cast<std::size_t>(half));
  for (std::int64_t i = 0; i < half; ++i) {
    base[static_cast<std::size_t>(i)] =
        1.0 / std::pow(spec.theta, static_cast<double>(2 * i) / static_cast<double>(rot_dim));
  }
  const double two_pi = 2.0 * std::numbers::pi;
  for (std::int64_t i = 0; i < half; ++i) {
    const double inv = base[static_cast<std::size_t>(i)];
    double out = inv;
    switch (spec.scaling) {
      case rope_scaling_kind::none:
        break;
      case rope_scaling_kind::linear:
        out = inv / spec.factor;
        break;
      case rope_scaling_kind::llama3: {
        const double old_ctx = static_cast<double>(spec.original_max_position_embeddings);
        const double low_wavelen = old_ctx / spec.low_freq_factor;
        const double high_wavelen = old_ctx / spec.high_freq_factor;
        const double wavelen = two_pi / inv;
        if (wavelen > low_wavelen) {
          out = inv / spec.factor;
        } else if (wavelen >= high_wavelen) {
          const double smooth = (old_ctx / wavelen - spec.low_freq_factor) /
                                (spec.high_freq_factor - spec.low_freq_factor);
          out = (1.0 - smooth) * inv / spec.factor + smooth * inv;
        }
        break;
      }
      case rope_scaling_kind::yarn: {
        const double dim = static_cast<double>(rot_dim);
        const double max_pos = static_cast<double>(spec.original_max_position_embeddings);
        auto correction_dim = [&](double num_rot) {
          return dim * std::log(max_pos / (num_rot * two_pi)) / (2.0 * std::log(spec.theta));
        };
        double low = std::max(0.0, std::floor(correction_dim(spec.beta_fast)));
        double high = std::min(dim - 1.0, std::ceil(correction_dim(spec.beta_slow)));
        if (low == high) high += 0.001;
        const double ramp = std::clamp((static_cast<double>(i) - low) / (high - low), 0.0, 1.0);
        const double extrapolation = 1.0 - ramp;
        out = (inv / spec.factor) * (1.0 - extrapolation) + inv * extrapolation;
        break;
      }
    }
    t.inv_freq[static_cast<std::size_t>(i)] = static_cast<float>(out);
  }
  if (spec.scaling == rope_scaling_kind::yarn) {
    double af = spec.attention_factor;
    if (af == 0.0) {
      af = (spec.mscale != 0.0 && spec.mscale_all_dim != 0.0)
               ? yarn_get_mscale(spec.factor, spec.mscale) /
                     yarn_get_mscale(spec.factor, spec.mscale_all_dim)
               : yarn_get_mscale(spec.factor, 1.0);
    }
    t.attention_factor = static_cast<float>(af);
  }
  return t;
}

}  // namespace helix::kernels
