// Fault schedules of the seeded fault harness: which call of which rank the fault-injecting
// communicator (fault_communicator.hpp) delays, fails, hangs or crashes.
//
// Who calls it: tests and `helix chaos` generate a schedule from a seed (generate_schedule, a pure
// function of its inputs), hand it to a fault_fabric, and print or store it for replay; the stored
// form is the Protobuf message helix.proto_v1.FaultSchedule (proto/fault.proto), whose bytes
// to_bytes / parse_schedule produce and read. The same seed and options give the same schedule,
// byte for byte, on every machine (core/rng.hpp's counter-based Philox). Everything here is a plain
// value: thread-safe as values are.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.hpp"

namespace helix::transport::fault {

/// What a fault does to the call it hits (on the faulty rank; its peers see the consequence).
enum class fault_action : std::uint8_t {
  delay = 1,  // sleep delay, then make the call: peers wait that much longer
  fail = 2,   // return the configured error without making the call: peers time out
  hang = 3,   // make no call, end with deadline_exceeded at the call's deadline (or the abort)
  crash = 4,  // kill the process (SIGKILL): peers see the rank die
};

/// The communicator calls a fault can hit (transport/communicator.hpp); `any` matches them all.
enum class call_kind : std::uint8_t {
  any = 0,
  all_to_all,
  all_to_all_v,
  all_reduce,
  all_gather,
  broadcast,
  barrier,
  send,
  recv,
};
inline constexpr int num_call_kinds = 9;  // including `any`

/// "DELAY", "FAIL", "HANG", "CRASH" (the schedule's spelling, as in fault.proto).
[[nodiscard]] std::string_view fault_action_name(fault_action a) noexcept;
/// "any", "all_to_all", ..., "recv" (the communicator's method names).
[[nodiscard]] std::string_view call_kind_name(call_kind k) noexcept;

/// One fault: `action` on the nth call (1-based) of `kind` made by global rank `rank`, counted
/// over all of that rank's communicators, and only over calls made while the rank's tag (see
/// fault_injector::set_tag) matches `step` and `layer` where those are set.
struct fault_spec {
  fault_action action = fault_action::fail;
  std::optional<int> rank;  // global rank; unset: every rank, each at its own nth matching call
  call_kind kind = call_kind::any;
  std::uint64_t nth = 1;
  std::optional<std::int64_t> step;
  std::optional<std::int64_t> layer;
  std::chrono::milliseconds delay{0};  // delay: how long
  errc error = errc::unavailable;      // fail: the code returned (never ok)

  friend bool operator==(const fault_spec&, const fault_spec&) = default;
};

struct fault_schedule {
  std::uint64_t seed = 0;  // what it was generated from; 0 for a hand-written schedule
  int world_size = 0;      // the world it was made for; 0: any
  std::vector<fault_spec> faults;

  friend bool operator==(const fault_schedule&, const fault_schedule&) = default;
};

/// "HANG rank 2 barrier #3" (+ " step 5 layer 1", " 20 ms", " unavailable" where they apply).
[[nodiscard]] std::string describe(const fault_spec& spec);
/// "seed 7, world 4: <describe(f0)>; <describe(f1)>; ..." (what a chaos report prints).
[[nodiscard]] std::string describe(const fault_schedule& schedule);

/// ok, or invalid_argument naming the fault's index: nth >= 1, a negative delay, an ok error
/// code, a rank outside [0, world_size) (when world_size > 0; `world_size` overrides the
/// schedule's own when given), a schedule made for another world size.
[[nodiscard]] status validate(const fault_schedule& schedule, int world_size = 0);

/// What generate_schedule draws from. Every list must be non-empty; repeating an entry weights it.
struct schedule_options {
  /// Actions drawn uniformly from this list. Crash only where ranks are processes.
  std::vector<fault_action> actions = {fault_action::delay, fault_action::fail, fault_action::hang};
  /// Kinds drawn uniformly from this list.
  std::vector<call_kind> kinds = {call_kind::all_to_all, call_kind::all_reduce,
                                  call_kind::all_gather, call_kind::broadcast, call_kind::barrier};
  /// nth drawn uniformly from [1, max_nth].
  std::uint64_t max_nth = 8;
  /// Delays drawn uniformly from [min_delay, max_delay] (whole milliseconds).
  std::chrono::milliseconds min_delay{1};
  std::chrono::milliseconds max_delay{50};
  /// The error of every FAIL.
  errc fail_error = errc::unavailable;
  /// > 0: every fault gets a step in [0, num_steps) (the caller tags its calls); 0: any step.
  std::int64_t num_steps = 0;
  /// > 0: every fault gets a layer in [0, num_layers); 0: any layer.
  std::int64_t num_layers = 0;
};

/// `num_faults` faults for a world of `world_size` ranks, each on one rank drawn uniformly from
/// [0, world_size). A pure function of its arguments: fault i is drawn from
/// random_words(seed, i, ..., rng_purpose::faults, ...), so a schedule with more faults extends
/// the one with fewer. invalid_argument for world_size < 1, num_faults < 0, an empty list,
/// max_nth < 1, max_delay < min_delay or min_delay < 0, an ok fail_error, negative step/layer
/// counts.
[[nodiscard]] expected<fault_schedule> generate_schedule(std::uint64_t seed, int world_size,
                                                         int num_faults,
                                                         const schedule_options& options = {});

/// The serialized helix.proto_v1.FaultSchedule of `schedule` (deterministic: equal schedules give
/// equal bytes).
[[nodiscard]] std::string to_bytes(const fault_schedule& schedule);
/// Reads bytes from to_bytes (or any writer of fault.proto). invalid_argument when they do not
/// parse, name an unknown action or kind, or fail validate().
[[nodiscard]] expected<fault_schedule> parse_schedule(std::string_view bytes);

}  // namespace helix::transport::fault
