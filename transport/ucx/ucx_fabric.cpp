// UCX backend: context, worker, endpoints and the progress thread (protocol in ucx_protocol.cpp).
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <mutex>
#include <numeric>
#include <sstream>

#include <ucs/debug/log_def.h>

#include "core/log.hpp"
#include "transport/ucx/ucx_communicator.hpp"
#include "transport/ucx/ucx_fabric_impl.hpp"

namespace helix::transport {

expected<std::unique_ptr<ucx_fabric>> make_ucx_fabric(const ucx_fabric_options& opts) {
  HELIX_ASSIGN_OR_RETURN(auto f, ucx::ucx_fabric_impl::create(opts));
  return std::unique_ptr<ucx_fabric>(std::move(f));
}

}  // namespace helix::transport

namespace helix::transport::ucx {
namespace {

constexpr unsigned am_id = 0;
// How long the destructor lets endpoint closes flush before forcing them.
constexpr auto close_grace = std::chrono::seconds(2);

status ucx_error(std::string_view what, ucs_status_t st) {
  return make_error(errc::unavailable, "ucx: {}: {}", what, ucs_status_string(st));
}

// What address() puts before the UCP worker address: who this rank is on its machine, so that a
// peer on the same machine (same boot, same pid namespace) can watch the process itself, and one
// in the same network namespace too can read its memory (one copy), which it first probes.
struct address_prefix {
  std::uint32_t magic = 0x48584132;  // "HXA2"
  std::uint32_t pid = 0;
  std::uint64_t boot = 0;           // hash of /proc/sys/kernel/random/boot_id
  std::uint64_t pidns = 0;          // inode of /proc/self/ns/pid
  std::uint64_t netns = 0;          // inode of /proc/self/ns/net
  std::uint64_t probe_address = 0;  // a word of this process's memory that holds probe_value
  std::uint64_t probe_value = 0;
};
static_assert(sizeof(address_prefix) == 48);

std::uint64_t ns_inode(const char* path) {
  struct stat st {};
  return ::stat(path, &st) == 0 ? static_cast<std::uint64_t>(st.st_ino) : 0;
}

address_prefix this_process(const std::uint64_t& probe_word) {
  address_prefix p;
  p.pid = static_cast<std::uint32_t>(::getpid());
  std::ifstream in("/proc/sys/kernel/random/boot_id");
  std::string boot;
  std::getline(in, boot);
  p.boot = std::hash<std::string>{}(boot);
  p.pidns = ns_inode("/proc/self/ns/pid");
  p.netns = ns_inode("/proc/self/ns/net");
  p.probe_address = reinterpret_cast<std::uintptr_t>(&probe_word);
  p.probe_value = probe_word;
  return p;
}

// epoll tags: the worker's fd, the command eventfd, then one pidfd per watched peer.
constexpr std::uint64_t worker_tag = 0;
constexpr std::uint64_t command_tag = 1;
constexpr std::uint64_t first_peer_tag = 2;

std::string format_ms(std::chrono::milliseconds ms) {
  return fmt::format("{}ms", ms.count());
}

}  // namespace

ucx_fabric_impl::ucx_fabric_impl(const ucx_fabric_options& opts)
    : opts_(opts),
      probe_word_(static_cast<std::uint64_t>(clock::now().time_since_epoch().count()) ^
                  (std::uint64_t{0x9e3779b97f4a7c15} * static_cast<std::uint64_t>(::getpid()))) {}

expected<std::unique_ptr<ucx_fabric_impl>> ucx_fabric_impl::create(const ucx_fabric_options& opts) {
  if (opts.world_size < 1 || opts.world_size > (1 << 20)) {
    return invalid_argument("make_ucx_fabric: world_size {} must be in [1, 2^20]", opts.world_size);
  }
  if (opts.rank < 0 || opts.rank >= opts.world_size) {
    return invalid_argument("make_ucx_fabric: rank {} outside world of {}", opts.rank,
                            opts.world_size);
  }
  if (opts.default_timeout.count() < 0) {
    return invalid_argument("make_ucx_fabric: default_timeout {} ms must be >= 0",
                            opts.default_timeout.count());
  }
  if (opts.keepalive_interval.count() <= 0) {
    return invalid_argument("make_ucx_fabric: keepalive_interval {} ms must be > 0",
                            opts.keepalive_interval.count());
  }
  auto f = std::make_unique<ucx_fabric_impl>(opts);
  HELIX_RETURN_IF_ERROR(f->start());
  return f;
}

// UCX prints its warnings and errors on stdout by default (which corrupts a --json report):
// send them to the transport logger instead, once per process.
ucs_log_func_rc_t log_to_spdlog(const char* file, unsigned line, const char* /*function*/,
                                ucs_log_level_t level,
                                const ucs_log_component_config_t* /*comp_conf*/,
                                const char* message, va_list ap) {
  if (level > UCS_LOG_LEVEL_INFO) return UCS_LOG_FUNC_RC_STOP;
  char text[512];
  std::vsnprintf(text, sizeof(text), message, ap);
  const auto log = module_logger("transport");
  if (level <= UCS_LOG_LEVEL_ERROR) {
    log->warn("UCX error ({}:{}): {}", file, line, text);
  } else if (level == UCS_LOG_LEVEL_WARN &&
             std::strstr(text, "invalid configuration: MM_ERROR_HANDLING") == nullptr) {
    // (UCX 1.13 applies MM_ERROR_HANDLING to posix and sysv, whose selection under error mode
    // PEER shows it, and still calls it invalid: that one is not worth a warning.)
    log->warn("UCX: {}", text);
  } else {
    log->debug("UCX: {}", text);
  }
  return UCS_LOG_FUNC_RC_STOP;
}

status ucx_fabric_impl::start() {
  open_regions();
  static std::once_flag log_once;
  std::call_once(log_once, [] { ucs_log_push_handler(&log_to_spdlog); });
  ucp_config_t* config = nullptr;
  ucs_status_t st = ucp_config_read(nullptr, nullptr, &config);
  if (st != UCS_OK) return ucx_error("ucp_config_read", st);
  struct setting {
    const char* name;
    std::string value;
  };
  std::vector<setting> settings = {
      {"MM_ERROR_HANDLING", opts_.shm_error_handling ? "y" : "n"},
      {"KEEPALIVE_INTERVAL", format_ms(opts_.keepalive_interval)},
  };
  if (!opts_.transports.empty()) settings.push_back({"TLS", opts_.transports});
  if (!opts_.net_devices.empty()) settings.push_back({"NET_DEVICES", opts_.net_devices});
  for (const auto& s : settings) {
    st = ucp_config_modify(config, s.name, s.value.c_str());
    if (st != UCS_OK) {
      ucp_config_release(config);
      return ucx_error(fmt::format("setting {}={}", s.name, s.value), st);
    }
  }
  ucp_params_t params{};
  params.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_NAME;
  params.features = UCP_FEATURE_AM | UCP_FEATURE_WAKEUP;
  params.name = "helix";
  st = ucp_init(&params, config, &context_);
  ucp_config_release(config);
  if (st != UCS_OK) return ucx_error("ucp_init", st);

  ucp_worker_params_t wp{};
  wp.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
  wp.thread_mode = UCS_THREAD_MODE_SINGLE;  // only the progress thread touches the worker
  st = ucp_worker_create(context_, &wp, &worker_);
  if (st != UCS_OK) return ucx_error("ucp_worker_create", st);

  ucp_worker_attr_t attr{};
  attr.field_mask = UCP_WORKER_ATTR_FIELD_MAX_AM_HEADER;
  st = ucp_worker_query(worker_, &attr);
  if (st != UCS_OK) return ucx_error("ucp_worker_query", st);
  max_am_header_ = attr.max_am_header;

  ucp_address_t* addr = nullptr;
  std::size_t addr_len = 0;
  st = ucp_worker_get_address(worker_, &addr, &addr_len);
  if (st != UCS_OK) return ucx_error("ucp_worker_get_address", st);
  const auto* bytes = reinterpret_cast<const std::byte*>(addr);
  const address_prefix me = this_process(probe_word_);
  address_.resize(sizeof(me));
  std::memcpy(address_.data(), &me, sizeof(me));
  address_.insert(address_.end(), bytes, bytes + addr_len);
  ucp_worker_release_address(worker_, addr);

  ucp_am_handler_param_t hp{};
  hp.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_CB |
                  UCP_AM_HANDLER_PARAM_FIELD_ARG | UCP_AM_HANDLER_PARAM_FIELD_FLAGS;
  hp.id = am_id;
  hp.cb = &ucx_fabric_impl::on_am;
  hp.arg = this;
  hp.flags = UCP_AM_FLAG_PERSISTENT_DATA;  // eager data may be held until its call is posted
  st = ucp_worker_set_am_recv_handler(worker_, &hp);
  if (st != UCS_OK) return ucx_error("ucp_worker_set_am_recv_handler", st);

  int worker_fd = -1;
  st = ucp_worker_get_efd(worker_, &worker_fd);
  if (st != UCS_OK) return ucx_error("ucp_worker_get_efd", st);
  event_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
  if (event_fd_ < 0 || epoll_fd_ < 0) {
    return make_error(errc::unavailable, "ucx fabric: eventfd/epoll: {}", std::strerror(errno));
  }
  for (const auto& [fd, tag] : {std::pair{worker_fd, worker_tag}, {event_fd_, command_tag}}) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = tag;
    if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev) != 0) {
      return make_error(errc::unavailable, "ucx fabric: epoll_ctl: {}", std::strerror(errno));
    }
  }
  const auto world = static_cast<std::size_t>(opts_.world_size);
  size_pools();
  eps_.assign(world, nullptr);
  peer_failed_.assign(world, ok_status());
  same_host_pid_.assign(world, 0);
  can_pull_from_.assign(world, 0);
  pull_ready_.assign(world, 0);
  // An endpoint to this rank itself, for point-to-point calls to self.
  ucp_ep_params_t self{};
  self.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS;
  self.address = reinterpret_cast<const ucp_address_t*>(address_.data() + sizeof(address_prefix));
  st = ucp_ep_create(worker_, &self, &eps_[static_cast<std::size_t>(opts_.rank)]);
  if (st != UCS_OK) return ucx_error("endpoint to self", st);
  try {
    thread_ = std::thread([this] { progress_loop(); });
  } catch (const std::system_error& e) {
    return make_error(errc::resource_exhausted, "ucx fabric: no progress thread: {}", e.what());
  }
  return ok_status();
}

