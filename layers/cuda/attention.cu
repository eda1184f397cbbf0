// Attention kernels: a flash-style forward (query tiles x key tiles in shared memory, online softmax
// in fp32, no [S, S] score matrix, writes out and lse) and a deterministic backward that recomputes
// the probabilities from q, k and lse (flash-attention 2 style), in three kernels:
//   delta:  D = rowsum(d_out * out), one warp per row;
//   dK/dV:  one CTA per (key tile, kv head, batch entry) loops over every query tile that sees the
//           key tile and every query head of the kv group, accumulating dK, dV in shared memory in a
//           fixed order; own keys are written, cached keys accumulated into d_k_cache / d_v_cache
//           (each key belongs to exactly one CTA: no atomics);
//   dQ:     one CTA per (query tile, head, batch entry) loops over the key tiles.
// Inputs are bf16 or f32, converted to fp32 as they are staged in shared memory; all arithmetic is
// fp32 on CUDA cores. Masking uses the decoded rule of each query row (AttnRowRule, attn_rule.h):
// key tiles no row of a query tile sees are skipped whole, the rest masked per element (rule and key
// padding).
//
// Tensor cores: the five tile products (S = Q K^T and dP = dO V^T in tile_dot; O += P V, dQ += dS K,
// dV += P^T dO, dK += dS^T Q in tile_av) are where mma.sync (sm_80) / wgmma (sm_90a) would go, with
// bf16 Q/K/V/dO tiles in shared memory and P, dS rounded to bf16 as FlashAttention does; the online
// softmax, masking and the reduction structure around them would stay as they are.
#include <cuda_bf16.h>

#include <cmath>

#include "layers/cuda/attention_kernels.h"

namespace dg::cuda::kernels {

namespace {

constexpr int kThreads = 128;  // 4 warps per CTA, every kernel
constexpr int kWarps = kThreads / 32;
constexpr int kChunk = 32;  // head-dim columns staged at a time (one per lane in tile_av)
constexpr int kChunkLd = kChunk + 1;  // padded row of a staged chunk (no bank conflicts in tile_dot)
static_assert(kChunk == 32, "tile_av maps one staged column to one lane");

constexpr int kFwdQ = 32, kFwdK = 32;  // forward: query rows x keys per tile
constexpr int kDkvQ = 32, kDkvK = 32;  // dK/dV pass
constexpr int kDqQ = 16, kDqK = 32;    // dQ pass

// ---- element access -----------------------------------------------------------------------------

__device__ __forceinline__ float ldf(const void* p, bool bf16, std::int64_t i) {
  return bf16 ? __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]) : static_cast<const float*>(p)[i];
}

__device__ __forceinline__ void stf(void* p, bool bf16, std::int64_t i, float v) {
  if (bf16)
    static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v);
  else
    static_cast<float*>(p)[i] = v;
}

// Offset of row (b, i, head n) of a [B, S, nh, hd] tensor.
__device__ __forceinline__ std::int64_t q_off(const AttnShape& d, std::int64_t b, std::int64_t i, std::int64_t n) {
  return ((b * d.len + i) * d.heads + n) * d.head_dim;
}

// Offset of key `key` of [cache ; own], kv head g, in the cache tensor (key < Tc) or the own one.
__device__ __forceinline__ std::int64_t key_off(const AttnShape& d, std::int64_t b, std::int64_t key, std::int64_t g) {
  return key < d.cache_len ? ((b * d.cache_len + key) * d.kv_heads + g) * d.head_dim
                           : ((b * d.len + key - d.cache_len) * d.kv_heads + g) * d.head_dim;
}

__device__ __forceinline__ std::int64_t min64(std::int64_t a, std::int64_t b) { return a < b ? a : b; }

// Stages columns [x0, x0 + w) of query rows [q0, q0 + ROWS) of head n into dst[ROWS][kChunkLd]
// (zeros past the chunk width and past the last row).
template <int ROWS>
__device__ void load_query_chunk(float* dst, const void* src, bool bf16, const AttnShape& d, std::int64_t b,
                                 std::int64_t n, std::int64_t q0, int x0, int w) {
  for (int i = static_cast<int>(threadIdx.x); i < ROWS * kChunk; i += kThreads) {
    const int r = i / kChunk, x = i % kChunk;
    const std::int64_t q = q0 + r;
    dst[r * kChunkLd + x] = x < w && q < d.len ? ldf(src, bf16, q_off(d, b, q, n) + x0 + x) : 0.f;
  }
}

