// Embedding kernels (layers/ops/embedding.h): the scaled lookup, the segment-ordered gradient scatter
// (no atomics: one thread owns one (distinct id, column) and adds its tokens in token order), and the
// pieces of the chunked soft embedding around the cuBLASLt GEMMs: row log-sum-exp, chunk probabilities,
// scaling, row dot products and the logits gradient. Every reduction has an order fixed by the shape.
#include <cuda_bf16.h>

#include <cmath>
#include <type_traits>

#include "layers/cuda/embedding_kernels.h"
#include "layers/cuda/device_util.cuh"

namespace dg::cuda::kernels {

namespace {

using namespace util;  // to_f32, from_f32, Tag, with_type, kThreads, grid_for

int row_blocks(std::int64_t rows) { return static_cast<int>(rows < 65535 * 16 ? rows : 65535 * 16); }

#define DG_GRID_STRIDE(i, n)                                                                            \
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < (n); \
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)

// ---- lookup and its gradient ---------------------------------------------------------------------

template <class E, class O>
__global__ void lookup_kernel(const std::int32_t* ids, const E* table, float scale, O* out, std::int64_t count,
                              std::int64_t vocab, std::int64_t hidden) {
  DG_GRID_STRIDE(i, count * hidden) {
    const std::int64_t t = i / hidden, h = i - t * hidden;
    const std::int32_t id = ids[t];
    // ids were checked on the host; an out-of-range id here (changed since) reads nothing
    out[i] = from_f32<O>(id >= 0 && id < vocab ? __fmul_rn(to_f32(table[id * hidden + h]), scale) : 0.0f);
  }
}

// grid (segments, column tiles of blockDim.x)
template <class G, class D>
__global__ void grad_kernel(const std::int32_t* order, const std::int32_t* seg_ids, const std::int32_t* starts,
                            const G* d_out, float scale, D* d_table, std::int64_t hidden) {
  const std::int64_t u = blockIdx.x;
  const std::int64_t h = static_cast<std::int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (h >= hidden) return;
  D* dst = d_table + static_cast<std::int64_t>(seg_ids[u]) * hidden + h;
  float acc = to_f32(*dst);
  for (std::int32_t k = starts[u]; k < starts[u + 1]; ++k)  // the CPU loop's row[h] += scale · d_out[t, h]
    acc = __fadd_rn(acc, __fmul_rn(scale, to_f32(d_out[static_cast<std::int64_t>(order[k]) * hidden + h])));
  *dst = from_f32<D>(acc);
}

// ---- soft embedding pieces ---------------------------------------------------------------------

// Running (max, Σ exp(x − max)); max = −inf means empty.
struct MaxSum {
  float m, s;
};

__device__ __forceinline__ MaxSum combine(MaxSum a, MaxSum b) {
  if (a.m == -INFINITY) return b;
  if (b.m == -INFINITY) return a;
  const float m = fmaxf(a.m, b.m);
  return {m, __fadd_rn(__fmul_rn(a.s, expf(a.m - m)), __fmul_rn(b.s, expf(b.m - m)))};
}

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

template <class L>
__global__ void lse_kernel(const L* logits, float* lse, std::int64_t rows, std::int64_t vocab) {
  __shared__ float sm_m[32], sm_s[32];
  for (std::int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const L* lr = logits + r * vocab;
    MaxSum acc{-INFINITY, 0.0f};
    for (std::int64_t v = threadIdx.x; v < vocab; v += blockDim.x) {
      const float x = to_f32(lr[v]);
      if (x == -INFINITY) continue;  // exp(−inf) = 0 (and no −inf − −inf)
      if (x > acc.m) {
        acc.s = acc.m == -INFINITY ? 1.0f : __fadd_rn(__fmul_rn(acc.s, expf(acc.m - x)), 1.0f);
        acc.m = x;
      } else {
        acc.s = __fadd_rn(acc.s, expf(x - acc.m));
      }
    }
    for (int o = 16; o > 0; o >>= 1) {
      const MaxSum other{__shfl_xor_sync(0xffffffffu, acc.m, o), __shfl_xor_sync(0xffffffffu, acc.s, o)};
      acc = combine(acc, other);
    }
    const int warp = static_cast<int>(threadIdx.x) / 32, warps = static_cast<int>(blockDim.x) / 32;
    if (threadIdx.x % 32 == 0) {
      sm_m[warp] = acc.m;
      sm_s[warp] = acc.s;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      MaxSum total{-INFINITY, 0.0f};
      for (int k = 0; k < warps; ++k) total = combine(total, MaxSum{sm_m[k], sm_s[k]});
      lse[r] = total.m + logf(total.s);
    }
    __syncthreads();
  }
}

template <class L, class P>
__global__ void softmax_chunk_kernel(const L* logits, const float* lse, std::int64_t rows, std::int64_t vocab,
                                     std::int64_t v0, std::int64_t c, P* p) {
  DG_GRID_STRIDE(i, rows * c) {
    const std::int64_t r = i / c, j = i - r * c;
    p[i] = from_f32<P>(expf(to_f32(logits[r * vocab + v0 + j]) - lse[r]));
  }
}

template <class O>
__global__ void scale_kernel(const float* acc, float scale, O* out, std::int64_t n) {
  DG_GRID_STRIDE(i, n) out[i] = from_f32<O>(__fmul_rn(acc[i], scale));
}

template <class A, class B>
__global__ void row_dot_kernel(const A* a, const B* b, float* rho, std::int64_t rows, std::int64_t hidden) {
  __shared__ float smem[32];
  for (std::int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    float acc = 0.f;
    for (std::int64_t h = threadIdx.x; h < hidden; h += blockDim.x)
      acc = fmaf(to_f32(a[r * hidden + h]), to_f32(b[r * hidden + h]), acc);
    acc = block_sum(acc, smem);
    if (threadIdx.x == 0) rho[r] = acc;
  }
}

template <class L, class DL>
__global__ void logits_grad_kernel(const L* logits, const float* lse, const float* dp, const float* rho,
                                   std::int64_t rows, std::int64_t vocab, std::int64_t v0, std::int64_t c,
                                   DL* d_logits) {
  DG_GRID_STRIDE(i, rows * c) {
    const std::int64_t r = i / c, j = i - r * c, at = r * vocab + v0 + j;
    const float p = expf(to_f32(logits[at]) - lse[r]);
    d_logits[at] = from_f32<DL>(p * (dp[i] - rho[r]));
  }
}

template <class D>
__global__ void add_kernel(const float* src, D* dst, std::int64_t n) {
  DG_GRID_STRIDE(i, n) dst[i] = from_f32<D>(__fadd_rn(to_f32(dst[i]), src[i]));
}

#undef DG_GRID_STRIDE

}  // namespace

