// Output-head ops: the final logit softcap, the fused chunked cross-entropy of the tied LM head, and
// the sampler's per-position statistics (entropy, argmax) and categorical sample. Math: model.md §5,
// §7.3-§7.4, §8 items 10 and 12; training.md §5.2. Included from layers/ops.h.
//
// The LM head is tied to the token embedding E [V,H]: logits = hidden · Eᵀ. With V = 262,144 a
// [T,V] fp32 logits buffer is 1 MiB per token (DESIGN.md "Precision"), so the fused ops take the
// final-normed hidden states and E and compute logits one vocabulary chunk at a time ([T', chunk]
// scratch, T' = rows actually needed); no op here ever holds [T,V].
#pragma once
#include "layers/tensor.h"

namespace dg {

// ---- Softcap (final_logit_softcapping) ----------------------------------------------------------
// y = cap · tanh(x / cap), elementwise, fp32 (model.md §5: cap = 30); cap = 0 means no cap (y = x),
// as for LmHeadOpts::softcap. y may be x (in place).
void softcap(const Tensor& x, float cap, Tensor& y);
// dx = dy · (1 - (y / cap)²) from the forward's output y (written; dx may be dy).
void softcap_backward(const Tensor& y, const Tensor& dy, float cap, Tensor& dx);

namespace cuda {  // softcap on the device (layers/cuda/softcap.cpp): x, y, dy, dx bf16 or f32 each, fp32 math
void softcap(const Tensor& x, float cap, Tensor& y);
void softcap_backward(const Tensor& y, const Tensor& dy, float cap, Tensor& dx);
}  // namespace cuda

struct LmHeadOpts {
  float softcap = 30.0f;              // final_logit_softcapping; 0 means no cap
  std::int64_t vocab_chunk = 16384;   // vocabulary rows per logits chunk; need not divide V
};

// ---- Fused softcapped cross-entropy (training.md §5.2) -------------------------------------------
// hidden [T,H] (after the final norm), embedding [V,H], targets [T] i32, loss_mask [T] f32 (a weight
// per row; rows with weight 0 are skipped entirely and their target may be anything, e.g. -100),
// normaliser > 0 (the global N_diff or N_ar, clamped >= 1 by the caller). With s = softcap(h·Eᵀ):
//   loss = Σ_t loss_mask[t] · (logsumexp(s_t) - s_t[targets[t]]) / normaliser        (returned)
// lse [T] f32 receives logsumexp(s_t) for the backward (0 on rows with weight 0). One pass over the
// vocabulary with a streaming log-sum-exp. A target outside [0, V) on a weighted row is a dg::Error.
double lm_head_cross_entropy(const Tensor& hidden, const Tensor& embedding, const Tensor& targets,
                             const Tensor& loss_mask, double normaliser, Tensor& lse, const LmHeadOpts& opts = {});
// Gradient of dloss · loss: recomputes each logits chunk (the deliberate recomputation that keeps
// [T,V] out of memory), forms g = dloss · mask/normaliser · (softmax(s) - onehot) · (1 - (s/cap)²), and
// writes dhidden [T,H] = g · E (0 on rows with weight 0) and accumulates dembedding [V,H] += gᵀ · hidden
// when dembedding is given (null when the embedding is frozen).
void lm_head_cross_entropy_backward(const Tensor& hidden, const Tensor& embedding, const Tensor& targets,
                                    const Tensor& loss_mask, double normaliser, const Tensor& lse, float dloss,
                                    Tensor& dhidden, Tensor* dembedding, const LmHeadOpts& opts = {});

// ---- Sampler statistics (model.md §7.3-§7.5, forward only) ---------------------------------------
// Processed logits lg = softcap(hidden · Eᵀ) / temperature (fp32 division, §7.3). Per row:
//   entropy [T] f32 = -Σ_v p_v log p_v with p = softmax(lg)   (EntropyBoundSampler §7.4, stopping §7.5)
//   argmax  [T] i32 = argmax_v lg_v; equal maxima: the lowest id (torch.argmax's documented rule)
//   logsumexp [T] f32 (optional) = log Σ_v exp(lg_v), what lm_head_sample needs
// The entropy-bound sampler needs nothing else from the logits (no max probability); the categorical
// sample comes from lm_head_sample. One pass over the vocabulary.
void lm_head_entropy_argmax(const Tensor& hidden, const Tensor& embedding, float temperature, Tensor& entropy,
                            Tensor& argmax, Tensor* logsumexp = nullptr, const LmHeadOpts& opts = {});
// One categorical sample per row from softmax(lg) by inverse CDF: the smallest v with
// Σ_{v' <= v} exp(lg_v' - logsumexp) > uniforms[t] (double accumulation, ascending v; if rounding
// leaves the total <= u, the last v with nonzero probability). uniforms [T] f32 in [0, 1) come from
// the caller's counter-based generator, so the op holds no randomness; logsumexp [T] is
// lm_head_entropy_argmax's output for the same temperature. sampled [T] i32. A second vocabulary pass
// (stops at the chunk where every row has its sample).
void lm_head_sample(const Tensor& hidden, const Tensor& embedding, float temperature, const Tensor& logsumexp,
                    const Tensor& uniforms, Tensor& sampled, const LmHeadOpts& opts = {});

// ---- Fused sampler step (model.md §4.2, §7.3-§7.5; what one denoising step needs) ----------------
// Everything generation takes from the processed logits lg = softcap(hidden · Eᵀ) / temperature, in
// ONE pass over the vocabulary (one logits GEMM per chunk, online statistics per row):
//   entropy [T] f32, argmax [T] i32   as lm_head_entropy_argmax
//   sampled [T] i32                   as lm_head_sample with that op's logsumexp and these uniforms
//   soft [T,H] f32                    as lm_head_soft_embedding(hidden, embedding, temperature, scale)
// uniforms [T] f32 in [0, 1). A row's results depend on that row only (given batch-invariant GEMMs).
// The categorical sample needs the row's log-sum-exp before its inverse-CDF scan, so the CPU op keeps
// the last chunk's logits and, per row, the probability mass of every chunk; the scan then runs on the
// chunk where the mass crosses the uniform (the kept chunk, or that one chunk recomputed for the row).
// With V <= vocab_chunk the sample is bit-for-bit lm_head_sample's; with several chunks the chunk is
// chosen from chunk masses summed in a different order (a draw within ~1e-15 of a chunk boundary of
// the CDF could pick the neighbouring token). On CUDA it runs the three ops above.
void lm_head_sampler(const Tensor& hidden, const Tensor& embedding, float temperature, float scale,
                     const Tensor& uniforms, Tensor& entropy, Tensor& argmax, Tensor& sampled, Tensor& soft,
                     const LmHeadOpts& opts = {});

}  // namespace dg

