#include "model/safetensors.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <exception>
#include <iterator>
#include <set>
#include <utility>

#include <nlohmann/json.hpp>

namespace helix::model {
namespace {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; a big-endian host would need byte swaps");

using json = nlohmann::json;

// The reference implementation refuses headers above 100,000,000 bytes; so do we, so that a
// corrupt length cannot make us parse gigabytes of tensor data as JSON.
constexpr std::uint64_t max_header_bytes = 100'000'000;

// The keys of a tensor entry; the reference refuses any other (serde deny_unknown_fields).
constexpr std::string_view entry_keys[] = {"dtype", "shape", "data_offsets"};

struct dtype_info {
  std::string_view name;
  std::size_t bytes;
};

// Every dtype of the safetensors format, so that files holding tensors we do not use still open.
constexpr dtype_info all_dtypes[] = {
    {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E4M3", 1}, {"F8_E5M2", 1},
    {"I16", 2},  {"U16", 2}, {"F16", 2}, {"BF16", 2},    {"I32", 4},
    {"U32", 4},  {"F32", 4}, {"F64", 8}, {"I64", 8},     {"U64", 8},
};

std::optional<dtype> readable_dtype(std::string_view name) {
  if (name == "F32") return dtype::f32;
  if (name == "BF16") return dtype::bf16;
  if (name == "F16") return dtype::f16;
  return std::nullopt;
}

std::string json_type(const json& v) {
  if (v.is_number_unsigned() || v.is_number_integer()) return "integer";
  return v.type_name();
}

// A short rendering of a (parsed, hence valid UTF-8) JSON value for error messages.
std::string json_brief(const json& v) {
  std::string s = v.dump();
  if (s.size() > 40) s = s.substr(0, 37) + "...";
  return s;
}

// A non-negative integer that fits in int64 (JSON numbers like 2.0 or -1 are refused).
std::optional<std::int64_t> as_size(const json& v) {
  if (v.is_number_unsigned()) {
    const auto u = v.get<std::uint64_t>();
    if (u > static_cast<std::uint64_t>(INT64_MAX)) return std::nullopt;
    return static_cast<std::int64_t>(u);
  }
  if (v.is_number_integer()) {
    const auto i = v.get<std::int64_t>();
    if (i < 0) return std::nullopt;
    return i;
  }
  return std::nullopt;
}

struct header_parse {
  json header;
  std::string duplicate;  // first duplicated key, if any
  bool nested_duplicate = false;
};

// Parses without exceptions; a parser callback finds duplicate keys, which nlohmann would
// otherwise silently overwrite (a duplicated tensor name must not go unnoticed).
header_parse parse_header(std::string_view text) {
  header_parse out;
  std::vector<std::set<std::string>> keys;
  auto cb = [&](int /*depth*/, json::parse_event_t event, json& parsed) -> bool {
    switch (event) {
      case json::parse_event_t::object_start:
        keys.emplace_back();
        break;
      case json::parse_event_t::object_end:
        if (!keys.empty()) keys.pop_back();
        break;
      case json::parse_event_t::key:
        if (!keys.empty() && parsed.is_string()) {
          const auto& k = parsed.get_ref<const std::string&>();
          if (!keys.back().insert(k).second && out.duplicate.empty()) {
            out.duplicate = k;
            out.nested_duplicate = keys.size() > 1;
          }
        }
        break;
      default:
        break;
    }
    return true;
  };
  out.header = json::parse(text.begin(), text.end(), cb, /*allow_exceptions=*/false);
  return out;
}

template <class S>
float load_elem(const std::byte* p) {
  S s;
  std::memcpy(&s, p, sizeof(S));  // the mapping gives no alignment guarantee
  return to_f32(s);
}

template <class S>
void convert_from(const std::byte* src, std::size_t n, void* dst, dtype dst_type) {
  for (std::size_t i = 0; i < n; ++i) {
    store_from_f32(dst, dst_type, i, load_elem<S>(src + i * sizeof(S)));
  }
}

status write_all(int fd, const void* data, std::size_t bytes, const std::string& path) {
  const auto* p = static_cast<const char*>(data);
  while (bytes > 0) {
    const ssize_t n = ::write(fd, p, std::min<std::size_t>(bytes, 1u << 30));
    if (n < 0) {
      if (errno == EINTR) continue;
      return internal_error("safetensors '{}': write failed: {}", path, std::strerror(errno));
    }
    p += n;
    bytes -= static_cast<std::size_t>(n);
  }
  return ok_status();
}

// Closes and removes a temporary file unless released (the happy path renames it).
class temp_file_guard {
 public:
  temp_file_guard(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
  temp_file_guard(const temp_file_guard&) = delete;
  temp_file_guard& operator=(const temp_file_guard&) = delete;
  ~temp_file_guard() {
    if (fd_ >= 0) ::close(fd_);
    if (!released_) ::unlink(path_.c_str());
  }
  [[nodiscard]] status close() {
    const int fd = std::exchange(fd_, -1);
    if (::close(fd) != 0) {
      return internal_error("safetensors '{}': close failed: {}", path_, std::strerror(errno));
    }
    return ok_status();
  }
  void release() { released_ = true; }

 private:
  int fd_;
  std::string path_;
  bool released_ = false;
};

}  // namespace

std::size_t safetensors_dtype_bytes(std::string_view dtype_name) {
  for (const dtype_info& d : all_dtypes) {
    if (d.name == dtype_name) return d.bytes;
  }
  return 0;
}

std::string_view safetensors_dtype_name(dtype t) {
  switch (t) {
    case dtype::f32:
      return "F32";
    case dtype::bf16:
      return "BF16";
    case dtype::f16:
      return "F16";
    case dtype::fp8_e4m3:
      return "F8_E4M3";
  }
  return "F32";
}

std::int64_t safetensors_entry::numel() const {
  std::int64_t n = 1;
  for (std::int64_t d : shape) n *= d;
  return n;
}

std::string safetensors_entry::shape_string() const {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

safetensors_file::safetensors_file(safetensors_file&& other) noexcept
    : path_(std::move(other.path_)),
      map_(std::exchange(other.map_, nullptr)),
      map_bytes_(std::exchange(other.map_bytes_, 0)),
      data_start_(other.data_start_),
      entries_(std::move(other.entries_)),
      metadata_(std::move(other.metadata_)) {}

safetensors_file& safetensors_file::operator=(safetensors_file&& other) noexcept {
  if (this != &other) {
    unmap();
    path_ = std::move(other.path_);
    map_ = std::exchange(other.map_, nullptr);
    map_bytes_ = std::exchange(other.map_bytes_, 0);
    data_start_ = other.data_start_;
    entries_ = std::move(other.entries_);
    metadata_ = std::move(other.metadata_);
  }
  return *this;
}

safetensors_file::~safetensors_file() {
  unmap();
}

void safetensors_file::unmap() noexcept {
  if (map_ != nullptr) {
    ::munmap(const_cast<std::byte*>(map_), map_bytes_);
    map_ = nullptr;
    map_bytes_ = 0;
  }
}

expected<safetensors_header> parse_safetensors(std::span<const std::byte> file,
                                               std::string_view name) {
  const std::uint64_t file_bytes = file.size();
  if (file_bytes < 8) {
    return invalid_argument(
        "safetensors '{}': file is {} bytes, shorter than the 8-byte header length", name,
        file_bytes);
  }
  std::uint64_t header_bytes = 0;
  for (int i = 7; i >= 0; --i) {
    header_bytes =
        (header_bytes << 8) | static_cast<std::uint8_t>(file[static_cast<std::size_t>(i)]);
  }
  if (header_bytes > file_bytes - 8) {
    return invalid_argument("safetensors '{}': header length {} exceeds the file size ({} bytes)",
                            name, header_bytes, file_bytes);
  }
  if (header_bytes > max_header_bytes) {
    return invalid_argument("safetensors '{}': header length {} exceeds the {}-byte limit", name,
                            header_bytes, max_header_bytes);
  }
  safetensors_header out;
  out.data_start = static_cast<std::size_t>(8 + header_bytes);
  const std::uint64_t data_bytes = file_bytes - out.data_start;
  const std::string_view text(reinterpret_cast<const char*>(file.data() + 8),
                              static_cast<std::size_t>(header_bytes));

  // nlohmann may throw on allocation failure or internal errors; nothing escapes from here.
  try {
    header_parse parsed = parse_header(text);
    const json& header = parsed.header;
    if (header.is_discarded()) {
      return invalid_argument("safetensors '{}': header ({} bytes) is not valid JSON", name,
                              header_bytes);
    }
    if (!header.is_object()) {
      return invalid_argument("safetensors '{}': header is a JSON {}, not an object", name,
                              header.type_name());
    }
    if (!parsed.duplicate.empty()) {
      if (parsed.nested_duplicate) {
        return invalid_argument("safetensors '{}': duplicate key '{}' inside a tensor entry", name,
                                parsed.duplicate);
      }
      return invalid_argument("safetensors '{}': duplicate tensor name '{}'", name,
                              parsed.duplicate);
    }
    for (const auto& [key, v] : header.items()) {
      if (key == "__metadata__") {
        if (!v.is_object() && !v.is_null()) {
          return invalid_argument("safetensors '{}': __metadata__ is a JSON {}, not an object",
                                  name, v.type_name());
        }
        if (v.is_object()) {
          // The reference reads a map of strings to strings; anything else is a broken writer.
          for (const auto& [k, mv] : v.items()) {
            if (!mv.is_string()) {
              return invalid_argument(
                  "safetensors '{}': __metadata__ value of '{}' is a JSON {}, not a string", name,
                  k, json_type(mv));
            }
            out.metadata[k] = mv.get<std::string>();
          }
        }
        continue;
      }
      const std::string& tensor_name = key;  // clang 14 cannot capture a structured binding
      auto bad = [&](std::string_view what) {
        return invalid_argument("safetensors '{}': tensor '{}': {}", name, tensor_name, what);
      };
      if (!v.is_object())
        return bad(fmt::format("entry is a JSON {}, not an object", v.type_name()));
      for (const auto& [field, fv] : v.items()) {
        if (std::find(std::begin(entry_keys), std::end(entry_keys), field) ==
            std::end(entry_keys)) {
          return bad(fmt::format("unknown key '{}' (allowed: dtype, shape, data_offsets)", field));
        }
      }
      safetensors_entry e;
      e.name = tensor_name;
      const auto dt = v.find("dtype");
      if (dt == v.end()) return bad("missing \"dtype\"");
      if (!dt->is_string())
        return bad(fmt::format("\"dtype\" is a JSON {}, not a string", json_type(*dt)));
      e.dtype_name = dt->get<std::string>();
      const std::size_t elem_bytes = safetensors_dtype_bytes(e.dtype_name);
      if (elem_bytes == 0) return bad(fmt::format("unknown dtype \"{}\"", e.dtype_name));
      e.type = readable_dtype(e.dtype_name);

      const auto sh = v.find("shape");
      if (sh == v.end()) return bad("missing \"shape\"");
      if (!sh->is_array())
        return bad(fmt::format("\"shape\" is a JSON {}, not an array", json_type(*sh)));
      std::uint64_t numel = 1;
      bool overflow = false;
      for (std::size_t i = 0; i < sh->size(); ++i) {
        const auto d = as_size((*sh)[i]);
        if (!d) {
          return bad(
              fmt::format("shape[{}] = {} is not a non-negative integer", i, json_brief((*sh)[i])));
        }
        e.shape.push_back(*d);
        overflow =
            overflow || __builtin_mul_overflow(numel, static_cast<std::uint64_t>(*d), &numel);
      }

      const auto off = v.find("data_offsets");
      if (off == v.end()) return bad("missing \"data_offsets\"");
      if (!off->is_array() || off->size() != 2) {
        return bad(fmt::format("\"data_offsets\" must be an array [begin, end], got {}",
                               json_brief(*off)));
      }
      const auto begin = as_size((*off)[0]);
      const auto end = as_size((*off)[1]);
      if (!begin || !end) {
        return bad(fmt::format("data_offsets {} are not non-negative integers", json_brief(*off)));
      }
      if (*begin > *end) {
        return bad(fmt::format("data_offsets [{}, {}]: begin is after end", *begin, *end));
      }
      if (static_cast<std::uint64_t>(*end) > data_bytes) {
        return bad(
            fmt::format("data_offsets [{}, {}] end beyond the data section ({} bytes; file "
                        "truncated?)",
                        *begin, *end, data_bytes));
      }
      e.data_offset = static_cast<std::size_t>(*begin);
      e.data_bytes = static_cast<std::size_t>(*end - *begin);
      std::uint64_t want = 0;
      overflow = overflow || __builtin_mul_overflow(numel, elem_bytes, &want);
      if (overflow || want != e.data_bytes) {
        return bad(fmt::format("byte size {} != numel of shape {} * {} bytes ({})", e.data_bytes,
                               e.shape_string(), elem_bytes, e.dtype_name));
      }
      out.entries.push_back(std::move(e));
    }
  } catch (const std::exception& ex) {
    return invalid_argument("safetensors '{}': cannot parse header: {}", name, ex.what());
  }

  // The reference implementation's coverage rule: sorted by (begin, end), the tensors tile the
  // data section exactly. Without it a header length one byte short (or long) shifts every
  // tensor by a byte and still loads, and bytes no tensor owns go unnoticed.
  std::vector<const safetensors_entry*> order(out.entries.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = &out.entries[i];
  std::sort(order.begin(), order.end(), [](const safetensors_entry* a, const safetensors_entry* b) {
    return std::pair(a->data_offset, a->data_bytes) < std::pair(b->data_offset, b->data_bytes);
  });
  std::size_t covered = 0;  // the end of the previous tensor
  const safetensors_entry* prev = nullptr;
  for (const safetensors_entry* e : order) {
    if (e->data_offset > covered) {
      if (prev == nullptr) {
        return invalid_argument(
            "safetensors '{}': tensor '{}' [{}, {}) is the first in the data section but does "
            "not begin at 0: bytes [0, {}) belong to no tensor",
            name, e->name, e->data_offset, e->data_offset + e->data_bytes, e->data_offset);
      }
      return invalid_argument(
          "safetensors '{}': hole between tensors '{}' [{}, {}) and '{}' [{}, {}): bytes [{}, {}) "
          "belong to no tensor",
          name, prev->name, prev->data_offset, covered, e->name, e->data_offset,
          e->data_offset + e->data_bytes, covered, e->data_offset);
    }
    if (e->data_offset < covered) {
      return invalid_argument("safetensors '{}': tensors '{}' [{}, {}) and '{}' [{}, {}) overlap",
                              name, prev->name, prev->data_offset, covered, e->name, e->data_offset,
                              e->data_offset + e->data_bytes);
    }
    covered = e->data_offset + e->data_bytes;
    prev = e;
  }
  if (covered != data_bytes && prev == nullptr) {
    return invalid_argument(
        "safetensors '{}': {} trailing bytes: the header lists no tensor but the data section is "
        "{} bytes (a wrong header length, or data after the header)",
        name, data_bytes, data_bytes);
  }
  if (covered != data_bytes) {
    return invalid_argument(
        "safetensors '{}': {} trailing bytes: the data section is {} bytes but the last tensor, "
        "'{}', ends at {} (a wrong header length, or data after the tensors)",
        name, data_bytes - covered, data_bytes, prev->name, covered);
  }
  std::sort(out.entries.begin(), out.entries.end(),
            [](const safetensors_entry& a, const safetensors_entry& b) { return a.name < b.name; });
  return out;
}

expected<safetensors_file> safetensors_file::open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    if (errno == ENOENT) return not_found("safetensors '{}': file not found", path);
    return invalid_argument("safetensors '{}': cannot open: {}", path, std::strerror(errno));
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return invalid_argument("safetensors '{}': not a regular file", path);
  }
  const auto file_bytes = static_cast<std::uint64_t>(st.st_size);
  if (file_bytes < 8) {
    ::close(fd);
    return invalid_argument(
        "safetensors '{}': file is {} bytes, shorter than the 8-byte header length", path,
        file_bytes);
  }
  void* m = ::mmap(nullptr, file_bytes, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);  // the mapping keeps the file alive
  if (m == MAP_FAILED) {
    return invalid_argument("safetensors '{}': mmap of {} bytes failed: {}", path, file_bytes,
                            std::strerror(errno));
  }
  safetensors_file f;
  f.path_ = path;
  f.map_ = static_cast<const std::byte*>(m);
  f.map_bytes_ = file_bytes;
  HELIX_ASSIGN_OR_RETURN(safetensors_header h, parse_safetensors({f.map_, f.map_bytes_}, path));
  f.data_start_ = h.data_start;
  f.entries_ = std::move(h.entries);
  f.metadata_ = std::move(h.metadata);
  return f;
}

const safetensors_entry* safetensors_file::find(std::string_view name) const {
  const auto it = std::lower_bound(
      entries_.begin(), entries_.end(), name,
      [](const safetensors_entry& e, std::string_view n) { return std::string_view(e.name) < n; });
  return it != entries_.end() && it->name == name ? &*it : nullptr;
}

std::span<const std::byte> safetensors_file::bytes(const safetensors_entry& e) const {
  return {map_ + data_start_ + e.data_offset, e.data_bytes};
}

status safetensors_file::read_into(std::string_view name, tensor& dst) const {
  const safetensors_entry* e = find(name);
  if (e == nullptr) return not_found("safetensors '{}': no tensor '{}'", path_, name);
  if (!e->type) {
    if (e->dtype_name.starts_with("F8_")) {
      return invalid_argument(
          "safetensors '{}': tensor {} has dtype {}, which needs its block scales: block-scaled "
          "FP8 checkpoints load through load_checkpoint",
          path_, name, e->dtype_name);
    }
    return invalid_argument(
        "safetensors '{}': tensor {} has dtype {}, which cannot be loaded (supported: F32, BF16, "
        "F16)",
        path_, name, e->dtype_name);
  }
  if (e->numel() != dst.numel()) {
    return invalid_argument("safetensors '{}': tensor {} has {} elements {}, destination has {}",
                            path_, name, e->numel(), e->shape_string(), dst.numel());
  }
  const std::byte* src = bytes(*e).data();
  const auto n = static_cast<std::size_t>(dst.numel());
  if (n == 0) return ok_status();
  if (*e->type == dst.type()) {
    std::memcpy(dst.data(), src, e->data_bytes);
    return ok_status();
  }
  switch (*e->type) {
    case dtype::f32:
      convert_from<float>(src, n, dst.data(), dst.type());
      break;
    case dtype::bf16:
      convert_from<bf16_t>(src, n, dst.data(), dst.type());
      break;
    case dtype::f16:
      convert_from<f16_t>(src, n, dst.data(), dst.type());
      break;
    case dtype::fp8_e4m3:
      convert_from<fp8_e4m3_t>(src, n, dst.data(), dst.type());
      break;
  }
  return ok_status();
}

status write_safetensors(const std::string& path, std::span<const safetensors_tensor> tensors) {
  std::vector<std::size_t> order(tensors.size());
  std::vector<std::uint64_t> sizes(tensors.size());
  std::set<std::string_view> names;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const safetensors_tensor& t = tensors[i];
    if (t.name.empty() || t.name == "__metadata__") {
      return invalid_argument("safetensors '{}': invalid tensor name '{}'", path, t.name);
    }
    if (!names.insert(t.name).second) {
      return invalid_argument("safetensors '{}': duplicate tensor name '{}'", path, t.name);
    }
    std::uint64_t n = 1;
    for (std::int64_t d : t.shape) {
      if (d < 0)
        return invalid_argument("safetensors '{}': tensor '{}' has a negative dim", path, t.name);
      if (__builtin_mul_overflow(n, static_cast<std::uint64_t>(d), &n)) {
        return invalid_argument("safetensors '{}': tensor '{}' is too large", path, t.name);
      }
    }
    sizes[i] = n * dtype_bytes(t.type);
    if (sizes[i] > 0 && t.data == nullptr) {
      return invalid_argument("safetensors '{}': tensor '{}' has no data", path, t.name);
    }
    order[i] = i;
  }
  std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    const std::size_t ea = dtype_bytes(tensors[a].type);
    const std::size_t eb = dtype_bytes(tensors[b].type);
    return ea != eb ? ea > eb : tensors[a].name < tensors[b].name;
  });