ucx_fabric_impl::~ucx_fabric_impl() {
  close_regions();
  if (thread_.joinable()) {
    {
      std::lock_guard lk(mu_);
      stop_ = true;
    }
    const std::uint64_t one = 1;
    (void)!::write(event_fd_, &one, sizeof(one));
    thread_.join();
  }
  const auto in_flight =
      std::count_if(tokens_.begin(), tokens_.end(), [](const auto& t) { return t->in_flight; });
  if (in_flight > 0 || leak_worker_) {
    // UCX 1.13 asserts (aborting the process) when a worker is destroyed with transfers still
    // in flight, which an abandoned transfer to a failed peer can be: leak the worker, the
    // context and the tokens instead. This happens only after a peer failure.
    module_logger("transport")
        ->warn(
            "ucx fabric rank {}: {} transfers never completed; the UCX worker is not "
            "destroyed",
            opts_.rank, in_flight);
    worker_ = nullptr;
    context_ = nullptr;
  }
  if (worker_ != nullptr) ucp_worker_destroy(worker_);
  events_.clear();
  if (context_ != nullptr) ucp_cleanup(context_);
  unmap_peer_regions();
  for (const auto& w : pidfds_) ::close(w.fd);
  if (event_fd_ >= 0) ::close(event_fd_);
  if (epoll_fd_ >= 0) ::close(epoll_fd_);
}

