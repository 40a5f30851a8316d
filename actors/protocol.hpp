// Control messages between the engine, planner and worker actors (ARCHITECTURE.md section 4), as
// plain data. actors/messages.hpp gives each a CAF `inspect` overload so a worker in another
// process or host receives them through a remote handle; tensors never travel in them (the data
// plane moves those). Messages that act on the layout carry its epoch: a worker drops anything
// older than the epoch it is at. Statuses travel as (code, message) pairs (wire_status).
//
// Free of CAF so that the worker's compute (actors/worker_compute.hpp) and its tests need none.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/status.hpp"

namespace helix::actors {

/// A status as it crosses actor boundaries.
struct wire_status {
  std::int32_t code = 0;  // static_cast of helix::errc; 0 = ok
  std::string message;
};
[[nodiscard]] wire_status to_wire(const status& st);
[[nodiscard]] status from_wire(const wire_status& w);

/// One request's part of a step: tokens appended at the sequence's next positions; whether its
/// logits row is sampled (last prefill chunk or a decode token). An item with
/// `synthetic_tokens` > 0 (the benchmark seam, request_options::synthetic_context_tokens) has no
/// tokens: it appends that many positions of seeded synthetic KV instead of running the model;
/// such items come first in a step.
struct step_item {
  std::uint64_t seq = 0;
  std::vector<std::int32_t> tokens;
  bool sample = false;
  bool want_logits = false;  // rank 0 returns the sampled row's full logits (step_done_msg)
  std::int64_t synthetic_tokens = 0;
  std::uint64_t synthetic_seed = 0;
  // Sampling of the row (used when `sample`): kernels::sampling_options fields.
  float temperature = 0.0f;
  std::int32_t top_k = 0;
  float top_p = 1.0f;
  std::uint64_t seed = 0;
  std::uint64_t request_id = 0;  // keys the counter-based noise
  /// -1: the tokens are appended. Else a rebuild after a recovery (lost blocks only): the tokens
  /// at positions [rewrite_from, +tokens.size()), already in the table, computed again
  /// (model::batch_item::rewrite_from); never sampled.
  std::int64_t rewrite_from = -1;
};

/// Engine -> every worker: run one step. `new_block_kvp` is the planner's placement of every
/// block the step opens (item order, then position order).
struct step_msg {
  std::int64_t epoch = 0;
  std::int64_t step_id = 0;
  std::vector<step_item> items;
  std::vector<std::int64_t> new_block_kvp;
};

/// Worker -> engine: a step's outcome. tokens[i] is item i's sampled token (-1 when not
/// sampled); filled by every worker (all sample the same tokens). `result` is the step's own
/// outcome (not ok: the worker or the data plane failed). `item_errors` is empty when every item
/// went well, else one entry per item: an item whose own data failed (non-finite logits) has a
/// non-ok status there and ends alone, the others go on.
struct step_done_msg {
  std::int64_t epoch = 0;
  std::int64_t step_id = 0;
  std::int64_t rank = 0;
  wire_status result;
  std::vector<std::int32_t> tokens;
  std::vector<wire_status> item_errors;
  std::int64_t kv_used_blocks = 0;
  /// Rank 0 only: the full logits row (vocab floats) of every sampled item with want_logits, in
  /// item order. A debugging and verification output (helix verify), not the decode path.
  std::vector<float> logits;
  /// On failure: the global ranks this worker's data plane waited for in vain or saw fail, most
  /// named first (transport::fabric::suspects); recovery drops these.
  std::vector<std::int32_t> suspects;
  /// Seconds of the step per phase on this rank (worker_compute's step_outcome::phase_seconds).
  std::vector<double> phase_seconds;
};

/// Engine -> every worker: open (the next id, checked) or close a sequence. Replies with
/// op_done_msg.
struct open_seq_msg {
  std::int64_t epoch = 0;
  std::int64_t op_id = 0;
  std::uint64_t seq = 0;
};
struct close_seq_msg {
  std::int64_t epoch = 0;
  std::int64_t op_id = 0;
  std::uint64_t seq = 0;
};

/// One block migration (rebalancing), as rank_program::block_move.
struct move_item {
  std::uint64_t seq = 0;
  std::int64_t block_idx = 0;
  std::int64_t to_kvp = 0;
};

/// Engine -> every worker: move blocks and enter `epoch` (which must be newer than the worker's).
struct migrate_msg {
  std::int64_t epoch = 0;
  std::int64_t op_id = 0;
  std::vector<move_item> moves;
};

/// One sequence after a recovery, as model::restored_sequence (plus its placement offset, which
/// the engine's record keeps and workers ignore).
struct restore_seq {
  std::uint64_t seq = 0;
  std::int64_t offset = 0;
  std::int64_t num_tokens = 0;
  std::vector<std::int64_t> owner_kvp;
  std::vector<std::int64_t> kept_kvp;
  std::int64_t synthetic_tokens = 0;
  std::uint64_t synthetic_seed = 0;
  std::vector<std::int64_t> donor;  // per block (or empty): the donor that sends it, or -1
};

/// Engine -> every worker, first thing after a relayout: the sequences as they are now (lost
/// blocks only; empty for a full replay, which frees whatever KV the rank carried over) and the
/// id the next opened sequence gets. Enters `epoch`. Collective (rank_program::restore).
struct restore_msg {
  std::int64_t epoch = 0;
  std::int64_t op_id = 0;
  std::vector<restore_seq> seqs;
  std::uint64_t next_seq = 1;
  /// Donors take part (members of the old layout left without a rank, which send their blocks):
  /// the ranks agree and receive over the handoff communicator, which the donors share.
  bool handoff = false;
  /// Not empty: the change altered the TPA size and the KV is re-sliced by head
  /// (model::kv_reslice): the layout the carried KV was written under, and per rank of it, its
  /// member in the restore's communicator (the handoff when set, else the world), or -1.
  std::string reslice_from;
  std::vector<std::int64_t> reslice_holders;
};

/// Worker -> engine: an open, close, migrate or restore finished.
struct op_done_msg {
  std::int64_t epoch = 0;
  std::int64_t op_id = 0;
  std::int64_t rank = 0;
  wire_status result;
  std::int64_t kv_used_blocks = 0;  // after the operation
};

/// Client -> engine: a validated request to queue (engine::submit checked it).
struct submit_msg {
  std::uint64_t request_id = 0;
  std::vector<std::int32_t> prompt;
  float temperature = 0.0f;
  std::int32_t top_k = 0;
  float top_p = 1.0f;
  std::uint64_t seed = 0;
  std::int64_t max_tokens = 1;
  std::vector<std::int32_t> stop_tokens;
  /// steady_clock time since its epoch, in nanoseconds, past which the request ends with
  /// deadline_exceeded; 0: none. Meaningful in the submitting process only (the engine actor
  /// lives there).
  std::int64_t deadline_ns = 0;
  std::int64_t synthetic_tokens = 0;  // request_options::synthetic_context_tokens
  std::uint64_t synthetic_seed = 0;
  bool return_logits = false;
};

}  // namespace helix::actors
