// Launcher of the AdamW kernel (layers/cuda/adamw.cu), called by layers/cuda/adamw.cpp. Plain CUDA
// runtime types only (see layers/cuda/kernels.h).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "layers/dtype.h"

namespace dg::cuda::kernels {

// The fp32 scalars of one AdamW step, computed on the host as layers/cuda/adamw.h describes.
struct AdamWScalars {
  float clip;          // clip_coef
  bool decay_on;       // weight_decay != 0
  float decay;         // 1 − lr·wd
  bool lerp_low;       // |1 − β1| < 0.5
  float w1;            // 1 − β1
  float one_minus_w1;  // 1 − (1 − β1)
  float b2, w2;        // β2, 1 − β2
  float step_size;     // lr / (1 − β1ᵗ)
  float bc2_sqrt;      // sqrt(1 − β2ᵗ)
  float eps;
};

cudaError_t adamw_update(float* master, float* exp_avg, float* exp_avg_sq, const void* grad, DType grad_type,
                         const AdamWScalars& s, std::int64_t n, cudaStream_t stream);

}  // namespace dg::cuda::kernels
