// MoE ops: the router (gate), the permutation of (token, slot) pairs into per-expert row groups, the
// grouped GEMM that runs every expert over its rows in one call, and the weighted combine back into
// token order. Math: model.md §3.6-§3.7, training.md §6.1, §7.3, §8.1. Included from layers/ops.h.
//
// One MoE branch, forward (T tokens, H hidden, E experts, k slots per token, Fm expert width):
//   moe_router(r, ...)                          -> expert_ids [T,k], routing_weights [T,k]
//   moe_permute_plan(expert_ids, E, ...)        -> expert_counts [E], row_token [T*k], slot_row [T,k]
//   moe_gather(x2, row_token, xp)               xp [N,H]  (N = routed pairs, rows contiguous per expert)
//   grouped_gemm(xp, gate_and_up_projs, ...)    [N, 2*Fm]
//   (GEGLU elsewhere)                           [N, Fm]
//   grouped_gemm(hp, down_projs, ...)           yp [N,H]
//   moe_combine(yp, routing_weights, slot_row)  out [T,H] = Σ_j w[t,j] · yp[slot_row[t,j]]
// The backward runs the same chain in reverse; moe_combine_backward returns d(routing_weights), which
// moe_router_backward turns into d(r) even while the router's own parameters are frozen.
//
// Index tensors (expert ids, counts, rows) are i32 and live on the same device as the activations.
// Each op runs on the CPU (fp32) or, when its tensors are on the device, on CUDA (the dg::cuda block
// at the end of this file; bf16 or f32 activations and weights, fp32 accumulation, deterministic).
#pragma once
#include <vector>

#include "layers/tensor.h"

