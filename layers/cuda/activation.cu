// Gated GELU-tanh kernels (layers/ops/activation.h): fp32 math from bf16 or f32 inputs, one rounding to
// the output dtype. The forward and the unweighted backward are elementwise; the weighted backward
// runs one block per row so that the routing-weight gradient is a block sum in a fixed order.
#include <cuda_bf16.h>

#include <type_traits>

#include "layers/cuda/activation_kernels.h"
#include "layers/cuda/device_util.cuh"

namespace dg::cuda::kernels {

namespace {

using util::from_f32;  // layers/cuda/device_util.cuh
using util::Tag;
using util::to_f32;
using util::with_type;

constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kCubic = 0.044715f;

// gelu_tanh through the logistic form 0.5 · (1 + tanh(z)) = σ(2z), which keeps full relative accuracy
// where 1 + tanh(z) would cancel (g << 0), so the fp32 results track the CPU op's double math:
//   gelu_tanh(g) = g · σ(2z),  gelu_tanh'(g) = σ(2z) + 2 g σ(2z) σ(−2z) · √(2/π) · (1 + 3 · 0.044715 · g²)
// with z = √(2/π) · (g + 0.044715 · g³). Returns {σ(2z), σ(−2z)}.
struct Sigmoids {
  float pos, neg;
};
__device__ __forceinline__ Sigmoids gelu_sigmoids(float g) {
  const float z = kSqrt2OverPi * (g + kCubic * g * g * g);
  const float e = expf(-2.0f * z);  // σ(2z) = 1 / (1 + e), σ(−2z) = 1 / (1 + 1/e); e = 0 or inf are exact limits
  return {1.0f / (1.0f + e), 1.0f / (1.0f + 1.0f / e)};
}
__device__ __forceinline__ float gelu_from(float g, Sigmoids s) { return g * s.pos; }
__device__ __forceinline__ float gelu_grad_from(float g, Sigmoids s) {
  return s.pos + 2.0f * g * s.pos * s.neg * kSqrt2OverPi * (1.0f + 3.0f * kCubic * g * g);
}

constexpr int kThreads = 256;

int grid_for(std::int64_t n) {
  const std::int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<int>(blocks < 65535 * 64 ? blocks : 65535 * 64);  // grid-stride beyond
}

template <class G, class A>
__global__ void geglu_kernel(const G* gate_up, const float* w, A* act, std::int64_t rows, std::int64_t f) {
  const std::int64_t n = rows * f;
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t r = i / f, c = i - r * f;
    const float g = to_f32(gate_up[r * 2 * f + c]), u = to_f32(gate_up[r * 2 * f + f + c]);
    const float a = gelu_from(g, gelu_sigmoids(g));
    act[i] = from_f32<A>(w ? w[r] * a * u : a * u);
  }
}

template <class DA, class G, class DG>
__global__ void geglu_backward_kernel(const DA* d_act, const G* gate_up, DG* d_gate_up, std::int64_t rows,
                                      std::int64_t f) {
  const std::int64_t n = rows * f;
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t r = i / f, c = i - r * f;
    const float g = to_f32(gate_up[r * 2 * f + c]), u = to_f32(gate_up[r * 2 * f + f + c]);
    const float da = to_f32(d_act[i]);
    const Sigmoids th = gelu_sigmoids(g);
    d_gate_up[r * 2 * f + c] = from_f32<DG>(da * u * gelu_grad_from(g, th));
    d_gate_up[r * 2 * f + f + c] = from_f32<DG>(da * gelu_from(g, th));
  }
}

// Sum over the block (blockDim.x a multiple of 32): same value in every thread, fixed order.
__device__ float block_sum(float v, float* smem) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = static_cast<int>(threadIdx.x) / 32, warps = static_cast<int>(blockDim.x) / 32;
  if (threadIdx.x % 32 == 0) smem[warp] = v;
  __syncthreads();
  float total = 0.f;
  for (int k = 0; k < warps; ++k) total += smem[k];
  __syncthreads();
  return total;
}

template <class DA, class G, class DG>
__global__ void geglu_weighted_backward_kernel(const DA* d_act, const G* gate_up, const float* w, DG* d_gate_up,
                                               float* d_w, std::int64_t rows, std::int64_t f) {
  __shared__ float smem[32];
  for (std::int64_t r = blockIdx.x; r < rows; r += gridDim.x) {  // uniform over the block
    const G* gr = gate_up + r * 2 * f;
    DG* dr = d_gate_up + r * 2 * f;
    const DA* dar = d_act + r * f;
    const float wr = w[r];
    float dw = 0.f;
    for (std::int64_t c = threadIdx.x; c < f; c += blockDim.x) {
      const float g = to_f32(gr[c]), u = to_f32(gr[f + c]), da = to_f32(dar[c]);
      const Sigmoids th = gelu_sigmoids(g);
      const float a = gelu_from(g, th);
      dw = fmaf(da * a, u, dw);
      dr[c] = from_f32<DG>(da * wr * u * gelu_grad_from(g, th));
      dr[f + c] = from_f32<DG>(da * wr * a);
    }
    dw = block_sum(dw, smem);
    if (threadIdx.x == 0) d_w[r] = dw;
  }
}

}  // namespace

cudaError_t geglu(const void* gate_up, DType gu_type, const float* w, void* act, DType act_type, std::int64_t rows,
                  std::int64_t f, cudaStream_t stream) {
  if (rows * f == 0) return cudaSuccess;
  return with_type(gu_type, [&](auto tg) {
    using G = typename decltype(tg)::type;
    return with_type(act_type, [&](auto ta) {
      using A = typename decltype(ta)::type;
      geglu_kernel<G, A><<<grid_for(rows * f), kThreads, 0, stream>>>(static_cast<const G*>(gate_up), w,
                                                                      static_cast<A*>(act), rows, f);
      return cudaGetLastError();
    });
  });
}

cudaError_t geglu_backward(const void* d_act, DType da_type, const void* gate_up, DType gu_type, const float* w,
                           void* d_gate_up, DType dgu_type, float* d_w, std::int64_t rows, std::int64_t f,
                           cudaStream_t stream) {
  if (rows == 0 || (f == 0 && !w)) return cudaSuccess;
  return with_type(da_type, [&](auto tda) {
    using DA = typename decltype(tda)::type;
    return with_type(gu_type, [&](auto tg) {
      using G = typename decltype(tg)::type;
      return with_type(dgu_type, [&](auto tdg) {
        using DG = typename decltype(tdg)::type;
        if (w) {  // one block per row; f = 0 still writes d_w = 0 (an empty sum)
          const int threads = f <= 64 ? 32 : f <= 256 ? 64 : f <= 1024 ? 128 : 256;
          const int blocks = static_cast<int>(rows < 65535 * 16 ? rows : 65535 * 16);
          geglu_weighted_backward_kernel<DA, G, DG><<<blocks, threads, 0, stream>>>(
              static_cast<const DA*>(d_act), static_cast<const G*>(gate_up), w, static_cast<DG*>(d_gate_up), d_w,
              rows, f);
        } else {
          geglu_backward_kernel<DA, G, DG><<<grid_for(rows * f), kThreads, 0, stream>>>(
              static_cast<const DA*>(d_act), static_cast<const G*>(gate_up), static_cast<DG*>(d_gate_up), rows, f);
        }
        return cudaGetLastError();
      });
    });
  });
}

}  // namespace dg::cuda::kernels
