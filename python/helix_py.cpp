// The `helix` Python module: the embedding API (actors/engine.hpp) for Python programs.
//
//   import helix
//   engine = helix.Engine(model="tiny-llama", workers=2, layout="auto")
//   tokens = engine.generate([3, 14, 15], max_tokens=16)          # a list of token ids
//   for t in engine.stream([3, 14, 15], max_tokens=16): print(t.token)
//   stream = engine.stream(...); stream.cancel()                   # ends with "cancelled"
//   engine.stats()                                                 # a dict
//
// Every blocking call (building the engine, waiting for tokens, stats) releases the GIL, so other
// Python threads run meanwhile and several agents can generate from threads at once. Errors
// raise helix.Error (with the status code name in .code) or, for bad arguments, ValueError naming
// the field.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "actors/config_file.hpp"
#include "actors/engine.hpp"
#include "cluster/cluster.hpp"
#include "text/detokenizer.hpp"
#include "text/tokenizer.hpp"

namespace py = pybind11;

namespace helix::python {
namespace {

// The Python exception for a status: ValueError for bad arguments, helix.Error otherwise.
[[noreturn]] void raise(const status& st) {
  if (st.code() == errc::invalid_argument) throw py::value_error(st.message());
  py::object error = py::module_::import("helix").attr("Error");
  py::object e = error(st.to_string());
  e.attr("code") = std::string(errc_name(st.code()));
  PyErr_SetObject(error.ptr(), e.ptr());
  throw py::error_already_set();
}

struct token {
  std::int32_t id = -1;  // -1 on a last event that carries no token
  std::int64_t index = 0;
  bool last = false;
  std::string text;  // with a tokenizer: the text this token completes (whole characters)
  std::optional<std::string> finish_reason;  // on the last event
  std::optional<std::string> error;          // finish_reason == "error"
};

token to_token(const actors::token_event& e) {
  token t;
  t.id = e.token;
  t.index = e.index;
  t.last = e.last;
  if (e.last) t.finish_reason = actors::finish_reason_name(e.reason);
  if (e.reason == actors::finish_reason::error) t.error = e.error.to_string();
  return t;
}

class engine_handle;

// A request's token stream: an iterator over helix.Token; cancel() ends it with "cancelled".
class stream_handle {
 public:
  stream_handle(std::shared_ptr<actors::engine> eng, actors::request_handle h,
                std::shared_ptr<const text::tokenizer> tok)
      : eng_(std::move(eng)), h_(std::move(h)), tok_(std::move(tok)) {
    if (tok_) detok_.emplace(*tok_, /*skip_special=*/true);
  }
  std::uint64_t id() const { return h_.id; }
  token next() {
    std::optional<actors::token_event> e;
    {
      py::gil_scoped_release unlocked;
      e = h_.stream->next();
    }
    if (!e) throw py::stop_iteration();
    token t = to_token(*e);
    if (detok_) {
      if (e->token >= 0) {
        auto piece = detok_->add(e->token);
        if (piece) t.text = std::move(*piece);  // an id the tokenizer lacks adds no text
      }
      if (e->last) {
        auto rest = detok_->flush();
        if (rest) t.text += *rest;
      }
    }
    return t;
  }
  void cancel() {
    const status st = eng_->cancel(h_.id);
    if (!st.ok() && st.code() != errc::not_found) raise(st);  // not_found: it already ended
  }
  /// The next event, blocking; call without the GIL.
  std::optional<actors::token_event> raw_next() { return h_.stream->next(); }
  std::vector<std::int32_t> tokens() {
    py::gil_scoped_release unlocked;
    return h_.stream->wait_all();
  }

