#include "model/checkpoint.hpp"

#include <unistd.h>

#include <charconv>
#include <exception>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
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

}  // namespace

expected<model_weights> load_checkpoint(const std::string& dir, dtype weight_type) {
  if (weight_type == dtype::fp8_e4m3) {
    return invalid_argument(
        "checkpoint '{}': weight type fp8_e4m3 is not supported (f32, bf16, "
        "f16)",
        dir);
  }
  HELIX_ASSIGN_OR_RETURN(const model_spec spec, load_hf_config(dir));
  HELIX_ASSIGN_OR_RETURN(const tensor_source src, open_source(dir));
  double stored = 0;
  for (const auto& [name, file_idx] : src.where) {
    stored += static_cast<double>(src.files[file_idx].find(name)->numel());
  }
  // Slack so that only absurd configs are caught here; a merely inconsistent one gets the
  // precise per-tensor error below.
  if (const double want = spec_values(spec); want > 1.25 * stored + 4096) {
    return invalid_argument(
        "checkpoint '{}': config.json describes {:.4g} parameters but the "
        "weights files hold only {:.4g} values",
        dir, want, stored);
  }
  HELIX_ASSIGN_OR_RETURN(model_weights w, allocate_weights(spec, weight_type));

  std::set<std::string, std::less<>> used;
  for (named_tensor& nt : list_tensors(w)) {
    if (nt.t->data() == nullptr) continue;  // a slot this spec does not allocate
    std::size_t file_idx = 0;
    const safetensors_entry* e = src.find(nt.name, file_idx);
    if (e == nullptr) {
      return not_found("checkpoint '{}': tensor '{}' not found (expected shape {})", dir, nt.name,
                       nt.t->dims().to_string());
    }
    if (!same_shape(*e, nt.t->dims())) {
      return invalid_argument("checkpoint '{}': tensor '{}' has shape {}, expected {}", dir,
                              nt.name, e->shape_string(), nt.t->dims().to_string());
    }
    HELIX_RETURN_IF_ERROR(src.files[file_idx].read_into(nt.name, *nt.t));
    used.insert(nt.name);
  }

  auto log = module_logger("model");
  std::size_t ignored = 0;
  for (const auto& [name, file_idx] : src.where) {
    if (used.contains(name) || is_extra_layer(name, spec.num_layers)) continue;
    ++ignored;
    log->debug("checkpoint '{}': ignoring tensor '{}' (not used by {})", dir, name,
               spec.architecture);
  }
  log->debug("checkpoint '{}': loaded {} tensors as {} ({} unused tensors ignored)", dir,
             used.size(), dtype_name(weight_type), ignored);
  return w;
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
