// Layouts: how N ranks are arranged for attention and for the FFN, and all rank math.
//
// A layout names a family and its grid sizes. Every caller that needs to know "which rank holds
// what" (weight sharding in model/, the layer program's collectives, the planner, the engine's
// block-table updates) asks the functions here; nobody re-derives a rank from indices by hand. This
// is the single place that fixes the numbering (ARCHITECTURE.md section 2):
//
//   attention:  rank = tpa_idx * KVP + kvp_idx      (the KVP group of TPA column c is
//                                                     ranks [c*KVP, (c+1)*KVP))
//   FFN:        rank = ep_idx * TPF + tpf_idx       (helix, tp)
//
// Families and canonical strings (parse() accepts them, to_string() prints the full form):
//   helix:kvp=A,tpa=B[,tpf=C,ep=D]  attention grid KVP x TPA (N = A*B); FFN grid TPF x EP with
//                                   TPF*EP = N. ep defaults to 1, tpf to N/ep. to_string() always
//                                   prints all four keys, e.g. "helix:kvp=4,tpa=2,tpf=8,ep=1".
//   tp:tp=N                         attention TP = N (KVP = 1, TPA = N; when N > K each KV head is
//                                   duplicated on N/K ranks), FFN TP = N (TPF = N, EP = 1).
//   medha:kvp=A,tpa=B               attention as helix (KVP x TPA); the FFN runs on the TPA ranks
//                                   only: the kvp_idx == 0 rank of each column, i.e. ranks
//                                   {c*KVP : c < TPA}, with TPF = TPA and EP = 1. FFN slot
//                                   s = ep_idx*TPF + tpf_idx lives on rank s*KVP; the other ranks
//                                   idle during the FFN (that is the baseline's cost).
//
// Query heads after attention: every family ends attention with rank r owning query heads
// [r*Q/N, (r+1)*Q/N), which is exactly the slice of o_proj's input dimension rank r holds for the
// TP = N output projection. For helix/medha this is where the all-to-all lands: member j of the
// KVP group of column c receives head slice j of the column's Q/TPA heads, and
// c*Q/TPA + j*Q/N = (c*KVP + j) * Q/N = r*Q/N. For tp, rank r computed those heads itself.
//
// Example, tiny-llama (Q = 8, K = 2), helix:kvp=4,tpa=2 (N = 8):
//   rank 5 -> attention coords {tpa_idx 1, kvp_idx 1}; column 1 = ranks 4..7, its query heads
//   [4, 8), KV head [1, 2); after the all-to-all rank 5 owns query head [5, 6).
//
// Plain value type; all functions are pure and thread-compatible. Functions taking indices
// HELIX_CHECK their ranges (an out-of-range index is a programming error, not a status); layouts
// are expected to have passed validate() for the model they are used with.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/model_spec.hpp"
#include "core/status.hpp"

namespace helix {

enum class layout_family : std::uint8_t { helix, tp, medha };

/// "helix", "tp", "medha".
[[nodiscard]] std::string_view layout_family_name(layout_family family);
/// Inverse of layout_family_name; invalid_argument "unknown family ..." otherwise.
[[nodiscard]] expected<layout_family> parse_layout_family(std::string_view name);

/// A half-open index range [first, first + count): query heads, KV heads or experts.
struct index_range {
  std::int64_t first = 0;
  std::int64_t count = 0;
  [[nodiscard]] std::int64_t end() const { return first + count; }
  [[nodiscard]] bool contains(std::int64_t i) const { return i >= first && i < end(); }
  friend bool operator==(const index_range&, const index_range&) = default;
};

struct attention_coord {
  std::int64_t tpa_idx = 0;  // column: which slice of the heads
  std::int64_t kvp_idx = 0;  // member of the column's KVP group: which KV shard
  friend bool operator==(const attention_coord&, const attention_coord&) = default;
};

struct ffn_coord {
  std::int64_t ep_idx = 0;   // expert group
  std::int64_t tpf_idx = 0;  // slice of each expert's (or the dense FFN's) intermediate dim
  friend bool operator==(const ffn_coord&, const ffn_coord&) = default;
};

/// Names of the validation rules; every validate() message starts with "layout rule <name>: ".
namespace layout_rule {
inline constexpr std::string_view positive = "positive";            // all sizes >= 1
inline constexpr std::string_view family = "family";                // known family
inline constexpr std::string_view ranks = "ranks";                  // N == KVP * TPA
inline constexpr std::string_view tpa_divides_k = "tpa_divides_k";  // K % TPA == 0 (MLA: K = 1)
inline constexpr std::string_view ffn_grid = "ffn_grid";  // TPF*EP == N; medha: TPF == TPA, EP == 1
inline constexpr std::string_view experts_divisible = "experts_divisible";  // E % EP == 0
inline constexpr std::string_view heads_divisible = "heads_divisible";      // Q % N == 0
inline constexpr std::string_view ep_dense = "ep_dense";          // EP == 1 for dense models
inline constexpr std::string_view tp_kv_heads = "tp_kv_heads";    // tp: K % N == 0 or N % K == 0
inline constexpr std::string_view family_shape = "family_shape";  // tp: KVP=1,TPA=TPF=N,EP=1
}  // namespace layout_rule

/// One layout. Fields are public plain data (use parse() / default_layout() to build one; a
/// hand-built one must pass validate()). For tp: kvp = 1, tpa = tpf = num_ranks, ep = 1. For
/// medha: tpf = tpa, ep = 1.
struct layout {
  layout_family family = layout_family::helix;
  std::int64_t kvp = 1;
  std::int64_t tpa = 1;
  std::int64_t tpf = 1;
  std::int64_t ep = 1;
  std::int64_t num_ranks = 1;  // N

