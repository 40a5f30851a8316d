// UCX backend, internal: the fabric of one process (one rank), its progress thread and the
// protocol that runs every collective and point-to-point call over UCP active messages.
//
// Only transport/ucx/*.cpp include this. Threads: callers (communicators, connect, abort) only
// queue commands and calls (posted_) and wait for their operation's `done`; everything that touches
// UCX or the protocol state (groups, slots, held messages) runs on the progress thread. UCX
// callbacks only queue events, handled by the same thread after ucp_worker_progress() returns.
//
// Protocol (one AM id; a fixed wire_header, then payload):
// - Collective call #seq of a group: phase 0 sends one message from every rank to every other
//   (the rank's arguments in the header, its slice of data, or its local argument error as
//   text). Each rank validates all ranks' arguments with validate_collective(), so every rank
//   reaches the same verdict. all_reduce adds phase 1: rank j sums chunk j in rank order
//   (reduce-scatter in phase 0), then sends the sum to every rank, so all get identical bytes.
// - A rank whose call times out fails it and sends coll_fail to every peer, which fail the same
//   call (a late rank finds it failed on arrival).
// - Point to point: p2p carries the data; the receiver answers p2p_ack with the outcome (a size
//   mismatch fails both sides); a send that times out sends p2p_cancel so that an unmatched
//   message is dropped.
// - abort tells every peer the fabric aborted, with the status.
// - One copy on one machine (ucx_one_copy.cpp): a payload of at least one_copy_min_bytes to a peer
//   that can read this process's memory travels as a pull descriptor (flag in the header,
//   payload {address, bytes, pull id, sender}) instead of through UCX, whose shared-memory
//   transports copy twice. The receiver's progress thread copies it straight into place with
//   process_vm_readv, a few MiB per round of its loop, then answers `pulled` with the id; the
//   sender's call holds its buffer (a pull token counts as a transfer in flight) until then. Every
//   descriptor is answered exactly once, read or dropped, so a live receiver always lets go of its
//   sender. A receiver announces at connect (pull_ready) that its probe read of the sender worked.
// - In-place all_to_all (ucx_shared_memory.cpp): phase 0 carries only the arguments (flag
//   in_place) and, where the rank's buffer is a fabric buffer (a memfd this process shares) and
//   one copy works both ways with the peer, a swap descriptor of the slice that peer needs. After
//   validation, phase 1: a pair where both sent descriptors maps each other's buffer (through
//   /proc/PID/fd) and swaps its two slices in place, each rank one half (the lower rank the first),
//   a few MiB per round of the loop, then sends a header-only phase-1 message; every other pair
//   copies its outgoing slice to scratch and sends it as phase-1 data into the slice it came
//   from. A rank finishes when its halves are done and every peer's phase-1 message arrived, so no
//   peer still writes into its buffer. A fabric buffer freed is announced (region_freed) so that
//   peers unmap it. After a failed call a peer may still finish the chunk it was swapping (its
//   region mapping, not other memory): the buffer's contents are unspecified, as after any failure.
// Messages that arrive before their group or call exists are held (their UCX descriptors kept,
// rendezvous data not yet fetched) and consumed when it appears.
//
// Nothing is allocated per call once a communicator is warm (the decode path's calls; connect,
// group creation, a communicator's first calls and failures may allocate): every structure below
// is pooled or keeps its capacity. A communicator's op_states and requests come from its
// call_pool (ucx_communicator.cpp); posts reach the progress thread through a vector swapped under
// the lock (posted_), not as std::function commands; a group's coll_slots are recycled through a
// free list (their vectors cleared, capacity kept) and the open ones are a short vector searched
// by seq; send_tokens come from the fabric's token pool and keep their header buffer (a flag and
// a generation in the token replace a map of the tokens in flight); deadlines are a heap in a
// vector that a call leaves when it finishes; eager payloads that UCX does not let us keep are
// copied into pooled buffers; queues are vectors. How many of these are in use at once depends on
// timing (peers running a call ahead, completions still to come), so the fabric's pools and queues
// are sized once from the world size (size_pools) and a group's slots when it is made
// (group::prepare); past that they grow when needed and keep what they grew to. Not covered:
// all_to_all_v (each received message's counts are a fresh vector).
#pragma once

