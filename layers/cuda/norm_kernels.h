// Launchers of the RMSNorm kernels (layers/cuda/norm.cu), called by layers/cuda/norm.cpp. Plain CUDA
// runtime types only (see layers/cuda/kernels.h). Activations (x, y, dy, dx) share one dtype `act`,
// bf16 or f32; the weight and its gradient are bf16 or f32; rstd and the partial sums are f32.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "layers/dtype.h"

namespace dg::cuda::kernels {

// y = x · rstd · w per row of d (w may be null); rstd[row] = (mean(x²) + eps)^(-1/2). y may be x.
cudaError_t rms_norm(const void* x, DType act, const void* w, DType w_type, float eps, void* y, float* rstd,
                     std::int64_t rows, std::int64_t d, cudaStream_t stream);

// dx = rstd · (g − x̂ · mean(g · x̂)), g = dy · w (w may be null). dx may be dy.
cudaError_t rms_norm_backward_dx(const void* dy, const void* x, DType act, const void* w, DType w_type,
                                 const float* rstd, void* dx, std::int64_t rows, std::int64_t d,
                                 cudaStream_t stream);

// The fixed split of the rows for the dweight reduction: chunks of rows_per_chunk rows, each summed
// into one row of `partial` [chunks, d], then the chunks summed in order. A function of the row count
// only, so results do not depend on the device.
struct RowChunks {
  std::int64_t rows_per_chunk = 1, chunks = 0;
};
inline RowChunks rms_norm_dweight_chunks(std::int64_t rows) {
  RowChunks c;
  const std::int64_t even = (rows + 1023) / 1024;  // at most 1024 chunks of at least 64 rows
  c.rows_per_chunk = even > 64 ? even : 64;
  c.chunks = (rows + c.rows_per_chunk - 1) / c.rows_per_chunk;
  return c;
}

// dw[i] += Σ_rows dy · (x · rstd), via partial [chunks, d] f32 scratch (chunks from rms_norm_dweight_chunks).
cudaError_t rms_norm_backward_dweight(const void* dy, const void* x, DType act, const float* rstd, float* partial,
                                      void* dw, DType dw_type, std::int64_t rows, std::int64_t d,
                                      cudaStream_t stream);

}  // namespace dg::cuda::kernels
