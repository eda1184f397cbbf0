// Launchers of the LM-head kernels (layers/cuda/head.cu), called by layers/cuda/head.cpp. Plain CUDA
// runtime types only (see layers/cuda/kernels.h). The head ops compute logits one [rows, vc] chunk at a
// time with cuBLASLt (dg::cuda::gemm, f32 output) and reduce each chunk here; per-row running state
// (max, sums, argmax, ...) lives in small device arrays between chunks. `first` marks a row tile's first
// vocabulary chunk (the state is then initialised rather than read). One thread block per row; every
// reduction is a fixed-shape tree, so results are deterministic. s = softcap(x) = cap · tanh(x / cap)
// (cap = 0: s = x), in fp32 as on the CPU.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "layers/dtype.h"

namespace dg::cuda::kernels {

// rows[0 .. n) = the tokens t with mask[t] != 0, ascending; status[0] = n, status[1] = min(status[1],
// first such t whose target lies outside [0, vocab)) (the caller sets status[1] = INT32_MAX first).
cudaError_t lm_head_weighted_rows(const float* mask, const std::int32_t* targets, std::int64_t tokens,
                                  std::int64_t vocab, std::int32_t* rows, std::int32_t* status, cudaStream_t stream);
// dst[r] = src[rows[r]] for r < n; rows of row_bytes bytes (a multiple of 2).
cudaError_t lm_head_gather_rows(const void* src, std::size_t row_bytes, const std::int32_t* rows, std::int64_t n,
                                void* dst, cudaStream_t stream);
// dst[rows[r]] = src[r] for r < n, src [n, hidden] f32 -> dst (dst_type).
cudaError_t lm_head_scatter_rows(const float* src, std::int64_t n, std::int64_t hidden, const std::int32_t* rows,
                                 void* dst, DType dst_type, cudaStream_t stream);

// Cross-entropy, per packed row r < n of a tile (logits [n, vc] for vocabulary ids v0 ..): running max
// m[r], running Σ exp(s - m) sum[r] (double), and target_logit[r] = s at targets[rows[r]] when that id
// lies in the chunk.
cudaError_t lm_head_ce_chunk(const float* logits, std::int64_t n, std::int64_t vc, std::int64_t v0, float cap,
                             bool first, const std::int32_t* rows, const std::int32_t* targets, float* m, double* sum,
                             float* target_logit, cudaStream_t stream);
// lse[rows[r]] = m + log(sum) and *loss = Σ_r mask[rows[r]] · (lse - target_logit) (double, fixed order).
cudaError_t lm_head_ce_finish(const float* m, const double* sum, const float* target_logit, const std::int32_t* rows,
                              const float* mask, std::int64_t n, float* lse, double* loss, cudaStream_t stream);
// g [n, vc] (g_type; may alias logits when f32) = dloss · mask/normaliser · (exp(s - lse) - onehot) · (1 - (s/cap)²).
cudaError_t lm_head_ce_grad(const float* logits, std::int64_t n, std::int64_t vc, std::int64_t v0, float cap,
                            const std::int32_t* rows, const std::int32_t* targets, const float* mask, const float* lse,
                            float dloss, double normaliser, void* g, DType g_type, cudaStream_t stream);

// Sampler statistics of lg = s / temperature, rows r < n of a tile: running max m[r], s[r] = Σ exp(lg - m)
// and a[r] = Σ exp(lg - m)(lg - m) (double), argmax[r] (first of equal maxima, across chunks too).
cudaError_t lm_head_entropy_chunk(const float* logits, std::int64_t n, std::int64_t vc, std::int64_t v0, float cap,
                                  float temperature, bool first, float* m, double* s, double* a, std::int32_t* argmax,
                                  cudaStream_t stream);
// entropy = max(0, log s - a/s); lse (optional) = m + log s.
cudaError_t lm_head_entropy_finish(const float* m, const double* s, const double* a, std::int64_t n, float* entropy,
                                   float* lse, cudaStream_t stream);
// Inverse-CDF step over one chunk for rows not yet done: cum[r] (double) carries Σ p of earlier chunks;
// the first id whose running sum exceeds uniforms[r] is written to sampled[r], done[r] = 1 and
// *remaining is decremented; last_nonzero[r] tracks the last id with p > 0.
cudaError_t lm_head_sample_chunk(const float* logits, std::int64_t n, std::int64_t vc, std::int64_t v0, float cap,
                                 float temperature, const float* lse, const float* uniforms, double* cum,
                                 std::int32_t* last_nonzero, std::int32_t* done, std::int32_t* sampled,
                                 std::int32_t* remaining, cudaStream_t stream);
// sampled[r] = last_nonzero[r] where !done[r].
cudaError_t lm_head_sample_finish(const std::int32_t* done, const std::int32_t* last_nonzero, std::int64_t n,
                                  std::int32_t* sampled, cudaStream_t stream);

// Soft embedding, one chunk: lg = s / temperature; new running max m[r]; rescale[r] = exp(m_old - m)
// (0 on the first chunk); p [n, vc] (p_type; may alias logits when f32) = exp(lg - m) rounded to p_type;
// z[r] = z[r] · rescale[r] + Σ p (of the rounded p, so the weights and their normaliser agree).
cudaError_t lm_head_soft_chunk(const float* logits, std::int64_t n, std::int64_t vc, float cap, float temperature,
                               bool first, float* m, double* z, float* rescale, void* p, DType p_type,
                               cudaStream_t stream);
// acc[r, :] *= rescale[r] (acc [n, hidden] f32).
cudaError_t lm_head_scale_rows(float* acc, std::int64_t n, std::int64_t hidden, const float* rescale,
                               cudaStream_t stream);
// soft[r, :] = acc[r, :] / z[r] · scale (soft_type).
cudaError_t lm_head_soft_finish(const float* acc, const double* z, std::int64_t n, std::int64_t hidden, float scale,
                                void* soft, DType soft_type, cudaStream_t stream);

}  // namespace dg::cuda::kernels
