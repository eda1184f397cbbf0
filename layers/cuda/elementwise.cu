// Elementwise kernels (layers/ops/elementwise.h): fp32 math in the CPU op's order (explicit _rn
// intrinsics, no fused multiply-add), one rounding to the stored dtype.
#include <cuda_bf16.h>

#include "layers/cuda/device_util.cuh"
#include "layers/cuda/elementwise_kernels.h"

namespace dg::cuda::kernels {

namespace {

using namespace util;

template <class A, class B>
__global__ void add_kernel(A* a, const B* b, std::int64_t n) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    a[i] = from_f32<A>(__fadd_rn(to_f32(a[i]), to_f32(b[i])));
}

template <class X>
__global__ void scale_rows_kernel(X* x, const float* s, std::int64_t rows, std::int64_t cols, bool one_scale) {
  const std::int64_t n = rows * cols;
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    x[i] = from_f32<X>(__fmul_rn(to_f32(x[i]), s[one_scale ? 0 : i / cols]));
}

__global__ void exp_minus_rows_kernel(float* x, const float* lse, std::int64_t rows, std::int64_t n) {
  const std::int64_t total = rows * n;
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    x[i] = expf(__fsub_rn(x[i], lse[i / n]));
}

template <class X>
__global__ void zero_rows_where_kernel(X* x, const std::int32_t* ids, std::int32_t value, std::int64_t rows,
                                       std::int64_t cols) {
  const std::int64_t n = rows * cols;
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    if (ids[i / cols] == value) x[i] = from_f32<X>(0.0f);
}

// One block per kSumBlockElems elements; each thread sums a strided subset in fp64, then a fixed tree.
template <class X>
__global__ void block_sums_kernel(const X* x, std::int64_t n, bool squares, double* partial) {
  __shared__ double acc[kThreads];
  const std::int64_t begin = blockIdx.x * kSumBlockElems;
  const std::int64_t end = begin + kSumBlockElems < n ? begin + kSumBlockElems : n;
  double s = 0;
  for (std::int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    const double v = static_cast<double>(to_f32(x[i]));
    s += squares ? v * v : v;
  }
  acc[threadIdx.x] = s;
  __syncthreads();
  for (int w = kThreads / 2; w > 0; w /= 2) {
    if (threadIdx.x < w) acc[threadIdx.x] += acc[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) partial[blockIdx.x] = acc[0];
}

}  // namespace

cudaError_t add(void* a, DType a_type, const void* b, DType b_type, std::int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  return with_type(a_type, [&](auto ta) {
    using A = typename decltype(ta)::type;
    return with_type(b_type, [&](auto tb) {
      using B = typename decltype(tb)::type;
      add_kernel<A, B><<<grid_for(n), kThreads, 0, stream>>>(static_cast<A*>(a), static_cast<const B*>(b), n);
      return cudaGetLastError();
    });
  });
}

cudaError_t scale_by(void* x, DType x_type, const float* s, std::int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  return with_type(x_type, [&](auto tx) {
    using X = typename decltype(tx)::type;
    scale_rows_kernel<X><<<grid_for(n), kThreads, 0, stream>>>(static_cast<X*>(x), s, 1, n, true);
    return cudaGetLastError();
  });
}

cudaError_t scale_rows(void* x, DType x_type, const float* s, std::int64_t rows, std::int64_t cols,
                       cudaStream_t stream) {
  if (rows * cols == 0) return cudaSuccess;
  return with_type(x_type, [&](auto tx) {
    using X = typename decltype(tx)::type;
    scale_rows_kernel<X><<<grid_for(rows * cols), kThreads, 0, stream>>>(static_cast<X*>(x), s, rows, cols, false);
    return cudaGetLastError();
  });
}

cudaError_t exp_minus_rows(float* x, const float* lse, std::int64_t rows, std::int64_t n, cudaStream_t stream) {
  if (rows * n == 0) return cudaSuccess;
  exp_minus_rows_kernel<<<grid_for(rows * n), kThreads, 0, stream>>>(x, lse, rows, n);
  return cudaGetLastError();
}

cudaError_t zero_rows_where(void* x, DType x_type, const std::int32_t* ids, std::int32_t value, std::int64_t rows,
                            std::int64_t cols, cudaStream_t stream) {
  if (rows * cols == 0) return cudaSuccess;
  return with_type(x_type, [&](auto tx) {
    using X = typename decltype(tx)::type;
    zero_rows_where_kernel<X><<<grid_for(rows * cols), kThreads, 0, stream>>>(static_cast<X*>(x), ids, value, rows, cols);
    return cudaGetLastError();
  });
}

cudaError_t block_sums(const void* x, DType x_type, std::int64_t n, bool squares, double* partial,
                       cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const auto blocks = static_cast<unsigned>((n + kSumBlockElems - 1) / kSumBlockElems);
  return with_type(x_type, [&](auto tx) {
    using X = typename decltype(tx)::type;
    block_sums_kernel<X><<<blocks, kThreads, 0, stream>>>(static_cast<const X*>(x), n, squares, partial);
    return cudaGetLastError();
  });
}

}  // namespace dg::cuda::kernels
