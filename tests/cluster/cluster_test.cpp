// Workers as processes (label multiproc): engines whose workers are `helix worker` children give
// the same tokens as in-process workers; a worker that never joins, or dies while serving, is an
// error naming it, never a hang; no worker outlives its engine.
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <set>
#include <sstream>
#include <thread>

#include <gtest/gtest.h>
#include <caf/io/all.hpp>
#include <nlohmann/json.hpp>

#include "actors/engine.hpp"
#include "actors/worker_source.hpp"
#include "apps/run_cmd.hpp"
#include "cluster/cluster.hpp"
#include "cluster/handshake.hpp"
#include "cluster/messages.hpp"
#include "tests/support/cli.hpp"
#include "tests/support/cluster_fixtures.hpp"
#include "tests/support/model_fixtures.hpp"
#include "transport/netns.hpp"

namespace helix::cluster {
namespace {

using namespace std::chrono_literals;
using actors::engine;
using actors::engine_config;
using actors::finish_reason;
using actors::request_options;

using namespace fixtures;

// Greedy and seeded-sampling requests; every request's tokens, in submission order.
std::vector<std::vector<std::int32_t>> serve(engine& eng, std::int64_t vocab) {
  std::vector<actors::request_handle> handles;
  for (int i = 0; i < 4; ++i) {
    request_options r;
    r.prompt = test_support::random_tokens(5 + 7 * i, vocab, 100 + static_cast<std::uint64_t>(i));
    r.max_tokens = 10;
    if (i % 2 == 1) r.sampling = {0.9f, 40, 0.95f, 7 + static_cast<std::uint64_t>(i)};
    auto h = eng.submit(r);
    EXPECT_TRUE(h.has_value()) << h.error().to_string();
    if (h) handles.push_back(*h);
  }
  std::vector<std::vector<std::int32_t>> out;
  for (auto& h : handles) out.push_back(h.stream->wait_all());
  return out;
}

void expect_same_tokens_as_threads(const std::string& model, const std::string& layout,
                                   int workers) {
  auto threads = engine::create(config_for(model, layout, workers));
  ASSERT_TRUE(threads.has_value()) << threads.error().to_string();
  const auto expected = serve(**threads, (*threads)->vocab());
  threads->reset();
  std::vector<actors::worker_info> info;
  {
    auto procs = engine::create(config_for(model, layout, workers), processes());
    ASSERT_TRUE(procs.has_value()) << procs.error().to_string();
    info = (*procs)->workers();
    ASSERT_EQ(info.size(), static_cast<std::size_t>(workers));
    for (const auto& w : info) {
      EXPECT_NE(w.pid, static_cast<std::int64_t>(::getpid()));
      EXPECT_TRUE(alive(w.pid));
    }
    EXPECT_EQ(serve(**procs, (*procs)->vocab()), expected) << model << " " << layout;
  }
  for (const auto& w : info) EXPECT_FALSE(alive(w.pid)) << "worker pid " << w.pid << " outlived";
}

TEST(Processes, TinyLlamaHelixLayoutMatchesThreads) {
  expect_same_tokens_as_threads("tiny-llama", "helix:kvp=2,tpa=2", 4);
}

TEST(Processes, TinyDeepseekMoeLayoutMatchesThreads) {
  expect_same_tokens_as_threads("tiny-deepseek", "helix:kvp=4,tpa=1,tpf=2,ep=2", 4);
}

TEST(Processes, TensorParallelLayoutMatchesThreads) {
  expect_same_tokens_as_threads("tiny-llama", "tp:tp=2", 2);
}

// Every layout family on both tiny models: the remaining combinations.
TEST(Processes, MedhaLayoutMatchesThreads) {
  expect_same_tokens_as_threads("tiny-llama", "medha:kvp=2,tpa=2", 4);
}

TEST(Processes, TinyDeepseekTensorParallelMatchesThreads) {
  expect_same_tokens_as_threads("tiny-deepseek", "tp:tp=2", 2);
}

TEST(Processes, TinyDeepseekMedhaMatchesThreads) {
  expect_same_tokens_as_threads("tiny-deepseek", "medha:kvp=2,tpa=1", 2);
}

TEST(Processes, WorkerThatNeverJoinsIsATimeoutNamingIt) {
  // A "worker" that stays alive without ever joining.
  const std::string script = ::testing::TempDir() + "/helix-silent-worker.sh";
  {
    std::ofstream f(script);
    f << "#!/bin/sh\nexec sleep 3\n";
  }
  ASSERT_EQ(::chmod(script.c_str(), 0755), 0);
  spawned_workers_options o;
  o.worker_binary = script;
  o.join_timeout = 1500ms;
  const auto t0 = std::chrono::steady_clock::now();
  auto eng = engine::create(config_for("tiny-llama", "helix:kvp=2,tpa=1", 2), spawned_workers(o));
  ASSERT_FALSE(eng.has_value());
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 20s);
  const std::string msg = eng.error().to_string();
  EXPECT_NE(msg.find("0 of 2 workers ready"), std::string::npos) << msg;
  EXPECT_NE(msg.find("rank 0 (never joined)"), std::string::npos) << msg;
}

// A worker that ends before the engine started fails engine::create at once, naming its exit,
// not at the join timeout.
TEST(Processes, WorkerThatEndsBeforeJoiningFailsCreateAtOnce) {
  spawned_workers_options o;
  o.worker_binary = "/bin/true";  // exits at once instead of joining
  o.join_timeout = 30s;
  const auto t0 = std::chrono::steady_clock::now();
  auto eng = engine::create(config_for("tiny-llama", "helix:kvp=2,tpa=1", 2), spawned_workers(o));
  ASSERT_FALSE(eng.has_value());
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 10s);
  const std::string msg = eng.error().to_string();
  EXPECT_NE(msg.find("a worker ended before it was ready"), std::string::npos) << msg;
  EXPECT_NE(msg.find("exited with code 0"), std::string::npos) << msg;
}

