#include "transport/fault/fault_fabric.hpp"

namespace helix::transport::fault {

namespace {
fault_schedule checked(fault_schedule schedule, int world_size) {
  const status st = validate(schedule, world_size);
  HELIX_CHECK(st.ok(), "{}", st.to_string());
  return schedule;
}
}  // namespace

fault_fabric::fault_fabric(fabric& inner, fault_schedule schedule, fault_options options)
    : inner_(inner),
      injector_(std::make_shared<fault_injector>(checked(std::move(schedule), inner.world_size()),
                                                 options)) {}

fault_fabric::fault_fabric(std::unique_ptr<fabric> inner, fault_schedule schedule,
                           fault_options options)
    : owned_(std::move(inner)),
      inner_(*owned_),
      injector_(std::make_shared<fault_injector>(checked(std::move(schedule), owned_->world_size()),
                                                 options)) {}

expected<std::unique_ptr<communicator>> fault_fabric::wrap(
    expected<std::unique_ptr<communicator>> made) {
  if (!made) return made.error();
  return std::unique_ptr<communicator>(
      std::make_unique<fault_communicator>(std::move(made).value(), injector_, &inner_));
}

expected<std::unique_ptr<communicator>> fault_fabric::make_communicator(
    int global_rank, std::span<const int> group) {
  return wrap(inner_.make_communicator(global_rank, group));
}

expected<std::unique_ptr<communicator>> fault_fabric::make_world(int global_rank) {
  return wrap(inner_.make_world(global_rank));
}

void fault_fabric::abort(status reason) {
  inner_.abort(std::move(reason));
  injector_->abort(inner_.abort_status());  // the reason that won, with its code
}

expected<std::unique_ptr<fault_fabric>> make_fault_fabric(std::unique_ptr<fabric> inner,
                                                          fault_schedule schedule,
                                                          fault_options options) {
  if (!inner) return invalid_argument("make_fault_fabric: no fabric to wrap");
  HELIX_RETURN_IF_ERROR(validate(schedule, inner->world_size()));
  return std::make_unique<fault_fabric>(std::move(inner), std::move(schedule), options);
}

}  // namespace helix::transport::fault
