#include "transport/collective.hpp"

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace helix::transport {

std::string_view op_kind_name(op_kind k) noexcept {
  switch (k) {
    case op_kind::all_to_all:
      return "all_to_all";
    case op_kind::all_to_all_v:
      return "all_to_all_v";
    case op_kind::all_reduce:
      return "all_reduce";
    case op_kind::all_gather:
      return "all_gather";
    case op_kind::broadcast:
      return "broadcast";
    case op_kind::barrier:
      return "barrier";
  }
  return "?";
}

status check_all_to_all(send_buf send, recv_buf recv, std::size_t n) {
  if (send.count != recv.count || send.type != recv.type) {
    return invalid_argument("send has {} {} elements but recv has {} {}", send.count,
                            wire_type_name(send.type), recv.count, wire_type_name(recv.type));
  }
  if (send.count % n != 0) {
    return invalid_argument("{} elements do not split evenly over {} ranks", send.count, n);
  }
  if (send.data != recv.data && buffers_overlap(send.data, send.bytes(), recv.data, recv.bytes())) {
    return invalid_argument("send and recv overlap without being the same buffer");
  }
  return ok_status();
}

status check_all_to_all_v(const all_to_all_v_args& args, std::size_t n) {
  if (args.send.type != args.recv.type) {
    return invalid_argument("send type {} != recv type {}", wire_type_name(args.send.type),
                            wire_type_name(args.recv.type));
  }
  if (args.send_counts.size() != n || args.send_offsets.size() != n ||
      args.recv_counts.size() != n || args.recv_offsets.size() != n) {
    return invalid_argument("counts/offsets need {} entries, got {}/{}/{}/{}", n,
                            args.send_counts.size(), args.send_offsets.size(),
                            args.recv_counts.size(), args.recv_offsets.size());
  }
  for (std::size_t j = 0; j < n; ++j) {
    if (args.send_counts[j] > args.send.count ||
        args.send_offsets[j] > args.send.count - args.send_counts[j]) {
      return invalid_argument("send slice for peer {} [{}, +{}) exceeds send buffer of {}", j,
                              args.send_offsets[j], args.send_counts[j], args.send.count);
    }
    if (args.recv_counts[j] > args.recv.count ||
        args.recv_offsets[j] > args.recv.count - args.recv_counts[j]) {
      return invalid_argument("recv slice from peer {} [{}, +{}) exceeds recv buffer of {}", j,
                              args.recv_offsets[j], args.recv_counts[j], args.recv.count);
    }
  }
  if (buffers_overlap(args.send.data, args.send.bytes(), args.recv.data, args.recv.bytes())) {
    return invalid_argument("send and recv buffers overlap");
  }
  return ok_status();
}

status check_all_reduce(send_buf send, recv_buf recv) {
  if (send.type != wire_type::f32 || recv.type != wire_type::f32) {
    return failed_precondition("all_reduce supports f32 only, got {} -> {}",
                               wire_type_name(send.type), wire_type_name(recv.type));
  }
  if (send.count != recv.count) {
    return invalid_argument("send has {} elements but recv has {}", send.count, recv.count);
  }
  if (send.data != recv.data && buffers_overlap(send.data, send.bytes(), recv.data, recv.bytes())) {
    return invalid_argument("send and recv overlap without being the same buffer");
  }
  return ok_status();
}

status check_all_gather(send_buf send, recv_buf recv, std::size_t n, int rank) {
  if (send.type != recv.type || recv.count != n * send.count) {
    return invalid_argument("recv needs {} x {} {} elements, has {} {}", n, send.count,
                            wire_type_name(send.type), recv.count, wire_type_name(recv.type));
  }
  const auto* own = static_cast<const std::byte*>(recv.data) +
                    static_cast<std::size_t>(rank) * send.count * wire_type_bytes(send.type);
  if (send.data != own && buffers_overlap(send.data, send.bytes(), recv.data, recv.bytes())) {
    return invalid_argument("send overlaps recv other than at this rank's slice");
  }
  return ok_status();
}

status check_broadcast(int root, int size) {
  if (root < 0 || root >= size) return invalid_argument("root {} outside group of {}", root, size);
  return ok_status();
}

expected<int> group_rank_of(std::string_view who, int global_rank, std::span<const int> group,
                            int world_size) {
  if (group.empty()) return invalid_argument("{}: empty group (caller rank {})", who, global_rank);
  std::vector<int> sorted(group.begin(), group.end());
  std::sort(sorted.begin(), sorted.end());
  if (sorted.front() < 0 || sorted.back() >= world_size) {
    return invalid_argument("{}: group has rank {} outside world of {} (caller rank {})", who,
                            sorted.front() < 0 ? sorted.front() : sorted.back(), world_size,
                            global_rank);
  }
  if (const auto dup = std::adjacent_find(sorted.begin(), sorted.end()); dup != sorted.end()) {
    return invalid_argument("{}: group lists rank {} twice (caller rank {})", who, *dup,
                            global_rank);
  }
  const auto it = std::find(group.begin(), group.end(), global_rank);
  if (it == group.end()) {
    return invalid_argument("{}: rank {} is not a member of its group of {} ranks", who,
                            global_rank, group.size());
  }
  return static_cast<int>(it - group.begin());
}

void swap_bytes(void* a, void* b, std::size_t n) noexcept {
  constexpr std::size_t block = 4096;
  alignas(64) std::byte tmp[block];
  auto* pa = static_cast<std::byte*>(a);
  auto* pb = static_cast<std::byte*>(b);
  for (std::size_t i = 0; i < n; i += block) {
    const std::size_t k = std::min(block, n - i);
    std::memcpy(tmp, pa + i, k);
    std::memcpy(pa + i, pb + i, k);
    std::memcpy(pb + i, tmp, k);
  }
}

bool buffers_overlap(const void* a, std::size_t a_bytes, const void* b,
                     std::size_t b_bytes) noexcept {
  if (a_bytes == 0 || b_bytes == 0) return false;
  const auto pa = reinterpret_cast<std::uintptr_t>(a);
  const auto pb = reinterpret_cast<std::uintptr_t>(b);
  return pa < pb + b_bytes && pb < pa + a_bytes;
}

status validate_collective(const std::vector<coll_post>& posts, std::uint64_t seq,
                           const std::vector<int>& members) {
  const auto n = posts.size();
  const coll_post& p0 = posts[0];
  const auto name = op_kind_name(p0.kind);
  for (std::size_t r = 0; r < n; ++r) {
    const coll_post& p = posts[r];
    if (!p.local_error.ok()) {
      return status(p.local_error.code(),
                    fmt::format("{} #{}: rank {} (global {}): {}", op_kind_name(p.kind), seq, r,
                                members[r], p.local_error.message()));
    }
  }
  for (std::size_t r = 1; r < n; ++r) {
    const coll_post& p = posts[r];
    if (p.kind != p0.kind) {
      return invalid_argument("collective #{}: rank {} (global {}) called {} but rank 0 called {}",
                              seq, r, members[r], op_kind_name(p.kind), name);
    }
    if (p.send.type != p0.send.type || p.recv.type != p0.recv.type) {
      return invalid_argument("{} #{}: rank {} uses type {} but rank 0 uses {}", name, seq, r,
                              wire_type_name(p.recv.type), wire_type_name(p0.recv.type));
    }
    switch (p0.kind) {
      case op_kind::all_to_all:
        if (p.in_place != p0.in_place) {
          return invalid_argument("all_to_all #{}: rank {} (global {}) calls it {} but rank 0 {}",
                                  seq, r, members[r], p.in_place ? "in place" : "out of place",
                                  p0.in_place ? "in place" : "out of place");
        }
        [[fallthrough]];
      case op_kind::all_reduce:
      case op_kind::all_gather:
        if (p.send.count != p0.send.count) {
          return invalid_argument(
              "{} #{}: rank {} (global {}) sends {} elements but rank 0 sends {}", name, seq, r,
              members[r], p.send.count, p0.send.count);
        }
        break;
      case op_kind::broadcast:
        if (p.root != p0.root || p.recv.count != p0.recv.count) {
          return invalid_argument(
              "broadcast #{}: rank {} (global {}) has root {} and {} elements, rank 0 has root {} "
              "and {} elements",
              seq, r, members[r], p.root, p.recv.count, p0.root, p0.recv.count);
        }
        break;
      case op_kind::all_to_all_v:
      case op_kind::barrier:
        break;
    }
  }
  if (p0.kind == op_kind::all_to_all_v) {
    for (std::size_t i = 0; i < n; ++i) {
      for (std::size_t j = 0; j < n; ++j) {
        const std::size_t sent = posts[i].v.send_counts[j];
        const std::size_t expected_count = posts[j].v.recv_counts[i];
        if (sent != expected_count) {
          return invalid_argument(
              "all_to_all_v #{}: rank {} (global {}) sends {} elements to peer {} (global {}), "
              "which expects {}",
              seq, i, members[i], sent, j, members[j], expected_count);
        }
      }
    }
  }
  return ok_status();
}

request collective_communicator::post_checked(coll_post post, const call_options& opts) {
  if (post.local_error.ok()) post.local_error = backend_check(post);
  if (!post.local_error.ok()) post.v = {};  // never read the caller's spans on the error path
  return post_collective(std::move(post), opts);
}

request collective_communicator::iall_to_all(send_buf send, recv_buf recv,
                                             const call_options& opts) {
  coll_post p{.kind = op_kind::all_to_all, .send = send, .recv = recv};
  p.in_place = send.data == recv.data && send.count > 0;
  p.local_error = check_all_to_all(send, recv, static_cast<std::size_t>(size()));
  return post_checked(std::move(p), opts);
}

request collective_communicator::iall_to_all_v(const all_to_all_v_args& args,
                                               const call_options& opts) {
  coll_post p{.kind = op_kind::all_to_all_v, .send = args.send, .recv = args.recv, .v = args};
  p.local_error = check_all_to_all_v(args, static_cast<std::size_t>(size()));
  return post_checked(std::move(p), opts);
}

request collective_communicator::iall_reduce(send_buf send, recv_buf recv, reduce_op op,
                                             const call_options& opts) {
  coll_post p{.kind = op_kind::all_reduce, .send = send, .recv = recv, .op = op};
  p.local_error = check_all_reduce(send, recv);
  return post_checked(std::move(p), opts);
}

request collective_communicator::iall_gather(send_buf send, recv_buf recv,
                                             const call_options& opts) {
  coll_post p{.kind = op_kind::all_gather, .send = send, .recv = recv};
  p.local_error = check_all_gather(send, recv, static_cast<std::size_t>(size()), rank());
  return post_checked(std::move(p), opts);
}

request collective_communicator::ibroadcast(recv_buf buf, int root, const call_options& opts) {
  coll_post p{.kind = op_kind::broadcast,
              .send = {buf.data, buf.count, buf.type},
              .recv = buf,
              .root = root};
  p.local_error = check_broadcast(root, size());
  return post_checked(std::move(p), opts);
}

request collective_communicator::ibarrier(const call_options& opts) {
  return post_checked(coll_post{.kind = op_kind::barrier}, opts);
}

}  // namespace helix::transport