// With recovery off (the default recovers: tests/cluster/recovery_test.cpp).
void expect_killed_worker_fails_the_engine() {
  engine_config c = config_for("tiny-llama", "helix:kvp=2,tpa=2", 4);
  c.recovery = "off";
  auto eng = engine::create(c, processes());
  ASSERT_TRUE(eng.has_value()) << eng.error().to_string();
  const auto info = (*eng)->workers();
  request_options r;
  r.prompt = test_support::random_tokens(20, (*eng)->vocab(), 5);
  r.max_tokens = 400;  // still running when the worker dies
  auto h = (*eng)->submit(r);
  ASSERT_TRUE(h.has_value());
  ASSERT_TRUE(h->stream->next_for(30s).has_value());  // decoding has started
  ASSERT_EQ(::kill(static_cast<pid_t>(info[2].pid), SIGKILL), 0);
  std::optional<actors::token_event> last;
  const auto until = std::chrono::steady_clock::now() + 30s;
  while (std::chrono::steady_clock::now() < until) {
    auto e = h->stream->next_for(1s);
    if (e && e->last) {
      last = e;
      break;
    }
    if (!e && h->stream->finished()) break;
  }
  ASSERT_TRUE(last.has_value()) << "the request never ended";
  EXPECT_EQ(last->reason, finish_reason::error);
  const auto s = (*eng)->stats();
  EXPECT_EQ(s.health, actors::engine_health::failed);
  // Whichever report came first names the dead one: the engine's own ("worker 2 lost") or a
  // survivor's ("worker 3: ... peer rank 2 (global 2) failed").
  const std::string why = s.failure.message();
  EXPECT_TRUE(why.find("worker 2") != std::string::npos ||
              why.find("peer rank 2 (global 2)") != std::string::npos)
      << s.failure.to_string();
  EXPECT_EQ((*eng)->submit(r).error().code(), errc::unavailable);
  eng->reset();  // shuts down without hanging
  for (const auto& w : info) EXPECT_FALSE(alive(w.pid)) << "worker pid " << w.pid << " outlived";
}

