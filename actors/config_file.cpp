// Conversions between the API structs and their protobuf messages, and the config file loader.
#include "actors/config_file.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <utility>

#include <fmt/format.h>
#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/text_format.h>
#include <google/protobuf/util/json_util.h>

namespace helix::actors {
namespace {

namespace pb = google::protobuf;

// The wire enum mirrors helix::errc number for number, so a cast is the conversion.
static_assert(static_cast<int>(errc::ok) == proto_v1::STATUS_CODE_OK);
static_assert(static_cast<int>(errc::invalid_argument) == proto_v1::STATUS_CODE_INVALID_ARGUMENT);
static_assert(static_cast<int>(errc::failed_precondition) ==
              proto_v1::STATUS_CODE_FAILED_PRECONDITION);
static_assert(static_cast<int>(errc::not_found) == proto_v1::STATUS_CODE_NOT_FOUND);
static_assert(static_cast<int>(errc::resource_exhausted) ==
              proto_v1::STATUS_CODE_RESOURCE_EXHAUSTED);
static_assert(static_cast<int>(errc::unavailable) == proto_v1::STATUS_CODE_UNAVAILABLE);
static_assert(static_cast<int>(errc::deadline_exceeded) == proto_v1::STATUS_CODE_DEADLINE_EXCEEDED);
static_assert(static_cast<int>(errc::aborted) == proto_v1::STATUS_CODE_ABORTED);
static_assert(static_cast<int>(errc::cancelled) == proto_v1::STATUS_CODE_CANCELLED);
static_assert(static_cast<int>(errc::internal) == proto_v1::STATUS_CODE_INTERNAL);
static_assert(static_cast<int>(errc::unauthenticated) == proto_v1::STATUS_CODE_UNAUTHENTICATED);
static_assert(proto_v1::StatusCode_MAX == static_cast<int>(errc::unauthenticated));

proto_v1::FinishReason reason_to_proto(finish_reason r) {
  switch (r) {
    case finish_reason::none:
      return proto_v1::FINISH_REASON_NONE;
    case finish_reason::length:
      return proto_v1::FINISH_REASON_LENGTH;
    case finish_reason::stop_token:
      return proto_v1::FINISH_REASON_STOP_TOKEN;
    case finish_reason::cancelled:
      return proto_v1::FINISH_REASON_CANCELLED;
    case finish_reason::error:
      return proto_v1::FINISH_REASON_ERROR;
  }
  HELIX_CHECK(false, "finish_reason {} has no wire form", static_cast<int>(r));
  return proto_v1::FINISH_REASON_NONE;
}

expected<finish_reason> reason_from_proto(int r) {
  switch (r) {
    case proto_v1::FINISH_REASON_NONE:
      return finish_reason::none;
    case proto_v1::FINISH_REASON_LENGTH:
      return finish_reason::length;
    case proto_v1::FINISH_REASON_STOP_TOKEN:
      return finish_reason::stop_token;
    case proto_v1::FINISH_REASON_CANCELLED:
      return finish_reason::cancelled;
    case proto_v1::FINISH_REASON_ERROR:
      return finish_reason::error;
    default:
      return invalid_argument("token event: unknown finish reason {}", r);
  }
}

// Collects the text-format parser's errors as "line L, column C: message" (1-based).
class error_collector final : public pb::io::ErrorCollector {
 public:
  void AddError(int line, pb::io::ColumnNumber column, const std::string& message) override {
    if (!text_.empty()) text_ += "; ";
    if (line >= 0) {
      text_ += fmt::format("line {}, column {}: {}", line + 1, column + 1, message);
    } else {
      text_ += message;
    }
  }
  [[nodiscard]] const std::string& text() const { return text_; }