namespace dg {

// ---- Router (moe.gate; model.md §3.6, training.md §8.1) -----------------------------------------
// r [T,H] is the residual stream after attention. Parameters: scale [H] (moe.gate.scale), proj [E,H]
// (moe.gate.proj.weight), per_expert_scale [E] (moe.gate.per_expert_scale, kept as its own tensor,
// DESIGN.md "Model parameters and names"). In this order, in fp32:
//   rstd  = (mean_h r² + eps)^-0.5                 weightless RMSNorm, eps = rms_norm_eps
//   z     = ((r · rstd) ⊙ scale) · fp32(H^-0.5)
//   probs = softmax(z · projᵀ)                     over all E experts, before top-k
//   (p, expert_ids) = top-k of probs               descending; equal probabilities: lower expert id
//                                                  first (jax.lax.top_k's documented rule; torch.topk
//                                                  leaves ties unspecified)
//   q     = p / max(Σ_j p_j, 1e-20)                renormalised over the k chosen
//   routing_weights = q · per_expert_scale[expert_ids]
// Outputs: expert_ids [T,k] i32, routing_weights [T,k] f32, and for the backward probs [T,E] f32
// (the full softmax) and rstd [T] f32. A non-finite router logit is a dg::Error naming the token.
void moe_router(const Tensor& r, const Tensor& scale, const Tensor& proj, const Tensor& per_expert_scale,
                Tensor& expert_ids, Tensor& routing_weights, Tensor& probs, Tensor& rstd, float eps = 1e-6f);

// Router parameter gradients, each accumulated (+=) when given. All null (the default) is the SFT
// setting: training.md §6.1 freezes moe.gate.proj.weight and moe.gate.scale. per_expert_scale is
// separate because NeMo folds it into the trainable down_projs (training.md §8.2), so a trainer
// that keeps it as its own tensor may want it to train; that choice belongs to the trainer.
struct RouterGrads {
  Tensor* scale = nullptr;             // [H]
  Tensor* proj = nullptr;              // [E,H]; recomputes z = ((r·rstd)⊙scale)·H^-0.5 (a [T,H] scratch)
  Tensor* per_expert_scale = nullptr;  // [E]
};

// d_routing_weights [T,k] -> dr [T,H] (written), treating the top-k selection as a constant: the
// gradient flows through the k renormalised probabilities, the softmax over all E experts, the
// projection, the scale and the RMSNorm into r (training.md §6.1, the ∂w/∂h1 path).
void moe_router_backward(const Tensor& r, const Tensor& scale, const Tensor& proj, const Tensor& per_expert_scale,
                         const Tensor& expert_ids, const Tensor& probs, const Tensor& rstd,
                         const Tensor& d_routing_weights, Tensor& dr, const RouterGrads& grads = {});

// ---- Token permutation by expert (dropless; training.md §7.3) -----------------------------------
// Stable counting sort of the T·k (token, slot) pairs by expert id. Pair (t, j) is kept unless
// token_mask is given (f32 or i32 [T]) and token_mask[t] == 0: padded tokens are routed by the gate
// but dropped before the experts, so their MoE output is 0 (training.md §5.1). Outputs:
//   expert_counts [E] i32   rows per expert (experts may get 0 rows)
//   row_token     [T·k] i32 for permuted row i < N, its source token; entries >= N are -1
//   slot_row      [T,k] i32 the permuted row of pair (t, j), or -1 when dropped
// Rows are grouped by ascending expert id; within one expert they keep ascending (t, j) order.
// Returns N, the number of routed pairs (Σ expert_counts). expert_ids of kept pairs must lie in
// [0, num_experts), else dg::Error.
std::int64_t moe_permute_plan(const Tensor& expert_ids, std::int64_t num_experts, Tensor& expert_counts,
                              Tensor& row_token, Tensor& slot_row, const Tensor& token_mask = Tensor());

// xp[i] = x[row_token[i]] for i < N = xp.size(0).  x [T,H], row_token [>= N] i32, xp [N,H].
void moe_gather(const Tensor& x, const Tensor& row_token, Tensor& xp);
// dx[t] = Σ_{j: slot_row[t,j] >= 0} dxp[slot_row[t,j]] (written; a per-token sum, no scatter races).
void moe_gather_backward(const Tensor& dxp, const Tensor& slot_row, Tensor& dx);

// out[t] = Σ_j routing_weights[t,j] · y[slot_row[t,j]] over the kept slots, in slot order j = 0..k-1,
// fp32 accumulation (model.md §3.7 recommends fp32 accumulation of the k contributions).
// y [N,H], routing_weights [T,k] f32, slot_row [T,k] i32, out [T,H] (written; 0 for dropped tokens).
void moe_combine(const Tensor& y, const Tensor& routing_weights, const Tensor& slot_row, Tensor& out);
// dy[slot_row[t,j]] = routing_weights[t,j] · dout[t] (written, every row of dy is some kept slot's);
// d_routing_weights[t,j] = <dout[t], y[slot_row[t,j]]> (written; 0 for dropped slots).
void moe_combine_backward(const Tensor& dout, const Tensor& y, const Tensor& routing_weights,
                          const Tensor& slot_row, Tensor& dy, Tensor& d_routing_weights);

// ---- Grouped GEMM over experts ------------------------------------------------------------------
// Rows of x are contiguous per expert: expert e owns rows [off_e, off_e + counts[e]), off_e = Σ_{e'<e}.
// y_e = x_e @ w[e] for every expert, with w laid out [E, K, M] (gate_and_up_projs [E, H, 2·Fm],
// down_projs [E, Fm, H]). x [N,K], expert_counts [E] i32 with Σ = N, y [N,M] (written).
void grouped_gemm(const Tensor& x, const Tensor& w, const Tensor& expert_counts, Tensor& y);
// dx = dy_e @ w[e]ᵀ per expert (written, when dx is given); dw[e] += x_eᵀ @ dy_e (when dw is given).
// Experts with no rows leave their dw[e] untouched.
void grouped_gemm_backward(const Tensor& x, const Tensor& w, const Tensor& expert_counts, const Tensor& dy,
                           Tensor* dx, Tensor* dw);

// ---- Grouped GEMM plan (the host side of the CUDA grouped GEMM; plain C++, CPU-tested) ---------------
// One pass of grouped_gemm / grouped_gemm_backward as a list of independent GEMM problems, one per
// expert WITH rows (an expert with zero rows gets no problem, so its dw[e] is never touched, not even
// by a beta = 1 rescale), and the output tiles of all problems in one list: the CUDA kernel runs one
// thread block per tile, so the whole pass is a single launch whatever the number of experts.
// Problem p computes C_p [m, n] = op(A_p) [m, k] · op(B_p) [k, n] (+ beta · C_p), with row-major
// operands at element offsets a/b/c_offset and the pass-wide leading dimensions lda/ldb/ldc:
//   op(A)(i, q) = A[a_offset + i·lda + q], or A[a_offset + q·lda + i] when trans_a
//   op(B)(q, j) = B[b_offset + q·ldb + j], or B[b_offset + j·ldb + q] when trans_b
//   C(i, j)     = C[c_offset + i·ldc + j]
// With x [N,K], w [E,K,M], dy [N,M] and off_e the first row of expert e:
//   forward   y [N,M]  = x_e · w[e]:     A = x,  B = w,  C = y;  m = rows_e, n = M, k = K
//   d_input   dx [N,K] = dy_e · w[e]ᵀ:   A = dy, B = w (trans_b), C = dx; m = rows_e, n = K, k = M
//   d_weight  dw[e] += x_eᵀ · dy_e:       A = x (trans_a), B = dy, C = dw; m = K, n = M, k = rows_e
// Tiles are (problem, tile_m, tile_n) with tile_m < ceil(m / tile_rows), tile_n < ceil(n / tile_cols),
// ordered by problem, then tile_m, then tile_n; together they cover every C_p element exactly once.
// Negative counts and counts that do not sum to `rows` (N) are a dg::Error naming `op`.
enum class GroupedGemmPass { forward, d_input, d_weight };
struct GroupedGemmProblem {
  std::int64_t expert = 0;
  std::int64_t a_offset = 0, b_offset = 0, c_offset = 0;
  std::int64_t m = 0, n = 0, k = 0;
};
struct GroupedGemmTile {
  std::int32_t problem = 0, tile_m = 0, tile_n = 0;
};
struct GroupedGemmPlan {
  std::vector<std::int64_t> row_offset;  // [E + 1]: off_e, the last entry is N
  bool trans_a = false, trans_b = false;
  std::int64_t lda = 0, ldb = 0, ldc = 0;
  std::vector<GroupedGemmProblem> problems;
  std::vector<GroupedGemmTile> tiles;
};
GroupedGemmPlan grouped_gemm_plan(const char* op, const std::vector<std::int32_t>& expert_counts, std::int64_t rows,
                                  std::int64_t kdim, std::int64_t mdim, GroupedGemmPass pass, std::int64_t tile_rows,
                                  std::int64_t tile_cols);

// ---- CUDA implementations (layers/cuda/moe.cpp), called by the dispatchers above ----------------------
// Shapes were validated by the dispatchers; these check dtypes. Activations and weights are bf16 or f32
// (bf16 is the production path), index tensors i32, router statistics (probs, rstd, routing weights and
// their gradient) f32, router parameter gradients f32. All sums accumulate in fp32 in a fixed order:
// results do not depend on scheduling, and no op uses float atomics.
//  - moe_router: one fused kernel (RMSNorm, scale, projection, softmax, top-k with the lower-id tie
//    rule, renormalisation). A non-finite logit is a dg::Error naming the token (one stream sync).
//  - moe_router_backward: one fused kernel per token block; the optional parameter gradients go through
//    [T,E] / [T,H] / [T,k] fp32 scratch and fixed-order column / per-expert sums (proj via cuBLASLt).
//  - moe_permute_plan: a stable counting sort (per-chunk histograms, an ordered scan, in-order placement)
//    on the device; returns N to the host (one stream sync), reporting bad expert ids like the CPU.
//  - moe_gather / moe_gather_backward / moe_combine / moe_combine_backward: gather-style kernels, one
//    block per row, per-token sums in slot order (no scatter-add). They trust the plan: an index
//    outside its range is never dereferenced (it is treated as a dropped slot), but no error is raised
//    (that would cost a sync per op); the CPU backend diagnoses malformed plans.
//  - grouped_gemm / grouped_gemm_backward: one launch per pass of a tiled tensor-core kernel (bf16 WMMA,
//    fp32 accumulators; fp32 FMA for f32 operands) over the tiles of grouped_gemm_plan. Reads the E
//    counts to the host to plan (one small copy + sync). dx/y bf16 or f32; dw bf16 or f32, += .
namespace cuda {
void moe_router(const Tensor& r, const Tensor& scale, const Tensor& proj, const Tensor& per_expert_scale,
                Tensor& expert_ids, Tensor& routing_weights, Tensor& probs, Tensor& rstd, float eps);
void moe_router_backward(const Tensor& r, const Tensor& scale, const Tensor& proj, const Tensor& per_expert_scale,
                         const Tensor& expert_ids, const Tensor& probs, const Tensor& rstd,
                         const Tensor& d_routing_weights, Tensor& dr, const RouterGrads& grads);
std::int64_t moe_permute_plan(const Tensor& expert_ids, std::int64_t num_experts, Tensor& expert_counts,
                              Tensor& row_token, Tensor& slot_row, const Tensor& token_mask);
void moe_gather(const Tensor& x, const Tensor& row_token, Tensor& xp);
void moe_gather_backward(const Tensor& dxp, const Tensor& slot_row, Tensor& dx);
void moe_combine(const Tensor& y, const Tensor& routing_weights, const Tensor& slot_row, Tensor& out);
void moe_combine_backward(const Tensor& dout, const Tensor& y, const Tensor& routing_weights,
                          const Tensor& slot_row, Tensor& dy, Tensor& d_routing_weights);
void grouped_gemm(const Tensor& x, const Tensor& w, const Tensor& expert_counts, Tensor& y);
void grouped_gemm_backward(const Tensor& x, const Tensor& w, const Tensor& expert_counts, const Tensor& dy,
                           Tensor* dx, Tensor* dw);
}  // namespace cuda

}  // namespace dg
