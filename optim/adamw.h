// AdamW on local fp32 slices (spec/training.md §6, §7.4; DESIGN.md "Parallelism"). optim/ only updates
// the slices a rank owns: who owns what, the gradient reduce-scatter and the global norm are
// parallel/fsdp's. One optimizer step of a job:
//   1. the gradients arrive reduce-scattered (SUM) into the owners' slices during the backward. Scaling
//      (§7.4): the reference divides the loss by the *global* token counts and multiplies it by dp, then
//      mean-reduces over dp; that is exactly a SUM of gradients of the globally normalised loss, which
//      is what dgemma's loss produces;
//   2. global norm ||g||₂ over every owned slice (parallel/fsdp.h global_grad_norm), clip =
//      clip_coefficient(norm, max_grad_norm) = min(1, max / (norm + 1e-6)) (torch clip_grad_norm_);
//   3. adamw_update on every owned trainable slice, exactly torch.optim.AdamW (single-tensor path):
//        t += 1;  p *= 1 - lr·wd (decoupled, only where the tensor has weight decay)
//        m += (1-β1)(g - m);  v = β2·v + (1-β2)·g²
//        p -= lr/(1-β1ᵗ) · m / (sqrt(v)/sqrt(1-β2ᵗ) + eps)
//      Scalars are computed in double (Python floats) and the element math in fp32; the gradient is
//      multiplied by clip in place first.
// Frozen tensors (sft_trainable false) are never updated.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "layers/tensor.h"

namespace dg {

// torch.optim.AdamW + clip_grad_norm_ settings; defaults are the reference recipe (§6.2).
struct AdamWOptions {
  double beta1 = 0.95;
  double beta2 = 0.99;
  double eps = 1e-8;
  double weight_decay = 1e-4;  // applied to every trainable tensor in the reference (no exclusions)
  double max_grad_norm = 1.0;
};
// ConfigError naming the offending option.
void validate(const AdamWOptions& o);

// SFT trainability of a native tensor name (spec/training.md §6.1 and DESIGN.md): everything trains
// except the router (moe.gate.proj.weight, moe.gate.scale, moe.gate.per_expert_scale: dgemma keeps
// per_expert_scale as its own frozen tensor instead of folding it into the trainable down_projs) and
// the per-layer scalars (layer_scalar, encoder_layer_scalar: buffers in the reference).
bool sft_trainable(const std::string& name);

// One owned slice of one tensor: the master weights, the two moments and the (reduced) gradient, f32
// tensors of one element count where the model's state lives (the update is the adamw_step op).
struct AdamWSlice {
  Tensor param, exp_avg, exp_avg_sq, grad;
  bool weight_decay = true;  // §6.2: true for every tensor in the reference recipe
};

struct StepStats {
  double grad_norm = 0;  // global L2 norm before clipping
  double clip_coef = 1;  // the factor the gradients were multiplied by
};

// min(1, max_norm / (norm + 1e-6)).
double clip_coefficient(double grad_norm, double max_norm);

// Step 3 of the file comment for every slice; `step` is the AdamW step count after this update (t).
void adamw_update(std::span<const AdamWSlice> slices, const AdamWOptions& o, double lr, double clip_coef,
                  std::int64_t step);

}  // namespace dg