void ucx_fabric_impl::enqueue(std::function<void()> fn) {
  {
    std::lock_guard lk(mu_);
    commands_.push_back(std::move(fn));
  }
  const std::uint64_t one = 1;
  (void)!::write(event_fd_, &one, sizeof(one));
}

void ucx_fabric_impl::run_command(std::function<void()> fn) {
  std::mutex m;
  std::condition_variable cv;
  bool ran = false;
  enqueue([&] {
    fn();
    std::lock_guard lk(m);
    ran = true;
    cv.notify_all();
  });
  std::unique_lock lk(m);
  cv.wait(lk, [&] { return ran; });
}

status ucx_fabric_impl::connect(std::span<const std::vector<std::byte>> addresses) {
  if (addresses.size() != static_cast<std::size_t>(opts_.world_size)) {
    return invalid_argument("ucx connect: {} addresses for a world of {}", addresses.size(),
                            opts_.world_size);
  }
  {
    std::lock_guard lk(mu_);
    if (connected_) return failed_precondition("ucx connect: already connected");
    connected_ = true;
  }
  status result;
  run_command([&] {
    const address_prefix me = this_process(probe_word_);
    std::string refused;  // why one copy is off for a peer on this machine
    for (int r = 0; r < opts_.world_size; ++r) {
      if (r == opts_.rank) continue;
      const auto ur = static_cast<std::size_t>(r);
      const auto& a = addresses[ur];
      address_prefix peer;
      if (a.size() <= sizeof(peer)) {
        result = invalid_argument("ucx connect: rank {}'s address has {} bytes", r, a.size());
        return;
      }
      std::memcpy(&peer, a.data(), sizeof(peer));
      if (peer.magic != address_prefix{}.magic) {
        result = invalid_argument("ucx connect: rank {}'s address is not a helix UCX address", r);
        return;
      }
      // A peer on this machine: watch its process, so that its death is seen at once (UCX's
      // own keepalive does not cover shared memory here).
      if (peer.boot == me.boot && peer.pidns == me.pidns) {
        const int fd = static_cast<int>(::syscall(SYS_pidfd_open, peer.pid, 0));
        if (fd < 0) {
          result = make_error(errc::unavailable, "ucx connect: rank {} (pid {}) is not running: {}",
                              r, peer.pid, std::strerror(errno));
          return;
        }
        epoll_event ev{};
        ev.events = EPOLLIN;
        ev.data.u64 = first_peer_tag + static_cast<std::uint64_t>(r);
        (void)epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev);
        pidfds_.push_back({r, static_cast<int>(peer.pid), fd});
        // Ranks in other network namespaces stand for other hosts: they keep to UCX (tcp).
        if (opts_.one_copy && peer.netns == me.netns) {
          const status can =
              enable_one_copy(r, static_cast<int>(peer.pid), peer.probe_address, peer.probe_value);
          if (!can.ok()) refused += fmt::format(" rank {}: {};", r, can.message());
        }
      }
      peer_refs_.push_back(std::make_unique<peer_ref>(peer_ref{this, r}));
      ucp_ep_params_t ep{};
      ep.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                      UCP_EP_PARAM_FIELD_ERR_HANDLER;
      ep.address = reinterpret_cast<const ucp_address_t*>(a.data() + sizeof(address_prefix));
      ep.err_mode = UCP_ERR_HANDLING_MODE_PEER;
      ep.err_handler.cb = &ucx_fabric_impl::on_ep_error;
      ep.err_handler.arg = peer_refs_.back().get();
      const ucs_status_t st = ucp_ep_create(worker_, &ep, &eps_[ur]);
      if (st != UCS_OK) {
        result = ucx_error(fmt::format("endpoint to rank {}", r), st);
        eps_[ur] = nullptr;
        peer_failed_[ur] = result;
        return;
      }
    }
    announce_one_copy(refused);
  });
  return result;
}

