// AdamW on fp32 master shards, global-norm clipping, optimizer state slices (see adamw.h).
#include "optim/adamw.h"

#include <cmath>
#include <algorithm>

#include "layers/error.h"
#include "layers/ops.h"

namespace dg {

void validate(const AdamWOptions& o) {
  auto finite = [](double x) { return std::isfinite(x); };
  if (!finite(o.beta1) || o.beta1 < 0 || o.beta1 >= 1)
    fail_config("optimizer option beta1 = {}: must be in [0, 1)", o.beta1);
  if (!finite(o.beta2) || o.beta2 < 0 || o.beta2 >= 1)
    fail_config("optimizer option beta2 = {}: must be in [0, 1)", o.beta2);
  if (!finite(o.eps) || o.eps < 0) fail_config("optimizer option eps = {}: must be >= 0", o.eps);
  if (!finite(o.weight_decay) || o.weight_decay < 0)
    fail_config("optimizer option weight_decay = {}: must be >= 0", o.weight_decay);
  if (!finite(o.max_grad_norm) || o.max_grad_norm <= 0)
    fail_config("optimizer option max_grad_norm = {}: must be a finite number > 0", o.max_grad_norm);
}

bool sft_trainable(const std::string& name) {
  auto ends_with = [&](std::string_view s) {
    return name.size() >= s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0;
  };
  return !(ends_with(".moe.gate.proj.weight") || ends_with(".moe.gate.scale") ||
           ends_with(".moe.gate.per_expert_scale") || ends_with(".layer_scalar") ||
           ends_with(".encoder_layer_scalar"));
}

double clip_coefficient(double grad_norm, double max_norm) { return std::min(1.0, max_norm / (grad_norm + 1e-6)); }

void adamw_update(std::span<const AdamWSlice> slices, const AdamWOptions& o, double lr, double clip_coef,
                  std::int64_t step) {
  for (const AdamWSlice& s : slices) {
    AdamWStep a;
    a.lr = lr;
    a.beta1 = o.beta1;
    a.beta2 = o.beta2;
    a.eps = o.eps;
    a.weight_decay = s.weight_decay ? o.weight_decay : 0.0;
    a.step = step;
    a.clip_coef = clip_coef;
    Tensor p = s.param, m = s.exp_avg, v = s.exp_avg_sq;
    adamw_step(p, m, v, s.grad, a);
  }
}

}  // namespace dg
