// UCX backend: fabric buffers in shared memory, and the in-place all_to_all that swaps slices
// between processes on one machine (see the protocol paragraph of ucx_fabric_impl.hpp). Runs on
// the progress thread, except allocate(), region_of() and a buffer's release.
//
// Why: an out-of-place all_to_all copies every byte it receives at least once, and at 2 ranks
// each rank also copies its own half, which the receiving side never sees: no copying design
// moves peers' bytes at more than half of what memcpy on 2 threads copies. Done in place on
// memory both sides map, a pair's two slices are exchanged by one swap, split between the pair,
// and the rank's own slice does not move: each byte a peer receives is read once and written
// once. The buffers are memfds (shared memory that a peer with ptrace access, the same access
// process_vm_readv needs, maps through /proc/PID/fd); the peer checks the name of what it opened
// (helix-fabric-SERIAL), so a reused descriptor number is never mistaken for a buffer.
//
// Failures: a peer that dies leaves its region mapped here (its pages stay alive until this
// fabric goes), so a swap in progress never faults; the call fails through the usual peer
// failure. A region that cannot be mapped fails the call on every rank, naming the peer.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>

#include "core/log.hpp"
#include "core/memory.hpp"
#include "transport/ucx/ucx_fabric_impl.hpp"

namespace helix::transport::ucx {
namespace {

// What a round of the progress loop swaps at most, a chunk at a time: a few hundred microseconds
// of copying before UCX and the other calls get their turn again.
constexpr std::size_t swap_chunk_bytes = std::size_t{1} << 20;
constexpr std::size_t swap_round_bytes = std::size_t{4} << 20;

std::string region_name(std::uint64_t serial) {
  return fmt::format("helix-fabric-{}", serial);
}

// What /proc/self/fd/FD links to.
std::string fd_target(int fd) {
  char buf[256];
  const std::string link = fmt::format("/proc/self/fd/{}", fd);
  const ssize_t n = ::readlink(link.c_str(), buf, sizeof(buf) - 1);
  if (n <= 0) return {};
  return std::string(buf, static_cast<std::size_t>(n));
}

}  // namespace

expected<fabric_buffer> ucx_fabric_impl::allocate(std::size_t bytes) {
  if (bytes == 0) return fabric_buffer{};
  const memory_headroom room = available_memory();
  if (bytes > room.bytes) {
    return make_error(errc::resource_exhausted, "fabric buffer of {} does not fit in {} ({})",
                      format_bytes(bytes), format_bytes(room.bytes), room.limited_by);
  }
  const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  const std::size_t mapped = (bytes + page - 1) / page * page;
  std::uint64_t serial = 0;
  {
    std::lock_guard lk(regions_->mu);
    serial = regions_->next_serial++;
  }
  const int fd = ::memfd_create(region_name(serial).c_str(), MFD_CLOEXEC);
  void* p = MAP_FAILED;
  int err = 0;
  if (fd < 0) {
    err = errno;
  } else if (::ftruncate(fd, static_cast<off_t>(mapped)) != 0) {
    err = errno;
  } else {
    p = ::mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) err = errno;
  }
  if (p == MAP_FAILED) {
    if (fd >= 0) ::close(fd);
    if (err == ENOMEM || err == ENOSPC) {
      return make_error(errc::resource_exhausted, "fabric buffer of {}: {}", format_bytes(bytes),
                        std::strerror(err));
    }
    // No shared memory here (memfd refused): plain memory still works, swaps become copies.
    module_logger("transport")
        ->warn("ucx fabric rank {}: no shared fabric buffer ({}); using process memory", opts_.rank,
               std::strerror(err));
    return allocate_host_buffer(bytes);
  }
  auto* base = static_cast<std::byte*>(p);
  {
    std::lock_guard lk(regions_->mu);
    regions_->regions.push_back({serial, fd, base, mapped});
  }
  return fabric_buffer(base, bytes, [reg = regions_](std::byte* data, std::size_t) {
    std::lock_guard lk(reg->mu);
    const auto it = std::find_if(reg->regions.begin(), reg->regions.end(),
                                 [&](const auto& r) { return r.base == data; });
    if (it == reg->regions.end()) return;
    ::munmap(it->base, it->bytes);
    ::close(it->fd);
    const std::uint64_t freed = it->serial;
    reg->regions.erase(it);
    if (reg->announce) reg->announce(freed);  // under the lock: the fabric clears it under it
  });
}