std::string ucx_fabric_impl::transports_to(int peer) const {
  if (peer < 0 || peer >= opts_.world_size || peer == opts_.rank) return {};
  std::string out;
  const_cast<ucx_fabric_impl*>(this)->run_command([&] {
    ucp_ep_h ep = eps_[static_cast<std::size_t>(peer)];
    if (ep == nullptr) return;
    char* buf = nullptr;
    std::size_t len = 0;
    FILE* f = open_memstream(&buf, &len);
    if (f == nullptr) return;
    ucp_ep_print_info(ep, f);
    std::fclose(f);
    // Lanes print as "lane[0]:  2:posix/memory.0 md[1] ...": keep the distinct "tl/dev" names.
    std::istringstream in(std::string(buf, len));
    std::free(buf);
    std::vector<std::string> seen;
    std::string line;
    while (std::getline(in, line)) {
      const auto lane = line.find("lane[");
      if (lane == std::string::npos) continue;
      std::istringstream words(line.substr(line.find(':', lane) + 1));
      std::string w;
      while (words >> w) {
        const auto colon = w.find(':');
        if (colon == std::string::npos || w.find('/') == std::string::npos) continue;
        std::string tl = w.substr(colon + 1);
        if (const auto dot = tl.rfind('.'); dot != std::string::npos) tl.resize(dot);
        if (std::find(seen.begin(), seen.end(), tl) == seen.end()) seen.push_back(tl);
        break;
      }
    }
    for (const auto& s : seen) out += (out.empty() ? "" : " ") + s;
    // Large messages from the peer: read from its memory (see ucx_one_copy.cpp).
    if (can_pull_from_[static_cast<std::size_t>(peer)] != 0) out += " one-copy/process_vm_readv";
  });
  return out;
}