#include <ucp/api/ucp.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "transport/collective.hpp"
#include "transport/ucx_fabric.hpp"

namespace helix::transport::ucx {

using clock = std::chrono::steady_clock;

enum class msg_type : std::uint8_t {
  coll = 1,
  coll_fail,
  p2p,
  p2p_ack,
  p2p_cancel,
  abort,
  pull_ready,    // src: the sender's global rank, which can read this process's memory
  pulled,        // seq: the pull id of a descriptor that was read or dropped
  region_freed,  // src: the global rank whose fabric buffer `seq` (a region serial) is gone
};

inline constexpr std::uint32_t wire_magic = 0x48585532;  // "HXU2"

struct wire_header {
  std::uint32_t magic = wire_magic;
  msg_type type = msg_type::coll;
  op_kind kind = op_kind::barrier;
  wire_type send_type = wire_type::bytes;
  wire_type recv_type = wire_type::bytes;
  std::uint8_t phase = 0;
  std::uint8_t error_code = 0;  // errc of a local error, failure or ack; payload is its text
  std::uint16_t n_counts = 0;   // all_to_all_v: n send counts, then n recv counts, follow
  std::int32_t src = 0;         // sender's rank in the group
  std::int32_t root_or_tag = 0;
  std::uint32_t flags = 0;  // wire_flag_*
  std::uint64_t group_id = 0;
  std::uint64_t seq = 0;  // collective number, or p2p send id
  std::uint64_t send_count = 0;
  std::uint64_t recv_count = 0;
};
static_assert(sizeof(wire_header) == 56);

// The payload is a pull_desc: the data stays in the sender's memory for the receiver to read.
inline constexpr std::uint32_t wire_flag_pull = 1;
// A phase-0 message of an in-place all_to_all; with wire_flag_swap its payload is a swap_desc.
inline constexpr std::uint32_t wire_flag_in_place = 2;
inline constexpr std::uint32_t wire_flag_swap = 4;

// The slice a peer needs, inside the sender's fabric buffer (region): the peer maps the region
// through /proc/<sender pid>/fd/<fd> (checking its name) and swaps in place.
struct swap_desc {
  std::uint64_t region = 0;  // the region's serial in the sender's process
  std::uint64_t region_bytes = 0;
  std::uint64_t offset = 0;  // of the slice, from the region's start
  std::uint64_t bytes = 0;
  std::int32_t fd = -1;  // the region's memfd in the sender's process
  std::int32_t reserved = 0;
};
static_assert(sizeof(swap_desc) == 40);

struct pull_desc {
  std::uint64_t address = 0;  // in the sender's address space
  std::uint64_t bytes = 0;
  std::uint64_t pull_id = 0;  // echoed by `pulled`
  std::int64_t sender = 0;    // the sender's global rank
};
static_assert(sizeof(pull_desc) == 32);

// A received message: header, the sender's counts, and where its payload is.
struct held_msg {
  wire_header hdr;
  std::vector<std::uint64_t> counts;
  void* data = nullptr;    // UCX's persistent eager data or rendezvous descriptor
  std::size_t length = 0;  // payload bytes (for a pull descriptor, the bytes it describes)
  bool rndv = false;
  std::optional<pull_desc> pull;  // unanswered pull descriptor: release() answers it
  bool ucx_owned = false;         // data must go back through ucp_am_data_release / recv_data
  std::vector<std::byte> copied;  // payload copied out of a non-persistent eager message (a
                                  // buffer of the fabric's copy pool: release() gives it back)
  [[nodiscard]] const std::byte* eager_bytes() const {
    return copied.empty() ? static_cast<const std::byte*>(data) : copied.data();
  }
};

struct group;

// One call of a communicator, shared by its caller and the progress thread.
struct op_state {
  // Set by the caller before posting; read-only afterwards.
  bool is_coll = true;
  coll_post args;
  bool is_send = false;
  int peer = 0;
  int tag = 0;
  send_buf sbuf;
  recv_buf rbuf;
  std::uint64_t seq = 0;
  std::optional<clock::time_point> deadline;
  std::shared_ptr<group> g;
  // Completion: result is written before done is set (under the fabric's done mutex).
  std::atomic<bool> done{false};
  status result;
  // Progress thread only: its place in the deadline heap while it is there.
  std::size_t deadline_idx = std::numeric_limits<std::size_t>::max();
  // Progress thread only (point to point).
  std::uint64_t send_id = 0;
  int ucx_in_flight = 0;
  bool decided = false;
  status outcome;
  bool matched = false;
};

// One collective call of one group as the progress thread tracks it. Recycled through the group's
// free list: open() resets it for another call and keeps the capacity of its vectors.
struct coll_slot {
  /// Sized for a group of `group_size` (open() then allocates nothing).
  explicit coll_slot(std::size_t group_size);
  void open(std::uint64_t call, std::size_t group_size);