 private:
  std::shared_ptr<actors::engine> eng_;  // keeps the engine alive while the stream is read
  actors::request_handle h_;
  std::shared_ptr<const text::tokenizer> tok_;
  std::optional<text::detokenizer> detok_;
};

actors::request_options request_of(const std::vector<std::int32_t>& prompt, std::int64_t max_tokens,
                                   float temperature, float top_p, std::int32_t top_k,
                                   std::uint64_t seed,
                                   const std::vector<std::int32_t>& stop_token_ids) {
  actors::request_options r;
  r.prompt = prompt;
  r.max_tokens = max_tokens;
  r.sampling = {temperature, top_k, top_p, seed};
  r.stop_tokens = stop_token_ids;
  return r;
}

using prompt_arg = std::variant<std::vector<std::int32_t>, std::string>;

class engine_handle {
 public:
  engine_handle(const std::string& model, const std::string& checkpoint, std::int64_t workers,
                const std::string& layout, std::int64_t kv_capacity, const std::string& config,
                std::int64_t processes, const std::string& worker_binary,
                const std::string& tokenizer) {
    actors::engine_config c;
    if (!config.empty()) {
      auto loaded = actors::load_engine_config(config);
      if (!loaded) raise(loaded.error());
      c = *loaded;
    }
    if (!model.empty()) c.model = model;
    if (!checkpoint.empty()) {
      c.checkpoint = checkpoint;
      c.model.clear();
    }
    if (c.model.empty() && c.checkpoint.empty()) c.model = "tiny-llama";
    if (workers > 0) c.num_workers = workers;
    if (!layout.empty()) c.layout = layout;
    if (kv_capacity > 0) c.kv_capacity_tokens_per_worker = kv_capacity;
    std::unique_ptr<actors::worker_source> source;
    if (processes > 0) {
      if (worker_binary.empty()) {
        throw py::value_error("processes: give worker_binary, the path of the helix CLI");
      }
      c.num_workers = processes;
      cluster::spawned_workers_options so;
      so.worker_binary = worker_binary;
      source = cluster::spawned_workers(so);
    }
    expected<std::unique_ptr<actors::engine>> e = [&] {
      py::gil_scoped_release unlocked;
      return actors::engine::create(c, std::move(source));
    }();
    if (!e) raise(e.error());
    eng_ = std::shared_ptr<actors::engine>(std::move(*e));
    // The tokenizer: `tokenizer` (a directory), else the checkpoint's when it has one.
    const std::string dir = tokenizer.empty() ? c.checkpoint : tokenizer;
    if (!dir.empty()) {
      auto t = text::load_tokenizer(dir);
      if (t) {
        tok_ = std::shared_ptr<const text::tokenizer>(std::move(*t));
      } else if (!tokenizer.empty() || t.error().code() != errc::not_found) {
        raise(t.error());
      }
    }
  }

  /// Token ids of a prompt: a list of ids as given, or text through the tokenizer (with its BOS).
  std::vector<std::int32_t> prompt_ids(const prompt_arg& prompt) const {
    if (const auto* ids = std::get_if<std::vector<std::int32_t>>(&prompt)) return *ids;
    if (!tok_) throw py::value_error("prompt: the model has no tokenizer; pass token ids");
    auto ids = tok_->encode(std::get<std::string>(prompt), /*add_special=*/true);
    if (!ids) raise(ids.error());
    return std::move(*ids);
  }
  /// With a tokenizer, generation also stops at its end-of-sequence token.
  std::vector<std::int32_t> stops_with_eos(std::vector<std::int32_t> stops) const {
    if (tok_ && tok_->special_ids().eos) stops.push_back(*tok_->special_ids().eos);
    return stops;
  }

  std::shared_ptr<stream_handle> stream(const prompt_arg& prompt, std::int64_t max_tokens,
                                        float temperature, float top_p, std::int32_t top_k,
                                        std::uint64_t seed,
                                        const std::vector<std::int32_t>& stop_token_ids) {
    const std::shared_ptr<actors::engine> e = live();
    auto h = e->submit(request_of(prompt_ids(prompt), max_tokens, temperature, top_p, top_k, seed,
                                  stops_with_eos(stop_token_ids)));
    if (!h) raise(h.error());
    return std::make_shared<stream_handle>(e, std::move(*h), tok_);
  }

