// Launchers of the elementwise kernels (layers/cuda/elementwise.cu), called by layers/cuda/elementwise.cpp.
// Plain CUDA runtime types only (see layers/cuda/kernels.h).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "layers/dtype.h"

namespace dg::cuda::kernels {

// a[i] += b[i]; a, b f32 or bf16 each.
cudaError_t add(void* a, DType a_type, const void* b, DType b_type, std::int64_t n, cudaStream_t stream);
// x[i] *= s[0] (s f32 on the device); x f32 or bf16.
cudaError_t scale_by(void* x, DType x_type, const float* s, std::int64_t n, cudaStream_t stream);
// x[r·cols + j] *= s[r]; x f32 or bf16.
cudaError_t scale_rows(void* x, DType x_type, const float* s, std::int64_t rows, std::int64_t cols,
                       cudaStream_t stream);
// x[t·n + j] = exp(x[t·n + j] − lse[t]); x f32.
cudaError_t exp_minus_rows(float* x, const float* lse, std::int64_t rows, std::int64_t n, cudaStream_t stream);
// x[t·cols + j] = 0 where ids[t] == value; x f32 or bf16.
cudaError_t zero_rows_where(void* x, DType x_type, const std::int32_t* ids, std::int32_t value, std::int64_t rows,
                            std::int64_t cols, cudaStream_t stream);
// partial[b] = Σ over block b's fixed range of x (squared when `squares`), in fp64, one block per range of
// kSumBlockElems elements: a fixed-order reduction (deterministic for a given n).
inline constexpr std::int64_t kSumBlockElems = 1 << 16;
cudaError_t block_sums(const void* x, DType x_type, std::int64_t n, bool squares, double* partial,
                       cudaStream_t stream);

}  // namespace dg::cuda::kernels
