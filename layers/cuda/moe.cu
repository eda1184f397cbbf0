// MoE kernels: the fused router and its backward, the stable counting sort of (token, slot) pairs, the
// row gather / combine kernels, and the grouped expert GEMM. Launchers: layers/cuda/moe_kernels.h.
// Every output element is written by exactly one thread and every sum runs in a fixed order (shuffle
// butterflies and shared-memory trees of fixed shape, sequential loops): no float atomics anywhere.
#include <cuda_bf16.h>
#include <mma.h>

#include <climits>
#include <cmath>
#include <type_traits>

#include "layers/cuda/moe_kernels.h"

namespace dg::cuda::kernels {

namespace {

using bf16 = __nv_bfloat16;
constexpr unsigned kFull = 0xffffffffu;

template <class T>
__device__ __forceinline__ float to_f(T v) {
  if constexpr (std::is_same_v<T, float>) return v;
  else return __bfloat162float(v);
}

template <class T>
__device__ __forceinline__ T from_f(float v) {
  if constexpr (std::is_same_v<T, float>) return v;
  else return __float2bfloat16_rn(v);
}

template <class T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFull, v, o));
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, every thread calls it); red: 32 shared slots.
template <class T>
__device__ T block_sum(T v, T* red) {
  v = warp_sum(v);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  __syncthreads();  // the previous call's readers of red[0] are done
  if (lane == 0) red[warp] = v;
  __syncthreads();
  if (warp == 0) {
    T r = lane < warps ? red[lane] : T(0);
    r = warp_sum(r);
    if (lane == 0) red[0] = r;
  }
  __syncthreads();
  return red[0];
}

// Calls f(T{}) with T the element type of a bf16 or f32 dtype.
template <class F>
cudaError_t with_float_type(DType t, F&& f) {
  switch (t) {
    case DType::F32: return f(float{});
    case DType::BF16: return f(bf16{});
    default: return cudaErrorInvalidValue;
  }
}

// Allows `bytes` of dynamic shared memory for `kernel` (above the 48 KiB default when needed).
template <class K>
cudaError_t allow_smem(K kernel, std::size_t bytes) {
  if (bytes <= 48u * 1024u) return cudaSuccess;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
}

// ---- router ----------------------------------------------------------------------------------------------

constexpr int kRouterThreads = 256;
constexpr int kRouterMaxTokens = 8;  // tokens per block: the projection is read once per block

// Tokens per block so that the per-block shared memory (`floats_per_token` floats each) stays within
// 96 KiB (opted in above the 48 KiB default; A100 allows 163 KiB per block, H100 227 KiB): 8 tokens of
// H = 2816, E = 128, so the projection is read from L2 once per 8 tokens.
constexpr std::int64_t kRouterSmemBudget = 96 * 1024;
int router_tokens_per_block(std::int64_t floats_per_token) {
  const std::int64_t fit = kRouterSmemBudget / (4 * floats_per_token);
  return static_cast<int>(fit < 1 ? 1 : (fit > kRouterMaxTokens ? kRouterMaxTokens : fit));
}

template <class TR, class TW>
__global__ void __launch_bounds__(kRouterThreads)
    router_kernel(const TR* __restrict__ r, const TW* __restrict__ scale, const TW* __restrict__ proj,
                  const TW* __restrict__ pes, int tokens, int hidden, int experts, int top_k, int tpb, float eps,
                  float inv_sqrt_h, std::int32_t* __restrict__ ids, float* __restrict__ weights,
                  float* __restrict__ probs, float* __restrict__ rstd, std::int32_t* bad_token) {
  extern __shared__ float smem[];
  float* z = smem;                                                      // [tpb][H] router input
  float* lg = z + static_cast<std::size_t>(tpb) * hidden;                 // [tpb][E] logits, then probs
  int* taken = reinterpret_cast<int*>(lg + static_cast<std::size_t>(tpb) * experts);  // [tpb][E]
  const int t0 = blockIdx.x * tpb, nt = min(tpb, tokens - t0);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;

  // 1. rstd = (mean r² + eps)^-1/2 and z = ((r · rstd) ⊙ scale) · H^-1/2, one warp per token
  for (int i = warp; i < nt; i += warps) {
    const TR* row = r + static_cast<std::size_t>(t0 + i) * hidden;
    float ss = 0.f;
    for (int h = lane; h < hidden; h += 32) {
      const float v = to_f(row[h]);
      ss = fmaf(v, v, ss);
    }
    ss = warp_sum(ss);
    const float rs = powf(ss / static_cast<float>(hidden) + eps, -0.5f);
    if (lane == 0) rstd[t0 + i] = rs;
    for (int h = lane; h < hidden; h += 32) z[i * hidden + h] = ((to_f(row[h]) * rs) * to_f(scale[h])) * inv_sqrt_h;
  }
  __syncthreads();

  // 2. logits = z · projᵀ: warps over experts, each proj row read once for all tokens of the block
  for (int e = warp; e < experts; e += warps) {
    float acc[kRouterMaxTokens];
#pragma unroll
    for (int i = 0; i < kRouterMaxTokens; ++i) acc[i] = 0.f;
    const TW* pe = proj + static_cast<std::size_t>(e) * hidden;
    for (int h = lane; h < hidden; h += 32) {
      const float w = to_f(pe[h]);
#pragma unroll
      for (int i = 0; i < kRouterMaxTokens; ++i)
        if (i < nt) acc[i] = fmaf(z[i * hidden + h], w, acc[i]);
    }
#pragma unroll
    for (int i = 0; i < kRouterMaxTokens; ++i) {
      const float s = warp_sum(acc[i]);
      if (lane == 0 && i < nt) lg[i * experts + e] = s;
    }
  }
  __syncthreads();

  // 3. softmax over E, top-k (ties to the lower id), renormalise, per_expert_scale; one warp per token
  for (int i = warp; i < nt; i += warps) {
    const int t = t0 + i;
    float* l = lg + i * experts;
    int* tk = taken + i * experts;
    float* prow = probs + static_cast<std::size_t>(t) * experts;
    bool finite = true;
    float m = -INFINITY;
    for (int e = lane; e < experts; e += 32) {
      finite = finite && isfinite(l[e]);
      m = fmaxf(m, l[e]);
    }
    if (!__all_sync(kFull, finite)) {  // reported by the host, which reads the raw logits from probs
      for (int e = lane; e < experts; e += 32) prow[e] = l[e];
      if (lane == 0) atomicMin(bad_token, t);
      continue;
    }
    m = warp_max(m);
    float sum = 0.f;
    for (int e = lane; e < experts; e += 32) sum += expf(l[e] - m);
    sum = warp_sum(sum);
    const float inv = 1.0f / sum;
    for (int e = lane; e < experts; e += 32) {
      const float p = expf(l[e] - m) * inv;
      l[e] = p;
      prow[e] = p;
      tk[e] = 0;
    }
    __syncwarp();
    float picked = 0.f;  // identical on every lane, summed in slot order like the CPU
    for (int j = 0; j < top_k; ++j) {
      float bp = -1.f;  // probabilities are >= 0: any untaken expert beats this
      int bi = INT_MAX;
      for (int e = lane; e < experts; e += 32)
        if (!tk[e] && l[e] > bp) bp = l[e], bi = e;  // ascending e: strict '>' keeps the lower id
      for (int o = 16; o > 0; o >>= 1) {
        const float op = __shfl_xor_sync(kFull, bp, o);
        const int oi = __shfl_xor_sync(kFull, bi, o);
        if (op > bp || (op == bp && oi < bi)) bp = op, bi = oi;
      }
      if (lane == 0) {
        tk[bi] = 1;
        ids[static_cast<std::size_t>(t) * top_k + j] = bi;
      }
      picked += bp;
      __syncwarp();
    }
    if (lane == 0) {
      const float denom = fmaxf(picked, 1e-20f);
      for (int j = 0; j < top_k; ++j) {
        const std::size_t at = static_cast<std::size_t>(t) * top_k + j;
        const int e = ids[at];
        weights[at] = (l[e] / denom) * to_f(pes[e]);
      }
    }
  }
}

