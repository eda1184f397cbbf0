// Elementwise and row-wise ops of the model path, and the AdamW update: what used to be host loops in the
// layers, the trainer and the optimizer. Each has a CPU implementation (layers/cpu/elementwise.cpp) and a
// CUDA one (layers/cuda/elementwise.cpp + .cu); the dispatchers check shapes from metadata only.
#pragma once
#include <cstdint>

#include "layers/tensor.h"

namespace dg {

// a += b (same element count). CPU: f32. CUDA: a and b f32 or bf16 each, fp32 math.
void add_(Tensor& a, const Tensor& b);
// x *= s[0], with s an f32 [1] tensor on x's device (a layer scalar read without a host round trip).
void scale_by_(Tensor& x, const Tensor& s);
// x seen as [R, numel/R] with R = row_scale.numel(): row r *= row_scale[r] (f32 [R] on x's device).
void scale_rows_(Tensor& x, const Tensor& row_scale);
// x seen as [T, numel/T] with T = ids.numel(): rows whose id (i32) equals `value` are set to 0 (the
// embedding lookups of the pad id pass no gradient).
void zero_rows_where_(Tensor& x, const Tensor& ids, std::int32_t value);
// x [T, n] f32: x[t, j] = exp(x[t, j] − lse[t]) (softmax probabilities from logits and their log-sum-exp).
void exp_minus_rows_(Tensor& x, const Tensor& lse);
// Σ x and Σ x² in fp64, in element order on the CPU (fixed-order tree on the device): one host read each.
double sum_all(const Tensor& x);
double sum_squares(const Tensor& x);

// One AdamW update of an owned slice, exactly torch.optim.AdamW (single-tensor path) with the gradient
// clipping folded in (see optim/adamw.h for the formulas). master, exp_avg, exp_avg_sq f32 with grad's
// element count, updated in place; grad f32 (or bf16 on CUDA), read only. weight_decay 0 skips decay.
struct AdamWStep {
  double lr = 0, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0;
  std::int64_t step = 1;  // torch's state["step"] after its increment
  double clip_coef = 1;
};
void adamw_step(Tensor& master, Tensor& exp_avg, Tensor& exp_avg_sq, const Tensor& grad, const AdamWStep& s);

namespace cuda {
void add_(Tensor& a, const Tensor& b);
void scale_by_(Tensor& x, const Tensor& s);
void scale_rows_(Tensor& x, const Tensor& row_scale);
void exp_minus_rows_(Tensor& x, const Tensor& lse);
void zero_rows_where_(Tensor& x, const Tensor& ids, std::int32_t value);
double sum_all(const Tensor& x);
double sum_squares(const Tensor& x);
}  // namespace cuda

}  // namespace dg
