// Launchers of the MoE kernels (layers/cuda/moe.cu), called by layers/cuda/moe.cpp. Plain CUDA runtime
// types only (see layers/cuda/kernels.h). Float operands are bf16 or f32 as the DType arguments say;
// index arrays are int32; statistics f32. Every launcher enqueues on `stream`, launches nothing for
// empty work and returns the launch status. No kernel here uses float atomics: every output element is
// written by one thread, and every sum runs in a fixed order (results are bit-reproducible).
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "layers/dtype.h"

namespace dg::cuda::kernels {

// ---- router ------------------------------------------------------------------------------------------
// r [T,H] (r_type), scale [H], proj [E,H], per_expert_scale [E] (all three w_type). Writes ids [T,k],
// weights [T,k], probs [T,E] and rstd [T] as layers/ops/moe.h defines them. A token with a non-finite
// logit gets its raw logits in probs and sets *bad_token = min(*bad_token, t) (the caller sets
// *bad_token = INT32_MAX first).
cudaError_t moe_router(const void* r, DType r_type, const void* scale, const void* proj, const void* per_expert_scale,
                       DType w_type, std::int64_t tokens, std::int64_t hidden, std::int64_t experts,
                       std::int64_t top_k, float eps, std::int32_t* ids, float* weights, float* probs, float* rstd,
                       std::int32_t* bad_token, cudaStream_t stream);

// dr [T,H] (dtype r_type, like r) from d_routing_weights [T,k]. Optional outputs (null: skipped), the
// per-row terms of the parameter gradients, summed by the caller:
//   dlogits [T,E] f32, z [T,H] f32 (the router input, for d proj = dlogitsᵀ z),
//   scale_terms [T,H] f32 = dz · x̂ · H^-0.5, pes_terms [T,k] f32 = d_routing_weights · q.
cudaError_t moe_router_backward(const void* r, DType r_type, const void* scale, const void* proj,
                                const void* per_expert_scale, DType w_type, const std::int32_t* ids,
                                const float* probs, const float* rstd, const float* d_weights, std::int64_t tokens,
                                std::int64_t hidden, std::int64_t experts, std::int64_t top_k, void* dr,
                                float* dlogits, float* z, float* scale_terms, float* pes_terms, cudaStream_t stream);

// out[c] += Σ_r x[r, c] over rows in ascending order per column (x [rows, cols] f32, out f32).
cudaError_t column_sum_add(const float* x, std::int64_t rows, std::int64_t cols, float* out, cudaStream_t stream);
// out[e] += Σ_{i: ids[i] == e} terms[i] for e < experts (terms, ids [count]), in a fixed order.
cudaError_t expert_sum_add(const float* terms, const std::int32_t* ids, std::int64_t count, std::int64_t experts,
                           float* out, cudaStream_t stream);

// ---- permutation plan (stable counting sort) ---------------------------------------------------------
// Pairs are processed in chunks of kPermuteChunk; scratch holds (chunks + 1) · experts int32.
constexpr std::int64_t kPermuteChunk = 256;
inline std::int64_t moe_permute_chunks(std::int64_t pairs) { return (pairs + kPermuteChunk - 1) / kPermuteChunk; }
// ids [T,k]; mask [T] (mask_type F32 or I32; null: every token kept). Writes counts [E], row_token
// [T·k] (-1 past N), slot_row [T,k], status[0] = N and status[1] = min(status[1], first kept pair with an
// id outside [0, E)) (the caller sets status[1] = INT32_MAX first).
cudaError_t moe_permute_plan(const std::int32_t* ids, std::int64_t tokens, std::int64_t top_k, std::int64_t experts,
                             const void* mask, DType mask_type, std::int32_t* scratch, std::int32_t* counts,
                             std::int32_t* row_token, std::int32_t* slot_row, std::int32_t* status,
                             cudaStream_t stream);

// ---- gather / combine --------------------------------------------------------------------------------
// xp[i] = x[row_token[i]] for i < n (x [T,H], xp [n,H], one dtype of `elem_bytes` bytes); rows whose
// token lies outside [0, T) are written as zeros.
cudaError_t moe_gather(const void* x, std::int64_t tokens, std::int64_t hidden, std::size_t elem_bytes,
                       const std::int32_t* row_token, void* xp, std::int64_t n, cudaStream_t stream);
// dx[t] = Σ_j dxp[slot_row[t,j]] over slots with a row in [0, n), in slot order, fp32 accumulation.
cudaError_t moe_gather_backward(const void* dxp, DType dxp_type, std::int64_t n, const std::int32_t* slot_row,
                                std::int64_t tokens, std::int64_t top_k, std::int64_t hidden, void* dx, DType dx_type,
                                cudaStream_t stream);
// out[t] = Σ_j w[t,j] · y[slot_row[t,j]] in slot order, fp32 accumulation.
cudaError_t moe_combine(const void* y, DType y_type, std::int64_t n, const float* weights,
                        const std::int32_t* slot_row, std::int64_t tokens, std::int64_t top_k, std::int64_t hidden,
                        void* out, DType out_type, cudaStream_t stream);
// dy[slot_row[t,j]] = w[t,j] · dout[t]; d_weights[t,j] = <dout[t], y[slot_row[t,j]]> (0 when dropped).
cudaError_t moe_combine_backward(const void* dout, DType dout_type, const void* y, DType y_type, std::int64_t n,
                                 const float* weights, const std::int32_t* slot_row, std::int64_t tokens,
                                 std::int64_t top_k, std::int64_t hidden, void* dy, DType dy_type, float* d_weights,
                                 cudaStream_t stream);

// ---- grouped GEMM ------------------------------------------------------------------------------------
// The device form of GroupedGemmPlan (layers/ops/moe.h): problems and tiles as the kernel reads them.
struct GroupedProblem {
  std::int64_t a_offset, b_offset, c_offset;
  std::int32_t m, n, k, pad;
};
struct GroupedTile {
  std::int32_t problem, tile_m, tile_n, pad;
};
// Output tile of one thread block: kGroupedTileRows x kGroupedTileCols elements of C.
constexpr std::int64_t kGroupedTileRows = 128;
constexpr std::int64_t kGroupedTileCols = 128;
// For every tile: C_p = alpha · op(A_p) op(B_p) + beta · C_p over its elements (beta = 0: C is not read).
// a, b: in_type (bf16: tensor cores, fp32 accumulators; f32: fp32 FMA); c: c_type (bf16 or f32).
// problems / tiles are device arrays.
cudaError_t grouped_gemm(const void* a, const void* b, DType in_type, void* c, DType c_type, bool trans_a,
                         bool trans_b, std::int64_t lda, std::int64_t ldb, std::int64_t ldc,
                         const GroupedProblem* problems, const GroupedTile* tiles, std::int64_t tile_count, float alpha,
                         float beta, cudaStream_t stream);

}  // namespace dg::cuda::kernels
