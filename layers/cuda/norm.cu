// RMSNorm kernels (layers/ops/norm.h): one block per row for the forward and the input gradient, a
// two-stage column reduction for the weight gradient. Every sum is fp32 in an order fixed by the shape
// (strided per-thread sums, a butterfly within each warp, the warps in order), so the results are
// deterministic; no atomics.
#include <cuda_bf16.h>

#include <type_traits>

#include "layers/cuda/norm_kernels.h"
#include "layers/cuda/device_util.cuh"

namespace dg::cuda::kernels {

namespace {

using util::from_f32;  // layers/cuda/device_util.cuh
using util::Tag;
using util::to_f32;
using util::with_type;

// Sum over the block (blockDim.x a multiple of 32, at most 1024). Every thread gets the same value:
// the xor butterfly adds the same pairs in every lane (addition is commutative), and every thread adds
// the warp sums in the same order. `smem` holds 32 floats; the block must reach this call uniformly.
__device__ float block_sum(float v, float* smem) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = static_cast<int>(threadIdx.x) / 32, warps = static_cast<int>(blockDim.x) / 32;
  if (threadIdx.x % 32 == 0) smem[warp] = v;
  __syncthreads();
  float total = 0.f;
  for (int w = 0; w < warps; ++w) total += smem[w];
  __syncthreads();  // smem may be reused by the caller's next block_sum
  return total;
}

int threads_for(std::int64_t d) { return d <= 64 ? 32 : d <= 256 ? 64 : d <= 1024 ? 128 : 256; }

// Rows are walked with a block-stride loop so that any row count fits the grid.
int blocks_for(std::int64_t rows) { return static_cast<int>(rows < 65535 * 16 ? rows : 65535 * 16); }

template <class T, class W>
__global__ void rms_norm_kernel(const T* x, const W* w, float eps, T* y, float* rstd, std::int64_t rows,
                                std::int64_t d) {
  __shared__ float smem[32];
  for (std::int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* xr = x + row * d;
    T* yr = y + row * d;
    float ss = 0.f;
    for (std::int64_t i = threadIdx.x; i < d; i += blockDim.x) {
      const float v = to_f32(xr[i]);
      ss = fmaf(v, v, ss);
    }
    ss = block_sum(ss, smem);  // also orders every read of the row before any write (y may be x)
    const float s = 1.0f / sqrtf(ss / static_cast<float>(d) + eps);
    if (threadIdx.x == 0) rstd[row] = s;
    for (std::int64_t i = threadIdx.x; i < d; i += blockDim.x) {
      const float xs = __fmul_rn(to_f32(xr[i]), s);  // (x · rstd) · w, rounded in the reference's order
      yr[i] = from_f32<T>(w ? __fmul_rn(xs, to_f32(w[i])) : xs);
    }
  }
}

template <class T, class W>
__global__ void rms_norm_dx_kernel(const T* dy, const T* x, const W* w, const float* rstd, T* dx, std::int64_t rows,
                                   std::int64_t d) {
  __shared__ float smem[32];
  for (std::int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* dyr = dy + row * d;
    const T* xr = x + row * d;
    T* dxr = dx + row * d;
    const float s = rstd[row];
    float c = 0.f;  // Σ g · x̂ (dx may be dy: nothing is written before the block_sum)
    for (std::int64_t i = threadIdx.x; i < d; i += blockDim.x) {
      const float xh = to_f32(xr[i]) * s;
      const float g = w ? to_f32(dyr[i]) * to_f32(w[i]) : to_f32(dyr[i]);
      c = fmaf(g, xh, c);
    }
    c = block_sum(c, smem) / static_cast<float>(d);
    for (std::int64_t i = threadIdx.x; i < d; i += blockDim.x) {
      const float xh = to_f32(xr[i]) * s;
      const float g = w ? to_f32(dyr[i]) * to_f32(w[i]) : to_f32(dyr[i]);
      dxr[i] = from_f32<T>(s * (g - xh * c));
    }
  }
}

// Stage 1 of dweight: block (32, 8) sums the rows of chunk blockIdx.y for 32 columns.
template <class T>
__global__ void rms_norm_dw_partial_kernel(const T* dy, const T* x, const float* rstd, float* partial,
                                           std::int64_t rows, std::int64_t d, std::int64_t rows_per_chunk) {
  __shared__ float sm[8][33];
  const std::int64_t col = static_cast<std::int64_t>(blockIdx.x) * 32 + threadIdx.x;
  const std::int64_t r0 = static_cast<std::int64_t>(blockIdx.y) * rows_per_chunk;
  const std::int64_t r1 = r0 + rows_per_chunk < rows ? r0 + rows_per_chunk : rows;
  float acc = 0.f;
  if (col < d)
    for (std::int64_t r = r0 + threadIdx.y; r < r1; r += 8) {
      const float xh = to_f32(x[r * d + col]) * rstd[r];
      acc = fmaf(to_f32(dy[r * d + col]), xh, acc);
    }
  sm[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && col < d) {
    float t = 0.f;
    for (int k = 0; k < 8; ++k) t += sm[k][threadIdx.x];
    partial[static_cast<std::int64_t>(blockIdx.y) * d + col] = t;
  }
}

// Stage 2: dw[col] += Σ_chunks partial[chunk, col], the chunks in order.
template <class D>
__global__ void rms_norm_dw_final_kernel(const float* partial, std::int64_t chunks, std::int64_t d, D* dw) {
  const std::int64_t col = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (col >= d) return;
  float t = 0.f;
  for (std::int64_t c = 0; c < chunks; ++c) t += partial[c * d + col];
  dw[col] = from_f32<D>(to_f32(dw[col]) + t);
}

}  // namespace

