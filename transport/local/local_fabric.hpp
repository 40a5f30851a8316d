// Local backend: a fabric whose ranks are threads of this process.
//
// Created through make_local_fabric (transport/transport.hpp); callers never include this header.
// Groups are registered by their list of global ranks; the k-th creation of a list by each member
// returns the k-th instance (see fabric.hpp). Thread-safe; must outlive its communicators' use
// (the group state itself is reference counted, so a late destructor is harmless).
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "transport/fabric.hpp"

namespace helix::transport::local {

struct group_state;

class local_fabric final : public fabric {
 public:
  local_fabric(int world_size, std::chrono::milliseconds default_timeout);
  ~local_fabric() override;

  int world_size() const override { return world_size_; }
  expected<std::unique_ptr<communicator>> make_communicator(int global_rank,
                                                            std::span<const int> group) override;
  expected<std::unique_ptr<communicator>> make_world(int global_rank) override;
  void abort(status reason) override;
  status abort_status() const override;
  std::vector<int> suspects() const override { return suspects_->ranked(); }

 private:
  struct group_entry {
    std::vector<std::shared_ptr<group_state>> instances;
    std::vector<int> next_instance;  // [group size]: how many times each member created the group
  };

  const int world_size_;
  const std::chrono::milliseconds default_timeout_;
  mutable std::mutex mu_;
  status abort_reason_;
  std::map<std::vector<int>, group_entry> groups_;
  std::shared_ptr<suspect_book> suspects_ = std::make_shared<suspect_book>();
};

}  // namespace helix::transport::local
