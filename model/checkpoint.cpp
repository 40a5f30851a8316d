#include "model/checkpoint.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <sstream>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/log.hpp"
#include "model/hf_config.hpp"
#include "model/safetensors.hpp"

namespace helix::model {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr std::string_view single_file = "model.safetensors";
constexpr std::string_view index_file = "model.safetensors.index.json";

// Where every tensor of a checkpoint lives: the opened files and name -> file.
struct tensor_source {
  std::vector<safetensors_file> files;
  std::map<std::string, std::size_t, std::less<>> where;

  [[nodiscard]] const safetensors_entry* find(std::string_view name, std::size_t& file_idx) const {
    const auto it = where.find(name);
    if (it == where.end()) return nullptr;
    file_idx = it->second;
    return files[file_idx].find(name);
  }
};

expected<std::string> read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return invalid_argument("cannot read '{}'", path.string());
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return invalid_argument("cannot read '{}'", path.string());
  return text.str();
}

// A shard name from an index must be a plain file inside the checkpoint directory.
bool plain_file_name(std::string_view name) {
  return !name.empty() && name != "." && name != ".." && name.find('/') == std::string_view::npos &&
         name.find('\0') == std::string_view::npos;
}

expected<tensor_source> open_sharded(const std::string& dir, const fs::path& index_path) {
  HELIX_ASSIGN_OR_RETURN(const std::string text, read_text(index_path));
  std::map<std::string, std::string> weight_map;
  try {
    const json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object()) {
      return invalid_argument("checkpoint '{}': {} is not a JSON object", dir, index_file);
    }
    const auto wm = j.find("weight_map");
    if (wm == j.end() || !wm->is_object()) {
      return invalid_argument("checkpoint '{}': {} has no \"weight_map\" object", dir, index_file);
    }
    for (const auto& [name, file] : wm->items()) {
      if (!file.is_string() || !plain_file_name(file.get_ref<const std::string&>())) {
        return invalid_argument(
            "checkpoint '{}': {}: tensor '{}' maps to {}, not a file name in "
            "the directory",
            dir, index_file, name, file.dump());
      }
      weight_map[name] = file.get<std::string>();
    }
  } catch (const std::exception& ex) {
    return invalid_argument("checkpoint '{}': cannot parse {}: {}", dir, index_file, ex.what());
  }
  tensor_source src;
  std::map<std::string, std::size_t> file_idx;
  for (const auto& [name, file] : weight_map) {
    auto [it, inserted] = file_idx.try_emplace(file, src.files.size());
    if (inserted) {
      HELIX_ASSIGN_OR_RETURN(safetensors_file f,
                             safetensors_file::open((fs::path(dir) / file).string()));
      src.files.push_back(std::move(f));
    }
    if (src.files[it->second].find(name) == nullptr) {
      return not_found("checkpoint '{}': {} puts tensor '{}' in {}, which does not contain it", dir,
                       index_file, name, file);
    }
    src.where.emplace(name, it->second);
  }
  return src;
}

expected<tensor_source> open_source(const std::string& dir) {
  std::error_code ec;
  const fs::path single = fs::path(dir) / single_file;
  // transformers looks for the single file first, then the index; so do we.
  if (fs::exists(single, ec)) {
    tensor_source src;
    HELIX_ASSIGN_OR_RETURN(safetensors_file f, safetensors_file::open(single.string()));
    for (const safetensors_entry& e : f.entries()) src.where.emplace(e.name, 0);
    src.files.push_back(std::move(f));
    return src;
  }
  const fs::path index = fs::path(dir) / index_file;
  if (fs::exists(index, ec)) return open_sharded(dir, index);
  return not_found("checkpoint '{}': neither {} nor {} found", dir, single_file, index_file);
}

// "model.layers.N.<...>" with N >= num_layers: layers the runtime does not run (DeepSeek-V3's
// multi-token-prediction layer is stored as layer num_hidden_layers).
bool is_extra_layer(std::string_view name, std::int64_t num_layers) {
  constexpr std::string_view prefix = "model.layers.";
  if (!name.starts_with(prefix)) return false;
  name.remove_prefix(prefix.size());
  std::int64_t idx = -1;
  const auto [end, err] = std::from_chars(name.data(), name.data() + name.size(), idx);
  if (err != std::errc() || end == name.data() || end == name.data() + name.size() || *end != '.') {
    return false;
  }
  return idx >= num_layers;
}

