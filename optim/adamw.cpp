// AdamW on fp32 master shards, global-norm clipping, optimizer state slices (see adamw.h).
#include "optim/adamw.h"

#include <cmath>
#include <algorithm>

#include "layers/error.h"

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
  const auto t = static_cast<double>(step);
  // Python-float scalars as torch's single-tensor AdamW computes them, cast to fp32 for the element math.
  const auto decay = static_cast<float>(1.0 - lr * o.weight_decay);
  const double w1d = 1.0 - o.beta1;  // exp_avg.lerp_(grad, 1 - beta1)
  const auto w1 = static_cast<float>(w1d), one_minus_w1 = static_cast<float>(1.0 - w1d);
  const bool lerp_low = std::abs(w1d) < 0.5;
  const auto b2 = static_cast<float>(o.beta2), w2 = static_cast<float>(1.0 - o.beta2);
  const double bias_correction1 = 1.0 - std::pow(o.beta1, t);
  const double bias_correction2 = 1.0 - std::pow(o.beta2, t);
  const auto step_size = static_cast<float>(lr / bias_correction1);
  const auto bc2_sqrt = static_cast<float>(std::sqrt(bias_correction2));
  const auto eps = static_cast<float>(o.eps);
  const auto clip = static_cast<float>(clip_coef);
  for (const AdamWSlice& s : slices) {
    float *p = s.param, *m = s.exp_avg, *v = s.exp_avg_sq, *g = s.grad;
    const bool wd = s.weight_decay && o.weight_decay != 0;
    for (std::int64_t j = 0; j < s.n; ++j) {
      const float gj = g[j] * clip;
      g[j] = gj;
      if (wd) p[j] *= decay;
      m[j] = lerp_low ? m[j] + w1 * (gj - m[j]) : gj - (gj - m[j]) * one_minus_w1;
      v[j] = v[j] * b2 + w2 * gj * gj;
      const float denom = std::sqrt(v[j]) / bc2_sqrt + eps;
      p[j] = p[j] - step_size * (m[j] / denom);
    }
  }
}

}  // namespace dg