  std::uint64_t seq = 0;
  std::shared_ptr<op_state> op;  // once posted here
  std::vector<coll_post> posts;  // every rank's arguments, by group rank (phase 0 headers)
  std::vector<std::vector<std::size_t>> counts;  // backing of remote all_to_all_v counts
  std::vector<std::uint8_t> got[2];              // per rank: its phase-p message consumed
  int got_count[2] = {0, 0};
  std::vector<held_msg> held;        // arrived before they could be consumed
  std::vector<held_msg> held_taken;  // `held` while it is being gone through (reconsider_held)
  std::vector<std::byte> scratch;    // all_reduce: incoming chunks, then the sum; in-place
                                     // all_to_all: outgoing slices of pairs that do not swap
                                     // (from the group's scratch_pool while the call is open)
  std::vector<std::optional<swap_desc>> swap_from;  // in-place all_to_all, by group rank
  std::vector<std::uint8_t> swap_to;                // whether this rank sent that rank one
  int phase = 0;
  int recvs_in_flight = 0;
  int sends_in_flight = 0;
  bool decided = false;  // result known; finishes once nothing is in flight
  status result;
};

class ucx_fabric_impl;

// What a UCX completion belongs to. Owned by the fabric's token pool; in flight (taken by the
// progress thread) from post to completion, then back in the pool.
struct send_token {
  enum class kind : std::uint8_t { slot_send, slot_recv, op_send, op_recv, notice };
  kind what = kind::notice;
  group* g = nullptr;
  coll_slot* slot = nullptr;  // slots outlive their in-flight sends and receives
  std::shared_ptr<op_state> op;
  std::vector<std::byte> header;  // AM header, then any text payload: kept until the send
                                  // completes (its capacity stays with the pooled token)
  ucx_fabric_impl* fabric = nullptr;
  int peer = -1;              // global rank at the other end
  bool abandoned = false;     // already counted out: the completion, when it comes, is ignored
  void* request = nullptr;    // UCX's request while it is in flight (for cancelling)
  std::uint64_t pull_id = 0;  // a pull token: no UCX request, completed by the peer's `pulled`
  std::optional<std::chrono::steady_clock::time_point> stuck_since;  // its call is decided
  bool in_flight = false;        // taken from the pool and not yet completed (or abandoned pull)
  std::uint32_t generation = 0;  // bumped whenever it goes back to the pool
};

// A UCX callback's outcome, handled after ucp_worker_progress() returns.
struct event {
  send_token* token = nullptr;   // null for an endpoint error
  std::uint32_t generation = 0;  // the token's when queued: a token reused since is not this one
  ucs_status_t st = UCS_OK;
  int peer = -1;  // endpoint errors: the peer's global rank
};

// A descriptor this rank is reading, a chunk per round of the progress loop. Its call counts it
// as a receive in flight (slot recvs_in_flight or op ucx_in_flight).
struct pull_job {
  group* g = nullptr;
  coll_slot* slot = nullptr;     // a collective's message, or
  std::shared_ptr<op_state> op;  // a point-to-point receive
  pull_desc desc;
  std::byte* dst = nullptr;
  std::size_t done = 0;
};

// This rank's half of a pair's swap (in-place all_to_all), a chunk per round of the loop. Its
// call counts it as a receive in flight.
struct swap_job {
  group* g = nullptr;
  coll_slot* slot = nullptr;
  int peer = 0;  // group rank of the other side
  std::byte* mine = nullptr;
  std::byte* theirs = nullptr;  // in this process's mapping of the peer's region
  std::size_t bytes = 0;
  std::size_t done = 0;
};

struct group {
  /// Makes the slots of the calls a group has open at once in steady state (a call or two of
  /// this rank's, peers' next ones, calls whose last sends are still completing) and sizes its
  /// queues; more are made only when needed.
  void prepare(std::size_t num_slots = 8);
  /// The point-to-point queue of (peer, tag) in `queues`, made (with room for a few) on first use.
  template <class Queue>
  static Queue& queue_of(std::map<std::pair<int, int>, Queue>& queues, int peer, int tag) {
    auto [it, made] = queues.try_emplace({peer, tag});
    if (made) it->second.reserve(4);
    return it->second;
  }