TEST(Processes, KilledWorkerFailsTheEngineNamingItAndNothingHangs) {
  expect_killed_worker_fails_the_engine();
}

// A stopped worker (SIGSTOP: its connection stays up, its actor never ends) is noticed by the
// heartbeats within a few seconds and fails the engine (recovery off) naming it.
TEST(Processes, StoppedWorkerIsLostByHeartbeat) {
  engine_config c = config_for("tiny-llama", "helix:kvp=2,tpa=1", 2);
  c.recovery = "off";
  auto eng = engine::create(c, processes());
  ASSERT_TRUE(eng.has_value()) << eng.error().to_string();
  const auto info = (*eng)->workers();
  request_options r;
  r.prompt = test_support::random_tokens(20, (*eng)->vocab(), 5);
  r.max_tokens = 400;
  auto h = (*eng)->submit(r);
  ASSERT_TRUE(h.has_value());
  ASSERT_TRUE(h->stream->next_for(30s).has_value());
  ASSERT_EQ(::kill(static_cast<pid_t>(info[1].pid), SIGSTOP), 0);
  const auto t0 = std::chrono::steady_clock::now();
  std::optional<actors::token_event> last;
  while (std::chrono::steady_clock::now() - t0 < 30s) {
    auto e = h->stream->next_for(1s);
    if (e && e->last) {
      last = e;
      break;
    }
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_TRUE(last.has_value()) << "the request never ended";
  EXPECT_EQ(last->reason, finish_reason::error);
  EXPECT_LT(s, 10.0);
  const auto st = (*eng)->stats();
  EXPECT_EQ(st.health, actors::engine_health::failed);
  EXPECT_NE(st.failure.message().find("worker 1 lost: no heartbeat"), std::string::npos)
      << st.failure.to_string();
  eng->reset();  // the stopped worker is killed by the source after its grace period
  for (const auto& w : info) EXPECT_FALSE(alive(w.pid)) << "worker pid " << w.pid << " outlived";
}

TEST(Processes, WorkerThatCannotReachItsEngineSaysSo) {
  const std::string cmd =
      std::string(HELIX_CLI) + " worker --join 127.0.0.1:1 --timeout-ms 500 2>&1";
  FILE* p = ::popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  char buf[512] = {};
  std::string out;
  while (std::fgets(buf, sizeof(buf), p) != nullptr) out += buf;
  const int rc = ::pclose(p);
  EXPECT_EQ(WEXITSTATUS(rc), 1) << out;
  EXPECT_NE(out.find("cannot reach the engine at 127.0.0.1:1"), std::string::npos) << out;
}

// --rejoin: an engine that cannot be reached is tried again every second until --timeout-ms,
// then the worker gives up with the same error: bounded, never a hang.
TEST(Processes, RejoiningWorkerRetriesUntilItsTimeoutThenSaysSo) {
  const auto t0 = std::chrono::steady_clock::now();
  int rc = -1;
  const std::string out = test_support::run_cli(
      HELIX_CLI,
      "--log-level info worker --join 127.0.0.1:1 --rejoin --timeout-ms 2500 --name retrying", rc);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(rc, 1) << out;
  EXPECT_NE(out.find("cannot reach the engine at 127.0.0.1:1"), std::string::npos) << out;
  std::size_t retries = 0;
  for (std::size_t at = out.find("trying again in 1 s"); at != std::string::npos;
       at = out.find("trying again in 1 s", at + 1)) {
    ++retries;
  }
  EXPECT_GE(retries, 2u) << out;
  EXPECT_GE(s, 2.0);
  EXPECT_LT(s, 15.0);
}

// `helix run`'s output digest is the same whether the workers are threads or processes.
TEST(Processes, AgentWorkloadDigestEqualsThreads) {
  apps::workload_options o;
  o.engine = config_for("tiny-llama", "auto", 4);
  o.engine.kv_capacity_tokens_per_worker = 4096;
  o.max_requests = 6;
  o.duration_s = 0.0;
  o.context = 64;
  o.max_tokens = 6;
  o.rate = 50.0;
  std::ostringstream progress;
  auto threads = apps::run_agent_workload(o, progress);
  ASSERT_TRUE(threads.has_value()) << threads.error().to_string();
  o.processes = 4;
  o.worker_binary = HELIX_CLI;
  auto procs = apps::run_agent_workload(o, progress);
  ASSERT_TRUE(procs.has_value()) << procs.error().to_string();
  EXPECT_EQ(procs->requests_completed, 6);
  EXPECT_EQ(threads->requests_completed, 6);
  EXPECT_EQ(procs->output_digest, threads->output_digest);
  EXPECT_EQ(procs->output_digest.size(), 64u);
  ASSERT_EQ(procs->worker_info.size(), 4u);
  for (const auto& w : procs->worker_info) EXPECT_NE(w.pid, static_cast<std::int64_t>(::getpid()));
  ASSERT_EQ(procs->worker_rss_bytes.size(), 4u);
  for (const std::int64_t rss : procs->worker_rss_bytes) EXPECT_GT(rss, 0);
}

// The HF checkpoints written outside the project (two of them block-scaled FP8), served by 2
// worker processes that each load the checkpoint themselves, reproduce their recorded greedy
// tokens.
TEST(Processes, HfFixturesServedByTwoProcessesReproduceTheirTokens) {
  for (const std::string name : {"llama-bf16", "deepseek-v3-f32", "llama-fp8", "deepseek-v3-fp8"}) {
    const std::string dir = std::string(HELIX_FIXTURES_DIR) + "/hf-tiny/" + name;
    std::ifstream f(dir + "/expected.json");
    ASSERT_TRUE(f.good()) << dir;
    const nlohmann::json expected = nlohmann::json::parse(f);
    engine_config c;
    c.model = "";
    c.checkpoint = dir;
    c.num_workers = 2;
    c.layout = "auto";
    c.kv_capacity_tokens_per_worker = 256;
    c.max_batch_tokens = 8;
    c.prefill_chunk_tokens = 8;
    auto eng = engine::create(c, processes());
    ASSERT_TRUE(eng.has_value()) << name << ": " << eng.error().to_string();
    request_options r;
    r.prompt = expected["prompt"].get<std::vector<std::int32_t>>();
    r.max_tokens = expected["steps"].get<std::int64_t>();
    auto h = (*eng)->submit(r);
    ASSERT_TRUE(h.has_value()) << h.error().to_string();
    EXPECT_EQ(h->stream->wait_all(), expected["greedy_tokens"].get<std::vector<std::int32_t>>())
        << name << " on " << (*eng)->stats().layout;
  }
}

std::string run_cli(const std::string& args, int& rc) {
  return test_support::run_cli(HELIX_CLI, args, rc);
}

// The issue's own checks: helix verify with worker processes on both model families.
TEST(Processes, VerifyWithProcessesGivesEqualTokens) {
  for (const std::string args :
       {"verify --processes 4 --model tiny-llama --layout helix:kvp=2,tpa=2 --batch 4 --steps 32 "
        "--json",
        "verify --processes 4 --model tiny-deepseek --layout helix:kvp=4,tpa=1,tpf=2,ep=2 "
        "--batch 4 --steps 32 --json"}) {
    int rc = -1;
    const std::string out = run_cli(args, rc);
    EXPECT_EQ(rc, 0) << out;
    const auto j = nlohmann::json::parse(out.substr(out.find('{')), nullptr, false);
    ASSERT_FALSE(j.is_discarded()) << out;
    EXPECT_TRUE(j["tokens_equal"].get<bool>()) << out;
    EXPECT_EQ(j["tokens_checked"].get<int>(), 128) << out;
  }
}

// A CAF actor system of this process that speaks the cluster's messages, for talking to an
// engine or a worker as the other side of a handshake.
struct cluster_system {
  caf::actor_system_config cfg;
  std::unique_ptr<caf::actor_system> sys;
  cluster_system() {
    cfg.add_message_types<caf::id_block::helix_actors>();
    cfg.add_message_types<caf::id_block::helix_cluster>();
    cfg.load<caf::io::middleman>();
    cfg.set("logger.verbosity", caf::atom("quiet"));
    sys = std::make_unique<caf::actor_system>(cfg);
  }
};

// Sends `request` as a join to the engine at `port`; the engine's verdict, or how the exchange
// failed.
std::string join_verdict(caf::actor_system& sys, std::uint16_t port, std::string request) {
  auto reg = sys.middleman().remote_actor("127.0.0.1", port);
  if (!reg) return "unreachable: " + sys.render(reg.error());
  std::string verdict = "no answer";
  caf::scoped_actor self{sys};
  self->request(*reg, std::chrono::seconds(5), join_msg{std::move(request)})
      .receive(
          [&](join_reply_msg& r) {
            proto_v1::JoinReply reply;
            if (!reply.ParseFromString(r.reply)) {
              verdict = "an unparseable reply";
            } else if (reply.accepted()) {
              verdict = "accepted";
            } else {
              verdict = fmt::format("refused by protocol {}: {}", reply.protocol_version(),
                                    reply.reason());
            }
          },
          [&](caf::error& e) { verdict = "error: " + sys.render(e); });
  return verdict;
}

// Workers started by hand join a listening engine. A join speaking another protocol, bytes that
// are no JoinRequest, and an oversize JoinRequest are each refused with a reply that says why,
// and the engine still takes the right workers and serves.
TEST(Processes, ListeningEngineTakesWorkersStartedByHandAndRefusesBadJoins) {
  listening_engine le(2);
  const std::uint16_t port = le.listening.get_future().get();
  ASSERT_NE(port, 0) << "the engine never listened";
  {
    cluster_system cs;
    proto_v1::JoinRequest stranger = make_join_request({1, "elsewhere", "stranger", 0, ""});
    stranger.set_protocol_version(99);
    const std::string wrong = join_verdict(*cs.sys, port, to_bytes(stranger));
    EXPECT_NE(wrong.find(fmt::format("refused by protocol {}: worker 'stranger' (pid 1 on "
                                     "elsewhere) speaks protocol 99 but the engine speaks "
                                     "protocol {}",
                                     protocol_version, protocol_version)),
              std::string::npos)
        << wrong;
    const std::string spare =
        join_verdict(*cs.sys, port,
                     to_bytes(make_join_request({1, "elsewhere", "spare", 0, "",
                                                 /*standby=*/true})));
    EXPECT_NE(spare.find("worker 'spare' (pid 1 on elsewhere) asks to stand by, but the engine "
                         "expects 0 standbys"),
              std::string::npos)
        << spare;
    const std::string garbage = join_verdict(*cs.sys, port, std::string(4096, '\xff'));
    EXPECT_NE(garbage.find("(4096 bytes) does not parse as helix.proto_v1.JoinRequest"),
              std::string::npos)
        << garbage;
    const std::string huge =
        join_verdict(*cs.sys, port, std::string(2 * max_join_request_bytes, 'x'));
    EXPECT_NE(huge.find(fmt::format("join_msg.request (JoinRequest) is {} bytes, over its limit",
                                    2 * max_join_request_bytes)),
              std::string::npos)
        << huge;
  }
  const pid_t a = start_worker(port, "by-hand-0");
  const pid_t b = start_worker(port, "by-hand-1");
  le.builder.join();
  if (le.eng) {
    const auto info = (*le.eng)->workers();
    ASSERT_EQ(info.size(), 2u);
    // The refused joins took no rank.
    EXPECT_EQ(std::set<std::string>({info[0].name, info[1].name}),
              std::set<std::string>({"by-hand-0", "by-hand-1"}));
    auto threads = engine::create(config_for("tiny-llama", "helix:kvp=2,tpa=1", 2));
    ASSERT_TRUE(threads.has_value());
    EXPECT_EQ(serve(**le.eng, (*le.eng)->vocab()), serve(**threads, (*threads)->vocab()));
  } else {
    ADD_FAILURE() << le.eng.error().to_string();
  }
  le.eng = internal_error("shut down");  // the engine stops its workers
  reap(a);
  reap(b);
}

// A worker told by its engine that the engine speaks another protocol exits 1 naming both.
TEST(Processes, WorkerRefusedByAnEngineOfAnotherProtocolExitsNamingBoth) {
  cluster_system cs;
  caf::actor engine_of_another_protocol = cs.sys->spawn([]() -> caf::behavior {
    return {[](join_msg& m) {
      proto_v1::JoinRequest req;
      const bool parsed = req.ParseFromString(m.request);
      proto_v1::JoinReply r;
      r.set_protocol_version(99);
      r.set_helix_version("99.0.0");
      r.set_accepted(false);
      r.set_reason(fmt::format("worker '{}' speaks protocol {} but the engine speaks protocol 99",
                               parsed ? req.name() : "?", req.protocol_version()));
      return join_reply_msg{to_bytes(r)};
    }};
  });
  auto port = cs.sys->middleman().publish(engine_of_another_protocol, 0, "127.0.0.1");
  ASSERT_TRUE(static_cast<bool>(port)) << cs.sys->render(port.error());
  int rc = -1;
  const std::string out = run_cli(
      fmt::format("worker --join 127.0.0.1:{} --name old-timer --timeout-ms 10000", *port), rc);
  caf::anon_send_exit(engine_of_another_protocol, caf::exit_reason::user_shutdown);
  EXPECT_EQ(rc, 1) << out;
  EXPECT_NE(out.find(fmt::format("join refused by the engine at 127.0.0.1:{}: engine protocol 99 "
                                 "vs worker {}: worker 'old-timer' speaks protocol {} but the "
                                 "engine speaks protocol 99",
                                 *port, protocol_version, protocol_version)),
            std::string::npos)
      << out;
}

std::int64_t vm_size_kib() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmSize:", 0) == 0) return std::stoll(line.substr(7));
  }
  return 0;
}