cudaError_t embedding_lookup(const std::int32_t* ids, const void* table, DType table_type, float scale, void* out,
                             DType out_type, std::int64_t count, std::int64_t vocab, std::int64_t hidden,
                             cudaStream_t stream) {
  if (count * hidden == 0) return cudaSuccess;
  return with_type(table_type, [&](auto te) {
    using E = typename decltype(te)::type;
    return with_type(out_type, [&](auto to) {
      using O = typename decltype(to)::type;
      lookup_kernel<E, O><<<grid_for(count * hidden), kThreads, 0, stream>>>(ids, static_cast<const E*>(table), scale,
                                                                             static_cast<O*>(out), count, vocab, hidden);
      return cudaGetLastError();
    });
  });
}

cudaError_t embedding_grad(const std::int32_t* order, const std::int32_t* seg_ids, const std::int32_t* starts,
                           std::int64_t segments, const void* d_out, DType d_out_type, float scale, void* d_table,
                           DType d_table_type, std::int64_t hidden, cudaStream_t stream) {
  if (segments == 0 || hidden == 0) return cudaSuccess;
  const int threads = hidden <= 128 ? 128 : 256;
  const dim3 grid(static_cast<unsigned>(segments), static_cast<unsigned>((hidden + threads - 1) / threads));
  return with_type(d_out_type, [&](auto tg) {
    using G = typename decltype(tg)::type;
    return with_type(d_table_type, [&](auto td) {
      using D = typename decltype(td)::type;
      grad_kernel<G, D><<<grid, threads, 0, stream>>>(order, seg_ids, starts, static_cast<const G*>(d_out), scale,
                                                      static_cast<D*>(d_table), hidden);
      return cudaGetLastError();
    });
  });
}

