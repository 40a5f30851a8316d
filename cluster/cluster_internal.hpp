// What the engine side (cluster.cpp: the worker sources) and the worker side
// (worker_process.cpp: `helix worker`) of cluster/ share: the module's logger, the heartbeat
// timing, the heartbeat actor and the actor-system setup. Internal to cluster/.
#pragma once

#include <unistd.h>

#include <atomic>
#include <caf/io/all.hpp>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "cluster/messages.hpp"
#include "core/log.hpp"

namespace helix::cluster::detail {

inline std::shared_ptr<spdlog::logger> logger() {
  static const auto l = module_logger("cluster");
  return l;
}

// A worker whose heartbeat actor does not answer within the deadline is lost (a stopped
// process, a partitioned host): its actor never ends, so only this notices.
// The largest control message a worker may send the engine (step replies are a few KiB).
inline constexpr std::uint32_t max_control_frame_bytes = 64u << 20;
inline constexpr std::chrono::milliseconds heartbeat_period{500};
inline constexpr std::chrono::milliseconds heartbeat_deadline{2000};
// A worker gives up on an engine whose control connection has been silent this long.
inline constexpr std::chrono::milliseconds engine_silence_limit{4000};
// How long a relayout waits for a standby's heartbeat to answer before dropping it.
inline constexpr std::chrono::milliseconds standby_answer_limit{1000};

// Answers (ping_atom, whether the process asks to leave: SIGTERM) and records when the engine
// last pinged.
inline caf::behavior heartbeat(caf::event_based_actor*,
                               std::shared_ptr<std::atomic<std::int64_t>> last,
                               std::shared_ptr<std::atomic<bool>> leaving) {
  return {[last, leaving](ping_atom) {
    last->store(std::chrono::steady_clock::now().time_since_epoch().count());
    return caf::make_message(ping_atom::value, leaving->load());
  }};
}

inline void configure_system(caf::actor_system_config& cfg) {
  cfg.add_message_types<caf::id_block::helix_cluster>();
  cfg.load<caf::io::middleman>();
}

inline std::string hostname() {
  char buf[256] = {};
  if (::gethostname(buf, sizeof(buf) - 1) != 0) return "localhost";
  return buf;
}

}  // namespace helix::cluster::detail
