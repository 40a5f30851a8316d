// KV re-sliced by head after a change of TPA size: see kv_reslice.hpp.
#include "model/kv_reslice.hpp"

#include <algorithm>
#include <cstring>

namespace helix::model::reslice {
namespace {

constexpr int reslice_tag = 0x4b53;  // "KS"
constexpr std::size_t chunk_bytes = std::size_t{1} << 20;

// Bytes one KV head of one block takes in one layer (keys, then values unless MLA).
std::size_t head_bytes(const kv_page_layout& p) {
  const std::int64_t elems = p.block_tokens * (p.key_dim + (p.value_in_key ? 0 : p.value_dim));
  return static_cast<std::size_t>(elems) * dtype_bytes(p.type);
}

// A page's keys of `heads` heads from local head `local`, then its values likewise: the two
// contiguous runs a piece covers in one layer.
struct runs {
  std::size_t key_at = 0, key_bytes = 0, value_at = 0, value_bytes = 0;
};
runs runs_of(const kv_page_layout& p, std::int64_t local, std::int64_t heads) {
  const std::size_t eb = dtype_bytes(p.type);
  runs r;
  r.key_at = static_cast<std::size_t>(p.key_offset(local, 0)) * eb;
  r.key_bytes = static_cast<std::size_t>(heads * p.block_tokens * p.key_dim) * eb;
  if (!p.value_in_key) {
    r.value_at = static_cast<std::size_t>(p.value_offset(local, 0)) * eb;
    r.value_bytes = static_cast<std::size_t>(heads * p.block_tokens * p.value_dim) * eb;
  }
  return r;
}

// The slot of block `b` in the carried tables, or -1 when the carried KV does not hold it.
std::int32_t carried_slot(const held_kv& kv, std::uint64_t seq, std::int64_t b,
                          std::int64_t block_tokens) {
  const auto it = kv.tables->find(seq);
  if (it == kv.tables->end() || b >= static_cast<std::int64_t>(it->second.blocks().size())) {
    return -1;
  }
  const kv_block_ref& ref = it->second.blocks()[static_cast<std::size_t>(b)];
  if (ref.rank != kv.rank || ref.first_pos != b * block_tokens) return -1;
  return ref.slot;
}

// Chunks of whole pieces (indices into `list`), each at most chunk_bytes (at least one piece).
std::vector<std::pair<std::size_t, std::size_t>> chunks(const std::vector<const piece*>& list,
                                                        std::size_t bytes_per_head) {
  std::vector<std::pair<std::size_t, std::size_t>> out;  // [first, end)
  std::size_t first = 0;
  std::size_t bytes = 0;
  for (std::size_t i = 0; i < list.size(); ++i) {
    const std::size_t b = static_cast<std::size_t>(list[i]->heads) * bytes_per_head;
    if (i > first && bytes + b > chunk_bytes) {
      out.emplace_back(first, i);
      first = i;
      bytes = 0;
    }
    bytes += b;
  }
  if (first < list.size()) out.emplace_back(first, list.size());
  return out;
}

}  // namespace

expected<std::vector<piece>> plan(const model_spec& spec, const helix::layout& after,
                                  const kv_reslice& from, std::span<const restored_sequence> seqs) {
  const helix::layout& before = from.before;
  if (static_cast<std::int64_t>(from.holders.size()) != before.num_ranks) {
    return invalid_argument("re-slice: {} holders for the {} ranks of {}", from.holders.size(),
                            before.num_ranks, before.to_string());
  }
  std::vector<piece> out;
  for (std::size_t i = 0; i < seqs.size(); ++i) {
    const restored_sequence& r = seqs[i];
    for (std::size_t b = 0; b < r.owner_kvp.size(); ++b) {
      const std::int64_t k = r.donor.empty() ? -1 : r.donor[b];
      if (k < 0) continue;
      if (k >= before.kvp || r.owner_kvp[b] < 0 || r.owner_kvp[b] >= after.kvp) {
        return invalid_argument("re-slice: sequence {} block {}: old member {}, owner {}", r.seq, b,
                                k, r.owner_kvp[b]);
      }
      for (std::int64_t c = 0; c < after.tpa; ++c) {
        const int dst = static_cast<int>(after.attention_rank(c, r.owner_kvp[b]));
        const index_range want = after.column_kv_heads(c, spec);
        for (std::int64_t h = want.first; h < want.end(); ++h) {
          std::int64_t old_rank = -1;
          for (std::int64_t oc = 0; oc < before.tpa && old_rank < 0; ++oc) {
            const std::int64_t o = before.attention_rank(oc, k);
            if (before.column_kv_heads(oc, spec).contains(h) &&
                from.holders[static_cast<std::size_t>(o)] >= 0) {
              old_rank = o;
            }
          }
          if (old_rank < 0) {
            return failed_precondition(
                "re-slice: KV head {} of old member {} has no live holder under {}", h, k,
                before.to_string());
          }
          const int src = static_cast<int>(from.holders[static_cast<std::size_t>(old_rank)]);
          piece* last = out.empty() ? nullptr : &out.back();
          if (last != nullptr && last->seq_idx == i &&
              last->block == static_cast<std::int64_t>(b) && last->dst == dst &&
              last->old_rank == old_rank && last->first_head + last->heads == h) {
            ++last->heads;
          } else {
            out.push_back({i, static_cast<std::int64_t>(b), old_rank, src, dst, h, 1});
          }
        }
      }
    }
  }
  return out;
}

std::int64_t missing(std::span<const piece> pieces, int me, const held_kv* source,
                     std::span<const restored_sequence> seqs, std::int64_t block_tokens) {
  std::int64_t n = 0;
  for (const piece& p : pieces) {
    if (p.src != me) continue;
    if (source == nullptr || source->store == nullptr || source->tables == nullptr ||
        source->rank != p.old_rank ||
        carried_slot(*source, seqs[p.seq_idx].seq, p.block, block_tokens) < 0) {
      ++n;
    }
  }
  return n;
}

status exchange(const model_spec& spec, const helix::layout& after, const kv_reslice& from,
                std::span<const piece> pieces, std::span<const restored_sequence> seqs,
                transport::communicator& comm, const held_kv* source, kv_store* dest,
                std::int64_t dest_column,
                const std::vector<std::vector<std::int32_t>>& dest_slots) {
  const int me = comm.rank();
  const int members = comm.size();
  // Either side's page layout: the pieces' bytes agree (same model, block size and dtype).
  const kv_page_layout& any = source != nullptr ? source->store->layout() : dest->layout();
  const std::int64_t layers = source != nullptr ? source->store->num_layers() : dest->num_layers();
  const std::int64_t bt = any.block_tokens;
  const std::size_t per_head = head_bytes(any) * static_cast<std::size_t>(layers);
  const std::int64_t src_first =
      source != nullptr
          ? from.before.column_kv_heads(from.before.attention_coords(source->rank).tpa_idx, spec)
                .first
          : 0;
  const std::int64_t dst_first =
      dest != nullptr ? after.column_kv_heads(dest_column, spec).first : 0;
  // Packs or unpacks piece `p` at `wire`: every layer's key run, then value run.
  const auto copy_piece = [&](const piece& p, std::byte* wire, bool pack) {
    const std::int64_t local = pack ? p.first_head - src_first : p.first_head - dst_first;
    const kv_page_layout& page = pack ? source->store->layout() : dest->layout();
    const runs r = runs_of(page, local, p.heads);
    const std::int32_t slot = pack ? carried_slot(*source, seqs[p.seq_idx].seq, p.block, bt)
                                   : dest_slots[p.seq_idx][static_cast<std::size_t>(p.block)];
    for (std::int64_t l = 0; l < layers; ++l) {
      auto* base =
          static_cast<std::byte*>(pack ? source->store->page(l, slot) : dest->page(l, slot));
      if (pack) {
        std::memcpy(wire, base + r.key_at, r.key_bytes);
        std::memcpy(wire + r.key_bytes, base + r.value_at, r.value_bytes);
      } else {
        std::memcpy(base + r.key_at, wire, r.key_bytes);
        std::memcpy(base + r.value_at, wire + r.key_bytes, r.value_bytes);
      }
      wire += r.key_bytes + r.value_bytes;
    }
  };
  const auto list = [&](int src, int dst) {
    std::vector<const piece*> out;
    for (const piece& p : pieces) {
      if (p.src == src && p.dst == dst) out.push_back(&p);
    }
    return out;
  };
  // Pieces for itself: through one piece of staging.
  {
    std::vector<std::byte> one;
    for (const piece* p : list(me, me)) {
      one.resize(static_cast<std::size_t>(p->heads) * per_head);
      copy_piece(*p, one.data(), true);
      copy_piece(*p, one.data(), false);
    }
  }
  std::vector<std::byte> out_buf;
  std::vector<std::byte> in_buf;
  for (int d = 1; d < members; ++d) {
    const int to = (me + d) % members;
    const int from_member = (me - d + members) % members;
    const std::vector<const piece*> outgoing = list(me, to);
    const std::vector<const piece*> incoming = list(from_member, me);
    const auto out_chunks = chunks(outgoing, per_head);
    const auto in_chunks = chunks(incoming, per_head);
    const auto bytes_of = [&](const std::vector<const piece*>& l,
                              std::pair<std::size_t, std::size_t> c) {
      std::size_t n = 0;
      for (std::size_t i = c.first; i < c.second; ++i) n += static_cast<std::size_t>(l[i]->heads);
      return n * per_head;
    };
    for (std::size_t i = 0; i < std::max(out_chunks.size(), in_chunks.size()); ++i) {
      transport::request pending = transport::request::done(ok_status());
      std::size_t in_bytes = 0;
      if (i < in_chunks.size()) {
        in_bytes = bytes_of(incoming, in_chunks[i]);
        in_buf.resize(std::max(in_buf.size(), in_bytes));
        pending =
            comm.irecv(transport::recv_buf{in_buf.data(), in_bytes, transport::wire_type::bytes},
                       from_member, reslice_tag);
      }
      if (i < out_chunks.size()) {
        const std::size_t n = bytes_of(outgoing, out_chunks[i]);
        out_buf.resize(std::max(out_buf.size(), n));
        std::byte* at = out_buf.data();
        for (std::size_t j = out_chunks[i].first; j < out_chunks[i].second; ++j) {
          copy_piece(*outgoing[j], at, true);
          at += static_cast<std::size_t>(outgoing[j]->heads) * per_head;
        }
        const status st = comm.send(
            transport::send_buf{out_buf.data(), n, transport::wire_type::bytes}, to, reslice_tag);
        if (!st.ok()) {
          (void)pending.wait();
          return st.with_context(fmt::format("KV re-slice: member {} sending to {}", me, to));
        }
      }
      if (i < in_chunks.size()) {
        const status st = pending.wait();
        if (!st.ok()) {
          return st.with_context(
              fmt::format("KV re-slice: member {} receiving from {}", me, from_member));
        }
        std::byte* at = in_buf.data();
        for (std::size_t j = in_chunks[i].first; j < in_chunks[i].second; ++j) {
          copy_piece(*incoming[j], at, false);
          at += static_cast<std::size_t>(incoming[j]->heads) * per_head;
        }
      }
    }
  }
  return ok_status();
}

}  // namespace helix::model::reslice
