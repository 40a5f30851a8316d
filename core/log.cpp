#include "core/log.hpp"

#include <mutex>
#include <string>

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

namespace helix {
namespace {
std::mutex& registry_mutex() {
  static std::mutex m;
  return m;
}
spdlog::level::level_enum& default_level() {
  static spdlog::level::level_enum level = spdlog::level::warn;
  return level;
}
}  // namespace

std::shared_ptr<spdlog::logger> module_logger(std::string_view module) {
  std::lock_guard lock(registry_mutex());
  const std::string name(module);
  if (auto existing = spdlog::get(name)) return existing;
  static auto sink = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
  auto logger = std::make_shared<spdlog::logger>(name, sink);
  logger->set_level(default_level());
  logger->set_pattern("[%H:%M:%S.%e] [%n] [%^%l%$] %v");
  spdlog::register_logger(logger);
  return logger;
}

status set_log_level(std::string_view level) {
  const auto parsed = spdlog::level::from_str(std::string(level));
  if (parsed == spdlog::level::off && level != "off") {
    return invalid_argument("unknown log level '{}' (trace, debug, info, warn, error, off)", level);
  }
  std::lock_guard lock(registry_mutex());
  default_level() = parsed;
  spdlog::apply_all([&](const std::shared_ptr<spdlog::logger>& l) { l->set_level(parsed); });
  return ok_status();
}

}  // namespace helix