template <class TR, class TW>
__global__ void __launch_bounds__(kRouterThreads)
    router_backward_kernel(const TR* __restrict__ r, const TW* __restrict__ scale, const TW* __restrict__ proj,
                           const TW* __restrict__ pes, const std::int32_t* __restrict__ ids,
                           const float* __restrict__ probs, const float* __restrict__ rstd,
                           const float* __restrict__ dw, int tokens, int hidden, int experts, int top_k, int tpb,
                           float inv_sqrt_h, TR* __restrict__ dr, float* __restrict__ dlogits, float* __restrict__ zout,
                           float* __restrict__ scale_terms, float* __restrict__ pes_terms) {
  extern __shared__ float smem[];
  float* dl = smem;                                              // [tpb][E] d(logits)
  float* dxh = dl + static_cast<std::size_t>(tpb) * experts;      // [tpb][H] d(x̂)
  __shared__ float p_dot_dp[kRouterMaxTokens];
  const int t0 = blockIdx.x * tpb, nt = min(tpb, tokens - t0);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;

  // 1. d(logits) = P ⊙ (dP - <P, dP>), dP nonzero on the k chosen experts (the CPU's formulas and order)
  for (int i = warp; i < nt; i += warps) {
    const int t = t0 + i;
    const float* p = probs + static_cast<std::size_t>(t) * experts;
    const std::int32_t* id = ids + static_cast<std::size_t>(t) * top_k;
    const float* g = dw + static_cast<std::size_t>(t) * top_k;
    float* d = dl + i * experts;
    for (int e = lane; e < experts; e += 32) d[e] = 0.f;
    __syncwarp();
    if (lane == 0) {
      float s = 0.f;
      for (int j = 0; j < top_k; ++j)
        if (id[j] >= 0 && id[j] < experts) s += p[id[j]];
      const float denom = fmaxf(s, 1e-20f);
      double dq_dot_q = 0;
      for (int j = 0; j < top_k; ++j) {
        float term = 0.f;
        if (id[j] >= 0 && id[j] < experts) {
          const float q = p[id[j]] / denom;
          const float dq = g[j] * to_f(pes[id[j]]);
          dq_dot_q += static_cast<double>(dq) * q;
          term = g[j] * q;
        }
        if (pes_terms) pes_terms[static_cast<std::size_t>(t) * top_k + j] = term;
      }
      double pdp = 0;
      for (int j = 0; j < top_k; ++j) {
        if (id[j] < 0 || id[j] >= experts) continue;
        const float dq = g[j] * to_f(pes[id[j]]);
        const float dp = static_cast<float>((dq - dq_dot_q) / denom);
        d[id[j]] = dp;
        pdp += static_cast<double>(p[id[j]]) * dp;
      }
      p_dot_dp[i] = static_cast<float>(pdp);
    }
    __syncwarp();
    const float pd = p_dot_dp[i];
    for (int e = lane; e < experts; e += 32) {
      const float v = p[e] * (d[e] - pd);
      d[e] = v;
      if (dlogits) dlogits[static_cast<std::size_t>(t) * experts + e] = v;
    }
  }
  __syncthreads();

  // 2. dz = d(logits) · proj, column by column (proj read once per block); dx̂ = dz ⊙ scale · H^-1/2
  for (int h = threadIdx.x; h < hidden; h += blockDim.x) {
    float acc[kRouterMaxTokens];
#pragma unroll
    for (int i = 0; i < kRouterMaxTokens; ++i) acc[i] = 0.f;
    for (int e = 0; e < experts; ++e) {
      const float w = to_f(proj[static_cast<std::size_t>(e) * hidden + h]);
#pragma unroll
      for (int i = 0; i < kRouterMaxTokens; ++i)
        if (i < nt) acc[i] = fmaf(dl[i * experts + e], w, acc[i]);
    }
    const float sc = to_f(scale[h]);
#pragma unroll
    for (int i = 0; i < kRouterMaxTokens; ++i) {
      if (i < nt) {
        const std::size_t at = static_cast<std::size_t>(t0 + i) * hidden + h;
        const float xhat = to_f(r[at]) * rstd[t0 + i];
        if (scale_terms) scale_terms[at] = acc[i] * xhat * inv_sqrt_h;
        if (zout) zout[at] = (xhat * sc) * inv_sqrt_h;
        dxh[i * hidden + h] = acc[i] * sc * inv_sqrt_h;
      }
    }
  }
  __syncthreads();

  // 3. dr = rstd · (dx̂ - x̂ · mean(dx̂ ⊙ x̂)), one warp per token
  for (int i = warp; i < nt; i += warps) {
    const int t = t0 + i;
    const float rs = rstd[t];
    const TR* row = r + static_cast<std::size_t>(t) * hidden;
    float dot = 0.f;
    for (int h = lane; h < hidden; h += 32) dot = fmaf(dxh[i * hidden + h], to_f(row[h]) * rs, dot);
    dot = warp_sum(dot);
    const float mean = dot / static_cast<float>(hidden);
    TR* out = dr + static_cast<std::size_t>(t) * hidden;
    for (int h = lane; h < hidden; h += 32) out[h] = from_f<TR>(rs * (dxh[i * hidden + h] - to_f(row[h]) * rs * mean));
  }
}