  std::uint64_t id = 0;
  std::vector<int> members;  // global ranks by group rank
  int me = 0;                // this process's group rank
  // Progress thread only:
  std::vector<coll_slot*> slots;  // the open ones, by ascending seq (a few: searched linearly)
  std::vector<coll_slot*> free_slots;
  std::vector<std::unique_ptr<coll_slot>> slot_store;  // owns every slot, open or free
  std::uint64_t posted_end = 0;                        // collectives posted here so far
  // Queues in post (arrival) order, by (peer, tag): an entry per pair, made once.
  std::map<std::pair<int, int>, std::vector<std::shared_ptr<op_state>>> posted_recvs;
  std::map<std::pair<int, int>, std::vector<held_msg>> unexpected;  // by (src, tag)
  std::vector<std::shared_ptr<op_state>> sends;  // in flight (send_id unique), in post order
  std::uint64_t next_send_id = 0;
  // Scratch buffers of closed slots (as many as calls needed at once; take_scratch).
  std::vector<std::vector<std::byte>> scratch_pool;
};

// The deadlines of posted calls, earliest first: a binary heap in a vector (its capacity kept).
// A call leaves it when it expires or finishes (op_state::deadline_idx), so it holds only calls
// in flight. Progress thread only.
class deadline_heap {
 public:
  void reserve(std::size_t calls) { heap_.reserve(calls); }
  [[nodiscard]] bool empty() const { return heap_.empty(); }
  [[nodiscard]] clock::time_point earliest() const { return heap_.front().at; }
  /// op->deadline must be set.
  void push(std::shared_ptr<op_state> op);
  /// Takes the earliest call out.
  std::shared_ptr<op_state> pop();
  /// Takes `op` out if it is in; returns it (null when it was not), so that the caller decides
  /// when the reference goes.
  std::shared_ptr<op_state> remove(op_state& op);

 private:
  struct entry {
    clock::time_point at;
    std::shared_ptr<op_state> op;
  };
  std::shared_ptr<op_state> remove_at(std::size_t i);
  void swap_entries(std::size_t a, std::size_t b);
  void sift_up(std::size_t i);
  void sift_down(std::size_t i);
  std::vector<entry> heap_;
};

class ucx_fabric_impl final : public ucx_fabric {
 public:
  static expected<std::unique_ptr<ucx_fabric_impl>> create(const ucx_fabric_options& opts);
  /// Use create(): the fabric is usable only once start() succeeded.
  explicit ucx_fabric_impl(const ucx_fabric_options& opts);
  ~ucx_fabric_impl() override;

  int world_size() const override { return opts_.world_size; }
  expected<std::unique_ptr<communicator>> make_communicator(int global_rank,
                                                            std::span<const int> group) override;
  expected<std::unique_ptr<communicator>> make_world(int global_rank) override;
  void abort(status reason) override;
  status abort_status() const override;
  std::vector<int> suspects() const override { return suspects_.ranked(); }
  std::span<const std::byte> address() const override { return address_; }
  status connect(std::span<const std::vector<std::byte>> addresses) override;
  std::string transports_to(int peer) const override;
  expected<fabric_buffer> allocate(std::size_t bytes) override;

