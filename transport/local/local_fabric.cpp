#include "transport/local/local_fabric.hpp"

#include <algorithm>
#include <numeric>

#include "core/log.hpp"
#include "transport/collective.hpp"
#include "transport/local/local_communicator.hpp"

namespace helix::transport::local {

local_fabric::local_fabric(int world_size, std::chrono::milliseconds default_timeout)
    : world_size_(world_size), default_timeout_(default_timeout) {}

local_fabric::~local_fabric() = default;

expected<std::unique_ptr<communicator>> local_fabric::make_communicator(
    int global_rank, std::span<const int> group) {
  HELIX_ASSIGN_OR_RETURN(const int group_rank,
                         group_rank_of("local_fabric", global_rank, group, world_size_));
  std::vector<int> members(group.begin(), group.end());

  std::lock_guard lk(mu_);
  if (!abort_reason_.ok()) return abort_reason_;
  group_entry& entry = groups_[members];
  if (entry.next_instance.empty()) entry.next_instance.assign(members.size(), 0);
  const auto instance =
      static_cast<std::size_t>(entry.next_instance[static_cast<std::size_t>(group_rank)]++);
  if (instance == entry.instances.size()) {
    entry.instances.push_back(std::make_shared<group_state>(members, abort_reason_, suspects_));
  }
  return std::unique_ptr<communicator>(std::make_unique<local_communicator>(
      entry.instances[instance], group_rank, default_timeout_));
}

expected<std::unique_ptr<communicator>> local_fabric::make_world(int global_rank) {
  std::vector<int> all(static_cast<std::size_t>(world_size_));
  std::iota(all.begin(), all.end(), 0);
  return make_communicator(global_rank, all);
}

void local_fabric::abort(status reason) {
  if (reason.ok()) reason = status(errc::aborted, "transport aborted");
  std::vector<std::shared_ptr<group_state>> all;
  {
    std::lock_guard lk(mu_);
    if (!abort_reason_.ok()) return;  // the first reason wins
    abort_reason_ = reason;
    for (auto& [key, entry] : groups_) {
      all.insert(all.end(), entry.instances.begin(), entry.instances.end());
    }
  }
  module_logger("transport")
      ->warn("local fabric: aborted, {} groups woken: {}", all.size(), reason);
  // Outside mu_: group locks are never taken while holding the fabric lock, and vice versa.
  for (auto& g : all) g->abort(reason);
}

status local_fabric::abort_status() const {
  std::lock_guard lk(mu_);
  return abort_reason_;
}

}  // namespace helix::transport::local