 private:
  std::string text_;
};

// The JSON parser reports no line number: its message is a line of text, then the input around
// the error and a caret on lines of their own. Status messages stay on one line, so this keeps the
// text and quotes the input line as "near '...'".
std::string one_line_json_error(const std::string& message) {
  const auto trim = [](std::string_view v) {
    const auto first = v.find_first_not_of(" \t\r");
    if (first == std::string_view::npos) return std::string_view{};
    return v.substr(first, v.find_last_not_of(" \t\r") - first + 1);
  };
  std::string_view rest = message;
  const auto eol = rest.find('\n');
  std::string out(trim(rest.substr(0, eol)));
  if (eol == std::string_view::npos) return out;
  rest.remove_prefix(eol + 1);
  while (!rest.empty()) {
    const auto end = rest.find('\n');
    const std::string_view line = trim(rest.substr(0, end));
    if (!line.empty() && line != "^") return fmt::format("{} (near '{}')", out, line);
    if (end == std::string_view::npos) break;
    rest.remove_prefix(end + 1);
  }
  return out;
}

expected<dtype> dtype_field(std::string_view field, const std::string& name) {
  auto t = parse_dtype(name);
  if (!t) return t.error().with_context(field);
  return t;
}

bool has_json_extension(const std::string& path) {
  std::string ext = std::filesystem::path(path).extension().string();
  for (char& ch : ext) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return ext == ".json";
}

// Config files are a few hundred bytes; the bound keeps a wrong path (a log, a disk image) from
// being read into memory whole.
constexpr std::size_t max_config_bytes = std::size_t{16} << 20;

// Reads at most max_config_bytes + 1 bytes of a regular file. The file is opened with O_NONBLOCK
// (opening a FIFO for reading would otherwise wait for a writer forever) and checked with fstat on
// the open descriptor, not stat on the name, so that nothing can be swapped in between: a FIFO,
// a device such as /dev/zero (endless) or a directory is refused before a byte is read.
expected<std::string> read_file(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT || err == ENOTDIR) return not_found("no such file");
    return invalid_argument("cannot open for reading: {}", std::strerror(err));
  }
  struct fd_closer {
    int fd;
    ~fd_closer() { ::close(fd); }
  } closer{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0) return invalid_argument("cannot stat: {}", std::strerror(errno));
  if (S_ISDIR(st.st_mode)) return invalid_argument("is a directory");
  if (!S_ISREG(st.st_mode)) {
    return invalid_argument("not a regular file (a FIFO, socket or device cannot be a config)");
  }
  if (st.st_size < 0 || static_cast<std::uint64_t>(st.st_size) > max_config_bytes) {
    return invalid_argument("file is {} bytes, more than the {}-byte limit of a config file",
                            st.st_size, max_config_bytes);
  }
  std::string text(static_cast<std::size_t>(st.st_size) + 1, '\0');
  std::size_t got = 0;
  // Up to the limit + 1 bytes, whatever st_size said: a file that grows (or a /proc file that
  // reports size 0) is still bounded.
  while (true) {
    if (got == text.size()) {
      if (text.size() > max_config_bytes) break;
      text.resize(std::min(max_config_bytes + 1, 2 * text.size()));
    }
    const ssize_t n = ::read(fd, text.data() + got, text.size() - got);
    if (n < 0) {
      if (errno == EINTR) continue;
      return invalid_argument("read failed: {}", std::strerror(errno));
    }
    if (n == 0) break;
    got += static_cast<std::size_t>(n);
  }
  if (got > max_config_bytes) {
    return invalid_argument("file is more than the {}-byte limit of a config file",
                            max_config_bytes);
  }
  text.resize(got);
  return text;
}

// from_proto without the "engine config" context: callers add their own.
expected<engine_config> config_from_proto(const proto_v1::EngineConfig& m) {
  engine_config c;
  if (m.has_model()) c.model = m.model();
  if (m.has_checkpoint()) c.checkpoint = m.checkpoint();
  if (m.has_weight_type()) {
    HELIX_ASSIGN_OR_RETURN(c.weight_type, dtype_field("weight_type", m.weight_type()));
  }
  if (m.has_kv_type()) {
    HELIX_ASSIGN_OR_RETURN(c.kv_type, dtype_field("kv_type", m.kv_type()));
  }
  if (m.has_weight_seed()) c.weight_seed = m.weight_seed();
  if (m.has_layout()) c.layout = m.layout();
  if (m.has_num_workers()) c.num_workers = m.num_workers();
  if (m.has_device()) c.device = m.device();
  if (m.has_kv_capacity_tokens_per_worker()) {
    c.kv_capacity_tokens_per_worker = m.kv_capacity_tokens_per_worker();
  }
  if (m.has_block_tokens()) c.block_tokens = m.block_tokens();
  if (m.has_max_batch_tokens()) c.max_batch_tokens = m.max_batch_tokens();
  if (m.has_prefill_chunk_tokens()) c.prefill_chunk_tokens = m.prefill_chunk_tokens();
  if (m.has_max_queued_requests()) c.max_queued_requests = m.max_queued_requests();
  if (m.has_hopb()) c.hopb = m.hopb();
  if (m.has_threads_per_worker()) c.threads_per_worker = m.threads_per_worker();
  if (m.has_rebalance_threshold()) c.rebalance_threshold = m.rebalance_threshold();
  if (m.has_rebalance_min_blocks()) c.rebalance_min_blocks = m.rebalance_min_blocks();
  if (m.has_log_level()) c.log_level = m.log_level();
  if (m.has_recovery()) c.recovery = m.recovery();
  if (m.has_peer_timeout_ms()) c.peer_timeout_ms = m.peer_timeout_ms();
  if (m.has_elastic_leave()) c.elastic_leave = m.elastic_leave();
  if (m.has_elastic_policy()) c.elastic_policy = m.elastic_policy();
  HELIX_RETURN_IF_ERROR(actors::validate(c));
  return c;
}

