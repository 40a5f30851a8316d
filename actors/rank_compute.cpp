#include "actors/worker_compute.hpp"

namespace helix::actors {

expected<std::unique_ptr<rank_compute>> rank_compute::create(
    const model::model_weights& full, const layout& l, std::int64_t rank,
    std::unique_ptr<transport::communicator> world,
    std::unique_ptr<transport::communicator> kvp_group,
    const model::rank_program_options& options) {
  HELIX_ASSIGN_OR_RETURN(auto program, model::rank_program::create(full, l, rank, std::move(world),
                                                                   std::move(kvp_group), options));
  return std::make_unique<rank_compute>(std::move(program));
}

expected<std::unique_ptr<rank_compute>> rank_compute::create(
    model::rank_weights w, std::unique_ptr<transport::communicator> world,
    std::unique_ptr<transport::communicator> kvp_group,
    const model::rank_program_options& options) {
  HELIX_ASSIGN_OR_RETURN(auto program, model::rank_program::create(std::move(w), std::move(world),
                                                                   std::move(kvp_group), options));
  return std::make_unique<rank_compute>(std::move(program));
}

rank_compute::rank_compute(std::unique_ptr<model::rank_program> program)
    : program_(std::move(program)) {}

std::int64_t rank_compute::rank() const {
  return program_->rank();
}

expected<std::uint64_t> rank_compute::open_sequence() {
  return program_->open_sequence();
}

status rank_compute::close_sequence(std::uint64_t seq) {
  return program_->close_sequence(seq);
}

status rank_compute::step(const step_msg& m, std::vector<std::int32_t>& tokens,
                          std::vector<status>& item_errors) {
  // Every item has one logits row (decode tokens and prefill chunks alike); rows of items that
  // are not sampled are sampled greedily and ignored.
  const std::size_t n = m.items.size();
  items_.resize(n);
  sampling_.resize(n);
  request_ids_.resize(n);
  sampled_.resize(n);
  row_status_.assign(n, ok_status());
  for (std::size_t i = 0; i < n; ++i) {
    const step_item& it = m.items[i];
    items_[i] = {it.seq, it.tokens, false};
    sampling_[i] = it.sample
                       ? kernels::sampling_options{it.temperature, it.top_k, it.top_p, it.seed}
                       : kernels::sampling_options{};
    request_ids_[i] = it.request_id;
  }
  model::step_output out;
  out.sampling = sampling_;
  out.request_ids = request_ids_;
  out.tokens = sampled_;
  out.row_status = row_status_;
  HELIX_RETURN_IF_ERROR(program_->forward(items_, m.new_block_kvp, out));
  tokens.resize(n);
  item_errors.clear();
  for (std::size_t i = 0; i < n; ++i) {
    // A row that is not sampled has no result to fail: its status is ignored.
    const bool failed = m.items[i].sample && !row_status_[i].ok();
    tokens[i] = m.items[i].sample && !failed ? sampled_[i] : -1;
    if (failed) {
      item_errors.resize(n, ok_status());
      item_errors[i] = row_status_[i];
    }
  }
  return ok_status();
}

status rank_compute::migrate(std::span<const move_item> moves) {
  moves_.clear();
  for (const move_item& mv : moves) moves_.push_back({mv.seq, mv.block_idx, mv.to_kvp});
  return program_->migrate_blocks(moves_);
}

std::int64_t rank_compute::kv_used_blocks() const {
  return program_->kv().used_slots();
}

std::int64_t rank_compute::kv_capacity_blocks() const {
  return program_->kv().num_slots();
}

}  // namespace helix::actors