// Stages columns [x0, x0 + w) of keys [k0, k0 + ROWS) of [cache ; own], kv head g, into dst[ROWS][kChunkLd].
template <int ROWS>
__device__ void load_key_chunk(float* dst, const void* cache, const void* own, bool bf16, const AttnShape& d,
                               std::int64_t b, std::int64_t g, std::int64_t k0, int x0, int w) {
  const std::int64_t tk = d.cache_len + d.len;
  for (int i = static_cast<int>(threadIdx.x); i < ROWS * kChunk; i += kThreads) {
    const int r = i / kChunk, x = i % kChunk;
    const std::int64_t key = k0 + r;
    float val = 0.f;
    if (x < w && key < tk) val = ldf(key < d.cache_len ? cache : own, bf16, key_off(d, b, key, g) + x0 + x);
    dst[r * kChunkLd + x] = val;
  }
}

// Stages whole query rows [q0, q0 + ROWS) of head n into dst[ROWS][ld] (zero rows past the end).
template <int ROWS>
__device__ void load_query_rows(float* dst, int ld, const void* src, bool bf16, const AttnShape& d, std::int64_t b,
                                std::int64_t n, std::int64_t q0) {
  const int hd = static_cast<int>(d.head_dim);
  for (int i = static_cast<int>(threadIdx.x); i < ROWS * hd; i += kThreads) {
    const int r = i / hd, x = i % hd;
    const std::int64_t q = q0 + r;
    dst[r * ld + x] = q < d.len ? ldf(src, bf16, q_off(d, b, q, n) + x) : 0.f;
  }
}

// Key range [range[0], range[1]) covering every key some row of the tile sees (single thread).
__device__ void key_range(const AttnRowRule* rules, int rows, std::int64_t tk, std::int64_t* range) {
  std::int64_t lo = tk, hi = 0;
  for (int r = 0; r < rows; ++r)
    for (int s = 0; s < 2; ++s)
      if (rules[r].lo[s] < rules[r].hi[s]) {
        lo = rules[r].lo[s] < lo ? rules[r].lo[s] : lo;
        hi = rules[r].hi[s] > hi ? rules[r].hi[s] : hi;
      }
  range[0] = lo;
  range[1] = hi;
}

