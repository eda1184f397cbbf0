// LM-head kernels: the per-chunk reductions of the fused cross-entropy (streaming log-sum-exp, target
// logit, dlogits), the sampler statistics (entropy, argmax, inverse-CDF sample) and the soft embedding's
// online softmax. The logits chunks themselves come from cuBLASLt. Launchers: layers/cuda/head_kernels.h.
// One block per row; per-thread online states merged by fixed-shape shuffle / shared-memory trees (the
// merges are commutative, so every lane of a butterfly agrees): deterministic, no float atomics.
#include <cuda_bf16.h>

#include <climits>
#include <cmath>
#include <type_traits>

#include "layers/cuda/head_kernels.h"

namespace dg::cuda::kernels {

namespace {

using bf16 = __nv_bfloat16;
constexpr unsigned kFull = 0xffffffffu;
constexpr int kThreads = 256;

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

template <class F>
cudaError_t with_float_type(DType t, F&& f) {
  switch (t) {
    case DType::F32: return f(float{});
    case DType::BF16: return f(bf16{});
    default: return cudaErrorInvalidValue;
  }
}

__device__ __forceinline__ float softcap_f(float x, float cap) { return cap > 0.f ? cap * tanhf(x / cap) : x; }

// ---- block reductions of small states ---------------------------------------------------------------------

// Online log-sum-exp state: s = Σ exp(x - m) over the elements seen (m = -inf, s = 0 when none).
struct Lse {
  float m, s;
};
__device__ __forceinline__ Lse shfl_xor(Lse v, int o) {
  return {__shfl_xor_sync(kFull, v.m, o), __shfl_xor_sync(kFull, v.s, o)};
}
__device__ __forceinline__ void lse_add(Lse& o, float x) {
  if (x > o.m) {
    o.s = o.s * expf(o.m - x) + 1.f;  // exp(-inf) = 0 for the first element
    o.m = x;
  } else {
    o.s += expf(x - o.m);
  }
}
__device__ __forceinline__ Lse lse_merge(Lse a, Lse b) {
  const float m = fmaxf(a.m, b.m);
  return {m, (a.s > 0.f ? a.s * expf(a.m - m) : 0.f) + (b.s > 0.f ? b.s * expf(b.m - m) : 0.f)};
}

// Entropy state: s = Σ exp(x - m), a = Σ exp(x - m)(x - m), idx = first position of the maximum. s and a
// are summed in double: for the sharp rows of the stopping rule (entropy ~1e-5), the terms next to the
// maximum's 1 are far below fp32's resolution of s, yet they make up the entropy.
struct Ent {
  float m;
  double s, a;
  int idx;
};
__device__ __forceinline__ Ent shfl_xor(Ent v, int o) {
  return {__shfl_xor_sync(kFull, v.m, o), __shfl_xor_sync(kFull, v.s, o), __shfl_xor_sync(kFull, v.a, o),
          __shfl_xor_sync(kFull, v.idx, o)};
}
__device__ __forceinline__ void ent_add(Ent& o, float x, int pos) {
  if (o.s == 0.0) {
    o = {x, 1.0, 0.0, pos};
  } else if (x > o.m) {  // strictly greater: an equal later maximum keeps the earlier position
    const double sh = static_cast<double>(o.m) - x, f = exp(sh);
    o.a = f * (o.a + o.s * sh);
    o.s = o.s * f + 1.0;
    o.m = x;
    o.idx = pos;
  } else {
    const float d = x - o.m, e = expf(d);
    o.s += e;
    o.a += static_cast<double>(e) * d;
  }
}
__device__ __forceinline__ Ent ent_merge(Ent a, Ent b) {
  if (b.s == 0.0) return a;
  if (a.s == 0.0) return b;
  const float m = fmaxf(a.m, b.m);
  const int idx = (b.m > a.m || (b.m == a.m && b.idx < a.idx)) ? b.idx : a.idx;
  const double sha = static_cast<double>(a.m) - m, fa = exp(sha), shb = static_cast<double>(b.m) - m, fb = exp(shb);
  return {m, fa * a.s + fb * b.s, fa * (a.a + a.s * sha) + fb * (b.a + b.s * shb), idx};
}

template <class T>
__device__ __forceinline__ T shfl_xor(T v, int o) {
  return __shfl_xor_sync(kFull, v, o);
}

// Reduces v over the block with a commutative, associative-enough merge (blockDim.x a multiple of 32;
// every thread calls it). red: 32 shared slots; identity: the empty state.
template <class S, class F>
__device__ S block_reduce(S v, F merge, S identity, S* red) {
  for (int o = 16; o > 0; o >>= 1) v = merge(v, shfl_xor(v, o));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  __syncthreads();
  if (lane == 0) red[warp] = v;
  __syncthreads();
  if (warp == 0) {
    S r = lane < warps ? red[lane] : identity;
    for (int o = 16; o > 0; o >>= 1) r = merge(r, shfl_xor(r, o));
    if (lane == 0) red[0] = r;
  }
  __syncthreads();
  return red[0];
}

struct Add {
  template <class T>
  __device__ T operator()(T a, T b) const {
    return a + b;
  }
};
struct Max {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
  __device__ int operator()(int a, int b) const { return max(a, b); }
};
struct Min {
  __device__ int operator()(int a, int b) const { return min(a, b); }
};
struct LseMerge {
  __device__ Lse operator()(Lse a, Lse b) const { return lse_merge(a, b); }
};
struct EntMerge {
  __device__ Ent operator()(Ent a, Ent b) const { return ent_merge(a, b); }
};

// ---- rows ----------------------------------------------------------------------------------------------------

__global__ void weighted_rows_kernel(const float* __restrict__ mask, const std::int32_t* __restrict__ targets,
                                     std::int64_t tokens, std::int64_t vocab, std::int32_t* __restrict__ rows,
                                     std::int32_t* status) {
  __shared__ int warp_total[32];
  __shared__ int base;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  if (threadIdx.x == 0) base = 0;
  __syncthreads();
  for (std::int64_t t0 = 0; t0 < tokens; t0 += blockDim.x) {
    const std::int64_t t = t0 + threadIdx.x;
    const bool keep = t < tokens && mask[t] != 0.0f;
    if (keep && (targets[t] < 0 || targets[t] >= vocab)) atomicMin(&status[1], static_cast<int>(t));
    const unsigned ballot = __ballot_sync(kFull, keep);
    if (lane == 0) warp_total[warp] = __popc(ballot);
    __syncthreads();
    int at = base + __popc(ballot & ((1u << lane) - 1u));
    for (int w = 0; w < warp; ++w) at += warp_total[w];
    if (keep) rows[at] = static_cast<std::int32_t>(t);
    __syncthreads();
    if (threadIdx.x == 0)
      for (int w = 0; w < warps; ++w) base += warp_total[w];
    __syncthreads();
  }
  if (threadIdx.x == 0) status[0] = base;
}

template <class U>
__global__ void gather_rows_kernel(const U* __restrict__ src, std::int64_t units, const std::int32_t* __restrict__ rows,
                                   U* __restrict__ dst) {
  const std::int64_t r = blockIdx.x;
  const U* from = src + static_cast<std::int64_t>(rows[r]) * units;
  U* to = dst + r * units;
  for (std::int64_t u = threadIdx.x; u < units; u += blockDim.x) to[u] = from[u];
}

template <class TO>
__global__ void scatter_rows_kernel(const float* __restrict__ src, std::int64_t hidden,
                                    const std::int32_t* __restrict__ rows, TO* __restrict__ dst) {
  const std::int64_t r = blockIdx.x;
  const float* from = src + r * hidden;
  TO* to = dst + static_cast<std::int64_t>(rows[r]) * hidden;
  for (std::int64_t h = threadIdx.x; h < hidden; h += blockDim.x) to[h] = from_f<TO>(from[h]);
}

// ---- cross-entropy -----------------------------------------------------------------------------------------

__global__ void __launch_bounds__(kThreads)
    ce_chunk_kernel(const float* __restrict__ logits, std::int64_t vc, std::int64_t v0, float cap, bool first,
                    const std::int32_t* __restrict__ rows, const std::int32_t* __restrict__ targets, float* m,
                    double* sum, float* target_logit) {
  __shared__ Lse red[32];
  const std::int64_t r = blockIdx.x;
  const float* row = logits + r * vc;
  Lse o{-INFINITY, 0.f};
  for (std::int64_t c = threadIdx.x; c < vc; c += blockDim.x) lse_add(o, softcap_f(row[c], cap));
  o = block_reduce(o, LseMerge{}, Lse{-INFINITY, 0.f}, red);
  if (threadIdx.x == 0) {
    const float m_old = first ? -INFINITY : m[r];
    const double s_old = first ? 0.0 : sum[r];
    const float mx = fmaxf(m_old, o.m);
    sum[r] = (s_old > 0.0 ? s_old * exp(static_cast<double>(m_old) - mx) : 0.0) +
             static_cast<double>(o.s) * exp(static_cast<double>(o.m) - mx);
    m[r] = mx;
    const std::int64_t target = targets[rows[r]];
    if (target >= v0 && target < v0 + vc) target_logit[r] = softcap_f(row[target - v0], cap);
  }
}

__global__ void __launch_bounds__(kThreads)
    ce_finish_kernel(const float* __restrict__ m, const double* __restrict__ sum,
                     const float* __restrict__ target_logit, const std::int32_t* __restrict__ rows,
                     const float* __restrict__ mask, std::int64_t n, float* __restrict__ lse, double* loss) {
  __shared__ double red[32];
  double part = 0;
  for (std::int64_t r = threadIdx.x; r < n; r += blockDim.x) {
    const double l = static_cast<double>(m[r]) + log(sum[r]);
    const std::int32_t t = rows[r];
    lse[t] = static_cast<float>(l);
    part += static_cast<double>(mask[t]) * (l - static_cast<double>(target_logit[r]));
  }
  part = block_reduce(part, Add{}, 0.0, red);
  if (threadIdx.x == 0) *loss = part;
}

template <class TG>
__global__ void __launch_bounds__(kThreads)
    ce_grad_kernel(const float* logits, std::int64_t vc, std::int64_t v0, float cap,
                   const std::int32_t* __restrict__ rows, const std::int32_t* __restrict__ targets,
                   const float* __restrict__ mask, const float* __restrict__ lse, float dloss, double normaliser,
                   TG* g) {
  const std::int64_t r = blockIdx.x;
  const std::int32_t t = rows[r];
  const float coef = static_cast<float>(static_cast<double>(dloss) * mask[t] / normaliser);
  const float l = lse[t];
  const std::int64_t target = targets[t];
  for (std::int64_t c = threadIdx.x; c < vc; c += blockDim.x) {
    const std::int64_t at = r * vc + c;
    const float s = softcap_f(logits[at], cap);
    float d = expf(s - l) - (v0 + c == target ? 1.0f : 0.0f);
    if (cap > 0.f) d *= 1.0f - (s / cap) * (s / cap);
    g[at] = from_f<TG>(coef * d);
  }
}

// ---- sampler statistics ------------------------------------------------------------------------------------

__device__ __forceinline__ float processed(float x, float cap, float temperature) {
  const float s = softcap_f(x, cap);
  return temperature != 1.0f ? s / temperature : s;
}

__global__ void __launch_bounds__(kThreads)
    entropy_chunk_kernel(const float* __restrict__ logits, std::int64_t vc, std::int64_t v0, float cap,
                         float temperature, bool first, float* m, double* s, double* a, std::int32_t* argmax) {
  __shared__ Ent red[32];
  const std::int64_t r = blockIdx.x;
  const float* row = logits + r * vc;
  Ent o{-INFINITY, 0.0, 0.0, INT_MAX};
  for (std::int64_t c = threadIdx.x; c < vc; c += blockDim.x)
    ent_add(o, processed(row[c], cap, temperature), static_cast<int>(c));
  o = block_reduce(o, EntMerge{}, Ent{-INFINITY, 0.0, 0.0, INT_MAX}, red);
  if (threadIdx.x == 0) {
    double mx = o.m, ss = o.s, aa = o.a;
    if (first) {
      argmax[r] = static_cast<std::int32_t>(v0 + o.idx);
    } else {
      mx = m[r];
      ss = s[r];
      aa = a[r];
      if (o.m > m[r]) {  // strictly greater: an equal maximum in a later chunk keeps the earlier id
        const double shift = static_cast<double>(m[r]) - o.m, f = exp(shift);
        aa = f * (aa + ss * shift);
        ss *= f;
        mx = o.m;
        argmax[r] = static_cast<std::int32_t>(v0 + o.idx);
      }
      const double shift = static_cast<double>(o.m) - mx, f = exp(shift);  // the chunk relative to mx
      ss += f * o.s;
      aa += f * (o.a + o.s * shift);
    }
    m[r] = static_cast<float>(mx);
    s[r] = ss;
    a[r] = aa;
  }
}

__global__ void entropy_finish_kernel(const float* __restrict__ m, const double* __restrict__ s,
                                      const double* __restrict__ a, std::int64_t n, float* __restrict__ entropy,
                                      float* __restrict__ lse) {
  const std::int64_t r = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (r >= n) return;
  entropy[r] = static_cast<float>(fmax(0.0, log(s[r]) - a[r] / s[r]));
  if (lse) lse[r] = static_cast<float>(static_cast<double>(m[r]) + log(s[r]));
}

__global__ void __launch_bounds__(kThreads)
    sample_chunk_kernel(const float* __restrict__ logits, std::int64_t vc, std::int64_t v0, float cap,
                        float temperature, const float* __restrict__ lse, const float* __restrict__ uniforms,
                        double* cum, std::int32_t* last_nonzero, std::int32_t* done, std::int32_t* sampled,
                        std::int32_t* remaining) {
  __shared__ double prefix[kThreads];
  __shared__ double total;
  __shared__ int red[32];
  const std::int64_t r = blockIdx.x;
  if (done[r]) return;  // uniform over the block
  const float* row = logits + r * vc;
  const double l = lse[r], u = uniforms[r];
  // each thread owns a contiguous segment, so ascending thread order is ascending vocabulary order
  const std::int64_t seg = (vc + blockDim.x - 1) / blockDim.x;
  const std::int64_t c0 = threadIdx.x * seg, c1 = c0 + seg < vc ? c0 + seg : vc;
  auto prob = [&](std::int64_t c) { return exp(static_cast<double>(processed(row[c], cap, temperature)) - l); };
  double local = 0;
  int last = -1;
  for (std::int64_t c = c0; c < c1; ++c) {
    const double p = prob(c);
    if (p > 0) last = static_cast<int>(c);
    local += p;
  }
  prefix[threadIdx.x] = local;
  __syncthreads();
  if (threadIdx.x == 0) {  // exclusive prefix over the threads, in order
    double run = 0;
    for (int i = 0; i < static_cast<int>(blockDim.x); ++i) {
      const double v = prefix[i];
      prefix[i] = run;
      run += v;
    }
    total = run;
  }
  __syncthreads();
  double run = cum[r] + prefix[threadIdx.x];
  int found = INT_MAX;
  for (std::int64_t c = c0; c < c1; ++c) {
    run += prob(c);
    if (run > u) {
      found = static_cast<int>(c);
      break;
    }
  }
  found = block_reduce(found, Min{}, INT_MAX, red);
  last = block_reduce(last, Max{}, -1, red);
  if (threadIdx.x == 0) {
    if (last >= 0) last_nonzero[r] = static_cast<std::int32_t>(v0 + last);
    if (found != INT_MAX) {
      sampled[r] = static_cast<std::int32_t>(v0 + found);
      done[r] = 1;
      atomicSub(remaining, 1);  // an integer count: order does not matter
    } else {
      cum[r] += total;
    }
  }
}

__global__ void sample_finish_kernel(const std::int32_t* __restrict__ done, const std::int32_t* __restrict__ last_nonzero,
                                     std::int64_t n, std::int32_t* __restrict__ sampled) {
  const std::int64_t r = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (r < n && !done[r]) sampled[r] = last_nonzero[r];
}

// ---- soft embedding -----------------------------------------------------------------------------------------

template <class TP>
__global__ void __launch_bounds__(kThreads)
    soft_chunk_kernel(const float* logits, std::int64_t vc, float cap, float temperature, bool first, float* m,
                      double* z, float* rescale, TP* p) {
  __shared__ float red[32];
  const std::int64_t r = blockIdx.x;
  const float* row = logits + r * vc;
  float mx = -INFINITY;
  for (std::int64_t c = threadIdx.x; c < vc; c += blockDim.x) mx = fmaxf(mx, softcap_f(row[c], cap) / temperature);
  mx = block_reduce(mx, Max{}, -INFINITY, red);
  const float m_old = first ? -INFINITY : m[r];
  const float m_new = fmaxf(m_old, mx);
  float sum = 0.f;
  for (std::int64_t c = threadIdx.x; c < vc; c += blockDim.x) {
    const TP q = from_f<TP>(expf(softcap_f(row[c], cap) / temperature - m_new));
    p[r * vc + c] = q;  // may overwrite row[c]: same element, same thread, after its last read
    sum += to_f(q);
  }
  sum = block_reduce(sum, Add{}, 0.f, red);
  if (threadIdx.x == 0) {
    const double f = isinf(m_old) ? 0.0 : exp(static_cast<double>(m_old) - m_new);
    rescale[r] = static_cast<float>(f);
    z[r] = (first ? 0.0 : z[r] * f) + sum;
    m[r] = m_new;
  }
}

__global__ void scale_rows_kernel(float* __restrict__ acc, std::int64_t hidden, const float* __restrict__ rescale) {
  const std::int64_t r = blockIdx.x;
  const float f = rescale[r];
  for (std::int64_t h = threadIdx.x; h < hidden; h += blockDim.x) acc[r * hidden + h] *= f;
}

template <class TO>
__global__ void soft_finish_kernel(const float* __restrict__ acc, const double* __restrict__ z, std::int64_t hidden,
                                   float scale, TO* __restrict__ soft) {
  const std::int64_t r = blockIdx.x;
  const double zr = z[r];
  for (std::int64_t h = threadIdx.x; h < hidden; h += blockDim.x)
    soft[r * hidden + h] = from_f<TO>(static_cast<float>(static_cast<double>(acc[r * hidden + h]) / zr * scale));
}

unsigned blocks_for(std::int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

}  // namespace

// ---- launchers ---------------------------------------------------------------------------------------------

cudaError_t lm_head_weighted_rows(const float* mask, const std::int32_t* targets, std::int64_t tokens,
                                  std::int64_t vocab, std::int32_t* rows, std::int32_t* status, cudaStream_t stream) {
  weighted_rows_kernel<<<1, 1024, 0, stream>>>(mask, targets, tokens, vocab, rows, status);
  return cudaGetLastError();
}

cudaError_t lm_head_gather_rows(const void* src, std::size_t row_bytes, const std::int32_t* rows, std::int64_t n,
                                void* dst, cudaStream_t stream) {
  if (n == 0 || row_bytes == 0) return cudaSuccess;
  const auto aligned = [&](std::size_t unit) {
    return row_bytes % unit == 0 && reinterpret_cast<std::uintptr_t>(src) % unit == 0 &&
           reinterpret_cast<std::uintptr_t>(dst) % unit == 0;
  };
  const unsigned blocks = static_cast<unsigned>(n);
  if (aligned(16))
    gather_rows_kernel<uint4><<<blocks, 128, 0, stream>>>(static_cast<const uint4*>(src),
                                                          static_cast<std::int64_t>(row_bytes / 16), rows,
                                                          static_cast<uint4*>(dst));
  else if (aligned(4))
    gather_rows_kernel<unsigned><<<blocks, 128, 0, stream>>>(static_cast<const unsigned*>(src),
                                                             static_cast<std::int64_t>(row_bytes / 4), rows,
                                                             static_cast<unsigned*>(dst));
  else if (aligned(2))
    gather_rows_kernel<unsigned short><<<blocks, 128, 0, stream>>>(static_cast<const unsigned short*>(src),
                                                                   static_cast<std::int64_t>(row_bytes / 2), rows,
                                                                   static_cast<unsigned short*>(dst));
  else
    return cudaErrorMisalignedAddress;
  return cudaGetLastError();
}

cudaError_t lm_head_scatter_rows(const float* src, std::int64_t n, std::int64_t hidden, const std::int32_t* rows,
                                 void* dst, DType dst_type, cudaStream_t stream) {
  if (n == 0 || hidden == 0) return cudaSuccess;
  return with_float_type(dst_type, [&](auto ot) {
    using TO = decltype(ot);
    scatter_rows_kernel<TO><<<static_cast<unsigned>(n), kThreads, 0, stream>>>(src, hidden, rows, static_cast<TO*>(dst));
    return cudaGetLastError();
  });
}

cudaError_t lm_head_ce_chunk(const float* logits, std::int64_t n, std::int64_t vc, std::int64_t v0, float cap,
                             bool first, const std::int32_t* rows, const std::int32_t* targets, float* m, double* sum,
                             float* target_logit, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  ce_chunk_kernel<<<static_cast<unsigned>(n), kThreads, 0, stream>>>(logits, vc, v0, cap, first, rows, targets, m, sum,
                                                                     target_logit);
  return cudaGetLastError();
}

cudaError_t lm_head_ce_finish(const float* m, const double* sum, const float* target_logit, const std::int32_t* rows,
                              const float* mask, std::int64_t n, float* lse, double* loss, cudaStream_t stream) {
  ce_finish_kernel<<<1, kThreads, 0, stream>>>(m, sum, target_logit, rows, mask, n, lse, loss);
  return cudaGetLastError();
}

cudaError_t lm_head_ce_grad(const float* logits, std::int64_t n, std::int64_t vc, std::int64_t v0, float cap,
                            const std::int32_t* rows, const std::int32_t* targets, const float* mask, const float* lse,
                            float dloss, double normaliser, void* g, DType g_type, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  return with_float_type(g_type, [&](auto gt) {
    using TG = decltype(gt);
    ce_grad_kernel<TG><<<static_cast<unsigned>(n), kThreads, 0, stream>>>(logits, vc, v0, cap, rows, targets, mask, lse,
                                                                         dloss, normaliser, static_cast<TG*>(g));
    return cudaGetLastError();
  });
}

cudaError_t lm_head_entropy_chunk(const float* logits, std::int64_t n, std::int64_t vc, std::int64_t v0, float cap,
                                  float temperature, bool first, float* m, double* s, double* a, std::int32_t* argmax,
                                  cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  entropy_chunk_kernel<<<static_cast<unsigned>(n), kThreads, 0, stream>>>(logits, vc, v0, cap, temperature, first, m, s,
                                                                          a, argmax);
  return cudaGetLastError();
}

cudaError_t lm_head_entropy_finish(const float* m, const double* s, const double* a, std::int64_t n, float* entropy,
                                   float* lse, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  entropy_finish_kernel<<<blocks_for(n), kThreads, 0, stream>>>(m, s, a, n, entropy, lse);
  return cudaGetLastError();
}

cudaError_t lm_head_sample_chunk(const float* logits, std::int64_t n, std::int64_t vc, std::int64_t v0, float cap,
                                 float temperature, const float* lse, const float* uniforms, double* cum,
                                 std::int32_t* last_nonzero, std::int32_t* done, std::int32_t* sampled,
                                 std::int32_t* remaining, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  sample_chunk_kernel<<<static_cast<unsigned>(n), kThreads, 0, stream>>>(logits, vc, v0, cap, temperature, lse,
                                                                         uniforms, cum, last_nonzero, done, sampled,
                                                                         remaining);
  return cudaGetLastError();
}

cudaError_t lm_head_sample_finish(const std::int32_t* done, const std::int32_t* last_nonzero, std::int64_t n,
                                  std::int32_t* sampled, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  sample_finish_kernel<<<blocks_for(n), kThreads, 0, stream>>>(done, last_nonzero, n, sampled);
  return cudaGetLastError();
}

cudaError_t lm_head_soft_chunk(const float* logits, std::int64_t n, std::int64_t vc, float cap, float temperature,
                               bool first, float* m, double* z, float* rescale, void* p, DType p_type,
                               cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  return with_float_type(p_type, [&](auto pt) {
    using TP = decltype(pt);
    soft_chunk_kernel<TP><<<static_cast<unsigned>(n), kThreads, 0, stream>>>(logits, vc, cap, temperature, first, m, z,
                                                                             rescale, static_cast<TP*>(p));
    return cudaGetLastError();
  });
}

cudaError_t lm_head_scale_rows(float* acc, std::int64_t n, std::int64_t hidden, const float* rescale,
                               cudaStream_t stream) {
  if (n == 0 || hidden == 0) return cudaSuccess;
  scale_rows_kernel<<<static_cast<unsigned>(n), kThreads, 0, stream>>>(acc, hidden, rescale);
  return cudaGetLastError();
}

cudaError_t lm_head_soft_finish(const float* acc, const double* z, std::int64_t n, std::int64_t hidden, float scale,
                                void* soft, DType soft_type, cudaStream_t stream) {
  if (n == 0 || hidden == 0) return cudaSuccess;
  return with_float_type(soft_type, [&](auto ot) {
    using TO = decltype(ot);
    soft_finish_kernel<TO><<<static_cast<unsigned>(n), kThreads, 0, stream>>>(acc, z, hidden, scale,
                                                                              static_cast<TO*>(soft));
    return cudaGetLastError();
  });
}

}  // namespace dg::cuda::kernels
