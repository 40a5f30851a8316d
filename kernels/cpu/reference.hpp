// Plain CPU reference kernels: single-threaded, obvious loops, f32 (double where it is the
// obvious choice) arithmetic. The oracle that the optimised CPU and CUDA kernels are tested
// against. Params are validated by the dispatchers in kernels/<op>.cpp before these run.
#pragma once

#include "kernels/attention.hpp"
#include "kernels/embedding.hpp"
#include "kernels/gemm.hpp"
#include "kernels/merge.hpp"
#include "kernels/rmsnorm.hpp"
#include "kernels/rope.hpp"
#include "kernels/router.hpp"
#include "kernels/sampling.hpp"
#include "kernels/swiglu.hpp"

namespace helix::kernels::reference {

[[nodiscard]] status attention_partial(const attention_partial_params& p);
[[nodiscard]] status lse_merge(const lse_merge_params& p);
[[nodiscard]] status gemm(const gemm_params& p);
[[nodiscard]] status rmsnorm(const rmsnorm_params& p);
[[nodiscard]] status rope(const rope_params& p);
[[nodiscard]] status swiglu(const swiglu_params& p);
[[nodiscard]] status route_experts(const router_params& p);
[[nodiscard]] status embedding(const embedding_params& p);
[[nodiscard]] status sample(const sample_params& p);

}  // namespace helix::kernels::reference