__global__ void column_sum_add_kernel(const float* __restrict__ x, std::int64_t rows, std::int64_t cols,
                                      float* __restrict__ out) {
  __shared__ float part[8][33];
  const std::int64_t c = blockIdx.x * 32LL + threadIdx.x;
  float s = 0.f;
  if (c < cols)
    for (std::int64_t r = threadIdx.y; r < rows; r += 8) s += x[r * cols + c];
  part[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && c < cols) {
    float total = 0.f;
    for (int i = 0; i < 8; ++i) total += part[i][threadIdx.x];
    out[c] += total;
  }
}

__global__ void expert_sum_add_kernel(const float* __restrict__ terms, const std::int32_t* __restrict__ ids,
                                      std::int64_t count, float* __restrict__ out) {
  __shared__ float red[32];
  const int e = blockIdx.x;
  float s = 0.f;
  for (std::int64_t i = threadIdx.x; i < count; i += blockDim.x)
    if (ids[i] == e) s += terms[i];
  s = block_sum(s, red);
  if (threadIdx.x == 0) out[e] += s;
}

// ---- permutation plan ------------------------------------------------------------------------------------

constexpr int kPermuteThreads = static_cast<int>(kPermuteChunk);
constexpr int kPermuteWarps = kPermuteThreads / 32;

__device__ __forceinline__ bool token_kept(const void* mask, bool mask_i32, int t) {
  if (!mask) return true;
  return mask_i32 ? static_cast<const std::int32_t*>(mask)[t] != 0 : static_cast<const float*>(mask)[t] != 0.0f;
}

// hist[chunk][e] = kept pairs of expert e in the chunk; bad ids recorded in status[1].
__global__ void __launch_bounds__(kPermuteThreads)
    permute_hist_kernel(const std::int32_t* __restrict__ ids, int pairs, int top_k, int experts, const void* mask,
                        bool mask_i32, std::int32_t* __restrict__ hist, std::int32_t* status) {
  extern __shared__ int counts[];  // [E]
  for (int e = threadIdx.x; e < experts; e += blockDim.x) counts[e] = 0;
  __syncthreads();
  const int p = blockIdx.x * kPermuteThreads + threadIdx.x;
  if (p < pairs && token_kept(mask, mask_i32, p / top_k)) {
    const int id = ids[p];
    if (id < 0 || id >= experts) atomicMin(&status[1], p);
    else atomicAdd(&counts[id], 1);  // integer: the total does not depend on the order
  }
  __syncthreads();
  for (int e = threadIdx.x; e < experts; e += blockDim.x)
    hist[static_cast<std::size_t>(blockIdx.x) * experts + e] = counts[e];
}

// In place: hist[c][e] -> Σ_{c' < c} hist[c'][e]; counts[e] = column totals; base[e] = Σ_{e' < e}
// counts[e']; status[0] = N. One block.
__global__ void permute_scan_kernel(std::int32_t* __restrict__ hist, int chunks, int experts,
                                    std::int32_t* __restrict__ base, std::int32_t* __restrict__ counts,
                                    std::int32_t* status) {
  for (int e = threadIdx.x; e < experts; e += blockDim.x) {
    int run = 0;
    for (int c = 0; c < chunks; ++c) {
      const std::size_t at = static_cast<std::size_t>(c) * experts + e;
      const int v = hist[at];
      hist[at] = run;
      run += v;
    }
    counts[e] = run;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int run = 0;
    for (int e = 0; e < experts; ++e) {
      base[e] = run;
      run += counts[e];
    }
    status[0] = run;
  }
}

