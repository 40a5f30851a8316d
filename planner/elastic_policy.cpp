// The elastic policy's decision: see elastic_policy.hpp.
#include "planner/elastic_policy.hpp"

#include <fmt/format.h>

namespace helix::planner {

growth_decision decide_growth(const growth_inputs& in, const growth_policy& policy) {
  growth_decision d;
  if (in.requests < 1 || in.new_members < 1 || in.layout_then == in.layout_now) {
    d.why = "nothing to decide: no running requests or no larger layout";
    return d;
  }
  d.gain = in.step_now_s > 0.0 && in.step_then_s > 0.0 ? in.step_now_s / in.step_then_s - 1.0 : 0.0;
  const bool faster = d.gain >= policy.min_gain;
  d.for_room = in.kv_use_now >= policy.kv_high && in.kv_use_then < in.kv_use_now;
  d.grow = faster || d.for_room;
  const std::string speed =
      in.step_now_s > 0.0 && in.step_then_s > 0.0
          ? fmt::format("the cost model predicts {:.3f} -> {:.3f} ms per step ({:+.0f}%)",
                        1e3 * in.step_now_s, 1e3 * in.step_then_s, 100.0 * d.gain)
          : std::string("no step time prediction");
  const std::string room = fmt::format("KV use {:.0f}% -> {:.0f}% of admission per member",
                                       100.0 * in.kv_use_now, 100.0 * in.kv_use_then);
  d.why = fmt::format("{} members joined unasked; {}; {} for {} requests of ~{} tokens{}",
                      in.new_members, speed, room, in.requests, in.context,
                      d.grow ? ""
                             : fmt::format(" (below {:.0f}% faster and {:.0f}% KV use: the "
                                           "members stand by)",
                                           100.0 * policy.min_gain, 100.0 * policy.kv_high));
  return d;
}

}  // namespace helix::planner
