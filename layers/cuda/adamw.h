// AdamW on device buffers: the CUDA form of adamw_update (optim/adamw.h, step 3) for one
// owned slice, exactly torch.optim.AdamW's single-tensor path, with the gradient clipping folded in.
// Scalars are computed on the host in double (Python floats) and rounded to fp32 where torch rounds
// them; the element math is fp32 in the CPU loop's order (no fused multiply-add), so the result equals
// the CPU update bit for bit. Per element, with t = step:
//   g  = grad · clip_coef
//   p *= 1 − lr·wd                                            (skipped when weight_decay is 0)
//   m  = lerp(m, g, 1 − β1)          (torch's lerp: m + w·(g − m) if |w| < 0.5, else g − (g − m)·(1 − w))
//   v  = v·β2 + (1 − β2)·g·g
//   p −= lr/(1 − β1ᵗ) · m / (sqrt(v)/sqrt(1 − β2ᵗ) + eps)
// master, exp_avg, exp_avg_sq: f32 device tensors with grad's element count (updated in place);
// grad: f32 or bf16 on the device, read only (the clipped value is not written back). step >= 1 is the
// step number of this update (torch's state["step"] after its increment).
#pragma once
#include <cstdint>

#include "layers/tensor.h"

namespace dg::cuda {

void adamw_update(Tensor& master, Tensor& exp_avg, Tensor& exp_avg_sq, const Tensor& grad, double lr, double beta1,
                  double beta2, double eps, double weight_decay, std::int64_t step, double clip_coef);

}  // namespace dg::cuda
