// The SFT training forward and backward of one micro-batch (spec/training.md §1.2-§1.4, §4, §5.1-§5.2,
// §6.1; DESIGN.md "Data flow / SFT step"), written by hand on top of the ops of layers/ops.h:
//
//   1. encode: causal pass over the clean sequence [B, S] (positions 0..S-1, key padding and MoE token
//      mask from `clean_valid`); every layer keeps its own K/V untrimmed (the Canvas rule of
//      attention does the windowing) and everything its backward needs; AR loss on the final hidden
//      states through the fused chunked LM-head cross-entropy.
//   2. decode pass 1 (no gradient, nothing saved): the noised canvas [B, R] attends the encoder K/V
//      under AttnMaskKind::Canvas; its self-conditioning soft embedding is computed straight from the
//      final hidden states in vocabulary chunks (lm_head_soft_embedding), never as [B·R, V] logits.
//      The pass-1 output is detached (training.md §1.4, §5.1).
//   3. decode pass 2 (with gradient): the same canvas with the soft embedding of examples whose coin
//      is 1 (rows of coin-0 examples are zero, so their self-conditioning MLP output is 0); diffusion
//      loss on the caller's window loss mask (the selected block).
//   4. backward: pass 2 in reverse, accumulating d(encoder K/V) per layer; then the decoder input
//      (self-conditioning MLP, its pre_norm, the soft embedding's table gradient, the token
//      embedding); then the encoder in reverse, seeded by the AR loss and the accumulated K/V
//      gradients; then the clean-token embedding. The LM head is tied, so both heads and all three
//      embedding uses accumulate into d embed_tokens.
//
// Trainable / frozen (training.md §6.1, DESIGN.md "Model parameters and names"):
//   - frozen, gradient exactly 0: moe.gate.proj.weight, moe.gate.scale (freeze_router), and
//     moe.gate.per_expert_scale. NeMo folds per_expert_scale into down_projs and trains the product
//     (§8.2); we keep the tensor separate (DESIGN.md) and freeze it, which DESIGN.md lists as "frozen
//     in SFT". The routing-weight path ∂w/∂h1 is kept: gradients reach the router INPUT.
//   - frozen: layer_scalar and encoder_layer_scalar (persistent buffers in HF/NeMo, not parameters,
//     §6.1 "Not parameters").
//   - trainable: everything else (attention, q/k norms, dense MLP, all RMSNorm weights, experts,
//     embed_tokens = LM head, self-conditioning MLP and pre_norm, final norm).
//
// Precision: fp32 throughout (CPU backend). The dataset-level choices (noise, block selection, the
// coin, the global normalisers) are the caller's: they come in through SftBatch.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "layers/model.h"
#include "layers/sharding.h"

namespace dg {

// Gradients in the exact layout of the weights (allocate_model + zero), so that an optimizer can walk
// model_tensors(c, weights) and model_tensors(c, grads) in parallel. Frozen tensors stay zero.
ModelGrads allocate_grads(const ModelConfig& c);   // allocate_model(c), zero-filled
void zero_grads(const ModelConfig& c, ModelGrads& g);

// Which native names train: sft_trainable() in optim/adamw.h (the list above).

// One micro-batch in the response-window layout (training.md §2.3). B examples, S clean positions,
// R canvas positions (R = max_b R_b).
struct SftBatch {
  Tensor clean;        // i32 [B, S] clean ids (prompt + response + EOS fill + pad)
  Tensor clean_valid;  // i32 [B, S] attention mask (1 content incl. EOS fill, 0 tail pad); undefined: all 1
  Tensor canvas;       // i32 [B, R] noised canvas: canvas[b, j] = noisy[b, P_b + j] for j < R_b (any id beyond)
  std::vector<std::int64_t> prompt_len;  // P_b; canvas token j sits at absolute position P_b + j
  std::vector<std::int64_t> canvas_len;  // R_b <= R, P_b + R_b <= S; rows j >= R_b are padding
  // Diffusion loss: targets (clean ids of the window) and the window loss mask with the caller's block
  // selection already applied (training.md §3 "one canvas per step"): f32 weights, 0 outside.
  Tensor diff_targets;  // i32 [B, R]
  Tensor diff_mask;     // f32 [B, R]
  // AR loss over the clean sequence: row t predicts ar_targets[b, t] (= clean[b, t+1]) with weight
  // ar_mask[b, t] (= valid[t] & valid[t+1], t < S-1). sft_ar_targets() builds both.
  Tensor ar_targets;  // i32 [B, S]
  Tensor ar_mask;     // f32 [B, S]
  std::vector<std::uint8_t> sc_coin;  // [B]: 1 = pass 2 gets the pass-1 self-conditioning signal
  // Optional f32 [B, R, V]: given self-conditioning logits (detached). Pass 1 is then skipped and the
  // soft embedding is softmax(sc_logits)·E·scale. Used by the reference-parity and gradient tests, where
  // the signal must be an input rather than a function of the weights.
  Tensor sc_logits;
  double n_diff = 1, n_ar = 1;        // global normalisers N_diff, N_ar (training.md §5.2), >= 1
};

// The batch's tensors copied to where the model's tensors live (in strict-device mode: device-resident
// copies, so the step can prove it never reads them on the host). Call it inside the step's scope.
SftBatch to_model_device(const SftBatch& b);

// The AR targets and mask of training.md §5.2 from the clean ids and their attention mask
// (valid undefined: all 1).
void sft_ar_targets(const Tensor& clean, const Tensor& valid, Tensor& ar_targets, Tensor& ar_mask);

struct SftLossScale {
  float loss_scale = 1.0f;  // the backward runs on loss_scale · L (dp of training.md §5.2)
  double ar_weight = 1.0;   // encoder_loss_weight: L = L_diff + ar_weight · L_ar
};

struct StepLosses {
  double diffusion = 0;  // Σ diff_mask · CE / n_diff (this micro-batch's share of the global mean)
  double ar = 0;         // Σ ar_mask · CE / n_ar
  double total = 0;      // diffusion + ar_weight · ar (unscaled)
  double diff_tokens = 0, ar_tokens = 0;  // Σ diff_mask, Σ ar_mask of this micro-batch
};

// Forward and backward of one micro-batch: returns the losses and ACCUMULATES (+=) the gradient of
// scale.loss_scale · L into `grads` (several micro-batches sum; zero them once per step).
// par: the parameter schedule (FSDP) and the expert exchange (EP); by default everything is resident.
// With a schedule, `w` and `grads` are the objects it binds the units into.
StepLosses sft_forward_backward(const ModelConfig& c, const ModelWeights& w, const SftBatch& batch, ModelGrads& grads,
                                const SftLossScale& scale = {}, const TrainParallel& par = {});

// The same forward without any gradient (validation, tests, finite differences).
StepLosses sft_forward(const ModelConfig& c, const ModelWeights& w, const SftBatch& batch,
                       const SftLossScale& scale = {}, const TrainParallel& par = {});

}  // namespace dg