// The number of values allocate_weights() will allocate for `s` (as model_spec::num_params()),
// in double so that an absurd config cannot overflow; checked against the checkpoint's contents
// before allocating, so a malformed config.json is an error rather than an out-of-memory abort.
double spec_values(const model_spec& s) {
  const auto d = [](std::int64_t v) { return static_cast<double>(v); };
  const double h = d(s.hidden);
  const double nq = d(s.num_q_heads);
  double attn = 0;
  if (s.is_mla()) {
    const mla_spec& m = s.mla;
    const double qk = d(m.qk_nope_head_dim) + d(m.qk_rope_head_dim);
    const double q = m.q_lora_rank > 0
                         ? h * d(m.q_lora_rank) + d(m.q_lora_rank) + d(m.q_lora_rank) * nq * qk
                         : h * nq * qk;
    attn = q + h * (d(m.kv_lora_rank) + d(m.qk_rope_head_dim)) + d(m.kv_lora_rank) +
           d(m.kv_lora_rank) * nq * (d(m.qk_nope_head_dim) + d(m.v_head_dim)) +
           nq * d(m.v_head_dim) * h;
  } else {
    attn = h * d(s.head_dim) * (2 * nq + 2 * d(s.num_kv_heads));
  }
  // MoE layers: the multiples of layer_freq in [first_dense_layers, num_layers).
  std::int64_t moe_layers = 0;
  if (s.is_moe() && s.moe.first_dense_layers < s.num_layers) {
    const std::int64_t f = s.moe.layer_freq;
    moe_layers = (s.num_layers - 1) / f - (s.moe.first_dense_layers + f - 1) / f + 1;
  }
  const double dense_layers = d(s.num_layers - moe_layers);
  const double moe_ffn =
      d(s.moe.num_experts) * h + (s.moe.score_correction_bias ? d(s.moe.num_experts) : 0.0) +
      (d(s.moe.num_experts) + d(s.moe.num_shared_experts)) * 3 * h * d(s.moe.expert_ffn);
  return d(s.vocab) * h * (s.tie_word_embeddings ? 1 : 2) + h + d(s.num_layers) * (attn + 2 * h) +
         dense_layers * 3 * h * d(s.ffn) + d(moe_layers) * moe_ffn;
}

// Where a tensor first holds a value that is not finite, and what it is.
struct non_finite_at {
  std::size_t idx = 0;
  std::string_view what;  // "NaN", "+Inf", "-Inf"
};

// Bit layout of a floating-point storage type, enough to tell NaN and Inf from finite values.
// `has_inf` false: E4M3FN, where every all-ones exponent is finite except S.1111.111 (NaN).
template <class U>
struct float_bits {
  U exp_mask;
  U man_mask;
  U sign_mask;
  bool has_inf;
};

template <class U>
std::optional<non_finite_at> describe(std::size_t idx, U u, const float_bits<U>& f) {
  if (!f.has_inf) {
    if ((u & (f.exp_mask | f.man_mask)) != (f.exp_mask | f.man_mask)) return std::nullopt;
    return non_finite_at{idx, "NaN"};
  }
  if ((u & f.exp_mask) != f.exp_mask) return std::nullopt;
  if ((u & f.man_mask) != 0) return non_finite_at{idx, "NaN"};
  return non_finite_at{idx, (u & f.sign_mask) != 0 ? "-Inf" : "+Inf"};
}

// The first non-finite element of `n` elements of U at `p` (any alignment). Blocks are scanned
// branch-free first so that the common, all-finite case runs at memory speed on large tensors.
template <class U>
std::optional<non_finite_at> first_non_finite(const std::byte* p, std::size_t n,
                                              const float_bits<U>& f) {
  const U pattern = f.has_inf ? f.exp_mask : static_cast<U>(f.exp_mask | f.man_mask);
  constexpr std::size_t block = 4096;
  for (std::size_t b = 0; b < n; b += block) {
    const std::size_t end = std::min(n, b + block);
    bool any = false;
    for (std::size_t i = b; i < end; ++i) {
      U u;
      std::memcpy(&u, p + i * sizeof(U), sizeof(U));
      any |= (u & pattern) == pattern;
    }
    if (!any) continue;
    for (std::size_t i = b; i < end; ++i) {
      U u;
      std::memcpy(&u, p + i * sizeof(U), sizeof(U));
      if (auto at = describe(i, u, f)) return at;
    }
  }
  return std::nullopt;
}

