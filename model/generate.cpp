#include "model/generate.hpp"

#include <algorithm>
#include <chrono>

namespace helix::model {
namespace {

using clock_type = std::chrono::steady_clock;
double ms_since(clock_type::time_point t0) {
  return std::chrono::duration<double, std::milli>(clock_type::now() - t0).count();
}

struct request_state {
  std::uint64_t seq = 0;  // 0 until admitted; closed (0 again) when done
  bool admitted = false;
  std::int64_t prefilled = 0;  // prompt tokens fed
  std::int32_t next_input = -1;
  bool done = false;
};

status validate(const decoder& dec, std::span<const generate_request> requests,
                const generate_options& options) {
  const model_spec& s = dec.spec();
  if (options.prefill_chunk <= 0) {
    return invalid_argument("generate: prefill_chunk {} must be positive", options.prefill_chunk);
  }
  const std::int64_t capacity = dec.kv().num_slots() * dec.options().block_tokens;
  for (std::size_t i = 0; i < requests.size(); ++i) {
    const generate_request& r = requests[i];
    if (r.prompt.empty()) return invalid_argument("generate: request {} has an empty prompt", i);
    for (std::int32_t t : r.prompt) {
      if (t < 0 || t >= s.vocab) {
        return invalid_argument("generate: request {}: token {} outside the vocabulary [0, {})", i,
                                t, s.vocab);
      }
    }
    if (r.max_new_tokens < 1) {
      return invalid_argument("generate: request {}: max_new_tokens {} must be >= 1", i,
                              r.max_new_tokens);
    }
    HELIX_RETURN_IF_ERROR(kernels::validate(r.sampling).with_context(fmt::format("request {}", i)));
    const auto plen = static_cast<std::int64_t>(r.prompt.size());
    if (plen > capacity || r.max_new_tokens > capacity - plen) {
      return invalid_argument(
          "generate: request {} needs {} prompt + {} new tokens of KV, "
          "capacity is {}",
          i, plen, r.max_new_tokens, capacity);
    }
  }
  return ok_status();
}

}  // namespace

expected<std::vector<generate_result>> generate(decoder& dec,
                                                std::span<const generate_request> requests,
                                                const generate_options& options,
                                                generate_stats* stats) {
  HELIX_RETURN_IF_ERROR(validate(dec, requests, options));
  const model_spec& s = dec.spec();
  const std::int64_t budget = dec.options().max_batch_tokens;
  const std::int64_t bt = dec.options().block_tokens;
  const std::size_t n = requests.size();
  std::vector<request_state> st(n);
  std::vector<generate_result> results(n);
  // Admission: a request starts only when the KV blocks of its worst case (prompt plus every new
  // token) fit beside those reserved by running requests, so requests that fit alone never fail
  // together; a finished request frees its blocks at once. Admitted in order.
  auto worst_blocks = [&](std::size_t i) {
    return (static_cast<std::int64_t>(requests[i].prompt.size()) + requests[i].max_new_tokens + bt -
            1) /
           bt;
  };
  std::int64_t reserved_blocks = 0;
  std::size_t next_admit = 0;
  auto finish = [&](std::size_t i) {
    st[i].done = true;
    reserved_blocks -= worst_blocks(i);
    const status closed = dec.close_sequence(st[i].seq);
    HELIX_CHECK(closed.ok(), "{}", closed.to_string());
    st[i].seq = 0;
  };
  // Close every open sequence on every exit path.
  struct closer {
    decoder& d;
    std::vector<request_state>& st;
    ~closer() {
      for (const request_state& r : st) {
        if (r.seq != 0) (void)d.close_sequence(r.seq);
      }
    }
  } close_all{dec, st};

  generate_stats local;
  std::vector<float> logits(static_cast<std::size_t>(budget * s.vocab));
  std::vector<std::uint8_t> workspace(kernels::sampling_workspace_bytes(s.vocab));
  std::vector<decoder::batch_item> items;
  std::vector<std::size_t> owners;      // request index of each item
  std::vector<std::uint8_t> finishing;  // item produces a token this step
  const kernels::exec_context sample_ctx{kernels::backend::cpu, nullptr, nullptr};

  for (;;) {
    while (next_admit < n && reserved_blocks + worst_blocks(next_admit) <= dec.kv().num_slots()) {
      reserved_blocks += worst_blocks(next_admit);
      st[next_admit].admitted = true;
      st[next_admit].seq = dec.open_sequence();
      ++next_admit;
    }
    items.clear();
    owners.clear();
    finishing.clear();
    std::int64_t rows = 0;
    bool prefill_step = false;
    // Prefill chunks first (they make requests ready for decode), then decode tokens.
    for (std::size_t i = 0; i < n && rows < budget; ++i) {
      const auto plen = static_cast<std::int64_t>(requests[i].prompt.size());
      if (!st[i].admitted || st[i].done || st[i].prefilled >= plen) continue;
      const std::int64_t take =
          std::min({options.prefill_chunk, plen - st[i].prefilled, budget - rows});
      items.push_back(
          {st[i].seq,
           std::span<const std::int32_t>(requests[i].prompt)
               .subspan(static_cast<std::size_t>(st[i].prefilled), static_cast<std::size_t>(take)),
           false});
      owners.push_back(i);
      finishing.push_back(st[i].prefilled + take == plen ? 1 : 0);
      rows += take;
      prefill_step = true;
    }
    if (!prefill_step) {
      for (std::size_t i = 0; i < n && rows < budget; ++i) {
        if (!st[i].admitted || st[i].done || st[i].next_input < 0) continue;
        items.push_back({st[i].seq, std::span<const std::int32_t>(&st[i].next_input, 1), false});
        owners.push_back(i);
        finishing.push_back(1);
        rows += 1;
      }
    }
    if (items.empty()) {
      HELIX_CHECK(next_admit == n, "generate: request {} cannot be admitted", next_admit);
      break;
    }

    const auto t0 = clock_type::now();
    HELIX_RETURN_IF_ERROR(dec.forward(items, logits));
    for (std::size_t j = 0; j < items.size(); ++j) {
      const std::size_t i = owners[j];
      if (prefill_step) st[i].prefilled += static_cast<std::int64_t>(items[j].tokens.size());
      if (!finishing[j]) continue;
      const float* row = logits.data() + j * static_cast<std::size_t>(s.vocab);
      HELIX_ASSIGN_OR_RETURN(const std::int64_t pos, dec.sequence_length(st[i].seq));
      std::int32_t token = 0;
      kernels::sample_params sp;
      sp.logits = row;
      sp.rows = 1;
      sp.vocab = s.vocab;
      sp.options = &requests[i].sampling;
      sp.request_ids = &requests[i].request_id;
      sp.positions = &pos;
      sp.tokens = &token;
      sp.workspace = workspace.data();
      sp.workspace_bytes = workspace.size();
      HELIX_RETURN_IF_ERROR(kernels::sample(sp, sample_ctx));
      generate_result& res = results[i];
      res.tokens.push_back(token);
      st[i].next_input = token;
      const auto& stops = requests[i].stop_tokens;
      res.stopped = std::find(stops.begin(), stops.end(), token) != stops.end();
      if (res.stopped ||
          static_cast<std::int64_t>(res.tokens.size()) >= requests[i].max_new_tokens) {
        res.last_logits.assign(row, row + s.vocab);
        finish(i);
      }
    }
    const double ms = ms_since(t0);
    ++local.steps;
    if (prefill_step) {
      local.prefill_ms += ms;
      local.prefill_tokens += rows;
    } else {
      local.decode_ms += ms;
      local.decode_tokens += rows;
      local.decode_step_ms.push_back(ms);
    }
  }
  if (stats != nullptr) *stats = std::move(local);
  return results;
}

}  // namespace helix::model
