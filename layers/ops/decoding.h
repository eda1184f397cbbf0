// Ops of the generation path (spec/model.md §6-§7): what used to be host loops in layers/model.cpp (the
// KV-cache append, the per-row positions, constant fills) and in layers/generation.cpp (the
// entropy-bound acceptance, the per-row denoising update with the stable-and-confident stopping rule).
// Each has a CPU implementation (layers/cpu/decoding.cpp, the exact reference) and a CUDA one
// (layers/cuda/decoding.cpp + .cu: simple deterministic kernels that reproduce the CPU results bit for
// bit: integer work, copies, and the two fp32 / fp64 running sums done sequentially in the CPU's order).
// The dispatchers check shapes from metadata only; nothing here reads a tensor back to the host.
#pragma once
#include <cstdint>

#include "layers/tensor.h"

namespace dg {

// x[i] = value for every element. x f32 or i32 (CUDA: also bf16); value must be exact in x's type.
void fill_(Tensor& x, double value);

// positions [B, S] i32: positions[b, t] = max(start + row_offset[b] + t, 0), with row_offset i32 [B]
// (undefined or empty: 0 for every row). The positions of a pass over S new tokens of a KV cache that
// already holds `start` tokens, shifted per row (left padding, layers/model.h KVCache::row_offset).
void token_positions(const Tensor& row_offset, std::int64_t start, Tensor& positions);

// Concatenation along the sequence keeping the last tokens: a [B, T0, ...] (undefined or T0 = 0: none),
// b [B, T1, ...] with the same trailing shape and dtype, out [B, K, ...] with K <= T0 + T1 receives the
// last K tokens of a ++ b per row (the KV-cache append of a sliding layer keeps the last W-1). Any
// dtype (a byte copy).
void concat_tokens(const Tensor& a, const Tensor& b, Tensor& out);

// The entropy-bound acceptance (model.md §7.4) of every row of entropy f32 [R, C]: a row's positions
// sorted by entropy (stable: equal entropies keep their index order), position j accepted when the fp32
// running sum of the entropies before it in that order is <= gamma (computed as inclusive prefix - own,
// as the reference). accepted i32 [R, C]: 1 or 0. The lowest-entropy position is always accepted.
void entropy_bound_accept_rows(const Tensor& entropy, double gamma, Tensor& accepted);

// One denoising step's update of the canvas rows that have not stopped (model.md §7.4-§7.5). Shapes:
// x, amax, accepted, sampled, renoise, step_amax i32 [B, C]; entropy f32 [B, C]; history i32 [B, M, C]
// (M = stability_threshold >= 0, the last M argmax canvases, oldest first); done i32 [B]. For every row b
// with done[b] == 0:
//   x[b, j]     = accepted[b, j] ? sampled[b, j] : renoise[b, j]
//   amax[b]     = step_amax[b]
//   stable      = step_amax[b] equals every history[b, m] (M = 0: true); then history[b] drops its
//                 oldest canvas and appends step_amax[b]
//   done[b]     = 1 when stable and (Σ_j entropy[b, j] in fp64, ascending j) / C < confidence_threshold
// Rows with done[b] != 0 are left exactly as they are (frozen).
void denoise_update(Tensor& x, Tensor& amax, Tensor& history, Tensor& done, const Tensor& accepted,
                    const Tensor& sampled, const Tensor& renoise, const Tensor& step_amax, const Tensor& entropy,
                    double confidence_threshold);

namespace cuda {
void fill_(Tensor& x, double value);
void token_positions(const Tensor& row_offset, std::int64_t start, Tensor& positions);
void concat_tokens(const Tensor& a, const Tensor& b, Tensor& out);
void entropy_bound_accept_rows(const Tensor& entropy, double gamma, Tensor& accepted);
void denoise_update(Tensor& x, Tensor& amax, Tensor& history, Tensor& done, const Tensor& accepted,
                    const Tensor& sampled, const Tensor& renoise, const Tensor& step_amax, const Tensor& entropy,
                    double confidence_threshold);
}  // namespace cuda

}  // namespace dg