// The first NaN or Inf of a tensor's stored bytes, for every floating-point safetensors dtype
// (integer and bool tensors have none).
std::optional<non_finite_at> first_non_finite_stored(std::string_view stored_dtype,
                                                     std::span<const std::byte> b) {
  if (stored_dtype == "F64") {
    return first_non_finite<std::uint64_t>(
        b.data(), b.size() / 8,
        {0x7ff0000000000000ull, 0x000fffffffffffffull, 0x8000000000000000ull, true});
  }
  if (stored_dtype == "F32") {
    return first_non_finite<std::uint32_t>(b.data(), b.size() / 4,
                                           {0x7f800000u, 0x007fffffu, 0x80000000u, true});
  }
  if (stored_dtype == "BF16") {
    return first_non_finite<std::uint16_t>(b.data(), b.size() / 2, {0x7f80, 0x007f, 0x8000, true});
  }
  if (stored_dtype == "F16") {
    return first_non_finite<std::uint16_t>(b.data(), b.size() / 2, {0x7c00, 0x03ff, 0x8000, true});
  }
  if (stored_dtype == "F8_E4M3") {
    return first_non_finite<std::uint8_t>(b.data(), b.size(), {0x78, 0x07, 0x80, false});
  }
  if (stored_dtype == "F8_E5M2") {
    return first_non_finite<std::uint8_t>(b.data(), b.size(), {0x7c, 0x03, 0x80, true});
  }
  return std::nullopt;
}

// The first non-finite of `n` loaded (host, f32/bf16/f16) values of type `type` at `data`.
std::optional<non_finite_at> first_non_finite_loaded(dtype type, const void* data, std::size_t n) {
  const auto* p = static_cast<const std::byte*>(data);
  switch (type) {
    case dtype::f32:
      return first_non_finite_stored("F32", {p, n * 4});
    case dtype::bf16:
      return first_non_finite_stored("BF16", {p, n * 2});
    case dtype::f16:
      return first_non_finite_stored("F16", {p, n * 2});
    case dtype::fp8_e4m3:
      return first_non_finite_stored("F8_E4M3", {p, n});
  }
  return std::nullopt;
}

// A NaN or Inf weight poisons every token that touches it, far from its cause; refuse it at load,
// naming the tensor and the element. Checked on the stored bytes (so that FP8 and other dtypes we
// cannot load yet are checked too) and, after a narrowing conversion, on the loaded values: a
// finite F32 value beyond f16's range would otherwise become Inf silently. `stored`: the stored
// bytes of e's elements from `first_elem` on (all of them for a whole tensor); messages give
// indices in the whole tensor.
status check_finite(const std::string& dir, const safetensors_file& file,
                    const safetensors_entry& e, std::size_t first_elem,
                    std::span<const std::byte> stored) {
  if (auto at = first_non_finite_stored(e.dtype_name, stored)) {
    return invalid_argument("checkpoint '{}': {}: element {} is {} (stored as {}, shape {}, in {})",
                            dir, e.name, first_elem + at->idx, at->what, e.dtype_name,
                            e.shape_string(), file.path());
  }
  return ok_status();
}

// Whether converting `from` to `to` can turn a finite value into Inf: only into a type of smaller
// range (f32 -> bf16 rounds FLT_MAX up; f32 and bf16 -> f16 beyond 65504). Widening is exact, so
// the common bf16-file-as-f32 load skips a second pass over the weights.
bool can_overflow(dtype from, dtype to) {
  return (to == dtype::f16 && from != dtype::f16) || (to == dtype::bf16 && from == dtype::f32);
}

// `n` values of type `to` at `loaded`, converted from e's elements from `first_elem` on.
status check_converted_finite(const std::string& dir, const safetensors_file& file,
                              const safetensors_entry& e, std::size_t first_elem, dtype to,
                              const void* loaded, std::size_t n) {
  if (!e.type || !can_overflow(*e.type, to)) return ok_status();
  if (auto at = first_non_finite_loaded(to, loaded, n)) {
    const std::size_t idx = first_elem + at->idx;
    std::byte raw[4] = {};
    const std::size_t elem = dtype_bytes(*e.type);
    std::memcpy(raw, file.bytes(e).data() + idx * elem, elem);
    const float v = load_as_f32(raw, *e.type, 0);
    return invalid_argument(
        "checkpoint '{}': {}: element {} ({} as {}) overflows to {} when converted to {} (in {})",
        dir, e.name, idx, v, e.dtype_name, at->what, dtype_name(to), file.path());
  }
  return ok_status();
}