expected<engine_config> parse_engine_config_impl(std::string_view text, bool json) {
  proto_v1::EngineConfig m;
  if (json) {
    pb::util::JsonParseOptions options;
    options.ignore_unknown_fields = false;
    const auto st =
        pb::util::JsonStringToMessage(pb::StringPiece(text.data(), text.size()), &m, options);
    if (!st.ok()) return invalid_argument("JSON: {}", one_line_json_error(st.message().ToString()));
  } else {
    error_collector errors;
    pb::TextFormat::Parser parser;
    parser.RecordErrorsTo(&errors);
    parser.AllowUnknownField(false);
    if (!parser.ParseFromString(std::string(text), &m)) {
      return invalid_argument("text format: {}",
                              errors.text().empty() ? "parse failed" : errors.text());
    }
  }
  return config_from_proto(m);
}

}  // namespace

proto_v1::SamplingParams to_proto(const sampling_params& s) {
  proto_v1::SamplingParams m;
  m.set_temperature(s.temperature);
  m.set_top_k(s.top_k);
  m.set_top_p(s.top_p);
  m.set_seed(s.seed);
  return m;
}

sampling_params from_proto(const proto_v1::SamplingParams& m) {
  sampling_params s;
  if (m.has_temperature()) s.temperature = m.temperature();
  if (m.has_top_k()) s.top_k = m.top_k();
  if (m.has_top_p()) s.top_p = m.top_p();
  if (m.has_seed()) s.seed = m.seed();
  return s;
}

proto_v1::Request to_proto(const request_options& r) {
  proto_v1::Request m;
  m.mutable_prompt()->Add(r.prompt.begin(), r.prompt.end());
  *m.mutable_sampling() = to_proto(r.sampling);
  m.set_max_tokens(r.max_tokens);
  m.mutable_stop_tokens()->Add(r.stop_tokens.begin(), r.stop_tokens.end());
  return m;
}

request_options from_proto(const proto_v1::Request& m) {
  request_options r;
  r.prompt.assign(m.prompt().begin(), m.prompt().end());
  if (m.has_sampling()) r.sampling = from_proto(m.sampling());
  if (m.has_max_tokens()) r.max_tokens = m.max_tokens();
  r.stop_tokens.assign(m.stop_tokens().begin(), m.stop_tokens().end());
  return r;
}

proto_v1::TokenEvent to_proto(const token_event& e) {
  proto_v1::TokenEvent m;
  m.set_request_id(e.request_id);
  m.set_token(e.token);
  m.set_index(e.index);
  m.set_last(e.last);
  m.set_reason(reason_to_proto(e.reason));
  if (!e.error.ok()) {
    m.mutable_error()->set_code(static_cast<proto_v1::StatusCode>(e.error.code()));
    m.mutable_error()->set_message(e.error.message());
  }
  return m;
}

expected<token_event> from_proto(const proto_v1::TokenEvent& m) {
  token_event e;
  e.request_id = m.request_id();
  e.token = m.token();
  e.index = m.index();
  e.last = m.last();
  HELIX_ASSIGN_OR_RETURN(e.reason, reason_from_proto(m.reason()));
  const int code = m.error().code();
  if (!proto_v1::StatusCode_IsValid(code)) {
    return invalid_argument("token event: unknown status code {}", code);
  }
  if (code != proto_v1::STATUS_CODE_OK) {
    e.error = status(static_cast<errc>(code), m.error().message());
  }
  return e;
}

proto_v1::WorkerStats to_proto(const worker_stats& w) {
  proto_v1::WorkerStats m;
  m.set_rank(w.rank);
  m.set_kv_used_blocks(w.kv_used_blocks);
  m.set_kv_capacity_blocks(w.kv_capacity_blocks);
  return m;
}

worker_stats from_proto(const proto_v1::WorkerStats& m) {
  worker_stats w;
  w.rank = m.rank();
  w.kv_used_blocks = m.kv_used_blocks();
  w.kv_capacity_blocks = m.kv_capacity_blocks();
  return w;
}

