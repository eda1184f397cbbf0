// Generation-path kernels (layers/ops/decoding.h): integer work and copies, plus the two running sums of
// the sampler done by one thread per row in the CPU op's order (fp32 with explicit _rn intrinsics for the
// acceptance, fp64 for the mean entropy), so the results equal the CPU reference bit for bit.
#include <cuda_bf16.h>

#include "layers/cuda/decoding_kernels.h"
#include "layers/cuda/device_util.cuh"

namespace dg::cuda::kernels {

namespace {

using namespace util;

template <class X>
__global__ void fill_kernel(X* x, X value, std::int64_t n) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    x[i] = value;
}

__global__ void token_positions_kernel(const std::int32_t* row_offset, std::int64_t start, std::int64_t rows,
                                       std::int64_t seq, std::int32_t* out) {
  const std::int64_t n = rows * seq;
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t b = i / seq, t = i % seq;
    const std::int64_t p = start + (row_offset ? row_offset[b] : 0) + t;
    out[i] = static_cast<std::int32_t>(p > 0 ? p : 0);
  }
}

// Units of U (4, 2 or 1 bytes): `unit` per token; output unit i of row b, token t, part u.
template <class U>
__global__ void concat_tokens_kernel(const U* a, std::int64_t t0, const U* b, std::int64_t t1, U* out, std::int64_t k,
                                     std::int64_t rows, std::int64_t unit) {
  const std::int64_t n = rows * k * unit, skip = t0 + t1 - k;
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t u = i % unit, tok = i / unit, r = tok / k, t = tok % k + skip;
    out[i] = t < t0 ? a[(r * t0 + t) * unit + u] : b[(r * t1 + t - t0) * unit + u];
  }
}

// rank[j] = #{i : e[i] < e[j]} + #{i < j : e[i] == e[j]}: the position of j in std::stable_sort's order.
__global__ void entropy_bound_accept_kernel(const float* entropy, std::int64_t cols, float gamma,
                                            std::int32_t* accepted) {
  extern __shared__ std::int32_t order[];
  const float* e = entropy + blockIdx.x * cols;
  std::int32_t* acc = accepted + blockIdx.x * cols;
  for (std::int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
    const float ej = e[j];
    std::int64_t rank = 0;
    for (std::int64_t i = 0; i < cols; ++i) rank += (e[i] < ej || (i < j && e[i] == ej)) ? 1 : 0;
    order[rank] = static_cast<std::int32_t>(j);
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    float cs = 0.0f;
    for (std::int64_t r = 0; r < cols; ++r) {
      const std::int32_t j = order[r];
      cs = __fadd_rn(cs, e[j]);
      acc[j] = __fsub_rn(cs, e[j]) <= gamma ? 1 : 0;
    }
  }
}

__global__ void denoise_update_kernel(std::int32_t* x, std::int32_t* amax, std::int32_t* history, std::int32_t* done,
                                      const std::int32_t* accepted, const std::int32_t* sampled,
                                      const std::int32_t* renoise, const std::int32_t* step_amax,
                                      const float* entropy, std::int64_t cols, std::int64_t hist, double threshold) {
  __shared__ int unstable;
  const std::int64_t b = blockIdx.x;
  if (done[b] != 0) return;  // frozen (the same value for the whole block: done[b] is written after the last sync)
  if (threadIdx.x == 0) unstable = 0;
  __syncthreads();
  const std::int64_t row = b * cols;
  std::int32_t* h = history + b * hist * cols;
  for (std::int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
    const std::int32_t cur = step_amax[row + j];
    x[row + j] = accepted[row + j] ? sampled[row + j] : renoise[row + j];
    amax[row + j] = cur;
    bool same = true;
    for (std::int64_t m = 0; m < hist; ++m) same = same && h[m * cols + j] == cur;
    if (!same) atomicOr(&unstable, 1);
    for (std::int64_t m = 0; m + 1 < hist; ++m) h[m * cols + j] = h[(m + 1) * cols + j];  // drop the oldest
    if (hist > 0) h[(hist - 1) * cols + j] = cur;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    double mean = 0;
    for (std::int64_t j = 0; j < cols; ++j) mean += static_cast<double>(entropy[row + j]);
    mean /= static_cast<double>(cols);
    if (!unstable && mean < threshold) done[b] = 1;
  }
}

}  // namespace