// Places every kept pair at base[e] + (kept pairs of e in earlier chunks) + (rank among the chunk's
// earlier pairs of e): rows ascend by expert and, within one expert, by pair index (t, j).
__global__ void __launch_bounds__(kPermuteThreads)
    permute_place_kernel(const std::int32_t* __restrict__ ids, int pairs, int top_k, int experts, const void* mask,
                         bool mask_i32, const std::int32_t* __restrict__ hist, const std::int32_t* __restrict__ base,
                         std::int32_t* __restrict__ row_token, std::int32_t* __restrict__ slot_row) {
  extern __shared__ int warp_counts[];  // [warps][E]
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int i = threadIdx.x; i < kPermuteWarps * experts; i += blockDim.x) warp_counts[i] = 0;
  __syncthreads();
  const int p = blockIdx.x * kPermuteThreads + threadIdx.x;
  int id = -1;
  if (p < pairs && token_kept(mask, mask_i32, p / top_k)) {
    const int v = ids[p];
    if (v >= 0 && v < experts) id = v;
  }
  const unsigned peers = __match_any_sync(kFull, id);
  const unsigned lower = peers & ((1u << lane) - 1u);
  if (id >= 0 && lower == 0) warp_counts[warp * experts + id] = __popc(peers);
  __syncthreads();
  if (p >= pairs) return;
  if (id < 0) {
    slot_row[p] = -1;
    return;
  }
  int pos = __popc(lower);
  for (int w = 0; w < warp; ++w) pos += warp_counts[w * experts + id];
  const int row = base[id] + hist[static_cast<std::size_t>(blockIdx.x) * experts + id] + pos;
  slot_row[p] = row;
  row_token[row] = p / top_k;
}

// ---- gather / combine ------------------------------------------------------------------------------------

constexpr int kRowThreads = 128;

template <class U>
__global__ void __launch_bounds__(kRowThreads)
    gather_rows_kernel(const U* __restrict__ x, std::int64_t tokens, std::int64_t units,
                       const std::int32_t* __restrict__ row_token, U* __restrict__ xp) {
  const std::int64_t i = blockIdx.x;
  const int t = row_token[i];
  U* dst = xp + i * units;
  if (t < 0 || t >= tokens) {
    for (std::int64_t u = threadIdx.x; u < units; u += blockDim.x) dst[u] = U{};
    return;
  }
  const U* src = x + static_cast<std::int64_t>(t) * units;
  for (std::int64_t u = threadIdx.x; u < units; u += blockDim.x) dst[u] = src[u];
}

template <class TI, class TO>
__global__ void __launch_bounds__(kRowThreads)
    gather_backward_kernel(const TI* __restrict__ dxp, std::int64_t n, const std::int32_t* __restrict__ slot_row,
                           int top_k, std::int64_t hidden, TO* __restrict__ dx) {
  const std::int64_t t = blockIdx.x;
  const std::int32_t* sr = slot_row + t * top_k;
  for (std::int64_t h = threadIdx.x; h < hidden; h += blockDim.x) {
    float acc = 0.f;
    for (int j = 0; j < top_k; ++j) {
      const int i = sr[j];
      if (i >= 0 && i < n) acc = __fadd_rn(acc, to_f(dxp[static_cast<std::int64_t>(i) * hidden + h]));
    }
    dx[t * hidden + h] = from_f<TO>(acc);
  }
}

template <class TY, class TO>
__global__ void __launch_bounds__(kRowThreads)
    combine_kernel(const TY* __restrict__ y, std::int64_t n, const float* __restrict__ weights,
                   const std::int32_t* __restrict__ slot_row, int top_k, std::int64_t hidden, TO* __restrict__ out) {
  const std::int64_t t = blockIdx.x;
  const std::int32_t* sr = slot_row + t * top_k;
  const float* w = weights + t * top_k;
  for (std::int64_t h = threadIdx.x; h < hidden; h += blockDim.x) {
    float acc = 0.f;
    for (int j = 0; j < top_k; ++j) {
      const int i = sr[j];
      // the CPU's order and roundings: acc += w · y, a rounded product then a rounded sum
      if (i >= 0 && i < n) acc = __fadd_rn(acc, __fmul_rn(w[j], to_f(y[static_cast<std::int64_t>(i) * hidden + h])));
    }
    out[t * hidden + h] = from_f<TO>(acc);
  }
}

template <class TG, class TY, class TD>
__global__ void __launch_bounds__(kRowThreads)
    combine_backward_kernel(const TG* __restrict__ dout, const TY* __restrict__ y, std::int64_t n,
                            const float* __restrict__ weights, const std::int32_t* __restrict__ slot_row, int top_k,
                            std::int64_t hidden, TD* __restrict__ dy, float* __restrict__ d_weights) {
  __shared__ float red[32];
  const std::int64_t t = blockIdx.x;
  const TG* g = dout + t * hidden;
  for (int j = 0; j < top_k; ++j) {
    const int i = slot_row[t * top_k + j];
    if (i < 0 || i >= n) {  // uniform over the block
      if (threadIdx.x == 0) d_weights[t * top_k + j] = 0.f;
      continue;
    }
    const float wj = weights[t * top_k + j];
    const TY* yr = y + static_cast<std::int64_t>(i) * hidden;
    TD* dyr = dy + static_cast<std::int64_t>(i) * hidden;
    float part = 0.f;
    for (std::int64_t h = threadIdx.x; h < hidden; h += blockDim.x) {
      const float gv = to_f(g[h]);
      dyr[h] = from_f<TD>(__fmul_rn(wj, gv));
      part = fmaf(gv, to_f(yr[h]), part);
    }
    const float s = block_sum(part, red);
    if (threadIdx.x == 0) d_weights[t * top_k + j] = s;
  }
}

// ---- grouped GEMM ----------------------------------------------------------------------------------------
// One thread block per output tile (BM x BN) of one problem; K is walked in BK steps with the next
// step's global loads held in registers while the current shared-memory tile is multiplied. bf16
// operands use tensor cores (WMMA 16x16x16, fp32 accumulators; 8 warps in a 2 x 4 grid, 64 x 32 per
// warp); f32 operands use fp32 FMA (16 x 16 threads, 8 x 8 outputs each). A tile's K loop is fixed, so
// results are independent of the launch. Shared tiles are stored as "regions": the global rows of
// op(X)'s storage, row-major with a padded pitch, which WMMA reads as row- or column-major.

