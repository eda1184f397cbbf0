// Logit softcap kernels (layers/ops/head.h): elementwise, fp32 math in the CPU op's order (explicit _rn
// intrinsics, no fused multiply-add), one rounding to the output dtype.
#include <cuda_bf16.h>

#include <type_traits>

#include "layers/cuda/softcap_kernels.h"
#include "layers/cuda/device_util.cuh"

namespace dg::cuda::kernels {

namespace {

using namespace util;  // to_f32, from_f32, Tag, with_type, kThreads, grid_for

template <class X, class Y>
__global__ void softcap_kernel(const X* x, float cap, Y* y, std::int64_t n) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const float v = to_f32(x[i]);
    y[i] = from_f32<Y>(cap > 0.0f ? __fmul_rn(cap, tanhf(__fdiv_rn(v, cap))) : v);
  }
}

template <class Y, class DY, class DX>
__global__ void softcap_backward_kernel(const Y* y, const DY* dy, float cap, DX* dx, std::int64_t n) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const float u = cap > 0.0f ? __fdiv_rn(to_f32(y[i]), cap) : 0.0f;
    dx[i] = from_f32<DX>(__fmul_rn(to_f32(dy[i]), __fsub_rn(1.0f, __fmul_rn(u, u))));
  }
}

}  // namespace

cudaError_t softcap(const void* x, DType x_type, float cap, void* y, DType y_type, std::int64_t n,
                    cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  return with_type(x_type, [&](auto tx) {
    using X = typename decltype(tx)::type;
    return with_type(y_type, [&](auto ty) {
      using Y = typename decltype(ty)::type;
      softcap_kernel<X, Y><<<grid_for(n), kThreads, 0, stream>>>(static_cast<const X*>(x), cap, static_cast<Y*>(y), n);
      return cudaGetLastError();
    });
  });
}

cudaError_t softcap_backward(const void* y, DType y_type, const void* dy, DType dy_type, float cap, void* dx,
                             DType dx_type, std::int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  return with_type(y_type, [&](auto ty) {
    using Y = typename decltype(ty)::type;
    return with_type(dy_type, [&](auto tdy) {
      using DY = typename decltype(tdy)::type;
      return with_type(dx_type, [&](auto tdx) {
        using DX = typename decltype(tdx)::type;
        softcap_backward_kernel<Y, DY, DX><<<grid_for(n), kThreads, 0, stream>>>(
            static_cast<const Y*>(y), static_cast<const DY*>(dy), cap, static_cast<DX*>(dx), n);
        return cudaGetLastError();
      });
    });
  });
}

}  // namespace dg::cuda::kernels
