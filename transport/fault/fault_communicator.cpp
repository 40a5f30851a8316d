#include "transport/fault/fault_communicator.hpp"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <thread>

#include "core/log.hpp"

namespace helix::transport::fault {

using clock = std::chrono::steady_clock;

fault_injector::fault_injector(fault_schedule schedule, fault_options options)
    : schedule_(std::move(schedule)), options_(options) {
  const status st = validate(schedule_);
  HELIX_CHECK(st.ok(), "{}", st.to_string());
}

fault_injector::rank_state& fault_injector::state_of(int rank) {
  HELIX_CHECK(rank >= 0, "global rank {} < 0", rank);
  const auto idx = static_cast<std::size_t>(rank);
  if (ranks_.size() <= idx) ranks_.resize(idx + 1);
  rank_state& st = ranks_[idx];
  if (st.calls.empty()) {
    st.calls.assign(num_call_kinds, 0);
    st.hits.assign(schedule_.faults.size(), 0);
  }
  return st;
}

void fault_injector::set_tag(int rank, call_tag tag) {
  std::lock_guard lk(mu_);
  state_of(rank).tag = tag;
}

fault_decision fault_injector::on_call(int rank, call_kind kind) {
  fault_decision d;
  std::vector<std::string> log_lines;
  {
    std::lock_guard lk(mu_);
    rank_state& st = state_of(rank);
    const std::uint64_t call_idx = ++st.calls[static_cast<std::size_t>(kind)];
    ++st.calls[static_cast<std::size_t>(call_kind::any)];
    for (std::size_t i = 0; i < schedule_.faults.size(); ++i) {
      const fault_spec& f = schedule_.faults[i];
      if ((f.rank && *f.rank != rank) || (f.kind != call_kind::any && f.kind != kind) ||
          (f.step && *f.step != st.tag.step) || (f.layer && *f.layer != st.tag.layer)) {
        continue;
      }
      // Every matching call counts, even one that an earlier fault already ends.
      if (++st.hits[i] != f.nth || d.action) continue;
      injected_.push_back({rank, kind, call_idx, f.action, i, st.tag});
      std::string what = fmt::format("injected fault {} ({}) at rank {}'s {} call {}", i,
                                     describe(f), rank, call_kind_name(kind), call_idx);
      log_lines.push_back(what);
      if (f.action == fault_action::delay) {
        d.delay += f.delay;
        continue;
      }
      d.action = f.action;
      d.error = status(f.action == fault_action::fail ? f.error : errc::deadline_exceeded,
                       std::move(what));
    }
  }
  for (const auto& line : log_lines) module_logger("transport")->info("{}", line);
  return d;
}

std::vector<injected_fault> fault_injector::injected() const {
  std::lock_guard lk(mu_);
  return injected_;
}

std::uint64_t fault_injector::calls(int rank, call_kind kind) const {
  std::lock_guard lk(mu_);
  const auto idx = static_cast<std::size_t>(rank);
  if (rank < 0 || idx >= ranks_.size() || ranks_[idx].calls.empty()) return 0;
  return ranks_[idx].calls[static_cast<std::size_t>(kind)];
}

void fault_injector::abort(status reason) {
  if (reason.ok()) reason = status(errc::aborted, "transport aborted");
  {
    std::lock_guard lk(mu_);
    if (!abort_reason_.ok()) return;  // the first reason wins
    abort_reason_ = std::move(reason);
  }
  aborted_cv_.notify_all();
}

status fault_injector::abort_status(const fabric* abort_source) const {
  {
    std::lock_guard lk(mu_);
    if (!abort_reason_.ok()) return abort_reason_;
  }
  return abort_source ? abort_source->abort_status() : ok_status();
}

status fault_injector::hang(clock::time_point deadline, const fabric* abort_source,
                            const status& what) const {
  for (;;) {
    // The wrapped fabric is asked without mu_ held: its locks and ours never nest.
    if (status st = abort_status(abort_source); !st.ok()) return st;
    const auto now = clock::now();
    if (now >= deadline) {
      return deadline_exceeded("{}: hung until the call's deadline", what.message());
    }
    const auto until = abort_source ? std::min(deadline, now + options_.abort_poll) : deadline;
    std::unique_lock lk(mu_);
    aborted_cv_.wait_until(lk, until, [&] { return !abort_reason_.ok(); });
  }
}

namespace {

// The request of a hung call: completes at its deadline or at an abort.
class hang_request final : public request_impl {
 public:
  hang_request(std::shared_ptr<fault_injector> injector, clock::time_point deadline,
               const fabric* abort_source, status what)
      : injector_(std::move(injector)),
        deadline_(deadline),
        abort_source_(abort_source),
        what_(std::move(what)) {}