cudaError_t fill(void* x, DType x_type, double value, std::int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  if (x_type == DType::I32) {
    fill_kernel<std::int32_t><<<grid_for(n), kThreads, 0, stream>>>(static_cast<std::int32_t*>(x),
                                                                     static_cast<std::int32_t>(value), n);
    return cudaGetLastError();
  }
  return with_type(x_type, [&](auto tx) {
    using X = typename decltype(tx)::type;
    const float v = static_cast<float>(value);
    X cast;
    if constexpr (std::is_same_v<X, float>) cast = v;
    else cast = __float2bfloat16_rn(v);
    fill_kernel<X><<<grid_for(n), kThreads, 0, stream>>>(static_cast<X*>(x), cast, n);
    return cudaGetLastError();
  });
}

cudaError_t token_positions(const std::int32_t* row_offset, std::int64_t start, std::int64_t rows, std::int64_t seq,
                            std::int32_t* out, cudaStream_t stream) {
  if (rows * seq == 0) return cudaSuccess;
  token_positions_kernel<<<grid_for(rows * seq), kThreads, 0, stream>>>(row_offset, start, rows, seq, out);
  return cudaGetLastError();
}

cudaError_t concat_tokens(const void* a, std::int64_t t0, const void* b, std::int64_t t1, void* out, std::int64_t k,
                          std::int64_t rows, std::size_t token_bytes, cudaStream_t stream) {
  const std::int64_t n_bytes = rows * k * static_cast<std::int64_t>(token_bytes);
  if (n_bytes == 0) return cudaSuccess;
  // The widest unit that divides the token size and every pointer's alignment.
  const auto bits = token_bytes | reinterpret_cast<std::uintptr_t>(a) | reinterpret_cast<std::uintptr_t>(b) |
                    reinterpret_cast<std::uintptr_t>(out);
  const std::size_t unit = bits % 4 == 0 ? 4 : bits % 2 == 0 ? 2 : 1;
  const auto per = static_cast<std::int64_t>(token_bytes / unit);
  const int grid = grid_for(n_bytes / static_cast<std::int64_t>(unit));
  if (unit == 4)
    concat_tokens_kernel<std::uint32_t><<<grid, kThreads, 0, stream>>>(
        static_cast<const std::uint32_t*>(a), t0, static_cast<const std::uint32_t*>(b), t1,
        static_cast<std::uint32_t*>(out), k, rows, per);
  else if (unit == 2)
    concat_tokens_kernel<std::uint16_t><<<grid, kThreads, 0, stream>>>(
        static_cast<const std::uint16_t*>(a), t0, static_cast<const std::uint16_t*>(b), t1,
        static_cast<std::uint16_t*>(out), k, rows, per);
  else
    concat_tokens_kernel<unsigned char><<<grid, kThreads, 0, stream>>>(
        static_cast<const unsigned char*>(a), t0, static_cast<const unsigned char*>(b), t1,
        static_cast<unsigned char*>(out), k, rows, per);
  return cudaGetLastError();
}

cudaError_t entropy_bound_accept(const float* entropy, std::int64_t rows, std::int64_t cols, float gamma,
                                 std::int32_t* accepted, cudaStream_t stream) {
  if (rows * cols == 0) return cudaSuccess;
  if (cols > kMaxAcceptCols) return cudaErrorInvalidValue;
  entropy_bound_accept_kernel<<<static_cast<unsigned>(rows), kThreads, static_cast<std::size_t>(cols) * sizeof(std::int32_t),
                                stream>>>(entropy, cols, gamma, accepted);
  return cudaGetLastError();
}

cudaError_t denoise_update(std::int32_t* x, std::int32_t* amax, std::int32_t* history, std::int32_t* done,
                           const std::int32_t* accepted, const std::int32_t* sampled, const std::int32_t* renoise,
                           const std::int32_t* step_amax, const float* entropy, std::int64_t rows, std::int64_t cols,
                           std::int64_t hist, double confidence_threshold, cudaStream_t stream) {
  if (rows * cols == 0) return cudaSuccess;
  denoise_update_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(
      x, amax, history, done, accepted, sampled, renoise, step_amax, entropy, cols, hist, confidence_threshold);
  return cudaGetLastError();
}

}  // namespace dg::cuda::kernels