bool same_shape(const safetensors_entry& e, const shape& s) {
  if (static_cast<int>(e.shape.size()) != s.rank) return false;
  for (int i = 0; i < s.rank; ++i) {
    if (e.shape[static_cast<std::size_t>(i)] != s[i]) return false;
  }
  return true;
}

status write_text_atomic(const fs::path& path, const std::string& text) {
  const fs::path tmp = path.string() + ".tmp" + std::to_string(::getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << text;
    out.flush();
    if (!out) {
      std::error_code ec;
      fs::remove(tmp, ec);
      return internal_error("cannot write '{}'", tmp.string());
    }
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) {
    fs::remove(tmp, ec);
    return internal_error("cannot rename '{}' to '{}': {}", tmp.string(), path.string(),
                          ec.message());
  }
  return ok_status();
}

status check_weight_type(const std::string&, dtype) {
  return ok_status();  // fp8_e4m3 keeps F8 tensors in FP8 and the others as stored
}

// With weight_type fp8_e4m3, a tensor that is not stored as F8 (the embedding, an unquantized
// LM head or layer) stays in its stored dtype, so its values are exactly those of an f32 load;
// `planned` is the dtype the plan gives it.
dtype kept_type(dtype weight_type, dtype planned, const safetensors_entry& e) {
  if (weight_type != dtype::fp8_e4m3 || planned == dtype::f32 || !e.type) return planned;
  return *e.type;
}

// Refuses a config.json that describes far more values than the files hold before anything is
// sized from it. Slack so that only absurd configs are caught here; a merely inconsistent one
// gets the precise per-tensor error afterwards.
status check_spec_fits(const std::string& dir, const model_spec& spec, const tensor_source& src) {
  double stored = 0;
  for (const auto& [name, file_idx] : src.where) {
    stored += static_cast<double>(src.files[file_idx].find(name)->numel());
  }
  if (const double want = spec_values(spec); want > 1.25 * stored + 4096) {
    return invalid_argument(
        "checkpoint '{}': config.json describes {:.4g} parameters but the "
        "weights files hold only {:.4g} values",
        dir, want, stored);
  }
  return ok_status();
}

// Tensors of the files that the model does not use are ignored, and said so at debug.
void log_ignored(const std::string& dir, const model_spec& spec, const tensor_source& src,
                 const std::set<std::string, std::less<>>& used, dtype weight_type,
                 std::string_view what) {
  auto log = module_logger("model");
  std::size_t ignored = 0;
  for (const auto& [name, file_idx] : src.where) {
    if (used.contains(name) || is_extra_layer(name, spec.num_layers)) continue;
    ++ignored;
    log->debug("checkpoint '{}': ignoring tensor '{}' (not used by {})", dir, name,
               spec.architecture);
  }
  log->debug("checkpoint '{}': loaded {} {} as {} ({} unused tensors ignored)", dir, used.size(),
             what, dtype_name(weight_type), ignored);
}

// The entry of a tensor the model needs, with the shape it needs: not_found or invalid_argument
// naming it otherwise.
expected<const safetensors_entry*> find_tensor(const std::string& dir, const tensor_source& src,
                                               const std::string& name, const shape& dims,
                                               std::size_t& file_idx) {
  const safetensors_entry* e = src.find(name, file_idx);
  if (e == nullptr) {
    return not_found("checkpoint '{}': tensor '{}' not found (expected shape {})", dir, name,
                     dims.to_string());
  }
  if (!same_shape(*e, dims)) {
    return invalid_argument("checkpoint '{}': tensor '{}' has shape {}, expected {}", dir, name,
                            e->shape_string(), dims.to_string());
  }
  return e;
}

