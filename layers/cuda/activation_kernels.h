// Launchers of the gated GELU-tanh kernels (layers/cuda/activation.cu), called by layers/cuda/activation.cpp.
// Plain CUDA runtime types only (see layers/cuda/kernels.h). gate_up rows are [gate | up], 2·f wide.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "layers/dtype.h"

namespace dg::cuda::kernels {

// act [rows, f] = (w[row] ·) gelu_tanh(gate) · up; w (f32 [rows]) may be null.
cudaError_t geglu(const void* gate_up, DType gu_type, const float* w, void* act, DType act_type, std::int64_t rows,
                  std::int64_t f, cudaStream_t stream);

// d_gate_up [rows, 2f] from d_act [rows, f]; with w (f32 [rows]) also d_w[row] = Σ d_act · gelu_tanh(g) · u
// (d_w is required exactly when w is given).
cudaError_t geglu_backward(const void* d_act, DType da_type, const void* gate_up, DType gu_type, const float* w,
                           void* d_gate_up, DType dgu_type, float* d_w, std::int64_t rows, std::int64_t f,
                           cudaStream_t stream);

}  // namespace dg::cuda::kernels