constexpr int BM = static_cast<int>(kGroupedTileRows), BN = static_cast<int>(kGroupedTileCols), BK = 32;
constexpr int kGemmThreads = 256, kPad = 8;
constexpr int kVecsPerThread = (BM * BK / 8) / kGemmThreads;
static_assert(BM == 128 && BN == 128 && BM * BK == BK * BN && kVecsPerThread == 2, "tile shape");

// Shared-memory region of A (trans: the storage is [K, M]) and of B (trans: the storage is [N, K]).
template <bool TRANS>
struct RegionA {
  static constexpr int R = TRANS ? BK : BM, C = TRANS ? BM : BK, P = C + kPad;
};
template <bool TRANS>
struct RegionB {
  static constexpr int R = TRANS ? BN : BK, C = TRANS ? BK : BN, P = C + kPad;
};

template <class T>
__device__ __forceinline__ unsigned elem_bits(const T* p) {
  if constexpr (std::is_same_v<T, float>) return __float_as_uint(*p);
  else return __bfloat16_as_ushort(*p);
}

// Moves one R x C region (8-element vectors along C) from global memory into registers and then into
// shared memory. Region element (rr, cc) is element (row0 + rr, col0 + cc) of a row-major matrix with
// leading dimension ld and rows_lim x cols_lim valid elements; the rest reads as zero.
template <class T, int R, int C>
struct RegionLoader {
  static constexpr int kWords = sizeof(T) / 2;  // uint4 words per 8-element vector (1 bf16, 2 f32)
  static_assert(R * C == kVecsPerThread * kGemmThreads * 8, "region size");
  uint4 v[kVecsPerThread][kWords];

  __device__ __forceinline__ void load(const T* base, std::int64_t ld, int row0, int col0, int rows_lim, int cols_lim,
                                       bool vec_ok) {
#pragma unroll
    for (int q = 0; q < kVecsPerThread; ++q) {
      const int vi = threadIdx.x + q * kGemmThreads;
      const int rr = vi / (C / 8), cc = (vi % (C / 8)) * 8;
      const int gr = row0 + rr, gc = col0 + cc;
      const T* p = base + static_cast<std::int64_t>(gr) * ld + gc;
      if (gr < rows_lim && vec_ok && gc + 8 <= cols_lim) {
#pragma unroll
        for (int w = 0; w < kWords; ++w) v[q][w] = __ldg(reinterpret_cast<const uint4*>(p) + w);
      } else {
        unsigned bits[8];
#pragma unroll
        for (int e = 0; e < 8; ++e) bits[e] = (gr < rows_lim && gc + e < cols_lim) ? elem_bits(p + e) : 0u;
        if constexpr (kWords == 1) {
          v[q][0] = make_uint4(bits[0] | (bits[1] << 16), bits[2] | (bits[3] << 16), bits[4] | (bits[5] << 16),
                               bits[6] | (bits[7] << 16));
        } else {
          v[q][0] = make_uint4(bits[0], bits[1], bits[2], bits[3]);
          v[q][1] = make_uint4(bits[4], bits[5], bits[6], bits[7]);
        }
      }
    }
  }

  __device__ __forceinline__ void store(T* smem) const {
#pragma unroll
    for (int q = 0; q < kVecsPerThread; ++q) {
      const int vi = threadIdx.x + q * kGemmThreads;
      const int rr = vi / (C / 8), cc = (vi % (C / 8)) * 8;
      uint4* dst = reinterpret_cast<uint4*>(smem + rr * (C + kPad) + cc);
#pragma unroll
      for (int w = 0; w < kWords; ++w) dst[w] = v[q][w];
    }
  }
};

template <class TC>
__device__ __forceinline__ void epilogue_store(TC* c, std::int64_t ldc, std::int64_t i, std::int64_t j, float acc,
                                               float alpha, float beta) {
  float v = alpha * acc;
  if (beta != 0.f) v += beta * to_f(c[i * ldc + j]);  // beta = 0: C is not read (NaN-safe)
  c[i * ldc + j] = from_f<TC>(v);
}