// Converts `n` stored elements of type `from` (any alignment) to `to` at `dst`, rounding to
// nearest even as safetensors_file::read_into does.
void convert_stored(const std::byte* src, dtype from, std::size_t n, void* dst, dtype to) {
  if (from == to) {
    std::memcpy(dst, src, n * dtype_bytes(from));
    return;
  }
  const std::size_t elem = dtype_bytes(from);
  for (std::size_t i = 0; i < n; ++i) {
    std::byte raw[4] = {};
    std::memcpy(raw, src + i * elem, elem);  // the mapping gives no alignment guarantee
    store_from_f32(dst, to, i, load_as_f32(raw, from, 0));
  }
}

// Block-scaled FP8 (hf_config.hpp's hf_quantization): an F8_E4M3 matrix [rows, cols] and its
// `<name>_scale_inv` [ceil(rows / block_rows), ceil(cols / block_cols)] (F32, BF16 or F16), so that
// element (i, j) is its e4m3 value times scale_inv[i / block_rows][j / block_cols]: partial blocks
// at the edges, and any row or column range (a rank's piece) finds its blocks' scales.
struct fp8_scales {
  const safetensors_file* file = nullptr;
  const safetensors_entry* scale = nullptr;
  std::int64_t cols = 0;
  std::int64_t block_rows = 0;
  std::int64_t block_cols = 0;
  std::int64_t scale_cols = 0;
};

// The scales of `e` when it is stored as F8_E4M3 (none otherwise), checked: a quantization in
// config.json, a 2-D weight, its scale tensor present with the block grid's shape, a readable
// dtype and finite values. The scale tensor's name goes into `used`.
expected<std::optional<fp8_scales>> fp8_scales_of(const std::string& dir, const tensor_source& src,
                                                  const std::optional<hf_quantization>& quant,
                                                  const safetensors_entry& e,
                                                  std::set<std::string, std::less<>>& used) {
  if (e.dtype_name != "F8_E4M3") return std::optional<fp8_scales>{};
  if (!quant) {
    return invalid_argument(
        "checkpoint '{}': tensor '{}' is stored as F8_E4M3 but config.json has no "
        "quantization_config (quant_method fp8 with a weight_block_size)",
        dir, e.name);
  }
  if (e.shape.size() != 2) {
    return invalid_argument(
        "checkpoint '{}': tensor '{}' is F8_E4M3 with shape {}; only 2-D "
        "weights are block-scaled",
        dir, e.name, e.shape_string());
  }
  const std::string name = e.name + "_scale_inv";
  std::size_t file_idx = 0;
  const safetensors_entry* s = src.find(name, file_idx);
  if (s == nullptr) {
    return not_found("checkpoint '{}': tensor '{}' is F8_E4M3 but its scales '{}' are missing", dir,
                     e.name, name);
  }
  const std::int64_t rows = e.shape[0];
  const std::int64_t cols = e.shape[1];
  const std::int64_t grid_rows = (rows + quant->block_rows - 1) / quant->block_rows;
  const std::int64_t grid_cols = (cols + quant->block_cols - 1) / quant->block_cols;
  if (s->shape.size() != 2 || s->shape[0] != grid_rows || s->shape[1] != grid_cols) {
    return invalid_argument(
        "checkpoint '{}': '{}' has shape {}, expected [{}, {}] (blocks of {} x {} over {})", dir,
        name, s->shape_string(), grid_rows, grid_cols, quant->block_rows, quant->block_cols,
        e.shape_string());
  }
  if (!s->type) {
    return invalid_argument("checkpoint '{}': '{}' has dtype {} (scales must be F32, BF16 or F16)",
                            dir, name, s->dtype_name);
  }
  const safetensors_file& file = src.files[file_idx];
  HELIX_RETURN_IF_ERROR(check_finite(dir, file, *s, 0, file.bytes(*s)));
  used.insert(name);
  return std::optional<fp8_scales>{
      fp8_scales{&file, s, cols, quant->block_rows, quant->block_cols, grid_cols}};
}