// Garbage on the port workers join, and a handshake header announcing a 4 GiB payload, are
// dropped without a large allocation; the engine still takes its real workers and serves.
TEST(Processes, GarbageOnTheJoinPortIsDroppedAndTheEngineStillServes) {
  listening_engine le(2);
  const std::uint16_t port = le.listening.get_future().get();
  ASSERT_NE(port, 0) << "the engine never listened";
  const std::int64_t vm0 = vm_size_kib();
  std::vector<int> socks;
  for (int attempt = 0; attempt < 250 && socks.size() < 2; ++attempt) {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
      ::close(fd);
      std::this_thread::sleep_for(20ms);
      continue;
    }
    // First connection: 4 KiB of 0xff. Second: a well-formed BASP handshake header (CAF 0.17:
    // operation, 3 padding/flag bytes, payload length, operation data = protocol version 3,
    // source and destination actor ids; network byte order) announcing a 4 GiB - 1 payload.
    std::vector<unsigned char> junk(4096, 0xff);
    if (!socks.empty()) {
      junk.assign(32, 0);
      junk[0] = 0x00;  // server_handshake
      junk[4] = junk[5] = junk[6] = junk[7] = 0xff;
      junk[15] = 3;
    }
    (void)!::write(fd, junk.data(), junk.size());
    socks.push_back(fd);
  }
  ASSERT_EQ(socks.size(), 2u) << "the engine never listened";
  std::this_thread::sleep_for(500ms);
  EXPECT_LT(vm_size_kib() - vm0, 1024 * 1024) << "a large allocation followed the garbage";
  const pid_t a = start_worker(port, "after-garbage-0");
  const pid_t b = start_worker(port, "after-garbage-1");
  le.builder.join();
  for (int fd : socks) ::close(fd);
  if (le.eng) {
    auto threads = engine::create(config_for("tiny-llama", "helix:kvp=2,tpa=1", 2));
    ASSERT_TRUE(threads.has_value());
    EXPECT_EQ(serve(**le.eng, (*le.eng)->vocab()), serve(**threads, (*threads)->vocab()));
  } else {
    ADD_FAILURE() << le.eng.error().to_string();
  }
  le.eng = internal_error("shut down");
  reap(a);
  reap(b);
}

