// Launchers of the logit softcap kernels (layers/cuda/softcap.cu), called by layers/cuda/softcap.cpp.
// Plain CUDA runtime types only (see layers/cuda/kernels.h). Every tensor is f32 or bf16, independently.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "layers/dtype.h"

namespace dg::cuda::kernels {

// y = cap · tanh(x / cap) (y = x when cap is 0); y may be x.
cudaError_t softcap(const void* x, DType x_type, float cap, void* y, DType y_type, std::int64_t n,
                    cudaStream_t stream);
// dx = dy · (1 − (y / cap)²) (dx = dy when cap is 0); dx may be dy.
cudaError_t softcap_backward(const void* y, DType y_type, const void* dy, DType dy_type, float cap, void* dx,
                             DType dx_type, std::int64_t n, cudaStream_t stream);

}  // namespace dg::cuda::kernels