std::optional<swap_desc> ucx_fabric_impl::region_of(const void* data, std::size_t bytes) const {
  const auto p = reinterpret_cast<std::uintptr_t>(data);
  std::lock_guard lk(regions_->mu);
  for (const auto& r : regions_->regions) {
    const auto base = reinterpret_cast<std::uintptr_t>(r.base);
    if (p >= base && bytes <= r.bytes && p - base <= r.bytes - bytes) {
      swap_desc d;
      d.region = r.serial;
      d.region_bytes = r.bytes;
      d.offset = p - base;
      d.bytes = bytes;
      d.fd = r.fd;
      return d;
    }
  }
  return std::nullopt;
}

void ucx_fabric_impl::open_regions() {
  std::lock_guard lk(regions_->mu);
  regions_->announce = [this](std::uint64_t serial) {
    enqueue([this, serial] { announce_region_freed(serial); });
  };
}

void ucx_fabric_impl::close_regions() {
  std::lock_guard lk(regions_->mu);
  regions_->announce = nullptr;  // buffers freed from now on only unmap
}

void ucx_fabric_impl::announce_region_freed(std::uint64_t serial) {
  for (int r = 0; r < opts_.world_size; ++r) {
    const auto ur = static_cast<std::size_t>(r);
    if (r == opts_.rank || pull_ready_[ur] == 0 || !peer_failed_[ur].ok()) continue;
    wire_header h;
    h.type = msg_type::region_freed;
    h.src = opts_.rank;
    h.seq = serial;
    send_notice(r, h, ok_status());
  }
}

void ucx_fabric_impl::on_region_freed(const held_msg& m) {
  const auto it = peer_regions_.find({m.hdr.src, m.hdr.seq});
  if (it == peer_regions_.end()) return;
  ::munmap(it->second.base, it->second.bytes);
  peer_regions_.erase(it);
}

void ucx_fabric_impl::unmap_peer_regions() {
  for (auto& [key, r] : peer_regions_) ::munmap(r.base, r.bytes);
  peer_regions_.clear();
}