  /// Queues an operation for the progress thread (the communicator's post path).
  void post(std::shared_ptr<op_state> op);
  /// Blocks until op is done (bounded: the progress thread enforces every deadline).
  status wait(op_state& op);
  /// The largest AM header this worker sends (bounds the group size of all_to_all_v).
  [[nodiscard]] std::size_t max_am_header() const { return max_am_header_; }
  [[nodiscard]] std::chrono::milliseconds default_timeout() const { return opts_.default_timeout; }

 private:
  status start();
  void run_command(std::function<void()> fn);  // queue, then wait until it ran
  void enqueue(std::function<void()> fn);
  void progress_loop();

  // UCX callbacks (queue events only).
  static ucs_status_t on_am(void* arg, const void* header, size_t header_length, void* data,
                            size_t length, const ucp_am_recv_param_t* param);
  static void on_send_done(void* request, ucs_status_t st, void* user_data);
  static void on_recv_done(void* request, ucs_status_t st, size_t length, void* user_data);
  static void on_ep_error(void* arg, ucp_ep_h ep, ucs_status_t st);

  // Progress thread.
  void handle_events();
  // A completion of `t` (already out of the in-flight set; recycled by the caller afterwards).
  void handle_completion(send_token* t, ucs_status_t st);
  void dispatch(held_msg m);
  void release(held_msg& m);
  // Sends token->header's first header_bytes as the AM header and `data` (or, when data is
  // null, the rest of token->header) as the payload; the token comes back as an event.
  void send_msg(int global_peer, send_token* token, std::size_t header_bytes, const void* data,
                std::size_t bytes);
  // Writes into `out` (replacing its contents, keeping its capacity) the header bytes (with
  // all_to_all_v counts), then `text` as payload bytes.
  static void write_header(std::vector<std::byte>& out, const wire_header& h,
                           std::span<const std::size_t> send_counts = {},
                           std::span<const std::size_t> recv_counts = {},
                           std::string_view text = {});
  void send_notice(int global_peer, wire_header h, const status& st);
  // A token from the pool for an operation with `peer`, in flight until its completion is
  // handled (then recycle_token()).
  send_token* new_token(send_token::kind what, group* g, coll_slot* slot,
                        std::shared_ptr<op_state> op, int peer);
  void recycle_token(send_token* t);
  // Queues t's completion with `st` (the UCX callbacks, immediate completions, `pulled`).
  void complete(send_token* t, ucs_status_t st) { events_.push_back({t, t->generation, st, -1}); }
  // A pooled buffer for a copied eager payload (release() gives it back).
  std::vector<std::byte> take_copy_buffer();
  void finish(op_state& op, status st);

  // The open slot of call `seq`, or null.
  static coll_slot* find_slot(group& g, std::uint64_t seq);
  // The slot of call `seq`, opened (from the free list) when it is not open yet.
  coll_slot& slot_for(group& g, std::uint64_t seq);
  // Back to the free list (`s` is not used afterwards), its scratch back to the group's pool.
  void close_slot(group& g, coll_slot& s);
  // Gives s.scratch at least `bytes` from the group's pool: the smallest buffer that fits, else
  // the largest one, grown (so that a warm group has as many buffers as it needs at once, each
  // as large as its largest use, and takes no more memory).
  static void take_scratch(group& g, coll_slot& s, std::size_t bytes);
  // Goes through the held messages of `s` once more: consumes those of phase 0 (all of them
  // unless phase0_only) and holds the rest again.
  void reconsider_held(group& g, coll_slot& s, bool phase0_only);
  // Sizes the pools and queues of the progress thread from the world size (start).
  void size_pools();
  void start_op(const std::shared_ptr<op_state>& op);
  void start_coll(const std::shared_ptr<op_state>& op);
  void on_coll(group& g, held_msg m);
  void consume(group& g, coll_slot& s, held_msg m);
  void receive(group& g, coll_slot& s, held_msg& m, void* dst);
  void advance(group& g, coll_slot& s);
  void fail_slot(group& g, coll_slot& s, status st);
  // fail_slot, after telling every other member (coll_fail) so that all fail the same call.
  void fail_slot_everywhere(group& g, coll_slot& s, const status& st);
  void start_phase1(group& g, coll_slot& s);
  // A phase-1 message to group rank j: `bytes` of data (all_reduce's sum, an in-place slice),
  // or none (an in-place pair swapped and this rank's half is done).
  void send_phase1_msg(group& g, coll_slot& s, std::size_t j, const void* data, std::size_t bytes,
                       std::uint32_t flags);
  void on_coll_fail(group& g, held_msg& m);