cudaError_t rms_norm(const void* x, DType act, const void* w, DType w_type, float eps, void* y, float* rstd,
                     std::int64_t rows, std::int64_t d, cudaStream_t stream) {
  if (rows == 0 || d == 0) return cudaSuccess;
  return with_type(act, [&](auto ta) {
    using T = typename decltype(ta)::type;
    return with_type(w ? w_type : DType::F32, [&](auto tw) {
      using W = typename decltype(tw)::type;
      rms_norm_kernel<T, W><<<blocks_for(rows), threads_for(d), 0, stream>>>(
          static_cast<const T*>(x), static_cast<const W*>(w), eps, static_cast<T*>(y), rstd, rows, d);
      return cudaGetLastError();
    });
  });
}

cudaError_t rms_norm_backward_dx(const void* dy, const void* x, DType act, const void* w, DType w_type,
                                 const float* rstd, void* dx, std::int64_t rows, std::int64_t d,
                                 cudaStream_t stream) {
  if (rows == 0 || d == 0) return cudaSuccess;
  return with_type(act, [&](auto ta) {
    using T = typename decltype(ta)::type;
    return with_type(w ? w_type : DType::F32, [&](auto tw) {
      using W = typename decltype(tw)::type;
      rms_norm_dx_kernel<T, W><<<blocks_for(rows), threads_for(d), 0, stream>>>(
          static_cast<const T*>(dy), static_cast<const T*>(x), static_cast<const W*>(w), rstd, static_cast<T*>(dx),
          rows, d);
      return cudaGetLastError();
    });
  });
}

cudaError_t rms_norm_backward_dweight(const void* dy, const void* x, DType act, const float* rstd, float* partial,
                                      void* dw, DType dw_type, std::int64_t rows, std::int64_t d,
                                      cudaStream_t stream) {
  if (d == 0) return cudaSuccess;
  const RowChunks ch = rms_norm_dweight_chunks(rows);
  if (ch.chunks > 0) {
    const cudaError_t e = with_type(act, [&](auto ta) {
      using T = typename decltype(ta)::type;
      const dim3 grid(static_cast<unsigned>((d + 31) / 32), static_cast<unsigned>(ch.chunks));
      rms_norm_dw_partial_kernel<T><<<grid, dim3(32, 8), 0, stream>>>(
          static_cast<const T*>(dy), static_cast<const T*>(x), rstd, partial, rows, d, ch.rows_per_chunk);
      return cudaGetLastError();
    });
    if (e != cudaSuccess) return e;
  }
  return with_type(dw_type, [&](auto td) {
    using D = typename decltype(td)::type;
    rms_norm_dw_final_kernel<D><<<static_cast<unsigned>((d + 255) / 256), 256, 0, stream>>>(partial, ch.chunks, d,
                                                                                            static_cast<D*>(dw));
    return cudaGetLastError();
  });
}

}  // namespace dg::cuda::kernels