// The piece `cut` of the F8_E4M3 entry `e` (full shape `dims`) kept in FP8: its codes (NaN
// refused) and its blocks' scales, expanded to its rows (tensor::scales()).
expected<tensor> keep_fp8(const std::string& dir, const safetensors_file& file,
                          const safetensors_entry& e, const fp8_scales& f, const shape& dims,
                          const tensor_cut& cut) {
  tensor out(dtype::fp8_e4m3, cut_shape(dims, cut));
  const std::byte* stored = file.bytes(e).data();
  auto* dst = static_cast<std::byte*>(out.data());
  for (const cut_run& r : cut_runs(dims, cut)) {
    for (std::int64_t i = 0; i < r.count; ++i) {
      const auto code = static_cast<std::uint8_t>(stored[r.full_offset + i]);
      if ((code & 0x7f) == 0x7f) {
        return invalid_argument(
            "checkpoint '{}': {}: element {} is NaN (F8_E4M3 code {:#04x}, in {})", dir, e.name,
            r.full_offset + i, code, file.path());
      }
    }
    std::memcpy(dst + r.piece_offset, stored + r.full_offset, static_cast<std::size_t>(r.count));
  }
  const std::byte* scales = f.file->bytes(*f.scale).data();
  const dtype scale_type = *f.scale->type;
  const std::size_t scale_elem = dtype_bytes(scale_type);
  block_scales full;
  full.block_k = f.block_cols;
  full.per_row = f.scale_cols;
  full.row_scales.resize(static_cast<std::size_t>(dims[0] * f.scale_cols));
  for (std::int64_t r = 0; r < dims[0]; ++r) {
    for (std::int64_t j = 0; j < f.scale_cols; ++j) {
      std::byte raw[4] = {};
      std::memcpy(
          raw,
          scales + static_cast<std::size_t>((r / f.block_rows) * f.scale_cols + j) * scale_elem,
          scale_elem);  // no alignment guarantee
      full.row_scales[static_cast<std::size_t>(r * f.scale_cols + j)] =
          load_as_f32(raw, scale_type, 0);
    }
  }
  out.set_scales(cut_scales(full, cut));
  return out;
}

// `n` elements of the F8_E4M3 entry `e` from `first` on, dequantized into `to` at `dst`.
// invalid_argument for a NaN code (e4m3fn has no infinities).
status dequantize_fp8(const std::string& dir, const safetensors_file& file,
                      const safetensors_entry& e, const fp8_scales& f, std::size_t first,
                      std::size_t n, void* dst, dtype to) {
  const std::byte* stored = file.bytes(e).data();
  const std::byte* scales = f.file->bytes(*f.scale).data();
  const dtype scale_type = *f.scale->type;
  const std::size_t scale_elem = dtype_bytes(scale_type);
  const auto cols = static_cast<std::size_t>(f.cols);
  for (std::size_t k = 0; k < n; ++k) {
    const std::size_t idx = first + k;
    const auto code = static_cast<std::uint8_t>(stored[idx]);
    if ((code & 0x7f) == 0x7f) {
      return invalid_argument(
          "checkpoint '{}': {}: element {} is NaN (F8_E4M3 code {:#04x}, in {})", dir, e.name, idx,
          code, file.path());
    }
    const std::size_t block = idx / cols / static_cast<std::size_t>(f.block_rows) *
                                  static_cast<std::size_t>(f.scale_cols) +
                              idx % cols / static_cast<std::size_t>(f.block_cols);
    std::byte raw[4] = {};
    std::memcpy(raw, scales + block * scale_elem, scale_elem);  // no alignment guarantee
    const float scale = load_as_f32(raw, scale_type, 0);
    store_from_f32(dst, to, k, load_as_f32(&stored[idx], dtype::fp8_e4m3, 0) * scale);
  }
  if (auto at = first_non_finite_loaded(to, dst, n)) {
    return invalid_argument(
        "checkpoint '{}': {}: element {} is {} once dequantized and converted to {} (in {})", dir,
        e.name, first + at->idx, at->what, dtype_name(to), file.path());
  }
  return ok_status();
}

