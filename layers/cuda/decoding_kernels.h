// Launchers of the generation-path kernels (layers/cuda/decoding.cu), called by layers/cuda/decoding.cpp.
// Plain CUDA runtime types only (see layers/cuda/kernels.h).
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "layers/dtype.h"

namespace dg::cuda::kernels {

// x[i] = value (rounded once to x's type); x f32, bf16 or i32.
cudaError_t fill(void* x, DType x_type, double value, std::int64_t n, cudaStream_t stream);
// out[b·S + t] = max(start + (row_offset ? row_offset[b] : 0) + t, 0).
cudaError_t token_positions(const std::int32_t* row_offset, std::int64_t start, std::int64_t rows, std::int64_t seq,
                            std::int32_t* out, cudaStream_t stream);
// Per row b: out[b, 0..K) = the last K tokens of a[b, 0..T0) ++ b[b, 0..T1), a token being token_bytes bytes
// (a may be null when T0 = 0). A byte-exact copy.
cudaError_t concat_tokens(const void* a, std::int64_t t0, const void* b, std::int64_t t1, void* out, std::int64_t k,
                          std::int64_t rows, std::size_t token_bytes, cudaStream_t stream);
// The entropy-bound acceptance of rows x cols entropies (layers/ops/decoding.h): one block per row, the
// stable order by ranks, the fp32 running sum by one thread in that order. cols <= kMaxAcceptCols.
inline constexpr std::int64_t kMaxAcceptCols = 8192;
cudaError_t entropy_bound_accept(const float* entropy, std::int64_t rows, std::int64_t cols, float gamma,
                                 std::int32_t* accepted, cudaStream_t stream);
// One denoising step's row update (layers/ops/decoding.h denoise_update): one block per row.
cudaError_t denoise_update(std::int32_t* x, std::int32_t* amax, std::int32_t* history, std::int32_t* done,
                           const std::int32_t* accepted, const std::int32_t* sampled, const std::int32_t* renoise,
                           const std::int32_t* step_amax, const float* entropy, std::int64_t rows, std::int64_t cols,
                           std::int64_t hist, double confidence_threshold, cudaStream_t stream);

}  // namespace dg::cuda::kernels
