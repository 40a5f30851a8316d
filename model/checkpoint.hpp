// HF-layout checkpoints: a directory with config.json and model.safetensors (or shards listed in
// model.safetensors.index.json), loaded into / saved from model_weights.
//
// Called by the CLI and the engine setup to get the full weights of a model before they are
// sliced for the workers, and by worker processes (checkpoint_rank_weights) to read only their
// slices. Tensor names and shapes are HF's (see list_tensors() in weights.hpp), so checkpoints
// written by transformers load as they are and ours load in transformers.
// Functions are thread-compatible: concurrent calls on different directories are fine.
#pragma once

#include <string>

#include "core/dtype.hpp"
#include "core/layout.hpp"
#include "core/status.hpp"
#include "model/sharding.hpp"
#include "model/weights.hpp"

namespace helix::model {

/// Loads `dir` into weights of `weight_type` (f32, bf16 or f16: the in-memory dtype of linear and
/// embedding weights; norms, router and bias are f32 as weights.hpp says), converting from the
/// stored dtype (F32, BF16, F16) with round-to-nearest-even.
/// Reads model.safetensors if present, else model.safetensors.index.json and its shards.
/// lm_head.weight may be absent when tie_word_embeddings. Tensors the model does not use are
/// ignored (logged at debug by the "model" logger, except layers >= num_hidden_layers such as
/// DeepSeek's MTP layers, which are expected).
/// Errors: as load_hf_config() for config.json; not_found naming the directory if there are no
/// weights files, naming the tensor if one is missing; invalid_argument naming the tensor with
/// the expected and found shapes if a shape differs, or its dtype if it cannot be read (FP8);
/// invalid_argument naming the tensor and the element index for a NaN or an Inf in the stored
/// values of any floating-point dtype (F32, BF16, F16, F8_E4M3, F8_E5M2, F64), or for a finite
/// value that overflows to Inf when converted to `weight_type` (F32 70000 as f16);
/// as safetensors_file::open() for malformed files; invalid_argument for fp8_e4m3 weight_type.
[[nodiscard]] expected<model_weights> load_checkpoint(const std::string& dir, dtype weight_type);

/// What shard_weights(load_checkpoint(dir, weight_type), l, rank) gives, bit for bit, without
/// ever holding the full model: the files are memory-mapped and each piece the rank holds
/// (plan_rank_weights in sharding.hpp: attention rows and columns, FFN slices, its EP group's
/// experts, its vocabulary rows; embedding and norms whole) is converted straight from the
/// mapping into the rank's tensors. Peak memory is the rank's weights plus the mapped pages of
/// one tensor (each tensor's pages are dropped from the resident set once read; they stay in the
/// page cache), and the files are unmapped before returning.
/// Checks, with load_checkpoint()'s codes and messages: config.json and the files as there;
/// every tensor the model has must be present with the expected shape and a readable dtype (also
/// those the rank holds none of); NaN/Inf in the stored values and overflow on conversion are
/// checked only on the elements read (the message gives the element's index in the full tensor).
/// Unused tensors are ignored as there. Also as plan_rank_weights() for the layout and the rank.
/// Thread-compatible, like load_checkpoint().
[[nodiscard]] expected<rank_weights> checkpoint_rank_weights(const std::string& dir,
                                                             dtype weight_type,
                                                             const helix::layout& l,
                                                             std::int64_t rank);

/// Writes `w` to `dir` (created if needed): config.json (HF keys, torch_dtype = w.weight_type)
/// and model.safetensors with every tensor in its in-memory dtype, so that loading it back with
/// the same weight_type is bit-identical. Each file is written to a temporary file and renamed.
/// invalid_argument for a spec that cannot be written; internal for I/O failures.
[[nodiscard]] status save_checkpoint(const std::string& dir, const model_weights& w);

}  // namespace helix::model