template <class T, class TC, bool TA, bool TB>
__global__ void __launch_bounds__(kGemmThreads)
    grouped_gemm_kernel(const T* __restrict__ a, const T* __restrict__ b, TC* __restrict__ c, std::int64_t lda,
                        std::int64_t ldb, std::int64_t ldc, const GroupedProblem* __restrict__ problems,
                        const GroupedTile* __restrict__ tiles, float alpha, float beta, bool vec_a, bool vec_b) {
  using RA = RegionA<TA>;
  using RB = RegionB<TB>;
  __shared__ __align__(128) T As[RA::R * RA::P];
  __shared__ __align__(128) T Bs[RB::R * RB::P];

  const GroupedTile tile = tiles[blockIdx.x];
  const GroupedProblem pr = problems[tile.problem];
  const int m0 = tile.tile_m * BM, n0 = tile.tile_n * BN;
  const T* A = a + pr.a_offset;
  const T* B = b + pr.b_offset;
  TC* C = c + pr.c_offset;
  const int num_k = (pr.k + BK - 1) / BK;

  RegionLoader<T, RA::R, RA::C> la;
  RegionLoader<T, RB::R, RB::C> lb;
  auto load = [&](int k0) {
    if constexpr (TA) la.load(A, lda, k0, m0, pr.k, pr.m, vec_a);
    else la.load(A, lda, m0, k0, pr.m, pr.k, vec_a);
    if constexpr (TB) lb.load(B, ldb, n0, k0, pr.n, pr.k, vec_b);
    else lb.load(B, ldb, k0, n0, pr.k, pr.n, vec_b);
  };

  if constexpr (std::is_same_v<T, bf16>) {
    namespace wmma = nvcuda::wmma;
    using LayoutA = std::conditional_t<TA, wmma::col_major, wmma::row_major>;
    using LayoutB = std::conditional_t<TB, wmma::col_major, wmma::row_major>;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int wm = (warp >> 2) * 64, wn = (warp & 3) * 32;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[4][2];
#pragma unroll
    for (int fi = 0; fi < 4; ++fi)
#pragma unroll
      for (int fj = 0; fj < 2; ++fj) wmma::fill_fragment(acc[fi][fj], 0.0f);

    if (num_k > 0) load(0);
    for (int kt = 0; kt < num_k; ++kt) {
      la.store(As);
      lb.store(Bs);
      __syncthreads();
      if (kt + 1 < num_k) load((kt + 1) * BK);
#pragma unroll
      for (int kk = 0; kk < BK; kk += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, LayoutA> af[4];
        wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, LayoutB> bfr[2];
#pragma unroll
        for (int fi = 0; fi < 4; ++fi) {
          const int i = wm + 16 * fi;
          wmma::load_matrix_sync(af[fi], As + (TA ? kk * RA::P + i : i * RA::P + kk), RA::P);
        }
#pragma unroll
        for (int fj = 0; fj < 2; ++fj) {
          const int j = wn + 16 * fj;
          wmma::load_matrix_sync(bfr[fj], Bs + (TB ? j * RB::P + kk : kk * RB::P + j), RB::P);
        }
#pragma unroll
        for (int fi = 0; fi < 4; ++fi)
#pragma unroll
          for (int fj = 0; fj < 2; ++fj) wmma::mma_sync(acc[fi][fj], af[fi], bfr[fj], acc[fi][fj]);
      }
      __syncthreads();
    }

    constexpr int kEpiPitch = 20;  // floats; a multiple of 4 as WMMA requires
    __shared__ __align__(128) float epi[kGemmThreads / 32][16 * kEpiPitch];
    float* mine = epi[warp];
    const int rr = lane >> 1, cc = (lane & 1) * 8;
#pragma unroll
    for (int fi = 0; fi < 4; ++fi)
#pragma unroll
      for (int fj = 0; fj < 2; ++fj) {
        wmma::store_matrix_sync(mine, acc[fi][fj], kEpiPitch, wmma::mem_row_major);
        __syncwarp();
        const int i = m0 + wm + 16 * fi + rr;
        if (i < pr.m)
#pragma unroll
          for (int e = 0; e < 8; ++e) {
            const int j = n0 + wn + 16 * fj + cc + e;
            if (j < pr.n) epilogue_store(C, ldc, i, j, mine[rr * kEpiPitch + cc + e], alpha, beta);
          }
        __syncwarp();
      }
  } else {
    const int ty = threadIdx.x >> 4, tx = threadIdx.x & 15;
    float acc[8][8];
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
      for (int j = 0; j < 8; ++j) acc[i][j] = 0.f;

    if (num_k > 0) load(0);
    for (int kt = 0; kt < num_k; ++kt) {
      la.store(As);
      lb.store(Bs);
      __syncthreads();
      if (kt + 1 < num_k) load((kt + 1) * BK);
#pragma unroll 4
      for (int kk = 0; kk < BK; ++kk) {
        float av[8], bv[8];
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          const int row = ty + 16 * i;
          av[i] = TA ? As[kk * RA::P + row] : As[row * RA::P + kk];
        }
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          const int col = tx + 16 * j;
          bv[j] = TB ? Bs[col * RB::P + kk] : Bs[kk * RB::P + col];
        }
#pragma unroll
        for (int i = 0; i < 8; ++i)
#pragma unroll
          for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
      }
      __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int gi = m0 + ty + 16 * i;
      if (gi >= pr.m) continue;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const int gj = n0 + tx + 16 * j;
        if (gj < pr.n) epilogue_store(C, ldc, gi, gj, acc[i][j], alpha, beta);
      }
    }
  }
}

template <class T, class TC>
cudaError_t launch_grouped(const void* a, const void* b, void* c, bool trans_a, bool trans_b, std::int64_t lda,
                           std::int64_t ldb, std::int64_t ldc, const GroupedProblem* problems, const GroupedTile* tiles,
                           std::int64_t tile_count, float alpha, float beta, cudaStream_t stream) {
  // 16-byte vector loads need 16-byte aligned rows: every problem offset is a multiple of its ld
  constexpr std::int64_t per16 = 16 / static_cast<std::int64_t>(sizeof(T));
  const bool vec_a = reinterpret_cast<std::uintptr_t>(a) % 16 == 0 && lda % per16 == 0;
  const bool vec_b = reinterpret_cast<std::uintptr_t>(b) % 16 == 0 && ldb % per16 == 0;
  const T* pa = static_cast<const T*>(a);
  const T* pb = static_cast<const T*>(b);
  TC* pc = static_cast<TC*>(c);
  const dim3 grid(static_cast<unsigned>(tile_count));
  if (!trans_a && !trans_b)
    grouped_gemm_kernel<T, TC, false, false>
        <<<grid, kGemmThreads, 0, stream>>>(pa, pb, pc, lda, ldb, ldc, problems, tiles, alpha, beta, vec_a, vec_b);
  else if (!trans_a && trans_b)
    grouped_gemm_kernel<T, TC, false, true>
        <<<grid, kGemmThreads, 0, stream>>>(pa, pb, pc, lda, ldb, ldc, problems, tiles, alpha, beta, vec_a, vec_b);
  else if (trans_a && !trans_b)
    grouped_gemm_kernel<T, TC, true, false>
        <<<grid, kGemmThreads, 0, stream>>>(pa, pb, pc, lda, ldb, ldc, problems, tiles, alpha, beta, vec_a, vec_b);
  else
    return cudaErrorInvalidValue;  // no pass of the grouped GEMM transposes both operands
  return cudaGetLastError();
}

}  // namespace

