// Logging setup: one spdlog logger per module ("core", "kernels", "model", "apps", ...).
//
// Loggers are created on first use and share one stderr sink, so output never mixes with the
// JSON a command prints on stdout. Nothing above `debug` on per-token paths.
#pragma once

#include <memory>
#include <string_view>

#include <spdlog/logger.h>

#include "core/status.hpp"

namespace helix {

/// The logger of `module`; thread-safe.
[[nodiscard]] std::shared_ptr<spdlog::logger> module_logger(std::string_view module);

/// Sets the level of every module logger ("trace", "debug", "info", "warn", "error", "off").
[[nodiscard]] status set_log_level(std::string_view level);

}  // namespace helix