namespace dg {

// ---- Self-conditioning input of generation (model.md §4.2, §7.3) ---------------------------------
// soft[t] = scale · softmax(softcap(hidden_t · Eᵀ) / temperature) @ E: the soft embedding of the
// temperature-scaled logits of a denoising step, computed straight from the hidden states one
// vocabulary chunk at a time with an online softmax, so generation never holds [T, V] logits.
// Equals soft_embedding(logits / temperature, E, scale) of layers/ops/embedding.h.
// hidden [T,H], embedding [V,H], soft [T,H] (written).
void lm_head_soft_embedding(const Tensor& hidden, const Tensor& embedding, float temperature, float scale,
                            Tensor& soft, const LmHeadOpts& opts = {});

}  // namespace dg

namespace dg::cuda {

// ---- CUDA implementations of the LM-head ops above (layers/cuda/head.cpp; softcap has its own) ---------
// Called by the dispatchers once shapes are validated. hidden and embedding: both bf16 or both f32;
// targets, argmax, sampled i32; loss_mask, lse, entropy, logsumexp, uniforms f32; dhidden and soft bf16
// or f32; dembedding f32 or the embedding's dtype (+=). Each vocabulary chunk's logits [rows, chunk] are
// one cuBLASLt GEMM with fp32 accumulation into f32; softcap, online max / log-sum-exp, entropy, argmax
// (lowest id on ties), the target logit and dlogits are fp32 kernels with fixed-order reductions and
// double running sums across chunks. The backward forms g = dlogits in the embedding's dtype (bf16:
// rounded, 2^-9 relative) for the two GEMMs dhidden += g·E and dE += gᵀ·h; the soft embedding likewise
// rounds its softmax weights to bf16 (and normalises by the sum of the rounded weights). Rows are tiled
// so a logits chunk stays <= 256 MiB; no op holds [T, V].
double lm_head_cross_entropy(const Tensor& hidden, const Tensor& embedding, const Tensor& targets,
                             const Tensor& loss_mask, double normaliser, Tensor& lse, const LmHeadOpts& opts);
void lm_head_cross_entropy_backward(const Tensor& hidden, const Tensor& embedding, const Tensor& targets,
                                    const Tensor& loss_mask, double normaliser, const Tensor& lse, float dloss,
                                    Tensor& dhidden, Tensor* dembedding, const LmHeadOpts& opts);
void lm_head_entropy_argmax(const Tensor& hidden, const Tensor& embedding, float temperature, Tensor& entropy,
                            Tensor& argmax, Tensor* logsumexp, const LmHeadOpts& opts);
void lm_head_sample(const Tensor& hidden, const Tensor& embedding, float temperature, const Tensor& logsumexp,
                    const Tensor& uniforms, Tensor& sampled, const LmHeadOpts& opts);
void lm_head_soft_embedding(const Tensor& hidden, const Tensor& embedding, float temperature, float scale,
                            Tensor& soft, const LmHeadOpts& opts);

}  // namespace dg::cuda