  void start_p2p(const std::shared_ptr<op_state>& op);
  void match(group& g, const std::shared_ptr<op_state>& recv, held_msg m);
  void advance_p2p(group& g, op_state& op);
  void on_p2p(group& g, held_msg m);
  void on_ack(group& g, held_msg& m);
  void on_cancel(group& g, held_msg& m);

  // One copy (ucx_one_copy.cpp).
  // Sends a payload of `token`'s call: as a pull descriptor when one copy applies, else as UCX
  // data (send_msg). The caller counted `token` in its call; a pull token is counted here.
  void send_payload(int global_peer, send_token* token, std::size_t header_bytes, const void* data,
                    std::size_t bytes);
  // Reads m's descriptor into dst for a slot or a point-to-point receive.
  void start_pull(group& g, coll_slot* slot, std::shared_ptr<op_state> op, held_msg& m, void* dst);
  // Copies up to a round's budget; true while jobs remain.
  bool run_pulls();
  void finish_pull(pull_job job, const status& st, bool tell_group);
  void send_pulled(int global_peer, std::uint64_t pull_id);
  void on_pulled(const held_msg& m);
  // On arrival (a UCX callback): m.pull from the AM payload; false when it is malformed.
  bool read_pull_desc(held_msg& m, const void* data) const;
  // At connect, for a peer on this machine: one copy from `peer` when this process can read its
  // memory (the word at probe_address must hold probe_value); else why not.
  status enable_one_copy(int peer, int pid, std::uint64_t probe_address, std::uint64_t probe_value);
  // Tells the peers this rank can read that they may send it pull descriptors; logs the paths.
  void announce_one_copy(const std::string& refused);

  // In-place all_to_all and fabric buffers (ucx_shared_memory.cpp).
  // The swap descriptor of this rank's bytes [data, data + bytes) when they lie in a fabric
  // buffer (any thread).
  std::optional<swap_desc> region_of(const void* data, std::size_t bytes) const;
  // This process's address of the peer's slice, mapping its region on first use.
  expected<std::byte*> map_peer_slice(int global_peer, const swap_desc& d);
  void on_region_freed(const held_msg& m);
  void announce_region_freed(std::uint64_t serial);  // progress thread
  // Fabric buffers freed while this fabric lives are announced to the peers (start); from the
  // destructor on they are only unmapped.
  void open_regions();
  void close_regions();
  // Phase 1 of an in-place all_to_all (see the protocol paragraph). Advances `s` itself, which may
  // be gone when it returns.
  void start_swap_phase(group& g, coll_slot& s);

  // Swaps up to a round's budget; true while jobs remain.
  bool run_swaps();
  void unmap_peer_regions();

  void check_deadlines();
  void fail_peer(int global_peer, const status& st);
  // Counts `t` out of its call (cancelling a receive; a pull token is destroyed at once) and
  // returns what to advance.
  void abandon(send_token* t, std::vector<std::pair<group*, std::uint64_t>>& slots,
               std::vector<std::pair<group*, std::shared_ptr<op_state>>>& ops);
  void advance_abandoned(std::vector<std::pair<group*, std::uint64_t>>& slots,
                         std::vector<std::pair<group*, std::shared_ptr<op_state>>>& ops,
                         const status& why);
  // Abandons the transfers of calls that were decided (failed) more than a grace period ago
  // and still wait on UCX: a failed peer can leave a live pair's rendezvous stuck.
  void abandon_stuck();
  void peer_exited(int global_peer);
  void fail_everything(const status& st);
  status member_failure(const group& g) const;