expected<std::byte*> ucx_fabric_impl::map_peer_slice(int global_peer, const swap_desc& d) {
  const auto up = static_cast<std::size_t>(global_peer);
  auto it = peer_regions_.find({global_peer, d.region});
  if (it == peer_regions_.end()) {
    const int pid = same_host_pid_[up];
    if (pid <= 0) {
      return make_error(errc::unavailable, "rank {}: peer rank {} is not on this machine",
                        opts_.rank, global_peer);
    }
    const std::string path = fmt::format("/proc/{}/fd/{}", pid, d.fd);
    const int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
    if (fd < 0) {
      return make_error(errc::unavailable, "rank {} mapping peer rank {}'s buffer ({}): {}",
                        opts_.rank, global_peer, path, std::strerror(errno));
    }
    const std::string want = "/memfd:" + region_name(d.region);
    const std::string got = fd_target(fd);
    struct stat st {};
    const bool fits = ::fstat(fd, &st) == 0 && st.st_size >= 0 &&
                      static_cast<std::uint64_t>(st.st_size) >= d.region_bytes;
    if (got.rfind(want + " ", 0) != 0 && got != want) {
      ::close(fd);
      return make_error(errc::unavailable,
                        "rank {}: peer rank {}'s fd {} is '{}', not its buffer '{}'", opts_.rank,
                        global_peer, d.fd, got, want);
    }
    if (!fits || d.region_bytes == 0) {
      ::close(fd);
      return make_error(errc::unavailable, "rank {}: peer rank {}'s buffer is smaller than {}",
                        opts_.rank, global_peer, format_bytes(d.region_bytes));
    }
    void* p = ::mmap(nullptr, d.region_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    const int err = errno;
    ::close(fd);
    if (p == MAP_FAILED) {
      return make_error(errc::unavailable, "rank {} mapping {} of peer rank {}'s buffer: {}",
                        opts_.rank, format_bytes(d.region_bytes), global_peer, std::strerror(err));
    }
    it = peer_regions_
             .emplace(std::pair{global_peer, d.region},
                      peer_region{static_cast<std::byte*>(p), d.region_bytes})
             .first;
  }
  const peer_region& r = it->second;
  if (d.offset > r.bytes || d.bytes > r.bytes - d.offset) {
    return make_error(errc::unavailable,
                      "rank {}: peer rank {}'s slice [{}, +{}) lies outside its buffer of {}",
                      opts_.rank, global_peer, d.offset, d.bytes, r.bytes);
  }
  return r.base + d.offset;
}

void ucx_fabric_impl::start_swap_phase(group& g, coll_slot& s) {
  s.phase = 1;
  const coll_post& own = s.op->args;
  const std::size_t n = g.members.size();
  const auto me = static_cast<std::size_t>(g.me);
  const std::size_t slice = own.recv.bytes() / n;
  auto* buf = static_cast<std::byte*>(own.recv.data);
  const auto swaps = [&](std::size_t j) { return s.swap_from[j] && s.swap_to[j] != 0; };
  // Pairs that do not swap: stage every outgoing slice before any incoming one can land.
  bool staged = false;
  for (std::size_t j = 0; j < n; ++j) {
    if (j == me || swaps(j)) continue;
    if (!staged) {
      take_scratch(g, s, n * slice);
      staged = true;
    }
    std::memcpy(s.scratch.data() + j * slice, buf + j * slice, slice);
  }
  for (std::size_t j = 0; j < n; ++j) {
    if (j == me) continue;
    if (!swaps(j)) {
      send_phase1_msg(g, s, j, s.scratch.data() + j * slice, slice, wire_flag_in_place);
      continue;
    }
    const swap_desc& d = *s.swap_from[j];
    expected<std::byte*> theirs = map_peer_slice(g.members[j], d);
    if (theirs.has_value() && d.bytes != slice) {
      theirs = make_error(errc::unavailable, "rank {}: peer rank {} offers {} bytes, not {}",
                          opts_.rank, g.members[j], d.bytes, slice);
    }
    if (!theirs.has_value()) {
      fail_slot_everywhere(g, s, theirs.error());  // advances `s`, which may be gone after it
      return;
    }
    // The lower rank swaps the first half (a whole number of cache lines), the other the rest.
    const std::size_t half = slice / 2 / 64 * 64;
    const std::size_t begin = me < j ? 0 : half;
    const std::size_t end = me < j ? half : slice;
    swap_job job;
    job.g = &g;
    job.slot = &s;
    job.peer = static_cast<int>(j);
    job.mine = buf + j * slice + begin;
    job.theirs = *theirs + begin;
    job.bytes = end - begin;
    ++s.recvs_in_flight;
    swaps_.push_back(job);
  }
  reconsider_held(g, s, /*phase0_only=*/false);
  advance(g, s);
}

bool ucx_fabric_impl::run_swaps() {
  std::size_t budget = swap_round_bytes;
  while (!swaps_.empty() && budget > 0) {
    swap_job& j = swaps_.front();
    // A call that failed (a peer, a deadline, abort) writes into nobody's buffer any more.
    if (j.slot->decided || !aborted_pt_.ok()) {
      const swap_job job = j;
      swaps_.erase(swaps_.begin());
      --job.slot->recvs_in_flight;
      advance(*job.g, *job.slot);
      continue;
    }
    const std::size_t k = std::min({swap_chunk_bytes, budget, j.bytes - j.done});
    swap_bytes(j.mine + j.done, j.theirs + j.done, k);
    j.done += k;
    budget -= k;
    if (j.done < j.bytes) continue;
    const swap_job job = j;
    swaps_.erase(swaps_.begin());
    --job.slot->recvs_in_flight;
    send_phase1_msg(*job.g, *job.slot, static_cast<std::size_t>(job.peer), nullptr, 0,
                    wire_flag_in_place);
    advance(*job.g, *job.slot);
  }
  return !swaps_.empty();
}

}  // namespace helix::transport::ucx