// Reductions over the 8 consecutive lanes that hold one row of a micro-tiled score tile (fixed
// butterfly order: deterministic).
__device__ __forceinline__ float row_max8(float v) {
  for (int off = 4; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
  return v;
}
__device__ __forceinline__ float row_sum8(float v) {
  for (int off = 4; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// ---- tile products (CUDA cores; the place for mma / wgmma) ---------------------------------------

// Score-like tiles [BM][BN] spread over a 16 x 8 thread grid: thread (tm, tn) = (t / 8, t % 8) holds
// rows tm + i*16 (i < RM) and columns tn + j*8 (j < RN); the 8 lanes of a row are consecutive.
template <int BM, int BN>
struct Micro {
  static constexpr int TN = 8, TM = kThreads / TN, RM = BM / TM, RN = BN / TN;
  static_assert(BM % TM == 0 && BN % TN == 0, "tile must split over the 16 x 8 thread grid");
};

// acc[i][j] += sum_{x < width} A[m][x] * B[n][x] for the thread's (m, n) (A: [BM][lda], B: [BN][ldb]).
template <int BM, int BN>
__device__ __forceinline__ void tile_dot(const float* A, int lda, const float* B, int ldb, int width,
                                         float (&acc)[Micro<BM, BN>::RM][Micro<BM, BN>::RN]) {
  using M = Micro<BM, BN>;
  const int tn = static_cast<int>(threadIdx.x) % M::TN, tm = static_cast<int>(threadIdx.x) / M::TN;
  for (int x = 0; x < width; ++x) {
    float av[M::RM], bv[M::RN];
#pragma unroll
    for (int i = 0; i < M::RM; ++i) av[i] = A[(tm + i * M::TM) * lda + x];
#pragma unroll
    for (int j = 0; j < M::RN; ++j) bv[j] = B[(tn + j * M::TN) * ldb + x];
#pragma unroll
    for (int i = 0; i < M::RM; ++i)
#pragma unroll
      for (int j = 0; j < M::RN; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
  }
}

// acc[i] += sum_{n < BN} P(m, n) * X[n][lane] for rows m = warp + i*4 and the lane's column (< width),
// where P(m, n) = P[m*pm + n*pn] (so a transposed P is read with pm = 1).
template <int BM, int BN>
__device__ __forceinline__ void tile_av(const float* P, int pm, int pn, const float* X, int ldx, int width,
                                        float (&acc)[BM / kWarps]) {
  const int lane = static_cast<int>(threadIdx.x) % 32, w = static_cast<int>(threadIdx.x) / 32;
  if (lane >= width) return;
  for (int n = 0; n < BN; ++n) {
    const float x = X[n * ldx + lane];
#pragma unroll
    for (int i = 0; i < BM / kWarps; ++i) acc[i] = fmaf(P[(w + i * kWarps) * pm + n * pn], x, acc[i]);
  }
}

// ---- shared memory layouts ---------------------------------------------------------------------------
// Every layout starts with the per-row rules (AttnRowRule, 32 bytes each), then f32 arrays, then i32.

std::size_t fwd_smem(std::int64_t hd) {
  const std::size_t BQ = kFwdQ, BK = kFwdK, h = static_cast<std::size_t>(hd);
  return BQ * sizeof(AttnRowRule) +
         sizeof(float) * (BQ * (h + 1) + BQ * h + 2 * BK * kChunkLd + BQ * BK + 3 * BQ) + sizeof(int) * BK;
}
std::size_t dkv_smem(std::int64_t hd) {
  const std::size_t BQ = kDkvQ, BK = kDkvK, h = static_cast<std::size_t>(hd);
  return BQ * sizeof(AttnRowRule) +
         sizeof(float) * (2 * BK * h + 2 * BK * kChunkLd + 2 * BQ * kChunkLd + 2 * BQ * BK + 2 * BQ) +
         sizeof(int) * BK;
}
std::size_t dq_smem(std::int64_t hd) {
  const std::size_t BQ = kDqQ, BK = kDqK, h = static_cast<std::size_t>(hd);
  return BQ * sizeof(AttnRowRule) +
         sizeof(float) * (2 * BQ * (h + 1) + BQ * h + 2 * BK * kChunkLd + BQ * BK + 2 * BQ) + sizeof(int) * BK;
}

// ---- forward -----------------------------------------------------------------------------------------
// CTA (query tile of kFwdQ rows, head n, batch entry b). Q stays in shared memory (fp32), K and V
// are staged kChunk columns at a time; the output accumulator O [BQ][hd] lives in shared memory and
// is rescaled by exp(m_old - m_new) per key tile (online softmax).
__global__ void __launch_bounds__(kThreads) attn_forward_kernel(const AttnForwardArgs a) {
  constexpr int BQ = kFwdQ, BK = kFwdK;
  using M = Micro<BQ, BK>;
  const AttnInputs& in = a.in;
  const AttnShape& d = in.d;
  const int t = static_cast<int>(threadIdx.x), hd = static_cast<int>(d.head_dim), ldq = hd + 1;
  const std::int64_t b = blockIdx.z, n = blockIdx.y, q0 = static_cast<std::int64_t>(blockIdx.x) * BQ;
  const std::int64_t g = n / (d.heads / d.kv_heads), tk = d.cache_len + d.len;

  extern __shared__ float4 smem[];
  AttnRowRule* s_rule = reinterpret_cast<AttnRowRule*>(smem);
  float* sQ = reinterpret_cast<float*>(s_rule + BQ);  // [BQ][hd + 1]
  float* sO = sQ + BQ * ldq;                          // [BQ][hd]
  float* sK = sO + BQ * hd;                           // [BK][kChunkLd]
  float* sV = sK + BK * kChunkLd;                     // [BK][kChunkLd]
  float* sP = sV + BK * kChunkLd;                     // [BQ][BK]
  float* sM = sP + BQ * BK;                           // running max per row
  float* sL = sM + BQ;                                // running sum per row
  float* sAlpha = sL + BQ;                            // rescale factor of the current tile
  int* sValid = reinterpret_cast<int*>(sAlpha + BQ);  // [BK] key padding of the current tile
  __shared__ std::int64_t s_range[2];

  const AttnExample ex = in.examples ? in.examples[b] : AttnExample{};
  if (t < BQ) {
    const std::int64_t q = q0 + t;
    s_rule[t] = q < d.len ? attn_row_rule(in.mask, ex, d.cache_len, d.len, q) : AttnRowRule{};
    sM[t] = -INFINITY;
    sL[t] = 0.f;
  }
  load_query_rows<BQ>(sQ, ldq, in.q, in.in_bf16, d, b, n, q0);
  for (int i = t; i < BQ * hd; i += kThreads) sO[i] = 0.f;
  __syncthreads();
  if (t == 0) {
    key_range(s_rule, BQ, tk, s_range);
    // Key tiles start on a grid anchored at the entry's first valid key (its left padding), so that the
    // keys a row sums in one tile, and with them the row's rounding, do not depend on how much padding
    // its batch mates force on it: the forward is batch-invariant. Keys before the anchor are padding.
    std::int64_t first = 0;
    if (in.key_valid != nullptr)
      while (first < tk && in.key_valid[b * tk + first] == 0) ++first;
    const std::int64_t anchor = first % BK;
    s_range[0] = s_range[0] < anchor ? anchor : anchor + (s_range[0] - anchor) / BK * BK;
  }
  __syncthreads();

  const int tn = t % M::TN, tm = t / M::TN, lane = t % 32, wq = t / 32;
  for (std::int64_t k0 = s_range[0]; k0 < s_range[1]; k0 += BK) {
    const bool any = t < BQ && attn_row_any(s_rule[t], k0, min64(k0 + BK, tk));
    if (!__syncthreads_or(any)) continue;  // no row of the tile sees a key of this tile
    if (t < BK) {
      const std::int64_t key = k0 + t;
      sValid[t] = key < tk && (in.key_valid == nullptr || in.key_valid[b * tk + key] != 0);
    }
    // S = Q K^T over the head dim, chunk by chunk
    float acc[M::RM][M::RN] = {};
    for (int x0 = 0; x0 < hd; x0 += kChunk) {
      const int w = hd - x0 < kChunk ? hd - x0 : kChunk;
      load_key_chunk<BK>(sK, in.k_cache, in.k, in.in_bf16, d, b, g, k0, x0, w);
      __syncthreads();
      tile_dot<BQ, BK>(sQ + x0, ldq, sK, kChunkLd, w, acc);
      __syncthreads();
    }
    __syncthreads();  // sValid visible (also when hd = 0)
    // mask, online softmax: P = exp(s - m_new) into sP, per-row m, l and alpha
#pragma unroll
    for (int i = 0; i < M::RM; ++i) {
      const int r = tm + i * M::TM;
      const AttnRowRule rule = s_rule[r];
      float s[M::RN];
      float mx = -INFINITY;
#pragma unroll
      for (int j = 0; j < M::RN; ++j) {
        const int c = tn + j * M::TN;
        const bool vis = sValid[c] != 0 && attn_row_visible(rule, k0 + c);
        s[j] = vis ? in.scale * acc[i][j] : -INFINITY;
        mx = fmaxf(mx, s[j]);
      }
      mx = row_max8(mx);
      const float m_old = sM[r], m_new = fmaxf(m_old, mx);
      float sum = 0.f;
#pragma unroll
      for (int j = 0; j < M::RN; ++j) {
        const float p = s[j] == -INFINITY ? 0.f : expf(s[j] - m_new);
        sP[r * BK + tn + j * M::TN] = p;
        sum += p;
      }
      sum = row_sum8(sum);
      const float alpha = m_old == -INFINITY ? 0.f : expf(m_old - m_new);
      __syncwarp();  // every lane of the row has read sM[r]
      if (tn == 0) {
        sM[r] = m_new;
        sL[r] = sL[r] * alpha + sum;
        sAlpha[r] = alpha;
      }
    }
    __syncthreads();
    // O = alpha * O + P V, chunk by chunk
    for (int x0 = 0; x0 < hd; x0 += kChunk) {
      const int w = hd - x0 < kChunk ? hd - x0 : kChunk;
      load_key_chunk<BK>(sV, in.v_cache, in.v, in.in_bf16, d, b, g, k0, x0, w);
      __syncthreads();
      float o[BQ / kWarps] = {};
      tile_av<BQ, BK>(sP, BK, 1, sV, kChunkLd, w, o);
      if (lane < w)
#pragma unroll
        for (int i = 0; i < BQ / kWarps; ++i) {
          const int r = wq + i * kWarps;
          float& dst = sO[r * hd + x0 + lane];
          dst = dst * sAlpha[r] + o[i];
        }
      __syncthreads();
    }
  }
  __syncthreads();

  for (int i = t; i < BQ * hd; i += kThreads) {
    const int r = i / hd, x = i % hd;
    const std::int64_t q = q0 + r;
    if (q >= d.len) continue;
    const float l = sL[r];
    stf(a.out, a.out_bf16, q_off(d, b, q, n) + x, l > 0.f ? sO[i] / l : 0.f);
  }
  if (a.lse != nullptr && t < BQ && q0 + t < d.len)
    a.lse[(b * d.heads + n) * d.len + q0 + t] = sL[t] > 0.f ? sM[t] + logf(sL[t]) : INFINITY;
}

// ---- backward ----------------------------------------------------------------------------------------

// D[(b*nh + n)*S + i] = sum_x d_out[b, i, n, x] * out[b, i, n, x]; one warp per row.
__global__ void __launch_bounds__(kThreads) attn_delta_kernel(const AttnBackwardArgs a) {
  const AttnShape& d = a.in.d;
  const std::int64_t rows = d.batch * d.heads * d.len;
  const std::int64_t row = static_cast<std::int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  if (row >= rows) return;  // whole warps leave together
  const std::int64_t i = row % d.len, n = row / d.len % d.heads, b = row / (d.len * d.heads);
  const std::int64_t base = q_off(d, b, i, n);
  float s = 0.f;
  for (std::int64_t x = lane; x < d.head_dim; x += 32)
    s = fmaf(ldf(a.d_out, a.d_out_bf16, base + x), ldf(a.out, a.out_bf16, base + x), s);
  for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
  if (lane == 0) a.delta[row] = s;
}

// dK, dV of one key tile: CTA (key tile of kDkvK keys of [cache ; own], kv head g, batch entry b).
// For every query tile that sees the key tile and every query head n of the group (fixed order):
//   S = Q K^T, dP = dO V^T (staged by chunks), P = exp(scale S - lse) masked, dS = P (dP - D),
//   dV += P^T dO, dK += scale dS^T Q (Q, dO staged again by chunks).
// The accumulators dK, dV [BK][hd] stay in shared memory; at the end own keys are written and cached
// keys added to d_k_cache / d_v_cache.
__global__ void __launch_bounds__(kThreads) attn_dkv_kernel(const AttnBackwardArgs a) {
  constexpr int BQ = kDkvQ, BK = kDkvK;
  using M = Micro<BQ, BK>;
  const AttnInputs& in = a.in;
  const AttnShape& d = in.d;
  const int t = static_cast<int>(threadIdx.x), hd = static_cast<int>(d.head_dim);
  const std::int64_t b = blockIdx.z, g = blockIdx.y, k0 = static_cast<std::int64_t>(blockIdx.x) * BK;
  const std::int64_t tk = d.cache_len + d.len, group = d.heads / d.kv_heads, k_stop = min64(k0 + BK, tk);
  if (k_stop <= d.cache_len && a.d_k_cache == nullptr && a.d_v_cache == nullptr) return;  // nobody wants these

  extern __shared__ float4 smem[];
  AttnRowRule* s_rule = reinterpret_cast<AttnRowRule*>(smem);
  float* sdK = reinterpret_cast<float*>(s_rule + BQ);  // [BK][hd] accumulators
  float* sdV = sdK + BK * hd;                          // [BK][hd]
  float* sK = sdV + BK * hd;                           // [BK][kChunkLd]
  float* sV = sK + BK * kChunkLd;                      // [BK][kChunkLd]
  float* sQ = sV + BK * kChunkLd;                      // [BQ][kChunkLd]
  float* sdO = sQ + BQ * kChunkLd;                     // [BQ][kChunkLd]
  float* sP = sdO + BQ * kChunkLd;                     // [BQ][BK]
  float* sdS = sP + BQ * BK;                           // [BQ][BK]
  float* sLse = sdS + BQ * BK;                         // [BQ]
  float* sD = sLse + BQ;                               // [BQ]
  int* sValid = reinterpret_cast<int*>(sD + BQ);       // [BK]

  const AttnExample ex = in.examples ? in.examples[b] : AttnExample{};
  if (t < BK) {
    const std::int64_t key = k0 + t;
    sValid[t] = key < tk && (in.key_valid == nullptr || in.key_valid[b * tk + key] != 0);
  }
  for (int i = t; i < BK * hd; i += kThreads) sdK[i] = sdV[i] = 0.f;

  const int tn = t % M::TN, tm = t / M::TN, lane = t % 32, wk = t / 32;
  for (std::int64_t q0 = 0; q0 < d.len; q0 += BQ) {
    bool any = false;
    if (t < BQ) {
      const std::int64_t q = q0 + t;
      const AttnRowRule rule = q < d.len ? attn_row_rule(in.mask, ex, d.cache_len, d.len, q) : AttnRowRule{};
      s_rule[t] = rule;
      any = attn_row_any(rule, k0, k_stop);
    }
    if (!__syncthreads_or(any)) continue;  // no query of this tile sees the key tile
    for (std::int64_t hn = 0; hn < group; ++hn) {
      const std::int64_t n = g * group + hn;
      if (t < BQ) {
        const std::int64_t q = q0 + t;
        sLse[t] = q < d.len ? a.lse[(b * d.heads + n) * d.len + q] : INFINITY;
        sD[t] = q < d.len ? a.delta[(b * d.heads + n) * d.len + q] : 0.f;
      }
      float s[M::RM][M::RN] = {}, dp[M::RM][M::RN] = {};
      for (int x0 = 0; x0 < hd; x0 += kChunk) {
        const int w = hd - x0 < kChunk ? hd - x0 : kChunk;
        load_query_chunk<BQ>(sQ, in.q, in.in_bf16, d, b, n, q0, x0, w);
        load_query_chunk<BQ>(sdO, a.d_out, a.d_out_bf16, d, b, n, q0, x0, w);
        load_key_chunk<BK>(sK, in.k_cache, in.k, in.in_bf16, d, b, g, k0, x0, w);
        load_key_chunk<BK>(sV, in.v_cache, in.v, in.in_bf16, d, b, g, k0, x0, w);
        __syncthreads();
        tile_dot<BQ, BK>(sQ, kChunkLd, sK, kChunkLd, w, s);
        tile_dot<BQ, BK>(sdO, kChunkLd, sV, kChunkLd, w, dp);
        __syncthreads();
      }
      __syncthreads();  // sLse, sD visible (also when hd = 0)
#pragma unroll
      for (int i = 0; i < M::RM; ++i) {
        const int r = tm + i * M::TM;
        const AttnRowRule rule = s_rule[r];
        const float row_lse = sLse[r], row_d = sD[r];
#pragma unroll
        for (int j = 0; j < M::RN; ++j) {
          const int c = tn + j * M::TN;
          const bool vis = sValid[c] != 0 && attn_row_visible(rule, k0 + c);
          const float p = vis ? expf(in.scale * s[i][j] - row_lse) : 0.f;  // lse = +inf (empty row): 0
          sP[r * BK + c] = p;
          sdS[r * BK + c] = p * (dp[i][j] - row_d);
        }
      }
      __syncthreads();
      for (int x0 = 0; x0 < hd; x0 += kChunk) {
        const int w = hd - x0 < kChunk ? hd - x0 : kChunk;
        load_query_chunk<BQ>(sQ, in.q, in.in_bf16, d, b, n, q0, x0, w);
        load_query_chunk<BQ>(sdO, a.d_out, a.d_out_bf16, d, b, n, q0, x0, w);
        __syncthreads();
        float av[BK / kWarps] = {}, ak[BK / kWarps] = {};
        tile_av<BK, BQ>(sP, 1, BK, sdO, kChunkLd, w, av);   // P^T dO
        tile_av<BK, BQ>(sdS, 1, BK, sQ, kChunkLd, w, ak);   // dS^T Q
        if (lane < w)
#pragma unroll
          for (int i = 0; i < BK / kWarps; ++i) {
            const int kr = wk + i * kWarps;
            sdV[kr * hd + x0 + lane] += av[i];
            sdK[kr * hd + x0 + lane] += in.scale * ak[i];
          }
        __syncthreads();
      }
    }
  }
  __syncthreads();

  for (int i = t; i < BK * hd; i += kThreads) {
    const int r = i / hd, x = i % hd;
    const std::int64_t key = k0 + r;
    if (key >= tk) continue;
    const std::int64_t off = key_off(d, b, key, g) + x;
    if (key >= d.cache_len) {  // own key: written
      stf(a.d_k, a.d_k_bf16, off, sdK[i]);
      stf(a.d_v, a.d_v_bf16, off, sdV[i]);
    } else {  // cached key: accumulated
      if (a.d_k_cache != nullptr)
        stf(a.d_k_cache, a.d_k_cache_bf16, off, ldf(a.d_k_cache, a.d_k_cache_bf16, off) + sdK[i]);
      if (a.d_v_cache != nullptr)
        stf(a.d_v_cache, a.d_v_cache_bf16, off, ldf(a.d_v_cache, a.d_v_cache_bf16, off) + sdV[i]);
    }
  }
}

// dQ of one query tile: CTA (query tile of kDqQ rows, head n, batch entry b). Q, dO and the dQ
// accumulator stay in shared memory; per visible key tile: S, dP (K, V staged by chunks), dS, then
// dQ += scale dS K (K staged again).
__global__ void __launch_bounds__(kThreads) attn_dq_kernel(const AttnBackwardArgs a) {
  constexpr int BQ = kDqQ, BK = kDqK;
  using M = Micro<BQ, BK>;
  const AttnInputs& in = a.in;
  const AttnShape& d = in.d;
  const int t = static_cast<int>(threadIdx.x), hd = static_cast<int>(d.head_dim), ldq = hd + 1;
  const std::int64_t b = blockIdx.z, n = blockIdx.y, q0 = static_cast<std::int64_t>(blockIdx.x) * BQ;
  const std::int64_t g = n / (d.heads / d.kv_heads), tk = d.cache_len + d.len;

  extern __shared__ float4 smem[];
  AttnRowRule* s_rule = reinterpret_cast<AttnRowRule*>(smem);
  float* sQ = reinterpret_cast<float*>(s_rule + BQ);  // [BQ][hd + 1]
  float* sdO = sQ + BQ * ldq;                         // [BQ][hd + 1]
  float* sdQ = sdO + BQ * ldq;                        // [BQ][hd] accumulator
  float* sK = sdQ + BQ * hd;                          // [BK][kChunkLd]
  float* sV = sK + BK * kChunkLd;                     // [BK][kChunkLd]
  float* sdS = sV + BK * kChunkLd;                    // [BQ][BK]
  float* sLse = sdS + BQ * BK;                        // [BQ]
  float* sD = sLse + BQ;                              // [BQ]
  int* sValid = reinterpret_cast<int*>(sD + BQ);      // [BK]
  __shared__ std::int64_t s_range[2];

  const AttnExample ex = in.examples ? in.examples[b] : AttnExample{};
  if (t < BQ) {
    const std::int64_t q = q0 + t;
    s_rule[t] = q < d.len ? attn_row_rule(in.mask, ex, d.cache_len, d.len, q) : AttnRowRule{};
    sLse[t] = q < d.len ? a.lse[(b * d.heads + n) * d.len + q] : INFINITY;
    sD[t] = q < d.len ? a.delta[(b * d.heads + n) * d.len + q] : 0.f;
  }
  load_query_rows<BQ>(sQ, ldq, in.q, in.in_bf16, d, b, n, q0);
  load_query_rows<BQ>(sdO, ldq, a.d_out, a.d_out_bf16, d, b, n, q0);
  for (int i = t; i < BQ * hd; i += kThreads) sdQ[i] = 0.f;
  __syncthreads();
  if (t == 0) key_range(s_rule, BQ, tk, s_range);
  __syncthreads();

  const int tn = t % M::TN, tm = t / M::TN, lane = t % 32, wq = t / 32;
  for (std::int64_t k0 = s_range[0] / BK * BK; k0 < s_range[1]; k0 += BK) {
    const bool any = t < BQ && attn_row_any(s_rule[t], k0, min64(k0 + BK, tk));
    if (!__syncthreads_or(any)) continue;
    if (t < BK) {
      const std::int64_t key = k0 + t;
      sValid[t] = key < tk && (in.key_valid == nullptr || in.key_valid[b * tk + key] != 0);
    }
    float s[M::RM][M::RN] = {}, dp[M::RM][M::RN] = {};
    for (int x0 = 0; x0 < hd; x0 += kChunk) {
      const int w = hd - x0 < kChunk ? hd - x0 : kChunk;
      load_key_chunk<BK>(sK, in.k_cache, in.k, in.in_bf16, d, b, g, k0, x0, w);
      load_key_chunk<BK>(sV, in.v_cache, in.v, in.in_bf16, d, b, g, k0, x0, w);
      __syncthreads();
      tile_dot<BQ, BK>(sQ + x0, ldq, sK, kChunkLd, w, s);
      tile_dot<BQ, BK>(sdO + x0, ldq, sV, kChunkLd, w, dp);
      __syncthreads();
    }
    __syncthreads();  // sValid visible (also when hd = 0)
#pragma unroll
    for (int i = 0; i < M::RM; ++i) {
      const int r = tm + i * M::TM;
      const AttnRowRule rule = s_rule[r];
#pragma unroll
      for (int j = 0; j < M::RN; ++j) {
        const int c = tn + j * M::TN;
        const bool vis = sValid[c] != 0 && attn_row_visible(rule, k0 + c);
        const float p = vis ? expf(in.scale * s[i][j] - sLse[r]) : 0.f;
        sdS[r * BK + c] = p * (dp[i][j] - sD[r]);
      }
    }
    __syncthreads();
    for (int x0 = 0; x0 < hd; x0 += kChunk) {
      const int w = hd - x0 < kChunk ? hd - x0 : kChunk;
      load_key_chunk<BK>(sK, in.k_cache, in.k, in.in_bf16, d, b, g, k0, x0, w);
      __syncthreads();
      float acc[BQ / kWarps] = {};
      tile_av<BQ, BK>(sdS, BK, 1, sK, kChunkLd, w, acc);
      if (lane < w)
#pragma unroll
        for (int i = 0; i < BQ / kWarps; ++i) sdQ[(wq + i * kWarps) * hd + x0 + lane] += in.scale * acc[i];
      __syncthreads();
    }
  }
  __syncthreads();

  for (int i = t; i < BQ * hd; i += kThreads) {
    const int r = i / hd, x = i % hd;
    const std::int64_t q = q0 + r;
    if (q < d.len) stf(a.d_q, a.d_q_bf16, q_off(d, b, q, n) + x, sdQ[i]);
  }
}

template <class Args>
cudaError_t launch(void (*kernel)(Args), dim3 grid, std::size_t smem, cudaStream_t stream, const Args& args) {
  const cudaError_t e =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (e != cudaSuccess) return e;
  kernel<<<grid, kThreads, smem, stream>>>(args);
  return cudaGetLastError();
}

unsigned blocks(std::int64_t n, std::int64_t per) { return static_cast<unsigned>((n + per - 1) / per); }

}  // namespace

std::size_t attention_smem_bytes(std::int64_t head_dim) {
  std::size_t m = fwd_smem(head_dim);
  if (dkv_smem(head_dim) > m) m = dkv_smem(head_dim);
  if (dq_smem(head_dim) > m) m = dq_smem(head_dim);
  return m + 2 * sizeof(std::int64_t);  // + the static s_range
}

cudaError_t attention_forward(const AttnForwardArgs& a, cudaStream_t stream) {
  const AttnShape& d = a.in.d;
  if (d.batch == 0 || d.len == 0 || d.heads == 0) return cudaSuccess;
  const dim3 grid(blocks(d.len, kFwdQ), static_cast<unsigned>(d.heads), static_cast<unsigned>(d.batch));
  return launch(attn_forward_kernel, grid, fwd_smem(d.head_dim), stream, a);
}

cudaError_t attention_backward(const AttnBackwardArgs& a, cudaStream_t stream) {
  const AttnShape& d = a.in.d;
  if (d.batch == 0 || d.len == 0) return cudaSuccess;  // no query: nothing to write, the caches get += 0
  cudaError_t e = cudaSuccess;
  if (d.heads > 0) {
    attn_delta_kernel<<<blocks(d.batch * d.heads * d.len, kWarps), kThreads, 0, stream>>>(a);
    e = cudaGetLastError();
    if (e != cudaSuccess) return e;
  }
  const dim3 gkv(blocks(d.cache_len + d.len, kDkvK), static_cast<unsigned>(d.kv_heads),
                 static_cast<unsigned>(d.batch));
  e = launch(attn_dkv_kernel, gkv, dkv_smem(d.head_dim), stream, a);  // also writes the zero d_k, d_v of nh = 0
  if (e != cudaSuccess || d.heads == 0) return e;
  const dim3 gq(blocks(d.len, kDqQ), static_cast<unsigned>(d.heads), static_cast<unsigned>(d.batch));
  return launch(attn_dq_kernel, gq, dq_smem(d.head_dim), stream, a);
}

}  // namespace dg::cuda::kernels