  friend bool operator==(const layout&, const layout&) = default;

  /// Parses a canonical string (see the header comment). invalid_argument, naming the problem, for:
  /// unknown family, unknown key, duplicate key, missing key, a value that is not an integer or
  /// is zero/negative. Shape rules that need the model are left to validate().
  [[nodiscard]] static expected<layout> parse(std::string_view text);
  /// The full canonical string; parse(to_string()) == *this for every parsed layout.
  [[nodiscard]] std::string to_string() const;

  // ---- attention grid -------------------------------------------------------------------------
  /// {rank / KVP, rank % KVP}. tp: {rank, 0}.
  [[nodiscard]] attention_coord attention_coords(std::int64_t rank) const;
  /// tpa_idx * KVP + kvp_idx.
  [[nodiscard]] std::int64_t attention_rank(std::int64_t tpa_idx, std::int64_t kvp_idx) const;
  /// The KVP group of column `tpa_idx`: ranks [c*KVP, (c+1)*KVP) in kvp_idx order (tp: {c}).
  [[nodiscard]] std::vector<std::int64_t> kvp_group(std::int64_t tpa_idx) const;

  // ---- FFN grid -------------------------------------------------------------------------------
  /// Whether `rank` takes part in the FFN (always for helix/tp; medha: kvp_idx == 0 ranks only).
  [[nodiscard]] bool in_ffn(std::int64_t rank) const;
  /// The ranks that run the FFN, in FFN-slot order (ep_idx * TPF + tpf_idx).
  [[nodiscard]] std::vector<std::int64_t> ffn_ranks() const;
  /// {slot / TPF, slot % TPF} with slot = rank (helix, tp) or rank / KVP (medha). HELIX_CHECKs
  /// in_ffn(rank).
  [[nodiscard]] ffn_coord ffn_coords(std::int64_t rank) const;
  /// ep_idx * TPF + tpf_idx (helix, tp); (ep_idx * TPF + tpf_idx) * KVP (medha).
  [[nodiscard]] std::int64_t ffn_rank(std::int64_t ep_idx, std::int64_t tpf_idx) const;
  /// The TPF ranks of expert group `ep_idx` (they split each of its experts), in tpf_idx order.
  [[nodiscard]] std::vector<std::int64_t> tpf_group(std::int64_t ep_idx) const;
  /// The EP ranks holding slice `tpf_idx` of every expert group, in ep_idx order.
  [[nodiscard]] std::vector<std::int64_t> ep_group(std::int64_t tpf_idx) const;

  // ---- heads and experts (spec supplies Q, K, E) ----------------------------------------------
  /// Query heads rank r owns after attention (after the all-to-all for helix/medha):
  /// [r*Q/N, (r+1)*Q/N). These are also the rows of o_proj's input dim (times Dv) rank r holds.
  [[nodiscard]] index_range rank_q_heads(std::int64_t rank, const model_spec& spec) const;
  /// Query heads column c projects (redundantly on all its KVP ranks): [c*Q/TPA, (c+1)*Q/TPA).
  [[nodiscard]] index_range column_q_heads(std::int64_t tpa_idx, const model_spec& spec) const;
  /// KV heads column c holds. helix/medha and tp with N <= K: [c*K/TPA, (c+1)*K/TPA). tp with
  /// N > K: the one head rank c's queries use, [c*K/N, c*K/N + 1) (duplicated on N/K ranks).
  /// MLA: always [0, 1), the latent.
  [[nodiscard]] index_range column_kv_heads(std::int64_t tpa_idx, const model_spec& spec) const;
  /// KV heads of the column `rank` belongs to (every KVP member of a column holds the same heads,
  /// each for its own token blocks).
  [[nodiscard]] index_range rank_kv_heads(std::int64_t rank, const model_spec& spec) const;
  /// Head slice j of column c's query heads, i.e. what KVP member j receives in the all-to-all:
  /// [c*Q/TPA + j*Q/N, ... + Q/N). Equals rank_q_heads(attention_rank(c, j)) by construction;
  /// the regression test for the wrong-o_proj-shards bug checks exactly that.
  [[nodiscard]] index_range all_to_all_q_heads(std::int64_t tpa_idx, std::int64_t kvp_idx,
                                               const model_spec& spec) const;
  /// Routed experts of expert group `ep_idx`: [e*E/EP, (e+1)*E/EP). Empty for dense models.
  [[nodiscard]] index_range group_experts(std::int64_t ep_idx, const model_spec& spec) const;
};

/// Checks `l` against the rules for `spec`; ok or invalid_argument "layout rule <name>: ..." for
/// the first broken rule (names in layout_rule). K is spec.layout_kv_heads() (1 for MLA).
[[nodiscard]] status validate(const layout& l, const model_spec& spec);

/// The default layout of `family` on `num_ranks` ranks for `spec`, validated:
///   helix: TPA = the largest t <= min(K, N) dividing both K and N; KVP = N / TPA. Dense: TPF = N,
///          EP = 1. MoE: EP = the largest divisor of N that divides num_experts, TPF = N / EP
///          (experts are kept whole where possible: splitting an expert costs an all-reduce share
///          and smaller GEMMs, placing whole experts costs nothing extra since the all-reduce over
///          N happens anyway).
///   tp:    tp = N.
///   medha: TPA as helix, KVP = N / TPA (TPF = TPA, EP = 1).
/// invalid_argument if num_ranks < 1 or the result breaks a rule (e.g. Q not divisible by N).
[[nodiscard]] expected<layout> default_layout(layout_family family, std::int64_t num_ranks,
                                              const model_spec& spec);

}  // namespace helix
