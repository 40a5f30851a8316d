// Optimised CPU kernels: vectorised (AVX2/FMA/F16C or AVX-512 chosen at run time, with a portable
// fallback) and multi-threaded over a thread_pool (null = calling thread). Same semantics as the
// reference kernels; work is split by fixed sizes, never by thread count, so results do not depend
// on the number of threads or on the batch. Params are validated by the dispatchers.
#pragma once

#include <cstddef>

#include "core/thread_pool.hpp"
#include "kernels/attention.hpp"
#include "kernels/cpu/isa.hpp"
#include "kernels/embedding.hpp"
#include "kernels/gemm.hpp"
#include "kernels/merge.hpp"
#include "kernels/rmsnorm.hpp"
#include "kernels/rope.hpp"
#include "kernels/router.hpp"
#include "kernels/sampling.hpp"
#include "kernels/swiglu.hpp"

namespace helix::kernels::cpu {

[[nodiscard]] std::size_t attention_workspace_bytes(const attention_partial_params& p);
[[nodiscard]] status attention_partial(const attention_partial_params& p, thread_pool* pool);
[[nodiscard]] status lse_merge(const lse_merge_params& p, thread_pool* pool);
[[nodiscard]] status gemm(const gemm_params& p, thread_pool* pool);
/// The gemms of `ps` in one parallel region (kernels::gemm_group); arguments already checked.
[[nodiscard]] status gemm_group(std::span<const gemm_params> ps, thread_pool* pool);
[[nodiscard]] status rmsnorm(const rmsnorm_params& p, thread_pool* pool);
[[nodiscard]] status rope(const rope_params& p, thread_pool* pool);
[[nodiscard]] status swiglu(const swiglu_params& p, thread_pool* pool);
[[nodiscard]] status route_experts(const router_params& p, thread_pool* pool);
[[nodiscard]] status embedding(const embedding_params& p, thread_pool* pool);
[[nodiscard]] status sample(const sample_params& p, thread_pool* pool);

// The same kernels on a forced instruction set (one that this CPU supports), so that tests can
// compare the AVX-512, AVX2 and scalar paths bit for bit on one machine.
[[nodiscard]] status attention_partial_with_isa(const attention_partial_params& p,
                                                thread_pool* pool, simd::isa isa,
                                                simd::isa_ext ext = simd::isa_ext::vbmi);
[[nodiscard]] status lse_merge_with_isa(const lse_merge_params& p, thread_pool* pool,
                                        simd::isa isa);
/// `ext`: the AVX-512 extensions gemm may use (fp8 weights convert through VBMI byte tables).
[[nodiscard]] status gemm_with_isa(const gemm_params& p, thread_pool* pool, simd::isa isa,
                                   simd::isa_ext ext = simd::isa_ext::vbmi);
[[nodiscard]] status rmsnorm_with_isa(const rmsnorm_params& p, thread_pool* pool, simd::isa isa);
[[nodiscard]] status rope_with_isa(const rope_params& p, thread_pool* pool, simd::isa isa);
[[nodiscard]] status swiglu_with_isa(const swiglu_params& p, thread_pool* pool, simd::isa isa);
[[nodiscard]] status embedding_with_isa(const embedding_params& p, thread_pool* pool,
                                        simd::isa isa);

}  // namespace helix::kernels::cpu
