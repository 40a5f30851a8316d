#include "transport/ucx/ucx_communicator.hpp"

#include <cstddef>
#include <new>

namespace helix::transport::ucx {

class ucx_request;

// Blocks of one size (an op_state with its shared_ptr control block: allocate_shared) and
// requests, handed out again once released. The first block asked for makes `initial_blocks`
// (an op_state may outlive its request a little, on the progress thread, so that how many are
// alive at once depends on timing); each grows further to the most calls the communicator had
// in flight at once, then stays.
class call_pool : public std::enable_shared_from_this<call_pool> {
 public:
  static constexpr std::size_t initial_blocks = 16;

  // Memory for one block of `bytes` (any size; only the first size asked for is pooled).
  void* take_block(std::size_t bytes) {
    {
      std::lock_guard lk(mu_);
      if (block_bytes_ == 0) {
        block_bytes_ = bytes;
        free_blocks_.reserve(2 * initial_blocks);
        for (std::size_t i = 0; i < initial_blocks; ++i) {
          free_blocks_.push_back(std::make_unique_for_overwrite<std::byte[]>(bytes));
        }
      }
      if (bytes == block_bytes_ && !free_blocks_.empty()) {
        void* p = free_blocks_.back().release();
        free_blocks_.pop_back();
        return p;
      }
    }
    return std::make_unique_for_overwrite<std::byte[]>(bytes).release();
  }
  void give_block(void* p, std::size_t bytes) noexcept {
    std::unique_ptr<std::byte[]> block(static_cast<std::byte*>(p));
    std::lock_guard lk(mu_);
    if (bytes == block_bytes_) free_blocks_.push_back(std::move(block));
  }

  // A request for `op` (pooled; it comes back through request_impl::recycle()).
  request_impl* take_request(ucx_fabric_impl* fabric, std::shared_ptr<op_state> op);
  void give_request(ucx_request* r) {
    std::lock_guard lk(mu_);
    free_requests_.push_back(r);
  }

 private:
  std::mutex mu_;
  std::size_t block_bytes_ = 0;
  std::vector<std::unique_ptr<std::byte[]>> free_blocks_;
  std::vector<std::unique_ptr<ucx_request>> requests_;  // every request made, armed or free
  std::vector<ucx_request*> free_requests_;
};

namespace {

// Hands out call_pool blocks to allocate_shared (the pool lives while any block is in use).
template <class T>
struct pool_allocator {
  using value_type = T;
  explicit pool_allocator(std::shared_ptr<call_pool> p) : pool(std::move(p)) {}
  template <class U>
  pool_allocator(const pool_allocator<U>& other) : pool(other.pool) {}  // rebinding
  T* allocate(std::size_t n) {
    static_assert(alignof(T) <= __STDCPP_DEFAULT_NEW_ALIGNMENT__);
    return static_cast<T*>(pool->take_block(n * sizeof(T)));
  }
  void deallocate(T* p, std::size_t n) noexcept { pool->give_block(p, n * sizeof(T)); }
  template <class U>
  bool operator==(const pool_allocator<U>& other) const {
    return pool == other.pool;
  }
  std::shared_ptr<call_pool> pool;
};

}  // namespace

// One call's request. Armed while its request holds it; recycle() gives it back to its pool
// (with nothing of the call left, so that the pool owns free requests without a cycle).
class ucx_request final : public request_impl {
 public:
  void arm(ucx_fabric_impl* fabric, std::shared_ptr<op_state> op, std::shared_ptr<call_pool> pool) {
    fabric_ = fabric;
    op_ = std::move(op);
    pool_ = std::move(pool);
  }
  status wait() override { return fabric_->wait(*op_); }
  bool test() override { return op_->done.load(std::memory_order_acquire); }
  // The pool may go with the last reference: nothing of this object is touched after give.
  void recycle() noexcept override {
    const std::shared_ptr<call_pool> pool = std::move(pool_);
    op_.reset();
    pool->give_request(this);
  }

 private:
  ucx_fabric_impl* fabric_ = nullptr;
  std::shared_ptr<op_state> op_;
  std::shared_ptr<call_pool> pool_;
};

request_impl* call_pool::take_request(ucx_fabric_impl* fabric, std::shared_ptr<op_state> op) {
  ucx_request* r = nullptr;
  {
    std::lock_guard lk(mu_);
    if (free_requests_.empty()) {
      requests_.push_back(std::make_unique<ucx_request>());
      r = requests_.back().get();
    } else {
      r = free_requests_.back();
      free_requests_.pop_back();
    }
  }
  r->arm(fabric, std::move(op), shared_from_this());
  return r;
}

ucx_communicator::ucx_communicator(ucx_fabric_impl* fabric, std::shared_ptr<group> g)
    : fabric_(fabric), group_(std::move(g)), pool_(std::make_shared<call_pool>()) {}

std::optional<clock::time_point> ucx_communicator::deadline(const call_options& opts) const {
  const auto timeout = opts.timeout.count() > 0 ? opts.timeout : fabric_->default_timeout();
  if (timeout.count() <= 0) return std::nullopt;
  return clock::now() + timeout;
}

request ucx_communicator::post_op(std::shared_ptr<op_state> op) {
  fabric_->post(op);
  return request(pool_->take_request(fabric_, std::move(op)));
}

request ucx_communicator::post_collective(coll_post post, const call_options& opts) {
  auto op = std::allocate_shared<op_state>(pool_allocator<op_state>(pool_));
  op->is_coll = true;
  op->args = std::move(post);
  op->seq = next_seq_++;  // taken even on error so ranks stay in step
  op->deadline = deadline(opts);
  op->g = group_;
  return post_op(std::move(op));
}

status ucx_communicator::backend_check(const coll_post& post) const {
  if (post.kind != op_kind::all_to_all_v) return ok_status();
  const std::size_t header =
      sizeof(wire_header) + 2 * post.v.send_counts.size() * sizeof(std::uint64_t);
  if (header <= fabric_->max_am_header()) return ok_status();
  return failed_precondition(
      "all_to_all_v over ucx: a group of {} needs a {}-byte message header, UCX allows {}", size(),
      header, fabric_->max_am_header());
}

request ucx_communicator::post_p2p(std::shared_ptr<op_state> op, const call_options& opts) {
  if (op->peer < 0 || op->peer >= size()) {
    return request::done(invalid_argument("{} rank {}: peer {} outside group of {}",
                                          op->is_send ? "send" : "recv", rank(), op->peer, size()));
  }
  op->is_coll = false;
  op->deadline = deadline(opts);
  op->g = group_;
  return post_op(std::move(op));
}

request ucx_communicator::isend(send_buf buf, int peer, int tag, const call_options& opts) {
  auto op = std::allocate_shared<op_state>(pool_allocator<op_state>(pool_));
  op->is_send = true;
  op->peer = peer;
  op->tag = tag;
  op->sbuf = buf;
  return post_p2p(std::move(op), opts);
}

request ucx_communicator::irecv(recv_buf buf, int peer, int tag, const call_options& opts) {
  auto op = std::allocate_shared<op_state>(pool_allocator<op_state>(pool_));
  op->peer = peer;
  op->tag = tag;
  op->rbuf = buf;
  return post_p2p(std::move(op), opts);
}

}  // namespace helix::transport::ucx
