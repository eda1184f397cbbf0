// Launchers of the RoPE kernels (layers/cuda/rope.cu), called by layers/cuda/rope.cpp. Plain CUDA
// runtime types only (see layers/cuda/kernels.h).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "layers/dtype.h"

namespace dg::cuda::kernels {

// cos/sin [tokens, half] (dtype table: f32 or bf16) of angle = fp32(positions[t]) · inv_freq[j], evaluated
// in double and rounded once. Positions must be >= 0 (checked by the caller).
cudaError_t rope_table(const std::int32_t* positions, const float* inv_freq, void* cos, void* sin, DType table,
                       std::int64_t tokens, std::int64_t half, cudaStream_t stream);

// y = R(sign · angle) x for x, y [tokens, heads, 2·half] (dtype act) with cos/sin [tokens, half] (dtype table);
// sign is +1 (rope) or -1 (rope_backward). y may be x.
cudaError_t rope_rotate(const void* x, DType act, const void* cos, const void* sin, DType table, void* y,
                        std::int64_t tokens, std::int64_t heads, std::int64_t half, float sign, cudaStream_t stream);

}  // namespace dg::cuda::kernels