  std::string header_text;
  try {
    json header = json::object();
    std::uint64_t offset = 0;
    for (std::size_t i : order) {
      const safetensors_tensor& t = tensors[i];
      header[t.name] = {{"dtype", std::string(safetensors_dtype_name(t.type))},
                        {"shape", t.shape},
                        {"data_offsets", {offset, offset + sizes[i]}}};
      offset += sizes[i];
    }
    header["__metadata__"] = {{"format", "pt"}};
    header_text = header.dump();  // std::map keys: the names come out sorted
  } catch (const std::exception& ex) {
    // dump() throws on names that are not valid UTF-8.
    return invalid_argument("safetensors '{}': cannot build header: {}", path, ex.what());
  }
  header_text.append((8 - header_text.size() % 8) % 8, ' ');

  std::string tmp = path + ".tmpXXXXXX";
  const int fd = ::mkstemp(tmp.data());
  if (fd < 0) {
    return internal_error("safetensors '{}': cannot create a temporary file: {}", path,
                          std::strerror(errno));
  }
  temp_file_guard guard(fd, tmp);
  (void)::fchmod(fd, 0644);  // mkstemp's 0600 would hide checkpoints from other users
  unsigned char len_le[8];
  std::uint64_t len = header_text.size();
  for (unsigned char& b : len_le) {
    b = static_cast<unsigned char>(len & 0xff);
    len >>= 8;
  }
  HELIX_RETURN_IF_ERROR(write_all(fd, len_le, sizeof(len_le), tmp));
  HELIX_RETURN_IF_ERROR(write_all(fd, header_text.data(), header_text.size(), tmp));
  for (std::size_t i : order) {
    if (sizes[i] > 0) HELIX_RETURN_IF_ERROR(write_all(fd, tensors[i].data, sizes[i], tmp));
  }
  if (::fsync(fd) != 0) {
    return internal_error("safetensors '{}': fsync failed: {}", tmp, std::strerror(errno));
  }
  HELIX_RETURN_IF_ERROR(guard.close());
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    return internal_error("safetensors '{}': rename from '{}' failed: {}", path, tmp,
                          std::strerror(errno));
  }
  guard.release();
  return ok_status();
}

}  // namespace helix::model
