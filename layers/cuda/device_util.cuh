// Small device helpers shared by the elementwise CUDA kernels (layers/cuda/*.cu): f32 <-> storage
// conversion, dtype dispatch of a launcher, and the grid of a grid-stride loop.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "layers/dtype.h"

namespace dg::cuda::kernels::util {

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }
template <class T>
__device__ __forceinline__ T from_f32(float v) {
  if constexpr (std::is_same_v<T, float>) return v;
  else return __float2bfloat16_rn(v);
}

template <class T>
struct Tag {
  using type = T;
};

template <class F>
inline cudaError_t with_type(DType t, F&& f) {
  switch (t) {
    case DType::F32: return f(Tag<float>{});
    case DType::BF16: return f(Tag<__nv_bfloat16>{});
    default: return cudaErrorInvalidValue;
  }
}

inline constexpr int kThreads = 256;

inline int grid_for(std::int64_t n) {
  const std::int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<int>(blocks < 65535 * 64 ? blocks : 65535 * 64);  // grid-stride beyond
}

}  // namespace dg::cuda::kernels::util
