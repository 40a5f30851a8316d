// The worker computes: rank_compute over model::rank_program, donor_compute over carried KV.
#include <optional>

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
    std::unique_ptr<transport::communicator> kvp_group, const model::rank_program_options& options,
    std::unique_ptr<model::carried_kv> carried) {
  HELIX_ASSIGN_OR_RETURN(
      auto program, model::rank_program::create(std::move(w), std::move(world),
                                                std::move(kvp_group), options, std::move(carried)));
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

status rank_compute::step(const step_msg& m, step_outcome& result) {
  // Synthetic-KV items first (the engine puts them there), each consuming the owners of the
  // blocks it opens; then one forward pass over the rest with the remaining owners.
  std::size_t first = 0;
  std::size_t owners_used = 0;
  for (; first < m.items.size() && m.items[first].synthetic_tokens > 0; ++first) {
    const step_item& it = m.items[first];
    HELIX_RETURN_IF_ERROR(program_->sequence_length(it.seq).error());  // table() would abort
    const auto opened =
        static_cast<std::size_t>(program_->table(it.seq).blocks_opened_by(it.synthetic_tokens));
    if (owners_used + opened > m.new_block_kvp.size()) {
      return invalid_argument("rank {}: step {} names {} block owners, its synthetic KV opens more",
                              program_->rank(), m.step_id, m.new_block_kvp.size());
    }
    HELIX_RETURN_IF_ERROR(program_->append_synthetic(
        it.seq, it.synthetic_tokens, it.synthetic_seed,
        std::span<const std::int64_t>(m.new_block_kvp).subspan(owners_used, opened)));
    owners_used += opened;
  }
  const std::size_t n = m.items.size() - first;
  result.tokens.assign(m.items.size(), -1);
  result.item_errors.clear();
  result.logits.clear();
  result.phase_seconds.clear();
  if (n == 0) return ok_status();
  // Every item has one logits row (decode tokens and prefill chunks alike); rows of items that
  // are not sampled are sampled greedily and ignored.
  items_.resize(n);
  sampling_.resize(n);
  request_ids_.resize(n);
  sampled_.resize(n);
  row_status_.assign(n, ok_status());
  bool want_logits = false;
  for (std::size_t i = 0; i < n; ++i) {
    const step_item& it = m.items[first + i];
    items_[i] = {it.seq, it.tokens, false, it.rewrite_from};
    sampling_[i] = it.sample
                       ? kernels::sampling_options{it.temperature, it.top_k, it.top_p, it.seed}
                       : kernels::sampling_options{};
    request_ids_[i] = it.request_id;
    want_logits = want_logits || (it.sample && it.want_logits);
  }
  const auto vocab = static_cast<std::size_t>(program_->spec().vocab);
  model::step_output out;
  if (want_logits) {  // the same on every rank: the all-gather is collective
    logits_.resize(n * vocab);
    out.logits = logits_;
  }
  out.sampling = sampling_;
  out.request_ids = request_ids_;
  out.tokens = sampled_;
  out.row_status = row_status_;
  HELIX_RETURN_IF_ERROR(program_->forward(
      items_, std::span<const std::int64_t>(m.new_block_kvp).subspan(owners_used), out));
  const model::rank_program::step_phases& ph = program_->last_step_phases();
  result.phase_seconds = {ph.attention_s, ph.all_to_all_s, ph.ffn_s, ph.sampling_s};
  for (std::size_t i = 0; i < n; ++i) {
    const step_item& it = m.items[first + i];
    // A row that is not sampled has no result to fail: its status is ignored.
    const bool failed = it.sample && !row_status_[i].ok();
    result.tokens[first + i] = it.sample && !failed ? sampled_[i] : -1;
    if (failed) {
      result.item_errors.resize(m.items.size(), ok_status());
      result.item_errors[first + i] = row_status_[i];
    }
    if (want_logits && it.sample && it.want_logits && program_->rank() == 0) {
      result.logits.insert(result.logits.end(),
                           logits_.begin() + static_cast<std::ptrdiff_t>(i * vocab),
                           logits_.begin() + static_cast<std::ptrdiff_t>((i + 1) * vocab));
    }
  }
  return ok_status();
}

status rank_compute::migrate(std::span<const move_item> moves) {
  moves_.clear();
  for (const move_item& mv : moves) moves_.push_back({mv.seq, mv.block_idx, mv.to_kvp});
  return program_->migrate_blocks(moves_);
}

namespace {

std::vector<model::restored_sequence> restored(const restore_msg& m) {
  std::vector<model::restored_sequence> seqs;
  seqs.reserve(m.seqs.size());
  for (const restore_seq& r : m.seqs) {
    seqs.push_back({r.seq, r.num_tokens, r.owner_kvp, r.kept_kvp, r.synthetic_tokens,
                    r.synthetic_seed, r.donor});
  }
  return seqs;
}

// The re-slice a restore asks for (restore_msg::reslice_from), or nothing.
expected<std::optional<model::kv_reslice>> reslice_of(const restore_msg& m) {
  if (m.reslice_from.empty()) return std::optional<model::kv_reslice>{};
  HELIX_ASSIGN_OR_RETURN(layout before, layout::parse(m.reslice_from));
  return std::optional<model::kv_reslice>{model::kv_reslice{before, m.reslice_holders}};
}

}  // namespace

status rank_compute::restore(const restore_msg& m) {
  if (m.handoff && handoff_ == nullptr) {
    return failed_precondition("worker {}: a restore with donors, but no handoff communicator",
                               program_->rank());
  }
  HELIX_ASSIGN_OR_RETURN(const auto reslice, reslice_of(m));
  return program_->restore(restored(m), m.next_seq, m.handoff ? handoff_.get() : nullptr,
                           reslice ? &*reslice : nullptr);
}

std::unique_ptr<model::carried_kv> rank_compute::release_kv() {
  return program_->release_kv();
}

std::int64_t rank_compute::kv_used_blocks() const {
  return program_->kv().used_slots();
}

std::int64_t rank_compute::kv_capacity_blocks() const {
  return program_->kv().num_slots();
}

donor_compute::donor_compute(std::unique_ptr<model::carried_kv> kv,
                             std::unique_ptr<transport::communicator> handoff, layout after,
                             std::int64_t rank)
    : kv_(std::move(kv)), handoff_(std::move(handoff)), after_(std::move(after)), rank_(rank) {}

status donor_compute::refuse(std::string_view what) const {
  return failed_precondition("worker {} is a donor: it only hands its KV over ({})", rank_, what);
}

expected<std::uint64_t> donor_compute::open_sequence() {
  return refuse("open");
}

status donor_compute::close_sequence(std::uint64_t) {
  return refuse("close");
}

status donor_compute::step(const step_msg&, step_outcome&) {
  return refuse("step");
}

status donor_compute::migrate(std::span<const move_item>) {
  return refuse("migrate");
}

status donor_compute::restore(const restore_msg& m) {
  if (!m.handoff || handoff_ == nullptr) return refuse("restore without handoff");
  const std::int64_t donor_idx = rank_ - after_.num_ranks;
  // Nothing carried (its old worker never ended): an empty store holds none of its blocks, so
  // the agreement fails the restore everywhere and the engine replays in full.
  model::carried_kv none;
  none.grid = after_;
  HELIX_ASSIGN_OR_RETURN(const auto reslice, reslice_of(m));
  const status st = model::donate_kv(kv_ ? *kv_ : none, *handoff_, after_, donor_idx, restored(m),
                                     reslice ? &*reslice : nullptr);
  kv_.reset();  // donated (or refused): the memory goes back now
  return st;
}

std::int64_t donor_compute::kv_used_blocks() const {
  return kv_ ? kv_->store.used_slots() : 0;
}

std::int64_t donor_compute::kv_capacity_blocks() const {
  return kv_ ? kv_->store.num_slots() : 0;
}

}  // namespace helix::actors
