// Launchers of the embedding kernels (layers/cuda/embedding.cu), called by layers/cuda/embedding.cpp.
// Plain CUDA runtime types only (see layers/cuda/kernels.h). Float tensors are f32 or bf16 (each its
// own dtype argument); ids and the backward plan are i32; lse, rho and the GEMM scratch are f32.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "layers/dtype.h"

namespace dg::cuda::kernels {

// out[t, :] = fp32(table[ids[t], :]) · scale for t < count (ids already checked to lie in [0, vocab)).
cudaError_t embedding_lookup(const std::int32_t* ids, const void* table, DType table_type, float scale, void* out,
                             DType out_type, std::int64_t count, std::int64_t vocab, std::int64_t hidden,
                             cudaStream_t stream);

// For each segment u < segments (one distinct id ids[u], tokens order[starts[u] .. starts[u+1])):
// d_table[ids[u], h] += scale · d_out[t, h] for those tokens in order, in fp32, rounded once.
cudaError_t embedding_grad(const std::int32_t* order, const std::int32_t* seg_ids, const std::int32_t* starts,
                           std::int64_t segments, const void* d_out, DType d_out_type, float scale, void* d_table,
                           DType d_table_type, std::int64_t hidden, cudaStream_t stream);

// lse[r] = log Σ_v exp(logits[r, v]) for logits [rows, vocab], fp32, one block per row.
cudaError_t row_logsumexp(const void* logits, DType logits_type, float* lse, std::int64_t rows, std::int64_t vocab,
                          cudaStream_t stream);

// p [rows, c] = exp(logits[r, v0 + j] − lse[r]) rounded to p_type.
cudaError_t softmax_chunk(const void* logits, DType logits_type, const float* lse, std::int64_t rows,
                          std::int64_t vocab, std::int64_t v0, std::int64_t c, void* p, DType p_type,
                          cudaStream_t stream);

// out[i] = acc[i] · scale, rounded to out_type (out may alias acc when f32).
cudaError_t scale_f32(const float* acc, float scale, void* out, DType out_type, std::int64_t n, cudaStream_t stream);

// rho[r] = Σ_h a[r, h] · b[r, h] in fp32, one block per row.
cudaError_t row_dot(const void* a, DType a_type, const void* b, DType b_type, float* rho, std::int64_t rows,
                    std::int64_t hidden, cudaStream_t stream);

// d_logits[r, v0 + j] = P · (dp[r, j] − rho[r]), P = exp(logits[r, v0 + j] − lse[r]) in fp32.
cudaError_t soft_logits_grad(const void* logits, DType logits_type, const float* lse, const float* dp,
                             const float* rho, std::int64_t rows, std::int64_t vocab, std::int64_t v0, std::int64_t c,
                             void* d_logits, DType d_logits_type, cudaStream_t stream);

// dst[i] = dst[i] + src[i] (fp32 add, rounded to dst_type).
cudaError_t add_f32(const float* src, void* dst, DType dst_type, std::int64_t n, cudaStream_t stream);

}  // namespace dg::cuda::kernels