// ---- launchers ---------------------------------------------------------------------------------------------

cudaError_t moe_router(const void* r, DType r_type, const void* scale, const void* proj, const void* per_expert_scale,
                       DType w_type, std::int64_t tokens, std::int64_t hidden, std::int64_t experts,
                       std::int64_t top_k, float eps, std::int32_t* ids, float* weights, float* probs, float* rstd,
                       std::int32_t* bad_token, cudaStream_t stream) {
  if (tokens == 0) return cudaSuccess;
  const int tpb = router_tokens_per_block(hidden + 2 * experts);
  const std::size_t smem = static_cast<std::size_t>(tpb) * static_cast<std::size_t>(hidden + 2 * experts) * 4;
  const float inv_sqrt_h = static_cast<float>(1.0 / std::sqrt(static_cast<double>(hidden)));
  const unsigned blocks = static_cast<unsigned>((tokens + tpb - 1) / tpb);
  return with_float_type(r_type, [&](auto rt) {
    using TR = decltype(rt);
    return with_float_type(w_type, [&](auto wt) {
      using TW = decltype(wt);
      auto kernel = router_kernel<TR, TW>;
      if (const cudaError_t e = allow_smem(kernel, smem); e != cudaSuccess) return e;
      kernel<<<blocks, kRouterThreads, smem, stream>>>(
          static_cast<const TR*>(r), static_cast<const TW*>(scale), static_cast<const TW*>(proj),
          static_cast<const TW*>(per_expert_scale), static_cast<int>(tokens), static_cast<int>(hidden),
          static_cast<int>(experts), static_cast<int>(top_k), tpb, eps, inv_sqrt_h, ids, weights, probs, rstd,
          bad_token);
      return cudaGetLastError();
    });
  });
}

cudaError_t moe_router_backward(const void* r, DType r_type, const void* scale, const void* proj,
                                const void* per_expert_scale, DType w_type, const std::int32_t* ids,
                                const float* probs, const float* rstd, const float* d_weights, std::int64_t tokens,
                                std::int64_t hidden, std::int64_t experts, std::int64_t top_k, void* dr,
                                float* dlogits, float* z, float* scale_terms, float* pes_terms, cudaStream_t stream) {
  if (tokens == 0) return cudaSuccess;
  const int tpb = router_tokens_per_block(hidden + experts);
  const std::size_t smem = static_cast<std::size_t>(tpb) * static_cast<std::size_t>(hidden + experts) * 4;
  const float inv_sqrt_h = static_cast<float>(1.0 / std::sqrt(static_cast<double>(hidden)));
  const unsigned blocks = static_cast<unsigned>((tokens + tpb - 1) / tpb);
  return with_float_type(r_type, [&](auto rt) {
    using TR = decltype(rt);
    return with_float_type(w_type, [&](auto wt) {
      using TW = decltype(wt);
      auto kernel = router_backward_kernel<TR, TW>;
      if (const cudaError_t e = allow_smem(kernel, smem); e != cudaSuccess) return e;
      kernel<<<blocks, kRouterThreads, smem, stream>>>(
          static_cast<const TR*>(r), static_cast<const TW*>(scale), static_cast<const TW*>(proj),
          static_cast<const TW*>(per_expert_scale), ids, probs, rstd, d_weights, static_cast<int>(tokens),
          static_cast<int>(hidden), static_cast<int>(experts), static_cast<int>(top_k), tpb, inv_sqrt_h,
          static_cast<TR*>(dr), dlogits, z, scale_terms, pes_terms);
      return cudaGetLastError();
    });
  });
}

cudaError_t column_sum_add(const float* x, std::int64_t rows, std::int64_t cols, float* out, cudaStream_t stream) {
  if (cols == 0) return cudaSuccess;
  column_sum_add_kernel<<<static_cast<unsigned>((cols + 31) / 32), dim3(32, 8), 0, stream>>>(x, rows, cols, out);
  return cudaGetLastError();
}

cudaError_t expert_sum_add(const float* terms, const std::int32_t* ids, std::int64_t count, std::int64_t experts,
                           float* out, cudaStream_t stream) {
  if (experts == 0) return cudaSuccess;
  expert_sum_add_kernel<<<static_cast<unsigned>(experts), 256, 0, stream>>>(terms, ids, count, out);
  return cudaGetLastError();
}