expected<std::unique_ptr<communicator>> ucx_fabric_impl::make_communicator(
    int global_rank, std::span<const int> members_span) {
  if (global_rank != opts_.rank) {
    return invalid_argument("ucx fabric of rank {}: cannot make a communicator for rank {}",
                            opts_.rank, global_rank);
  }
  HELIX_ASSIGN_OR_RETURN(const int group_rank,
                         group_rank_of("ucx fabric", global_rank, members_span, opts_.world_size));
  std::vector<int> members(members_span.begin(), members_span.end());
  auto g = std::make_shared<group>();
  g->me = group_rank;
  {
    std::lock_guard lk(mu_);
    if (!abort_reason_.ok()) return abort_reason_;
    if (!connected_ && opts_.world_size > 1) {
      return failed_precondition("ucx fabric: connect() before making communicators");
    }
    // Every member's k-th creation of this list is the same instance: the id hashes both.
    auto& counts = instances_[members];
    if (counts.empty()) counts.assign(members.size(), 0);
    const int instance = counts[static_cast<std::size_t>(g->me)]++;
    std::uint64_t h = 1469598103934665603ull;  // FNV-1a
    const auto mix = [&h](std::uint64_t v) {
      for (int b = 0; b < 8; ++b) {
        h ^= (v >> (8 * b)) & 0xff;
        h *= 1099511628211ull;
      }
    };
    for (int m : members) mix(static_cast<std::uint64_t>(m));
    mix(static_cast<std::uint64_t>(instance) | (std::uint64_t{1} << 40));
    g->id = h;
  }
  g->members = std::move(members);
  g->prepare();
  run_command([this, g] {
    groups_[g->id] = g;
    auto it2 = orphans_.find(g->id);
    if (it2 == orphans_.end()) return;
    std::vector<held_msg> early = std::move(it2->second);
    orphans_.erase(it2);
    for (auto& m : early) dispatch(std::move(m));
  });
  return std::unique_ptr<communicator>(std::make_unique<ucx_communicator>(this, std::move(g)));
}

expected<std::unique_ptr<communicator>> ucx_fabric_impl::make_world(int global_rank) {
  std::vector<int> all(static_cast<std::size_t>(opts_.world_size));
  std::iota(all.begin(), all.end(), 0);
  return make_communicator(global_rank, all);
}

void ucx_fabric_impl::abort(status reason) {
  if (reason.ok()) reason = status(errc::aborted, "transport aborted");
  {
    std::lock_guard lk(mu_);
    if (!abort_reason_.ok()) return;
    abort_reason_ = reason;
  }
  module_logger("transport")->warn("ucx fabric rank {}: aborted: {}", opts_.rank, reason);
  enqueue([this, reason] {
    for (int r = 0; r < opts_.world_size; ++r) {
      if (r == opts_.rank || eps_[static_cast<std::size_t>(r)] == nullptr) continue;
      wire_header h;
      h.type = msg_type::abort;
      send_notice(r, h, reason);
    }
    fail_everything(reason);
  });
}

status ucx_fabric_impl::abort_status() const {
  std::lock_guard lk(mu_);
  return abort_reason_;
}