  /// Token ids for a list of ids; text for a text prompt (the model's tokenizer).
  py::object generate(const prompt_arg& prompt, std::int64_t max_tokens, float temperature,
                      float top_p, std::int32_t top_k, std::uint64_t seed,
                      const std::vector<std::int32_t>& stop_token_ids) {
    auto s = stream(prompt, max_tokens, temperature, top_p, top_k, seed, stop_token_ids);
    std::vector<std::int32_t> out;
    for (;;) {
      std::optional<actors::token_event> e;
      {
        py::gil_scoped_release unlocked;
        e = s->raw_next();
      }
      if (!e) break;
      if (e->token >= 0) out.push_back(e->token);
      if (e->last && e->reason == actors::finish_reason::error) raise(e->error);
      if (e->last && e->reason == actors::finish_reason::cancelled) {
        raise(make_error(errc::aborted, "request {} was cancelled", s->id()));
      }
      if (PyErr_CheckSignals() != 0) {  // Ctrl-C: cancel the request, raise KeyboardInterrupt
        s->cancel();
        throw py::error_already_set();
      }
    }
    if (std::holds_alternative<std::vector<std::int32_t>>(prompt)) return py::cast(out);
    auto text = tok_->decode(out, /*skip_special=*/true);
    if (!text) raise(text.error());
    return py::str(*text);
  }

  py::object tokenizer_info() const {
    if (!tok_) return py::none();
    py::dict d;
    d["kind"] = std::string(tok_->kind());
    d["vocab_size"] = tok_->vocab_size();
    return d;
  }

  void cancel(std::uint64_t id) {
    const status st = live()->cancel(id);
    if (!st.ok()) raise(st);
  }

  py::dict stats() {
    const std::shared_ptr<actors::engine> e = live();
    actors::engine_stats st;
    {
      py::gil_scoped_release unlocked;
      st = e->stats();
    }
    py::dict d;
    d["layout"] = st.layout;
    d["submitted"] = st.submitted;
    d["completed"] = st.completed;
    d["cancelled"] = st.cancelled;
    d["failed"] = st.failed;
    d["refused"] = st.refused;
    d["queued"] = st.queued;
    d["active"] = st.active;
    d["steps"] = st.steps;
    d["tokens_generated"] = st.tokens_generated;
    d["migrations"] = st.migrations;
    d["kv_imbalance"] = st.kv_imbalance;
    d["epoch"] = st.epoch;
    d["healthy"] = st.health != actors::engine_health::failed;
    py::list workers;
    for (const actors::worker_stats& w : st.workers) {
      py::dict wd;
      wd["rank"] = w.rank;
      wd["kv_used_blocks"] = w.kv_used_blocks;
      wd["kv_capacity_blocks"] = w.kv_capacity_blocks;
      workers.append(wd);
    }
    d["workers"] = workers;
    return d;
  }

  std::int64_t vocab() { return live()->vocab(); }
  std::int64_t max_request_tokens() { return live()->max_request_tokens(); }

  // Taken under the GIL (every method runs with it), destroyed without it: a thread using the
  // engine holds its own reference (live()), so the engine ends with its last user.
  void close() {
    std::shared_ptr<actors::engine> dying = std::move(eng_);
    py::gil_scoped_release unlocked;
    dying.reset();  // streams still held keep it alive until they go
  }

 private:
  // The engine, shared for the duration of a call (called with the GIL held).
  std::shared_ptr<actors::engine> live() const {
    if (!eng_) throw py::value_error("engine: closed");
    return eng_;
  }
  std::shared_ptr<actors::engine> eng_;
  std::shared_ptr<const text::tokenizer> tok_;
};

}  // namespace
}  // namespace helix::python

