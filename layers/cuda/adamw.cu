// AdamW kernel (layers/cuda/adamw.h): one thread per element, the CPU loop of adamw_update (optim/adamw.cpp)
// with every fp32 operation rounded separately (_rn intrinsics: no fused multiply-add, IEEE division and
// square root), so the update is bit-identical to the host's.
#include <cuda_bf16.h>

#include "layers/cuda/adamw_kernels.h"

namespace dg::cuda::kernels {

namespace {

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }

template <class G>
__global__ void adamw_kernel(float* __restrict__ p, float* __restrict__ m, float* __restrict__ v,
                             const G* __restrict__ grad, AdamWScalars s, std::int64_t n) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const float g = __fmul_rn(to_f32(grad[i]), s.clip);
    float pi = p[i], mi = m[i], vi = v[i];
    if (s.decay_on) pi = __fmul_rn(pi, s.decay);
    mi = s.lerp_low ? __fadd_rn(mi, __fmul_rn(s.w1, __fsub_rn(g, mi)))
                    : __fsub_rn(g, __fmul_rn(__fsub_rn(g, mi), s.one_minus_w1));
    vi = __fadd_rn(__fmul_rn(vi, s.b2), __fmul_rn(__fmul_rn(s.w2, g), g));
    const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), s.bc2_sqrt), s.eps);
    pi = __fsub_rn(pi, __fmul_rn(s.step_size, __fdiv_rn(mi, denom)));
    p[i] = pi;
    m[i] = mi;
    v[i] = vi;
  }
}

}  // namespace

cudaError_t adamw_update(float* master, float* exp_avg, float* exp_avg_sq, const void* grad, DType grad_type,
                         const AdamWScalars& s, std::int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const int threads = 256;
  const std::int64_t want = (n + threads - 1) / threads;
  const int blocks = static_cast<int>(want < 65535 * 64 ? want : 65535 * 64);
  switch (grad_type) {
    case DType::F32:
      adamw_kernel<float><<<blocks, threads, 0, stream>>>(master, exp_avg, exp_avg_sq, static_cast<const float*>(grad),
                                                          s, n);
      break;
    case DType::BF16:
      adamw_kernel<__nv_bfloat16><<<blocks, threads, 0, stream>>>(master, exp_avg, exp_avg_sq,
                                                                  static_cast<const __nv_bfloat16*>(grad), s, n);
      break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace dg::cuda::kernels