// The piece `cut` of plan entry `p`, read straight from the mapping of its entry `e`: only the
// piece's elements are touched, checked for NaN/Inf as stored and for overflow as converted.
expected<tensor> read_piece(const std::string& dir, const safetensors_file& file,
                            const safetensors_entry& e, const full_tensor_plan& p,
                            const tensor_cut& cut, const std::optional<fp8_scales>& fp8,
                            dtype weight_type) {
  if (fp8 && p.type == dtype::fp8_e4m3) return keep_fp8(dir, file, e, *fp8, p.dims, cut);
  const dtype type = fp8 ? p.type : kept_type(weight_type, p.type, e);
  tensor out(type, cut_shape(p.dims, cut));
  if (fp8) {
    auto* dst = static_cast<std::byte*>(out.data());
    for (const cut_run& r : cut_runs(p.dims, cut)) {
      HELIX_RETURN_IF_ERROR(dequantize_fp8(
          dir, file, e, *fp8, static_cast<std::size_t>(r.full_offset),
          static_cast<std::size_t>(r.count),
          dst + static_cast<std::size_t>(r.piece_offset) * dtype_bytes(p.type), p.type));
    }
    return out;
  }
  const std::span<const std::byte> stored = file.bytes(e);
  const std::size_t src_elem = dtype_bytes(*e.type);
  const std::size_t dst_elem = dtype_bytes(type);
  auto* dst = static_cast<std::byte*>(out.data());
  for (const cut_run& r : cut_runs(p.dims, cut)) {
    const auto first = static_cast<std::size_t>(r.full_offset);
    const auto n = static_cast<std::size_t>(r.count);
    const std::span<const std::byte> run = stored.subspan(first * src_elem, n * src_elem);
    HELIX_RETURN_IF_ERROR(check_finite(dir, file, e, first, run));
    std::byte* to = dst + static_cast<std::size_t>(r.piece_offset) * dst_elem;
    convert_stored(run.data(), *e.type, n, to, type);
    HELIX_RETURN_IF_ERROR(check_converted_finite(dir, file, e, first, type, to, n));
  }
  return out;
}

// Drops the mapped pages of `bytes` from this process's resident set once they have been read:
// they stay in the page cache (a later read faults them back in), so a rank's memory is its
// pieces plus the pages of one tensor at a time rather than of everything it read. Advice only.
void release_pages(std::span<const std::byte> bytes) {
  if (bytes.empty()) return;
  const auto page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
  // The mapping starts on a page boundary, so rounding the start down stays inside it.
  const std::uintptr_t begin = reinterpret_cast<std::uintptr_t>(bytes.data()) / page * page;
  const std::uintptr_t end = reinterpret_cast<std::uintptr_t>(bytes.data() + bytes.size());
  (void)::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

}  // namespace

expected<model_weights> load_checkpoint(const std::string& dir, dtype weight_type) {
  HELIX_RETURN_IF_ERROR(check_weight_type(dir, weight_type));
  HELIX_ASSIGN_OR_RETURN(const model_spec spec, load_hf_config(dir));
  HELIX_ASSIGN_OR_RETURN(const auto quant, load_hf_quantization(dir));
  HELIX_ASSIGN_OR_RETURN(const tensor_source src, open_source(dir));
  HELIX_RETURN_IF_ERROR(check_spec_fits(dir, spec, src));
  HELIX_ASSIGN_OR_RETURN(model_weights w, allocate_weights(spec, weight_type));

  std::set<std::string, std::less<>> used;
  for (named_tensor& nt : list_tensors(w)) {
    if (nt.t->data() == nullptr) continue;  // a slot this spec does not allocate
    std::size_t file_idx = 0;
    HELIX_ASSIGN_OR_RETURN(const safetensors_entry* e,
                           find_tensor(dir, src, nt.name, nt.t->dims(), file_idx));
    const safetensors_file& file = src.files[file_idx];
    HELIX_ASSIGN_OR_RETURN(const auto fp8, fp8_scales_of(dir, src, quant, *e, used));
    if (fp8 && nt.t->type() == dtype::fp8_e4m3) {  // kept in FP8 with its scales
      HELIX_ASSIGN_OR_RETURN(*nt.t, keep_fp8(dir, file, *e, *fp8, nt.t->dims(), tensor_cut{}));
      used.insert(nt.name);
      continue;
    }
    if (!fp8 && e->type && kept_type(weight_type, nt.t->type(), *e) != nt.t->type()) {
      *nt.t = tensor(*e->type, nt.t->dims());  // not quantized: as stored
    }
    if (fp8) {
      HELIX_RETURN_IF_ERROR(dequantize_fp8(dir, file, *e, *fp8, 0,
                                           static_cast<std::size_t>(nt.t->numel()), nt.t->data(),
                                           nt.t->type()));
      used.insert(nt.name);
      continue;
    }
    HELIX_RETURN_IF_ERROR(check_finite(dir, file, *e, 0, file.bytes(*e)));
    HELIX_RETURN_IF_ERROR(file.read_into(nt.name, *nt.t));
    HELIX_RETURN_IF_ERROR(check_converted_finite(dir, file, *e, 0, nt.t->type(), nt.t->data(),
                                                 static_cast<std::size_t>(nt.t->numel())));
    used.insert(nt.name);
  }
  log_ignored(dir, spec, src, used, weight_type, "tensors");
  return w;
}