  const ucx_fabric_options opts_;
  ucp_context_h context_ = nullptr;
  ucp_worker_h worker_ = nullptr;
  std::vector<std::byte> address_;
  std::size_t max_am_header_ = 0;
  int event_fd_ = -1;
  int epoll_fd_ = -1;
  std::thread thread_;

  // Caller side.
  mutable std::mutex mu_;
  status abort_reason_;
  bool connected_ = false;
  std::map<std::vector<int>, std::vector<int>> instances_;  // members -> per-member creations
  std::vector<std::function<void()>> commands_;             // run before the posts queued with them
  std::vector<std::shared_ptr<op_state>> posted_;           // calls to start, in post order
  bool stop_ = false;
  std::mutex done_mu_;
  std::condition_variable done_cv_;

  // Progress thread only.
  std::vector<ucp_ep_h> eps_;        // by global rank (null for self or closed)
  std::vector<status> peer_failed_;  // by global rank
  suspect_book suspects_;            // peers that calls timed out waiting for, or saw fail
  struct peer_ref {
    ucx_fabric_impl* fabric;
    int rank;
  };
  std::vector<std::unique_ptr<peer_ref>> peer_refs_;  // error-callback arguments
  // The token pool: every token ever made, in flight (UCX or a peer's `pulled` still holds it;
  // until its completion is handled or the fabric goes) or free. UCX hands the raw pointer back
  // as user data.
  std::vector<std::unique_ptr<send_token>> tokens_;
  std::vector<send_token*> free_tokens_;
  // Header bytes a pooled token keeps room for (a header, all_to_all_v counts of the world, a
  // descriptor): sized once at start.
  std::size_t token_header_bytes_ = 0;
  std::map<std::uint64_t, std::shared_ptr<group>> groups_;
  std::map<std::uint64_t, std::vector<held_msg>> orphans_;  // messages of unknown groups
  deadline_heap deadlines_;
  std::vector<std::shared_ptr<op_state>> starting_;  // posted_, taken under the lock
  std::vector<held_msg> incoming_;
  std::vector<held_msg> dispatching_;  // incoming_, taken by handle_events
  std::vector<event> events_;
  std::vector<event> handling_;                    // events_, taken by handle_events
  std::vector<std::vector<std::byte>> copy_pool_;  // buffers for held_msg::copied
  std::vector<ucs_status_ptr_t> closing_;
  struct pid_watch {
    int rank;
    int pid;
    int fd;  // pidfd, readable once the process exited
  };
  std::vector<pid_watch> pidfds_;  // peers on this machine
  status aborted_pt_;
  // One copy. A word peers read to probe access; by global rank: the peer's pid when it is on
  // this machine (same boot, pid and network namespaces), whether this rank can read it, and
  // whether it announced that it can read this rank (pull_ready).
  const std::uint64_t probe_word_;
  std::vector<int> same_host_pid_;
  std::vector<std::uint8_t> can_pull_from_;
  std::vector<std::uint8_t> pull_ready_;
  std::vector<pull_job> pulls_;         // in arrival order
  std::vector<send_token*> pulls_out_;  // pull tokens awaiting `pulled` (found by pull_id)
  std::uint64_t next_pull_id_ = 1;
  bool leak_worker_ = false;  // an endpoint close never completed (a failed peer)
  // Fabric buffers of this process (ucx_shared_memory.cpp). Shared with their releasers, so that
  // a buffer freed after its fabric is still unmapped (announce is cleared when the fabric goes).
  struct region_registry {
    struct region {
      std::uint64_t serial = 0;
      int fd = -1;
      std::byte* base = nullptr;
      std::size_t bytes = 0;
    };
    std::mutex mu;
    std::vector<region> regions;
    std::uint64_t next_serial = 1;
    std::function<void(std::uint64_t)> announce;  // queues the region_freed notices
  };
  std::shared_ptr<region_registry> regions_ = std::make_shared<region_registry>();
  // Peers' fabric buffers mapped here (progress thread), by (global rank, serial).
  struct peer_region {
    std::byte* base = nullptr;
    std::size_t bytes = 0;
  };
  std::map<std::pair<int, std::uint64_t>, peer_region> peer_regions_;
  std::vector<swap_job> swaps_;  // in order
};

}  // namespace helix::transport::ucx