  status wait() override {
    if (!result_) result_ = injector_->hang(deadline_, abort_source_, what_);
    return *result_;
  }
  bool test() override {
    if (!result_ && clock::now() < deadline_ && injector_->abort_status(abort_source_).ok())
      return false;
    (void)wait();  // returns at once now
    return true;
  }

 private:
  std::shared_ptr<fault_injector> injector_;
  const clock::time_point deadline_;
  const fabric* abort_source_;
  const status what_;
  std::optional<status> result_;
};

[[noreturn]] void crash_process(const status& what) {
  module_logger("transport")->warn("{}: killing process {}", what.message(), ::getpid());
  module_logger("transport")->flush();
  ::kill(::getpid(), SIGKILL);
  ::_exit(137);  // not reached: SIGKILL cannot be caught
}

}  // namespace

fault_communicator::fault_communicator(std::unique_ptr<communicator> inner,
                                       std::shared_ptr<fault_injector> injector,
                                       const fabric* abort_source)
    : inner_(std::move(inner)), injector_(std::move(injector)), abort_source_(abort_source) {
  HELIX_CHECK(inner_ != nullptr && injector_ != nullptr, "fault_communicator needs both");
}

std::optional<request> fault_communicator::inject(call_kind kind, const call_options& opts) {
  fault_decision d = injector_->on_call(global_rank(), kind);
  if (d.delay.count() > 0) std::this_thread::sleep_for(d.delay);
  if (!d.action) return std::nullopt;
  switch (*d.action) {
    case fault_action::fail:
      return request::done(std::move(d.error));
    case fault_action::hang: {
      const fault_options& o = injector_->options();
      const auto timeout = opts.timeout.count() > 0        ? opts.timeout
                           : o.default_timeout.count() > 0 ? o.default_timeout
                                                           : o.max_hang;
      return request(std::make_unique<hang_request>(injector_, clock::now() + timeout,
                                                    abort_source_, std::move(d.error)));
    }
    case fault_action::crash:
      crash_process(d.error);
    case fault_action::delay:
      break;  // delays were slept above; on_call never returns one as the action
  }
  return std::nullopt;
}

request fault_communicator::iall_to_all(send_buf send, recv_buf recv, const call_options& opts) {
  if (auto r = inject(call_kind::all_to_all, opts)) return std::move(*r);
  return inner_->iall_to_all(send, recv, opts);
}

request fault_communicator::iall_to_all_v(const all_to_all_v_args& args, const call_options& opts) {
  if (auto r = inject(call_kind::all_to_all_v, opts)) return std::move(*r);
  return inner_->iall_to_all_v(args, opts);
}

request fault_communicator::iall_reduce(send_buf send, recv_buf recv, reduce_op op,
                                        const call_options& opts) {
  if (auto r = inject(call_kind::all_reduce, opts)) return std::move(*r);
  return inner_->iall_reduce(send, recv, op, opts);
}

request fault_communicator::iall_gather(send_buf send, recv_buf recv, const call_options& opts) {
  if (auto r = inject(call_kind::all_gather, opts)) return std::move(*r);
  return inner_->iall_gather(send, recv, opts);
}

request fault_communicator::ibroadcast(recv_buf buf, int root, const call_options& opts) {
  if (auto r = inject(call_kind::broadcast, opts)) return std::move(*r);
  return inner_->ibroadcast(buf, root, opts);
}

request fault_communicator::ibarrier(const call_options& opts) {
  if (auto r = inject(call_kind::barrier, opts)) return std::move(*r);
  return inner_->ibarrier(opts);
}

request fault_communicator::isend(send_buf buf, int peer, int tag, const call_options& opts) {
  if (auto r = inject(call_kind::send, opts)) return std::move(*r);
  return inner_->isend(buf, peer, tag, opts);
}

request fault_communicator::irecv(recv_buf buf, int peer, int tag, const call_options& opts) {
  if (auto r = inject(call_kind::recv, opts)) return std::move(*r);
  return inner_->irecv(buf, peer, tag, opts);
}

}  // namespace helix::transport::fault
