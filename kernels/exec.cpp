#include "kernels/exec.hpp"

namespace helix::kernels {

std::string_view backend_name(backend b) noexcept {
  switch (b) {
    case backend::reference:
      return "reference";
    case backend::cpu:
      return "cpu";
    case backend::cuda:
      return "cuda";
  }
  return "unknown";
}

bool cuda_compiled() noexcept {
#if HELIX_HAVE_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace helix::kernels