PYBIND11_MODULE(helix, m) {
  using namespace helix::python;
  m.doc() = "Helix: long-context LLM decoding with Helix parallelism (the embedding API)";
  py::object error =
      py::module_::import("builtins")
          .attr("type")("Error",
                        py::make_tuple(py::module_::import("builtins").attr("RuntimeError")),
                        py::dict());
  error.attr("code") = "unknown";
  error.attr("__module__") = "helix";
  error.attr("__doc__") = "A Helix error; .code names the status (e.g. resource_exhausted).";
  m.attr("Error") = error;

  py::class_<token>(m, "Token", "One event of a request's stream.")
      .def_readonly("token", &token::id, "the token id (-1 on a last event without a token)")
      .def_readonly("index", &token::index, "0 for the first generated token")
      .def_readonly("last", &token::last)
      .def_readonly("finish_reason", &token::finish_reason,
                    "on the last event: length, stop_token, cancelled or error")
      .def_readonly("error", &token::error)
      .def_readonly("text", &token::text, "with a tokenizer: the text this token completes")
      .def("__repr__", [](const token& t) {
        return "Token(token=" + std::to_string(t.id) + ", index=" + std::to_string(t.index) +
               (t.finish_reason ? ", finish_reason='" + *t.finish_reason + "'" : std::string()) +
               ")";
      });

  py::class_<stream_handle, std::shared_ptr<stream_handle>>(
      m, "Stream", "The tokens of one request, as they are generated (an iterator).")
      .def_property_readonly("id", &stream_handle::id)
      .def("__iter__", [](std::shared_ptr<stream_handle> s) { return s; })
      .def("__next__", &stream_handle::next)
      .def("cancel", &stream_handle::cancel,
           "End the request: its stream ends with finish_reason 'cancelled'.")
      .def("tokens", &stream_handle::tokens, "Wait for the end; the tokens not yet read.");

  py::class_<engine_handle>(m, "Engine", "An engine and its workers.")
      .def(py::init<const std::string&, const std::string&, std::int64_t, const std::string&,
                    std::int64_t, const std::string&, std::int64_t, const std::string&,
                    const std::string&>(),
           py::kw_only(), py::arg("model") = "", py::arg("checkpoint") = "", py::arg("workers") = 0,
           py::arg("layout") = "", py::arg("kv_capacity") = 0, py::arg("config") = "",
           py::arg("processes") = 0, py::arg("worker_binary") = "", py::arg("tokenizer") = "",
           "Builds the engine: a built-in model (default tiny-llama) or an HF checkpoint "
           "(its tokenizer, or the one in `tokenizer`, makes text prompts work), "
           "directory, `workers` worker threads (or `processes` helix worker processes started "
           "from `worker_binary`), a layout string or 'auto'.")
      .def("generate", &engine_handle::generate, py::arg("prompt"), py::kw_only(),
           py::arg("max_tokens") = 16, py::arg("temperature") = 0.0f, py::arg("top_p") = 1.0f,
           py::arg("top_k") = 0, py::arg("seed") = 0,
           py::arg("stop_token_ids") = std::vector<std::int32_t>{},
           "Generates tokens for a list of prompt token ids; returns the generated ids.")
      .def("stream", &engine_handle::stream, py::arg("prompt"), py::kw_only(),
           py::arg("max_tokens") = 16, py::arg("temperature") = 0.0f, py::arg("top_p") = 1.0f,
           py::arg("top_k") = 0, py::arg("seed") = 0,
           py::arg("stop_token_ids") = std::vector<std::int32_t>{},
           "Submits a request; returns a Stream of its tokens.")
      .def("cancel", &engine_handle::cancel, py::arg("request_id"))
      .def("stats", &engine_handle::stats, "The engine's counters as a dict.")
      .def_property_readonly("vocab", &engine_handle::vocab)
      .def_property_readonly("tokenizer", &engine_handle::tokenizer_info,
                             "None, or {'kind', 'vocab_size'} of the model's tokenizer")
      .def_property_readonly("max_request_tokens", &engine_handle::max_request_tokens)
      .def("close", &engine_handle::close, "Stops the engine (running requests are cancelled).")
      .def(
          "__enter__", [](engine_handle& e) -> engine_handle& { return e; },
          py::return_value_policy::reference)
      .def("__exit__", [](engine_handle& e, py::object, py::object, py::object) { e.close(); });
}