void ucx_fabric_impl::post(std::shared_ptr<op_state> op) {
  {
    std::lock_guard lk(mu_);
    posted_.push_back(std::move(op));
  }
  const std::uint64_t one = 1;
  (void)!::write(event_fd_, &one, sizeof(one));
}

void ucx_fabric_impl::start_op(const std::shared_ptr<op_state>& op) {
  if (op->is_coll) {
    start_coll(op);
  } else {
    start_p2p(op);
  }
}

status ucx_fabric_impl::wait(op_state& op) {
  std::unique_lock lk(done_mu_);
  done_cv_.wait(lk, [&] { return op.done.load(std::memory_order_acquire); });
  return op.result;
}

void ucx_fabric_impl::finish(op_state& op, status st) {
  // Out of the deadline heap first; its reference (maybe the last) goes at the end.
  const std::shared_ptr<op_state> keep = deadlines_.remove(op);
  {
    std::lock_guard lk(done_mu_);
    op.result = std::move(st);
    op.done.store(true, std::memory_order_release);
  }
  done_cv_.notify_all();
}

// ---- UCX callbacks: queue only ----

ucs_status_t ucx_fabric_impl::on_am(void* arg, const void* header, size_t header_length, void* data,
                                    size_t length, const ucp_am_recv_param_t* param) {
  auto* self = static_cast<ucx_fabric_impl*>(arg);
  held_msg m;
  if (header_length < sizeof(wire_header)) return UCS_OK;  // not ours: drop
  std::memcpy(&m.hdr, header, sizeof(wire_header));
  if (m.hdr.magic != wire_magic) return UCS_OK;
  const std::size_t extra = header_length - sizeof(wire_header);
  if (extra != 2 * std::size_t{m.hdr.n_counts} * sizeof(std::uint64_t)) return UCS_OK;
  m.counts.resize(2 * std::size_t{m.hdr.n_counts});
  if (extra > 0) {
    std::memcpy(m.counts.data(), static_cast<const std::byte*>(header) + sizeof(wire_header),
                extra);
  }
  m.length = length;
  m.rndv = (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0;
  if ((m.hdr.flags & wire_flag_pull) != 0) {  // the data stays with the sender: only copy this
    if (self->read_pull_desc(m, data)) self->incoming_.push_back(std::move(m));
    return UCS_OK;
  }
  const bool persistent = (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_DATA) != 0;
  ucs_status_t ret = UCS_OK;
  if (m.rndv || persistent) {
    m.data = data;
    m.ucx_owned = true;
    ret = UCS_INPROGRESS;
  } else if (length > 0) {
    const auto* b = static_cast<const std::byte*>(data);
    m.copied = self->take_copy_buffer();
    m.copied.assign(b, b + length);
  }
  self->incoming_.push_back(std::move(m));
  return ret;
}

void ucx_fabric_impl::on_send_done(void* request, ucs_status_t st, void* user_data) {
  ucp_request_free(request);
  auto* token = static_cast<send_token*>(user_data);
  token->fabric->complete(token, st);
}

void ucx_fabric_impl::on_recv_done(void* request, ucs_status_t st, size_t /*length*/,
                                   void* user_data) {
  ucp_request_free(request);
  auto* token = static_cast<send_token*>(user_data);
  token->fabric->complete(token, st);
}

void ucx_fabric_impl::on_ep_error(void* arg, ucp_ep_h /*ep*/, ucs_status_t st) {
  const auto* ref = static_cast<const peer_ref*>(arg);
  ref->fabric->events_.push_back({nullptr, 0, st, ref->rank});
}

// ---- the progress thread ----

void ucx_fabric_impl::progress_loop() {
  std::vector<std::function<void()>> batch;
  int busy_rounds = 0;
  for (;;) {
    bool stopping = false;
    {
      std::lock_guard lk(mu_);
      batch.swap(commands_);
      starting_.swap(posted_);
      stopping = stop_;
    }
    for (auto& fn : batch) fn();
    batch.clear();
    for (const auto& op : starting_) start_op(op);
    starting_.clear();
    // Bounded: with a dead peer UCX can report progress forever (keepalive retries).
    for (int i = 0; i < 64 && ucp_worker_progress(worker_) != 0; ++i) {
    }
    handle_events();
    check_deadlines();
    abandon_stuck();
    if (stopping) break;
    // A round of one-copy reads; while any remain the loop does not sleep (copying is work).
    // Both run every round (no short circuit).
    const bool pulled = run_pulls();
    const bool swapped = run_swaps();
    const bool pulling = pulled || swapped;
    {
      std::lock_guard lk(mu_);
      if (!commands_.empty() || !posted_.empty() || stop_) continue;
    }
    if (pulling || !incoming_.empty() || !events_.empty()) continue;
    // UCS_ERR_BUSY: UCX has work it could not finish yet. Poll without blocking (so peer
    // exits are still seen), and if that persists, nap 1 ms per round instead of spinning (an
    // endpoint to a dead peer can keep the worker busy until it is closed).
    const bool busy = ucp_worker_arm(worker_) == UCS_ERR_BUSY;
    busy_rounds = busy ? busy_rounds + 1 : 0;
    // UCX checks its peers (keepalive) only inside ucp_worker_progress(): wake up at least
    // once per keepalive interval while there are peers, so a dead one is noticed.
    std::int64_t timeout_ms = opts_.world_size > 1 ? opts_.keepalive_interval.count() : -1;
    if (!deadlines_.empty()) {
      const auto left =
          std::chrono::ceil<std::chrono::milliseconds>(deadlines_.earliest() - clock::now());
      const std::int64_t d = std::clamp<std::int64_t>(left.count(), 0, 60000);
      timeout_ms = timeout_ms < 0 ? d : std::min(timeout_ms, d);
    }
    if (busy) timeout_ms = busy_rounds < 64 ? 0 : 1;
    epoll_event evs[16];
    const int ready = epoll_wait(epoll_fd_, evs, 16, static_cast<int>(timeout_ms));
    std::vector<int> exited;
    for (int i = 0; i < ready; ++i) {
      if (evs[i].data.u64 >= first_peer_tag) {
        exited.push_back(static_cast<int>(evs[i].data.u64 - first_peer_tag));
      }
    }
    if (!exited.empty()) {
      // A peer that finished flushed its last messages before it exited: take them in first,
      // so that only calls that still need it fail.
      for (int i = 0; i < 64 && ucp_worker_progress(worker_) != 0; ++i) {
      }
      handle_events();
      for (int r : exited) peer_exited(r);
    }
    std::uint64_t drained = 0;
    while (::read(event_fd_, &drained, sizeof(drained)) > 0) {
    }
  }
  // Shutdown: fail what is left, then close every endpoint (flushing, then forcing).
  fail_everything(make_error(errc::aborted, "ucx fabric of rank {} destroyed", opts_.rank));
  handle_events();
  while (run_pulls()) {  // drops the reads of failed calls, answering their senders
  }
  while (run_swaps()) {  // drops the swaps of failed calls
  }
  handle_events();
  // Pull tokens hold nothing of UCX's: descriptors no peer answered are simply forgotten.
  for (auto& t : tokens_) {
    if (t->in_flight && t->pull_id != 0) recycle_token(t.get());
  }
  pulls_out_.clear();
  for (ucp_ep_h& ep : eps_) {
    if (ep == nullptr) continue;
    ucp_request_param_t p{};
    p.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
    p.flags = 0;
    ucs_status_ptr_t req = ucp_ep_close_nbx(ep, &p);
    if (req != nullptr && UCS_PTR_IS_PTR(req)) closing_.push_back(req);
    ep = nullptr;
  }
  const auto until = clock::now() + close_grace;
  while (!closing_.empty() && clock::now() < until) {
    ucp_worker_progress(worker_);
    std::erase_if(closing_, [](ucs_status_ptr_t r) {
      if (ucp_request_check_status(r) == UCS_INPROGRESS) return false;
      ucp_request_free(r);
      return true;
    });
  }
  for (ucs_status_ptr_t r : closing_) ucp_request_cancel(worker_, r);
  for (int i = 0; i < 64 && ucp_worker_progress(worker_) != 0; ++i) {
  }
  for (ucs_status_ptr_t r : closing_) {
    if (ucp_request_check_status(r) != UCS_INPROGRESS) {
      ucp_request_free(r);
    } else {
      leak_worker_ = true;  // see the destructor
    }
  }
  closing_.clear();
  // Held UCX data goes back before the worker is destroyed.
  for (auto& m : incoming_) release(m);
  incoming_.clear();
  for (auto& [id, msgs] : orphans_) {
    for (auto& m : msgs) release(m);
  }
  orphans_.clear();
  events_.clear();
}

void ucx_fabric_impl::handle_events() {
  // Handlers may produce more events and messages (immediate completions): loop until quiet.
  // (The taken vectors are members, so that their capacity is kept; this never nests.)
  while (!incoming_.empty() || !events_.empty()) {
    dispatching_.swap(incoming_);
    for (auto& m : dispatching_) dispatch(std::move(m));
    dispatching_.clear();
    handling_.swap(events_);
    for (const event& e : handling_) {
      if (e.token == nullptr) {
        fail_peer(e.peer, make_error(errc::unavailable, "peer rank {} failed: {}", e.peer,
                                     ucs_status_string(e.st)));
        continue;
      }
      send_token* t = e.token;
      if (!t->in_flight || t->generation != e.generation) continue;
      // Out of the in-flight set at once (nothing below abandons it), back to the pool after.
      t->in_flight = false;
      handle_completion(t, e.st);
      recycle_token(t);
    }
    handling_.clear();
  }
}

void ucx_fabric_impl::handle_completion(send_token* t, ucs_status_t st) {
  if (t->abandoned) return;
  const bool failed = st != UCS_OK;
  switch (t->what) {
    case send_token::kind::slot_send:
    case send_token::kind::slot_recv: {
      coll_slot& s = *t->slot;
      (t->what == send_token::kind::slot_send ? s.sends_in_flight : s.recvs_in_flight)--;
      if (failed && !s.decided) {
        fail_slot(*t->g, s,
                  make_error(errc::unavailable, "{} #{}: data to or from a peer failed: {}",
                             op_kind_name(s.op ? s.op->args.kind : op_kind::barrier), s.seq,
                             ucs_status_string(st)));
      } else {
        advance(*t->g, s);
      }
      break;
    }
    case send_token::kind::op_send:
    case send_token::kind::op_recv: {
      op_state& op = *t->op;
      --op.ucx_in_flight;
      if (failed && !op.decided) {
        op.decided = true;
        op.outcome =
            make_error(errc::unavailable, "{} rank {} <-> peer {}: {}",
                       op.is_send ? "send" : "recv", t->g->me, op.peer, ucs_status_string(st));
      }
      if (t->what == send_token::kind::op_recv && !op.decided) {
        op.decided = true;
        op.outcome = ok_status();
      }
      if (t->what == send_token::kind::op_recv) {  // the sender waits for the outcome
        wire_header h;
        h.type = msg_type::p2p_ack;
        h.group_id = t->g->id;
        h.src = t->g->me;
        h.seq = op.send_id;
        send_notice(t->g->members[static_cast<std::size_t>(op.peer)], h, op.outcome);
      }
      advance_p2p(*t->g, op);
      break;
    }
    case send_token::kind::notice:
      break;
  }
}

void ucx_fabric_impl::send_msg(int global_peer, send_token* token, std::size_t header_bytes,
                               const void* data, std::size_t bytes) {
  ucp_ep_h ep = eps_[static_cast<std::size_t>(global_peer)];
  if (ep == nullptr) {
    complete(token, UCS_ERR_NOT_CONNECTED);
    return;
  }
  if (data == nullptr) {
    data = token->header.data() + header_bytes;
    bytes = token->header.size() - header_bytes;
  }
  ucp_request_param_t p{};
  p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
  p.cb.send = &ucx_fabric_impl::on_send_done;
  p.user_data = token;
  ucs_status_ptr_t req =
      ucp_am_send_nbx(ep, am_id, token->header.data(), header_bytes, data, bytes, &p);
  if (UCS_PTR_IS_PTR(req)) token->request = req;
  if (req == nullptr) {
    complete(token, UCS_OK);
  } else if (UCS_PTR_IS_ERR(req)) {
    complete(token, UCS_PTR_STATUS(req));
  }
}

}  // namespace helix::transport::ucx