proto_v1::EngineStats to_proto(const engine_stats& s) {
  proto_v1::EngineStats m;
  m.set_layout(s.layout);
  m.set_submitted(s.submitted);
  m.set_completed(s.completed);
  m.set_cancelled(s.cancelled);
  m.set_failed(s.failed);
  m.set_queued(s.queued);
  m.set_active(s.active);
  m.set_steps(s.steps);
  m.set_tokens_generated(s.tokens_generated);
  m.set_attention_seconds(s.step_phases.attention);
  m.set_all_to_all_seconds(s.step_phases.all_to_all);
  m.set_ffn_seconds(s.step_phases.ffn);
  m.set_sampling_seconds(s.step_phases.sampling);
  m.set_migrations(s.migrations);
  m.set_kv_imbalance(s.kv_imbalance);
  m.set_kv_imbalance_max(s.kv_imbalance_max);
  m.set_epoch(s.epoch);
  m.set_refused(s.refused);
  m.set_failed_health(s.health == engine_health::failed);
  m.mutable_failure()->set_code(static_cast<proto_v1::StatusCode>(s.failure.code()));
  m.mutable_failure()->set_message(s.failure.ok() ? std::string() : s.failure.message());
  m.mutable_workers()->Reserve(static_cast<int>(s.workers.size()));
  for (const worker_stats& w : s.workers) *m.add_workers() = to_proto(w);
  return m;
}

engine_stats from_proto(const proto_v1::EngineStats& m) {
  engine_stats s;
  s.layout = m.layout();
  s.submitted = m.submitted();
  s.completed = m.completed();
  s.cancelled = m.cancelled();
  s.failed = m.failed();
  s.queued = m.queued();
  s.active = m.active();
  s.steps = m.steps();
  s.tokens_generated = m.tokens_generated();
  s.step_phases = {m.attention_seconds(), m.all_to_all_seconds(), m.ffn_seconds(),
                   m.sampling_seconds()};
  s.migrations = m.migrations();
  s.kv_imbalance = m.kv_imbalance();
  s.kv_imbalance_max = m.kv_imbalance_max();
  s.epoch = m.epoch();
  s.refused = m.refused();
  s.health = m.failed_health() ? engine_health::failed : engine_health::serving;
  if (m.failure().code() != proto_v1::STATUS_CODE_OK) {
    const int code = m.failure().code();
    s.failure =
        status(proto_v1::StatusCode_IsValid(code) ? static_cast<errc>(code) : errc::internal,
               m.failure().message());
  }
  s.workers.reserve(static_cast<std::size_t>(m.workers_size()));
  for (const proto_v1::WorkerStats& w : m.workers()) s.workers.push_back(from_proto(w));
  return s;
}

proto_v1::EngineConfig to_proto(const engine_config& c) {
  proto_v1::EngineConfig m;
  m.set_model(c.model);
  m.set_checkpoint(c.checkpoint);
  m.set_weight_type(std::string(dtype_name(c.weight_type)));
  m.set_kv_type(std::string(dtype_name(c.kv_type)));
  m.set_weight_seed(c.weight_seed);
  m.set_layout(c.layout);
  m.set_num_workers(c.num_workers);
  m.set_device(c.device);
  m.set_kv_capacity_tokens_per_worker(c.kv_capacity_tokens_per_worker);
  m.set_block_tokens(c.block_tokens);
  m.set_max_batch_tokens(c.max_batch_tokens);
  m.set_prefill_chunk_tokens(c.prefill_chunk_tokens);
  m.set_max_queued_requests(c.max_queued_requests);
  m.set_hopb(c.hopb);
  m.set_threads_per_worker(c.threads_per_worker);
  m.set_rebalance_threshold(c.rebalance_threshold);
  m.set_rebalance_min_blocks(c.rebalance_min_blocks);
  m.set_log_level(c.log_level);
  m.set_recovery(c.recovery);
  m.set_peer_timeout_ms(c.peer_timeout_ms);
  m.set_elastic_leave(c.elastic_leave);
  m.set_elastic_policy(c.elastic_policy);
  return m;
}

expected<engine_config> from_proto(const proto_v1::EngineConfig& m) {
  auto c = config_from_proto(m);
  if (!c) return c.error().with_context("engine config");
  return c;
}

expected<engine_config> parse_engine_config(std::string_view text, bool json) {
  try {
    auto c = parse_engine_config_impl(text, json);
    if (!c) return c.error().with_context("engine config");
    return c;
  } catch (const std::exception& e) {
    return internal_error("engine config: parsing threw: {}", e.what());
  }
}

expected<engine_config> load_engine_config(const std::string& path) {
  try {
    const std::string context = fmt::format("engine config file '{}'", path);
    auto text = read_file(path);
    if (!text) return text.error().with_context(context);
    auto config = parse_engine_config_impl(*text, has_json_extension(path));
    if (!config) return config.error().with_context(context);
    return config;
  } catch (const std::exception& e) {
    return internal_error("engine config file '{}': loading threw: {}", path, e.what());
  }
}

}  // namespace helix::actors
