#include "core/memory.hpp"

#include <sys/resource.h>

#include <fstream>
#include <limits>
#include <sstream>
#include <string_view>

#include <fmt/format.h>

namespace helix {
namespace {

constexpr std::uint64_t unlimited = std::numeric_limits<std::uint64_t>::max();

// The value of `key` (e.g. "MemAvailable:") in a /proc file of "key value kB" lines, in bytes.
std::uint64_t proc_kb_field(const char* path, std::string_view key) {
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key, 0) != 0) continue;
    std::istringstream fields(line.substr(key.size()));
    std::uint64_t kb = 0;
    if (fields >> kb) return kb * 1024;
  }
  return unlimited;
}

// A number from a one-line sysfs file; `unlimited` for "max", a missing file or garbage.
std::uint64_t file_number(const std::string& path) {
  std::ifstream in(path);
  std::string word;
  if (!(in >> word) || word == "max") return unlimited;
  std::uint64_t v = 0;
  for (const char c : word) {
    if (c < '0' || c > '9') return unlimited;
    if (v > (unlimited - 9) / 10) return unlimited;
    v = v * 10 + static_cast<std::uint64_t>(c - '0');
  }
  return v;
}

// This process's cgroup directory under /sys/fs/cgroup (v2: the "0::" line of /proc/self/cgroup;
// v1: the memory controller's line).
std::string cgroup_dir(bool& v2) {
  std::ifstream in("/proc/self/cgroup");
  std::string line;
  std::string v1_path;
  while (std::getline(in, line)) {
    if (line.rfind("0::", 0) == 0) {
      v2 = true;
      return "/sys/fs/cgroup" + line.substr(3);
    }
    const auto colon = line.find(':');
    const auto second = line.find(':', colon + 1);
    if (colon == std::string::npos || second == std::string::npos) continue;
    const std::string controllers = line.substr(colon + 1, second - colon - 1);
    if (controllers.find("memory") != std::string::npos) {
      v1_path = "/sys/fs/cgroup/memory" + line.substr(second + 1);
    }
  }
  v2 = false;
  return v1_path;
}

std::uint64_t headroom(std::uint64_t limit, std::uint64_t used) {
  if (limit == unlimited) return unlimited;
  if (used == unlimited) used = 0;
  return limit > used ? limit - used : 0;
}

void take(memory_headroom& best, std::uint64_t bytes, const char* source) {
  if (bytes < best.bytes) {
    best.bytes = bytes;
    best.limited_by = source;
  }
}

std::uint64_t rlimit_bytes(int resource) {
  rlimit r{};
  if (getrlimit(resource, &r) != 0 || r.rlim_cur == RLIM_INFINITY) return unlimited;
  return static_cast<std::uint64_t>(r.rlim_cur);
}

}  // namespace

memory_headroom available_memory() {
  memory_headroom best{unlimited, "no limit found"};
  take(best, proc_kb_field("/proc/meminfo", "MemAvailable:"), "MemAvailable");
  bool v2 = false;
  const std::string dir = cgroup_dir(v2);
  if (!dir.empty()) {
    if (v2) {
      take(best, headroom(file_number(dir + "/memory.max"), file_number(dir + "/memory.current")),
           "cgroup memory.max");
    } else {
      take(best,
           headroom(file_number(dir + "/memory.limit_in_bytes"),
                    file_number(dir + "/memory.usage_in_bytes")),
           "cgroup memory.limit_in_bytes");
    }
  }
  take(best, headroom(rlimit_bytes(RLIMIT_AS), proc_kb_field("/proc/self/status", "VmSize:")),
       "RLIMIT_AS");
  take(best, headroom(rlimit_bytes(RLIMIT_DATA), proc_kb_field("/proc/self/status", "VmData:")),
       "RLIMIT_DATA");
  return best;
}

std::string format_bytes(std::uint64_t bytes) {
  const auto b = static_cast<double>(bytes);
  if (bytes >= (1ULL << 40)) return fmt::format("{:.1f} TiB", b / static_cast<double>(1ULL << 40));
  if (bytes >= (1ULL << 30)) return fmt::format("{:.1f} GiB", b / static_cast<double>(1ULL << 30));
  if (bytes >= (1ULL << 20)) return fmt::format("{:.1f} MiB", b / static_cast<double>(1ULL << 20));
  return fmt::format("{} bytes", bytes);
}

}  // namespace helix