cudaError_t row_logsumexp(const void* logits, DType logits_type, float* lse, std::int64_t rows, std::int64_t vocab,
                          cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  return with_type(logits_type, [&](auto tl) {
    using L = typename decltype(tl)::type;
    lse_kernel<L><<<row_blocks(rows), kThreads, 0, stream>>>(static_cast<const L*>(logits), lse, rows, vocab);
    return cudaGetLastError();
  });
}

cudaError_t softmax_chunk(const void* logits, DType logits_type, const float* lse, std::int64_t rows,
                          std::int64_t vocab, std::int64_t v0, std::int64_t c, void* p, DType p_type,
                          cudaStream_t stream) {
  if (rows * c == 0) return cudaSuccess;
  return with_type(logits_type, [&](auto tl) {
    using L = typename decltype(tl)::type;
    return with_type(p_type, [&](auto tp) {
      using P = typename decltype(tp)::type;
      softmax_chunk_kernel<L, P><<<grid_for(rows * c), kThreads, 0, stream>>>(static_cast<const L*>(logits), lse, rows,
                                                                              vocab, v0, c, static_cast<P*>(p));
      return cudaGetLastError();
    });
  });
}

cudaError_t scale_f32(const float* acc, float scale, void* out, DType out_type, std::int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  return with_type(out_type, [&](auto to) {
    using O = typename decltype(to)::type;
    scale_kernel<O><<<grid_for(n), kThreads, 0, stream>>>(acc, scale, static_cast<O*>(out), n);
    return cudaGetLastError();
  });
}

cudaError_t row_dot(const void* a, DType a_type, const void* b, DType b_type, float* rho, std::int64_t rows,
                    std::int64_t hidden, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  const int threads = hidden <= 64 ? 32 : hidden <= 256 ? 64 : hidden <= 1024 ? 128 : 256;
  return with_type(a_type, [&](auto ta) {
    using A = typename decltype(ta)::type;
    return with_type(b_type, [&](auto tb) {
      using B = typename decltype(tb)::type;
      row_dot_kernel<A, B><<<row_blocks(rows), threads, 0, stream>>>(static_cast<const A*>(a),
                                                                     static_cast<const B*>(b), rho, rows, hidden);
      return cudaGetLastError();
    });
  });
}

cudaError_t soft_logits_grad(const void* logits, DType logits_type, const float* lse, const float* dp,
                             const float* rho, std::int64_t rows, std::int64_t vocab, std::int64_t v0, std::int64_t c,
                             void* d_logits, DType d_logits_type, cudaStream_t stream) {
  if (rows * c == 0) return cudaSuccess;
  return with_type(logits_type, [&](auto tl) {
    using L = typename decltype(tl)::type;
    return with_type(d_logits_type, [&](auto td) {
      using DL = typename decltype(td)::type;
      logits_grad_kernel<L, DL><<<grid_for(rows * c), kThreads, 0, stream>>>(
          static_cast<const L*>(logits), lse, dp, rho, rows, vocab, v0, c, static_cast<DL*>(d_logits));
      return cudaGetLastError();
    });
  });
}

cudaError_t add_f32(const float* src, void* dst, DType dst_type, std::int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  return with_type(dst_type, [&](auto td) {
    using D = typename decltype(td)::type;
    add_kernel<D><<<grid_for(n), kThreads, 0, stream>>>(src, static_cast<D*>(dst), n);
    return cudaGetLastError();
  });
}

}  // namespace dg::cuda::kernels
