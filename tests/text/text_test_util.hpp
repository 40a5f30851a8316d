// Test helpers: a temporary checkpoint directory with tokenizer files written by the test.
#pragma once

#include <atomic>
#include <filesystem>
#include <fstream>
#include <ostream>
#include <string>
#include <string_view>

#include <unistd.h>

#include <fmt/format.h>

#include "core/status.hpp"

namespace helix {
/// Lets gtest messages print a status.
inline std::ostream& operator<<(std::ostream& os, const status& st) {
  return os << st.to_string();
}
}  // namespace helix

namespace helix::text::testing {

/// A fresh directory under the system temp folder, removed with its files on destruction.
class temp_dir {
 public:
  temp_dir() {
    static std::atomic<int> counter{0};
    path_ = std::filesystem::temp_directory_path() /
            fmt::format("helix_text_test_{}_{}", ::getpid(), counter++);
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~temp_dir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;

  [[nodiscard]] const std::filesystem::path& path() const { return path_; }

  /// Writes (or replaces) `name` with `content`.
  void write(std::string_view name, std::string_view content) const {
    std::ofstream out(path_ / name, std::ios::binary | std::ios::trunc);
    out.write(content.data(), static_cast<std::streamsize>(content.size()));
  }
  void remove(std::string_view name) const { std::filesystem::remove(path_ / name); }

 private:
  std::filesystem::path path_;
};

}  // namespace helix::text::testing
