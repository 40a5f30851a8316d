#include "apps/chaos_processes.hpp"

#include <unistd.h>

#include <charconv>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <system_error>

#include <fmt/format.h>

namespace helix::apps {
namespace {

struct proc_stat {
  char state = '?';
  pid_t ppid = 0;
  std::uint64_t start_time = 0;
};

// /proc/<pid>/stat's fields 3 (state), 4 (ppid) and 22 (starttime); none when there is no such
// process (any more).
std::optional<proc_stat> read_proc_stat(pid_t pid) {
  std::ifstream in(fmt::format("/proc/{}/stat", pid));
  std::string line;
  if (!std::getline(in, line)) return std::nullopt;
  const auto close = line.rfind(')');  // the command name (field 2) may hold spaces and ')'
  if (close == std::string::npos || close + 2 > line.size()) return std::nullopt;
  std::istringstream rest(line.substr(close + 2));
  proc_stat s;
  rest >> s.state >> s.ppid;
  std::string skipped;
  for (int field = 5; field < 22; ++field) rest >> skipped;
  rest >> s.start_time;
  if (!rest) return std::nullopt;
  return s;
}

}  // namespace

bool still_running(const worker_process& p) {
  const auto s = read_proc_stat(p.pid);
  return s && s->state != 'Z' && s->state != 'X' && s->start_time == p.start_time;
}

char proc_state(pid_t pid) {
  const auto s = read_proc_stat(pid);
  return s ? s->state : '-';
}

std::vector<worker_process> worker_children() {
  std::vector<worker_process> out;
  const pid_t self = ::getpid();
  std::error_code ec;
  // Non-throwing iteration: processes come and go meanwhile.
  for (std::filesystem::directory_iterator it("/proc", ec), end; !ec && it != end;
       it.increment(ec)) {
    const std::filesystem::path& entry = it->path();
    const std::string name = entry.filename().string();
    pid_t pid = 0;
    const auto [last, err] = std::from_chars(name.data(), name.data() + name.size(), pid);
    if (err != std::errc() || last != name.data() + name.size() || pid <= 0) continue;
    const auto s = read_proc_stat(pid);
    if (!s || s->ppid != self) continue;
    std::ifstream cmd(entry / "cmdline", std::ios::binary);
    std::string argv0;
    std::string argv1;
    std::getline(cmd, argv0, '\0');
    std::getline(cmd, argv1, '\0');
    if (argv1 != "worker") continue;
    out.push_back({pid, s->start_time, -1});
  }
  return out;
}

void note_process(std::vector<worker_process>& procs, std::int64_t pid, std::int64_t rank) {
  if (pid <= 0) return;
  for (worker_process& p : procs) {
    if (p.pid == static_cast<pid_t>(pid)) {
      if (p.rank < 0) p.rank = rank;
      return;
    }
  }
  const auto s = read_proc_stat(static_cast<pid_t>(pid));
  procs.push_back({static_cast<pid_t>(pid), s ? s->start_time : 0, rank});
}

}  // namespace helix::apps
