// The elastic policy's decision (ARCHITECTURE.md, elasticity): whether members that joined
// without being asked for (a listening engine's late joins) should be taken into a larger
// layout, from the load the engine runs. Two reasons, either suffices:
//   * speed: the cost model predicts the larger layout's step at least `min_gain` faster for
//     the running requests and their mean length;
//   * room: the running requests reserve at least `kv_high` of the KV a member may admit, and
//     the larger layout lowers that share (more KVP members each hold less of every sequence;
//     requests waiting for room get in sooner).
// The engine adds the hysteresis (the decision must hold for a while, and changes keep a
// cooldown between them) and logs `why` as the epoch's note.
//
// Pure function; thread-safe.
#pragma once

#include <cstdint>
#include <string>

namespace helix::planner {

struct growth_policy {
  double min_gain = 0.05;  // predicted step speed-up, as a fraction
  double kv_high = 0.80;   // reserved KV per member over admission that counts as pressure
};

struct growth_inputs {
  std::string layout_now;
  std::string layout_then;
  std::int64_t new_members = 0;  // members the larger layout takes in
  std::int64_t requests = 0;     // running
  std::int64_t context = 0;      // their mean length so far, tokens
  double step_now_s = 0.0;       // the cost model's step time on the current layout (<= 0: none)
  double step_then_s = 0.0;      // on the larger one
  double kv_use_now = 0.0;       // reserved KV blocks per member / admission, current layout
  double kv_use_then = 0.0;      // the same on the larger layout
};

struct growth_decision {
  bool grow = false;
  double gain = 0.0;  // predicted step speed-up (step_now / step_then - 1), 0 without a model
  bool for_room = false;
  std::string why;  // the explanation, whether or not it grows
};

[[nodiscard]] growth_decision decide_growth(const growth_inputs& in,
                                            const growth_policy& policy = {});

}  // namespace helix::planner