// A worker killed right after the engine started (before any step) fails the engine (recovery
// off) naming it; a request submitted then is refused, not accepted and lost.
TEST(Processes, WorkerKilledBeforeAnyStepIsReportedBeforeRequestsArrive) {
  engine_config c = config_for("tiny-llama", "helix:kvp=2,tpa=2", 4);
  c.recovery = "off";
  auto eng = engine::create(c, processes());
  ASSERT_TRUE(eng.has_value()) << eng.error().to_string();
  const auto info = (*eng)->workers();
  ASSERT_EQ(::kill(static_cast<pid_t>(info[0].pid), SIGKILL), 0);
  const auto until = std::chrono::steady_clock::now() + 10s;
  while ((*eng)->stats().health == actors::engine_health::serving &&
         std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(20ms);
  }
  const auto st = (*eng)->stats();
  ASSERT_EQ(st.health, actors::engine_health::failed);
  EXPECT_NE(st.failure.message().find("worker 0 lost"), std::string::npos)
      << st.failure.to_string();
  request_options r;
  r.prompt = {1, 2, 3};
  r.max_tokens = 4;
  EXPECT_EQ((*eng)->submit(r).error().code(), errc::unavailable);
}

// Hosts on one machine: the engine in one network namespace, two workers in two others (UCX over
// tcp between them, CAF control over the veth links). The run's output digest equals the same
// workload on in-process workers.
TEST(Processes, EngineAndWorkersOnThreeHostsMatchThreads) {
  auto hosts = transport::netns_hosts::create(3);
  if (!hosts) GTEST_SKIP() << "network namespaces unavailable: " << hosts.error().to_string();
  const std::string engine_ip = hosts->host(0).address;
  const std::string port = "7411";
  const std::vector<std::string> common = {
      "--model", "tiny-llama", "--layout", "helix:kvp=2,tpa=1", "--requests",
      "4",       "--context",  "32",       "--max-tokens",      "6",
      "--rate",  "50",         "--json"};
  int pipefd[2];
  ASSERT_EQ(::pipe(pipefd), 0);
  std::vector<std::string> run_args = {"run", "--listen", engine_ip + ":" + port,
                                       "--expect-workers", "2"};
  run_args.insert(run_args.end(), common.begin(), common.end());
  const pid_t eng = spawn_in(hosts->host(0).netns, {}, run_args, pipefd[1]);
  ::close(pipefd[1]);
  std::this_thread::sleep_for(500ms);  // the engine listens before the workers dial
  const std::vector<std::string> ucx_env = {"UCX_TLS=tcp,self", "UCX_NET_DEVICES=helix0"};
  const pid_t w1 = spawn_in(hosts->host(1).netns, ucx_env,
                            {"worker", "--join", engine_ip + ":" + port, "--name", "host1"});
  const pid_t w2 = spawn_in(hosts->host(2).netns, ucx_env,
                            {"worker", "--join", engine_ip + ":" + port, "--name", "host2"});
  std::string out;
  char buf[4096];
  for (ssize_t k; (k = ::read(pipefd[0], buf, sizeof(buf))) > 0;) out.append(buf, k);
  ::close(pipefd[0]);
  int st = 0;
  ::waitpid(eng, &st, 0);
  ::waitpid(w1, nullptr, 0);
  ::waitpid(w2, nullptr, 0);
  ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << "engine exit " << st << "\n" << out;
  const auto j = nlohmann::json::parse(out, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << out;
  EXPECT_EQ(j["requests_completed"].get<int>(), 4);
  ASSERT_EQ(j["worker_processes"].size(), 2u);
  // The same workload with in-process workers, in this process.
  int rc = -1;
  std::string args = "run --workers 2";
  for (const auto& a : common) args += " " + a;
  const std::string local = run_cli(args, rc);
  const auto k = nlohmann::json::parse(local.substr(local.find('{')), nullptr, false);
  ASSERT_FALSE(k.is_discarded()) << local;
  EXPECT_EQ(j["output_digest"], k["output_digest"]);
}

}  // namespace
}  // namespace helix::cluster
