#include "transport/fault/schedule.hpp"

#include <limits>

#include "core/rng.hpp"
#include "proto/fault.pb.h"

namespace helix::transport::fault {

namespace pb = proto_v1;

// The C++ enumerators carry the proto numbers, so conversion is a cast after a range check.
static_assert(static_cast<int>(fault_action::delay) == pb::FAULT_ACTION_DELAY);
static_assert(static_cast<int>(fault_action::crash) == pb::FAULT_ACTION_CRASH);
static_assert(pb::FaultAction_MAX == pb::FAULT_ACTION_CRASH);
static_assert(static_cast<int>(call_kind::any) == pb::CALL_KIND_ANY);
static_assert(static_cast<int>(call_kind::all_to_all_v) == pb::CALL_KIND_ALL_TO_ALL_V);
static_assert(static_cast<int>(call_kind::recv) == pb::CALL_KIND_RECV);
static_assert(pb::CallKind_MAX + 1 == num_call_kinds);
static_assert(pb::StatusCode_MAX == static_cast<int>(errc::unauthenticated));

std::string_view fault_action_name(fault_action a) noexcept {
  switch (a) {
    case fault_action::delay:
      return "DELAY";
    case fault_action::fail:
      return "FAIL";
    case fault_action::hang:
      return "HANG";
    case fault_action::crash:
      return "CRASH";
  }
  return "?";
}

std::string_view call_kind_name(call_kind k) noexcept {
  switch (k) {
    case call_kind::any:
      return "any";
    case call_kind::all_to_all:
      return "all_to_all";
    case call_kind::all_to_all_v:
      return "all_to_all_v";
    case call_kind::all_reduce:
      return "all_reduce";
    case call_kind::all_gather:
      return "all_gather";
    case call_kind::broadcast:
      return "broadcast";
    case call_kind::barrier:
      return "barrier";
    case call_kind::send:
      return "send";
    case call_kind::recv:
      return "recv";
  }
  return "?";
}

std::string describe(const fault_spec& spec) {
  std::string out = fmt::format("{} {} {} #{}", fault_action_name(spec.action),
                                spec.rank ? fmt::format("rank {}", *spec.rank) : "every rank",
                                call_kind_name(spec.kind), spec.nth);
  if (spec.step) out += fmt::format(" step {}", *spec.step);
  if (spec.layer) out += fmt::format(" layer {}", *spec.layer);
  if (spec.action == fault_action::delay) out += fmt::format(" {} ms", spec.delay.count());
  if (spec.action == fault_action::fail) out += fmt::format(" {}", errc_name(spec.error));
  return out;
}

std::string describe(const fault_schedule& schedule) {
  std::string out = fmt::format("seed {}, world {}:", schedule.seed, schedule.world_size);
  for (std::size_t i = 0; i < schedule.faults.size(); ++i)
    out += fmt::format("{} {}", i == 0 ? "" : ";", describe(schedule.faults[i]));
  if (schedule.faults.empty()) out += " no faults";
  return out;
}

status validate(const fault_schedule& schedule, int world_size) {
  if (world_size > 0 && schedule.world_size > 0 && schedule.world_size != world_size) {
    return invalid_argument("fault schedule (seed {}) was made for {} ranks, not {}", schedule.seed,
                            schedule.world_size, world_size);
  }
  const int ranks = world_size > 0 ? world_size : schedule.world_size;
  for (std::size_t i = 0; i < schedule.faults.size(); ++i) {
    const fault_spec& f = schedule.faults[i];
    const int action = static_cast<int>(f.action);
    if (action < static_cast<int>(fault_action::delay) ||
        action > static_cast<int>(fault_action::crash)) {
      return invalid_argument("fault {}: unknown action {}", i, action);
    }
    if (static_cast<int>(f.kind) >= num_call_kinds)
      return invalid_argument("fault {}: unknown call kind {}", i, static_cast<int>(f.kind));
    if (f.nth < 1) return invalid_argument("fault {} ({}): nth must be >= 1", i, describe(f));
    if (f.delay.count() < 0)
      return invalid_argument("fault {} ({}): negative delay", i, describe(f));
    if (f.action == fault_action::fail && f.error == errc::ok)
      return invalid_argument("fault {} ({}): a FAIL needs an error code", i, describe(f));
    if (f.rank && (*f.rank < 0 || (ranks > 0 && *f.rank >= ranks))) {
      return invalid_argument("fault {} ({}): rank {} is outside a world of {} ranks", i,
                              describe(f), *f.rank, ranks);
    }
  }
  return ok_status();
}

namespace {

// Uniform in [0, n) from one 32-bit word (multiply-shift; the bias is below 2^-32 * n, and what
// matters here is that every machine draws the same value).
std::uint64_t draw(std::uint32_t word, std::uint64_t n) {
  return static_cast<std::uint64_t>((static_cast<unsigned __int128>(word) * n) >> 32);
}

status check_options(int world_size, int num_faults, const schedule_options& o) {
  if (world_size < 1) return invalid_argument("generate_schedule: world_size {} < 1", world_size);
  if (num_faults < 0) return invalid_argument("generate_schedule: num_faults {} < 0", num_faults);
  if (o.actions.empty() || o.kinds.empty())
    return invalid_argument("generate_schedule: empty list of actions or call kinds");
  if (o.max_nth < 1) return invalid_argument("generate_schedule: max_nth must be >= 1");
  if (o.min_delay.count() < 0 || o.max_delay < o.min_delay) {
    return invalid_argument("generate_schedule: bad delay range [{}, {}] ms", o.min_delay.count(),
                            o.max_delay.count());
  }
  if (o.fail_error == errc::ok) return invalid_argument("generate_schedule: fail_error is ok");
  if (o.num_steps < 0 || o.num_layers < 0) {
    return invalid_argument("generate_schedule: negative num_steps {} or num_layers {}",
                            o.num_steps, o.num_layers);
  }
  return ok_status();
}

}  // namespace

expected<fault_schedule> generate_schedule(std::uint64_t seed, int world_size, int num_faults,
                                           const schedule_options& options) {
  HELIX_RETURN_IF_ERROR(check_options(world_size, num_faults, options));
  fault_schedule out;
  out.seed = seed;
  out.world_size = world_size;
  out.faults.reserve(static_cast<std::size_t>(num_faults));
  for (int i = 0; i < num_faults; ++i) {
    const auto stream = static_cast<std::uint64_t>(i);
    const auto w0 = random_words(seed, stream, 0, rng_purpose::faults, 0);
    const auto w1 = random_words(seed, stream, 0, rng_purpose::faults, 1);
    fault_spec f;
    f.action = options.actions[draw(w0[0], options.actions.size())];
    f.rank = static_cast<int>(draw(w0[1], static_cast<std::uint64_t>(world_size)));
    f.kind = options.kinds[draw(w0[2], options.kinds.size())];
    f.nth = 1 + draw(w0[3], options.max_nth);
    if (f.action == fault_action::delay) {
      const auto span = static_cast<std::uint64_t>((options.max_delay - options.min_delay).count());
      f.delay = options.min_delay + std::chrono::milliseconds(draw(w1[0], span + 1));
    }
    if (f.action == fault_action::fail) f.error = options.fail_error;
    if (options.num_steps > 0)
      f.step =
          static_cast<std::int64_t>(draw(w1[1], static_cast<std::uint64_t>(options.num_steps)));
    if (options.num_layers > 0) {
      f.layer =
          static_cast<std::int64_t>(draw(w1[2], static_cast<std::uint64_t>(options.num_layers)));
    }
    out.faults.push_back(f);
  }
  return out;
}

std::string to_bytes(const fault_schedule& schedule) {
  pb::FaultSchedule m;
  m.set_seed(schedule.seed);
  m.set_world_size(schedule.world_size);
  for (const fault_spec& f : schedule.faults) {
    pb::FaultSpec* s = m.add_faults();
    s->set_action(static_cast<pb::FaultAction>(f.action));
    if (f.rank) s->set_rank(*f.rank);
    s->set_kind(static_cast<pb::CallKind>(f.kind));
    s->set_nth(f.nth);
    if (f.step) s->set_step(*f.step);
    if (f.layer) s->set_layer(*f.layer);
    s->set_delay_ms(f.delay.count());
    s->set_error_code(static_cast<pb::StatusCode>(f.error));
  }
  std::string out;
  HELIX_CHECK(m.SerializeToString(&out), "cannot serialise a fault schedule");
  return out;
}

expected<fault_schedule> parse_schedule(std::string_view bytes) {
  pb::FaultSchedule m;
  if (bytes.size() > static_cast<std::size_t>(std::numeric_limits<int>::max()) ||
      !m.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    return invalid_argument("fault schedule: {} bytes do not parse as FaultSchedule", bytes.size());
  }
  fault_schedule out;
  out.seed = m.seed();
  out.world_size = m.world_size();
  for (int i = 0; i < m.faults_size(); ++i) {
    const pb::FaultSpec& s = m.faults(i);
    if (s.action() == pb::FAULT_ACTION_UNSPECIFIED || !pb::FaultAction_IsValid(s.action()))
      return invalid_argument("fault {}: unknown action {}", i, static_cast<int>(s.action()));
    if (!pb::CallKind_IsValid(s.kind()))
      return invalid_argument("fault {}: unknown call kind {}", i, static_cast<int>(s.kind()));
    if (!pb::StatusCode_IsValid(s.error_code()))
      return invalid_argument("fault {}: unknown error code {}", i, s.error_code());
    fault_spec f;
    f.action = static_cast<fault_action>(s.action());
    if (s.has_rank()) f.rank = s.rank();
    f.kind = static_cast<call_kind>(s.kind());
    f.nth = s.nth();
    if (s.has_step()) f.step = s.step();
    if (s.has_layer()) f.layer = s.layer();
    f.delay = std::chrono::milliseconds(s.delay_ms());
    if (s.error_code() != pb::STATUS_CODE_OK) f.error = static_cast<errc>(s.error_code());
    out.faults.push_back(f);
  }
  HELIX_RETURN_IF_ERROR(validate(out));
  return out;
}

}  // namespace helix::transport::fault
