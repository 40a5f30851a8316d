#include "model/decoder.hpp"

#include "model/sharding.hpp"
#include "transport/transport.hpp"

namespace helix::model {
namespace {

rank_program_options program_options(const decoder_options& options) {
  rank_program_options ro;
  ro.kv_type = options.kv_type;
  ro.block_tokens = options.block_tokens;
  ro.kv_capacity_tokens = options.kv_capacity_tokens;
  ro.max_batch_tokens = options.max_batch_tokens;
  ro.num_threads = options.num_threads;
  ro.backend = options.backend;
  return ro;
}

}  // namespace

// Copies (const&) or moves (&&) the weights into the one rank's shards.
template <class Weights>
expected<std::unique_ptr<decoder>> decoder::build(Weights&& weights,
                                                  const decoder_options& options) {
  HELIX_RETURN_IF_ERROR(weights.spec.validate());
  const rank_program_options ro = program_options(options);
  // Checked before the weights are copied.
  HELIX_RETURN_IF_ERROR(rank_program::check_options(ro).with_context("decoder"));
  HELIX_ASSIGN_OR_RETURN(const layout one, layout::parse("helix:kvp=1,tpa=1"));
  HELIX_ASSIGN_OR_RETURN(rank_weights w,
                         shard_weights(std::forward<Weights>(weights), one, /*rank=*/0));
  HELIX_ASSIGN_OR_RETURN(std::unique_ptr<transport::fabric> fab, transport::make_local_fabric(1));
  HELIX_ASSIGN_OR_RETURN(auto world, fab->make_world(0));
  HELIX_ASSIGN_OR_RETURN(auto kvp, fab->make_world(0));
  HELIX_ASSIGN_OR_RETURN(auto program,
                         rank_program::create(std::move(w), std::move(world), std::move(kvp), ro));
  return std::make_unique<decoder>(passkey{}, options, std::move(fab), std::move(program));
}

expected<std::unique_ptr<decoder>> decoder::create(const model_weights& weights,
                                                   const decoder_options& options) {
  return build(weights, options);
}

expected<std::unique_ptr<decoder>> decoder::create(model_weights&& weights,
                                                   const decoder_options& options) {
  return build(std::move(weights), options);
}

decoder::decoder(passkey, const decoder_options& options, std::unique_ptr<transport::fabric> fabric,
                 std::unique_ptr<rank_program> program)
    : opt_(options), fabric_(std::move(fabric)), program_(std::move(program)) {}

status decoder::append_synthetic(std::uint64_t seq, std::int64_t num_tokens, std::uint64_t seed) {
  HELIX_RETURN_IF_ERROR(program_->sequence_length(seq).error());
  if (num_tokens < 0) return invalid_argument("decoder: {} synthetic tokens", num_tokens);
  owners_.assign(static_cast<std::size_t>(program_->table(seq).blocks_opened_by(num_tokens)), 0);
  return program_->append_synthetic(seq, num_tokens, seed, owners_);
}

status decoder::forward(std::span<const batch_item> items, std::span<float> logits) {
  // The rank program may skip the LM head (empty logits); the decoder always produces logits.
  const std::int64_t need = logits_rows(items) * spec().vocab;
  if (static_cast<std::int64_t>(logits.size()) < need) {
    return invalid_argument("decoder: logits span holds {} floats, {} needed", logits.size(), need);
  }
  owners_.assign(static_cast<std::size_t>(program_->blocks_opened(items)), 0);
  return program_->forward(items, owners_, logits);
}

}  // namespace helix::model