expected<rank_weights> checkpoint_rank_weights(const std::string& dir, dtype weight_type,
                                               const layout& l, std::int64_t rank) {
  HELIX_RETURN_IF_ERROR(check_weight_type(dir, weight_type));
  HELIX_ASSIGN_OR_RETURN(const model_spec spec, load_hf_config(dir));
  HELIX_ASSIGN_OR_RETURN(const auto quant, load_hf_quantization(dir));
  HELIX_ASSIGN_OR_RETURN(const tensor_source src, open_source(dir));
  HELIX_RETURN_IF_ERROR(check_spec_fits(dir, spec, src));
  rank_weights out;
  auto planned = plan_rank_weights(spec, weight_type, l, rank, out);
  if (!planned.has_value()) {
    return planned.error().with_context(fmt::format("checkpoint '{}'", dir));
  }
  const std::vector<full_tensor_plan>& plan = *planned;

  // Every tensor first, so that a broken checkpoint fails alike on every rank and before any
  // piece is read.
  std::vector<std::pair<std::size_t, const safetensors_entry*>> entries;
  std::vector<std::optional<fp8_scales>> scales;
  entries.reserve(plan.size());
  std::set<std::string, std::less<>> used;
  for (const full_tensor_plan& p : plan) {
    std::size_t file_idx = 0;
    HELIX_ASSIGN_OR_RETURN(const safetensors_entry* e,
                           find_tensor(dir, src, p.name, p.dims, file_idx));
    HELIX_ASSIGN_OR_RETURN(std::optional<fp8_scales> fp8, fp8_scales_of(dir, src, quant, *e, used));
    scales.push_back(fp8);
    if (!e->type && !fp8) {
      return invalid_argument(
          "checkpoint '{}': tensor '{}' has dtype {}, which cannot be loaded (supported: F32, "
          "BF16, F16, and F8_E4M3 with block scales) (in {})",
          dir, p.name, e->dtype_name, src.files[file_idx].path());
    }
    entries.emplace_back(file_idx, e);
    used.insert(p.name);
  }
  std::size_t pieces = 0;
  for (std::size_t i = 0; i < plan.size(); ++i) {
    const auto [file_idx, e] = entries[i];
    for (const tensor_cut& c : plan[i].cuts) {
      HELIX_ASSIGN_OR_RETURN(
          *c.dst, read_piece(dir, src.files[file_idx], *e, plan[i], c, scales[i], weight_type));
      ++pieces;
    }
    if (!plan[i].cuts.empty()) release_pages(src.files[file_idx].bytes(*e));
  }
  log_ignored(dir, spec, src, used, weight_type,
              fmt::format("tensors ({} pieces for rank {} of {})", pieces, rank, l.to_string()));
  return out;  // closing `src` unmaps the files
}

status save_checkpoint(const std::string& dir, const model_weights& w) {
  if (w.weight_type == dtype::fp8_e4m3) {
    return invalid_argument("checkpoint '{}': fp8_e4m3 weights cannot be saved", dir);
  }
  HELIX_ASSIGN_OR_RETURN(const std::string config, hf_config_json(w.spec, w.weight_type));
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec)
    return internal_error("checkpoint '{}': cannot create the directory: {}", dir, ec.message());

  // list_tensors() hands out mutable pointers; they are only read here.
  std::vector<safetensors_tensor> tensors;
  for (const named_tensor& nt : list_tensors(const_cast<model_weights&>(w))) {
    if (nt.t->data() == nullptr) continue;  // a slot this spec does not allocate
    safetensors_tensor t;
    t.name = nt.name;
    t.type = nt.t->type();
    const shape& s = nt.t->dims();
    t.shape.assign(s.dims.begin(), s.dims.begin() + s.rank);
    t.data = nt.t->data();
    tensors.push_back(std::move(t));
  }
  HELIX_RETURN_IF_ERROR(write_safetensors((fs::path(dir) / single_file).string(), tensors)
                            .with_context(fmt::format("checkpoint '{}'", dir)));
  return write_text_atomic(fs::path(dir) / "config.json", config);
}

}  // namespace helix::model