cudaError_t moe_permute_plan(const std::int32_t* ids, std::int64_t tokens, std::int64_t top_k, std::int64_t experts,
                             const void* mask, DType mask_type, std::int32_t* scratch, std::int32_t* counts,
                             std::int32_t* row_token, std::int32_t* slot_row, std::int32_t* status,
                             cudaStream_t stream) {
  const std::int64_t pairs = tokens * top_k, chunks = moe_permute_chunks(pairs);
  std::int32_t* hist = scratch;
  std::int32_t* base = scratch + chunks * experts;
  const bool mask_i32 = mask_type == DType::I32;
  if (pairs > 0) {
    if (const cudaError_t e = cudaMemsetAsync(row_token, 0xff, static_cast<std::size_t>(pairs) * 4, stream);
        e != cudaSuccess)
      return e;
    const std::size_t hist_smem = static_cast<std::size_t>(experts) * 4;
    if (const cudaError_t e = allow_smem(permute_hist_kernel, hist_smem); e != cudaSuccess) return e;
    permute_hist_kernel<<<static_cast<unsigned>(chunks), kPermuteThreads, hist_smem, stream>>>(
        ids, static_cast<int>(pairs), static_cast<int>(top_k), static_cast<int>(experts), mask, mask_i32, hist, status);
    if (const cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  }
  permute_scan_kernel<<<1, 256, 0, stream>>>(hist, static_cast<int>(chunks), static_cast<int>(experts), base, counts,
                                             status);
  if (const cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  if (pairs > 0) {
    const std::size_t place_smem = static_cast<std::size_t>(kPermuteWarps) * static_cast<std::size_t>(experts) * 4;
    if (const cudaError_t e = allow_smem(permute_place_kernel, place_smem); e != cudaSuccess) return e;
    permute_place_kernel<<<static_cast<unsigned>(chunks), kPermuteThreads, place_smem, stream>>>(
        ids, static_cast<int>(pairs), static_cast<int>(top_k), static_cast<int>(experts), mask, mask_i32, hist, base,
        row_token, slot_row);
    return cudaGetLastError();
  }
  return cudaSuccess;
}

cudaError_t moe_gather(const void* x, std::int64_t tokens, std::int64_t hidden, std::size_t elem_bytes,
                       const std::int32_t* row_token, void* xp, std::int64_t n, cudaStream_t stream) {
  if (n == 0 || hidden == 0) return cudaSuccess;
  const std::size_t row_bytes = static_cast<std::size_t>(hidden) * elem_bytes;
  const auto aligned = [&](std::size_t unit) {
    return row_bytes % unit == 0 && reinterpret_cast<std::uintptr_t>(x) % unit == 0 &&
           reinterpret_cast<std::uintptr_t>(xp) % unit == 0;
  };
  const unsigned blocks = static_cast<unsigned>(n);
  if (aligned(16))
    gather_rows_kernel<uint4><<<blocks, kRowThreads, 0, stream>>>(
        static_cast<const uint4*>(x), tokens, static_cast<std::int64_t>(row_bytes / 16), row_token,
        static_cast<uint4*>(xp));
  else if (aligned(4))
    gather_rows_kernel<unsigned><<<blocks, kRowThreads, 0, stream>>>(
        static_cast<const unsigned*>(x), tokens, static_cast<std::int64_t>(row_bytes / 4), row_token,
        static_cast<unsigned*>(xp));
  else if (aligned(2))
    gather_rows_kernel<unsigned short><<<blocks, kRowThreads, 0, stream>>>(
        static_cast<const unsigned short*>(x), tokens, static_cast<std::int64_t>(row_bytes / 2), row_token,
        static_cast<unsigned short*>(xp));
  else
    return cudaErrorMisalignedAddress;
  return cudaGetLastError();
}

cudaError_t moe_gather_backward(const void* dxp, DType dxp_type, std::int64_t n, const std::int32_t* slot_row,
                                std::int64_t tokens, std::int64_t top_k, std::int64_t hidden, void* dx, DType dx_type,
                                cudaStream_t stream) {
  if (tokens == 0 || hidden == 0) return cudaSuccess;
  return with_float_type(dxp_type, [&](auto it) {
    using TI = decltype(it);
    return with_float_type(dx_type, [&](auto ot) {
      using TO = decltype(ot);
      gather_backward_kernel<TI, TO><<<static_cast<unsigned>(tokens), kRowThreads, 0, stream>>>(
          static_cast<const TI*>(dxp), n, slot_row, static_cast<int>(top_k), hidden, static_cast<TO*>(dx));
      return cudaGetLastError();
    });
  });
}

cudaError_t moe_combine(const void* y, DType y_type, std::int64_t n, const float* weights,
                        const std::int32_t* slot_row, std::int64_t tokens, std::int64_t top_k, std::int64_t hidden,
                        void* out, DType out_type, cudaStream_t stream) {
  if (tokens == 0 || hidden == 0) return cudaSuccess;
  return with_float_type(y_type, [&](auto yt) {
    using TY = decltype(yt);
    return with_float_type(out_type, [&](auto ot) {
      using TO = decltype(ot);
      combine_kernel<TY, TO><<<static_cast<unsigned>(tokens), kRowThreads, 0, stream>>>(
          static_cast<const TY*>(y), n, weights, slot_row, static_cast<int>(top_k), hidden, static_cast<TO*>(out));
      return cudaGetLastError();
    });
  });
}

cudaError_t moe_combine_backward(const void* dout, DType dout_type, const void* y, DType y_type, std::int64_t n,
                                 const float* weights, const std::int32_t* slot_row, std::int64_t tokens,
                                 std::int64_t top_k, std::int64_t hidden, void* dy, DType dy_type, float* d_weights,
                                 cudaStream_t stream) {
  if (tokens == 0) return cudaSuccess;
  return with_float_type(dout_type, [&](auto gt) {
    using TG = decltype(gt);
    return with_float_type(y_type, [&](auto yt) {
      using TY = decltype(yt);
      return with_float_type(dy_type, [&](auto dt) {
        using TD = decltype(dt);
        combine_backward_kernel<TG, TY, TD><<<static_cast<unsigned>(tokens), kRowThreads, 0, stream>>>(
            static_cast<const TG*>(dout), static_cast<const TY*>(y), n, weights, slot_row, static_cast<int>(top_k),
            hidden, static_cast<TD*>(dy), d_weights);
        return cudaGetLastError();
      });
    });
  });
}

cudaError_t grouped_gemm(const void* a, const void* b, DType in_type, void* c, DType c_type, bool trans_a,
                         bool trans_b, std::int64_t lda, std::int64_t ldb, std::int64_t ldc,
                         const GroupedProblem* problems, const GroupedTile* tiles, std::int64_t tile_count, float alpha,
                         float beta, cudaStream_t stream) {
  if (tile_count == 0) return cudaSuccess;
  return with_float_type(in_type, [&](auto it) {
    using T = decltype(it);
    return with_float_type(c_type, [&](auto ct) {
      using TC = decltype(ct);
      return launch_grouped<T, TC>(a, b, c, trans_a, trans_b, lda, ldb, ldc, problems, tiles, tile_count, alpha, beta,
                                   stream);
    });
  });
}

}  // namespace dg::cuda::kernels
