// RoPE kernels (layers/ops/rope.h): the cos/sin table and the rotate-half rotation, one thread per
// (token, head, pair). The rotation rounds each product and the sum to fp32 as the CPU loop does
// (explicit _rn intrinsics: no fused multiply-add), then once to the output dtype.
#include <cuda_bf16.h>

#include <type_traits>

#include "layers/cuda/rope_kernels.h"
#include "layers/cuda/device_util.cuh"

namespace dg::cuda::kernels {

namespace {

using namespace util;  // to_f32, from_f32, Tag, with_type, kThreads, grid_for

template <class C>
__global__ void rope_table_kernel(const std::int32_t* positions, const float* inv_freq, C* cos, C* sin,
                                  std::int64_t tokens, std::int64_t half) {
  const std::int64_t n = tokens * half;
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t t = i / half, j = i - t * half;
    const float angle = __fmul_rn(static_cast<float>(positions[t]), inv_freq[j]);  // the reference's fp32 product
    double s = 0, c = 0;
    ::sincos(static_cast<double>(angle), &s, &c);
    cos[i] = from_f32<C>(__double2float_rn(c));
    sin[i] = from_f32<C>(__double2float_rn(s));
  }
}

template <class T, class C>
__global__ void rope_kernel(const T* x, const C* cos, const C* sin, T* y, std::int64_t tokens, std::int64_t heads,
                            std::int64_t half, float sign) {
  const std::int64_t n = tokens * heads * half;
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t row = i / half, j = i - row * half, t = row / heads;
    const T* xr = x + row * 2 * half;
    T* yr = y + row * 2 * half;
    const float x1 = to_f32(xr[j]), x2 = to_f32(xr[j + half]);  // both read before either is written
    const float c = to_f32(cos[t * half + j]), s = sign * to_f32(sin[t * half + j]);
    yr[j] = from_f32<T>(__fsub_rn(__fmul_rn(x1, c), __fmul_rn(x2, s)));
    yr[j + half] = from_f32<T>(__fadd_rn(__fmul_rn(x2, c), __fmul_rn(x1, s)));
  }
}

}  // namespace

cudaError_t rope_table(const std::int32_t* positions, const float* inv_freq, void* cos, void* sin, DType table,
                       std::int64_t tokens, std::int64_t half, cudaStream_t stream) {
  if (tokens * half == 0) return cudaSuccess;
  return with_type(table, [&](auto tc) {
    using C = typename decltype(tc)::type;
    rope_table_kernel<C><<<grid_for(tokens * half), kThreads, 0, stream>>>(positions, inv_freq, static_cast<C*>(cos),
                                                                         static_cast<C*>(sin), tokens, half);
    return cudaGetLastError();
  });
}

cudaError_t rope_rotate(const void* x, DType act, const void* cos, const void* sin, DType table, void* y,
                        std::int64_t tokens, std::int64_t heads, std::int64_t half, float sign, cudaStream_t stream) {
  const std::int64_t n = tokens * heads * half;
  if (n == 0) return cudaSuccess;
  return with_type(act, [&](auto ta) {
    using T = typename decltype(ta)::type;
    return with_type(table, [&](auto tc) {
      using C = typename decltype(tc)::type;
      rope_kernel<T, C><<<grid_for(n), kThreads, 0, stream>>>(static_cast<const T*>(x), static_cast<const C*>(cos),
                                                              static_cast<const C*>(sin), static_cast<T*>(y), tokens,
                                                              heads, half, sign);
      return cudaGetLastError();
    });
  });
}

}  // namespace dg::cuda::kernels
