// Warmup + cosine/linear/constant learning-rate schedule (see schedule.h and spec/training.md §6.2).
#include "optim/schedule.h"

#include <cmath>
#include <numbers>

#include "layers/error.h"

namespace dg {

void validate(const LrSchedule& s) {
  auto finite = [](double x) { return std::isfinite(x); };
  if (!finite(s.max_lr) || s.max_lr <= 0)
    fail_config("optimizer option max_lr = {}: must be a finite number > 0", s.max_lr);
  if (!finite(s.min_lr) || s.min_lr < 0 || s.min_lr > s.max_lr)
    fail_config("optimizer option min_lr = {}: must be in [0, max_lr = {}]", s.min_lr, s.max_lr);
  if (!finite(s.init_lr) || s.init_lr < 0 || s.init_lr > s.max_lr)
    fail_config("optimizer option init_lr = {}: must be in [0, max_lr = {}]", s.init_lr, s.max_lr);
  if (s.decay_steps <= 0) fail_config("optimizer option decay_steps = {}: must be > 0", s.decay_steps);
  if (s.warmup_steps < 0 || s.warmup_steps >= s.decay_steps)
    fail_config("optimizer option warmup_steps = {}: must be in [0, decay_steps = {})", s.warmup_steps,
                s.decay_steps);
  if (s.decay_style != "cosine" && s.decay_style != "linear" && s.decay_style != "constant")
    fail_config("optimizer option decay_style = '{}': must be cosine, linear or constant", s.decay_style);
}

double learning_rate(const LrSchedule& s, std::int64_t n) {
  DG_CHECK(n >= 0, "learning_rate at step {}", n);
  if (s.warmup_steps > 0 && n <= s.warmup_steps)
    return s.init_lr + (s.max_lr - s.init_lr) * static_cast<double>(n) / static_cast<double>(s.warmup_steps);
  if (s.decay_style == "constant") return s.max_lr;
  if (n > s.decay_steps) return s.min_lr;
  const double ratio =
      static_cast<double>(n - s.warmup_steps) / static_cast<double>(s.decay_steps - s.warmup_steps);
  const double coeff = s.decay_style == "linear" ? 1.0 - ratio : 0.5 * (std::cos(std::numbers::pi * ratio) + 1.0);
  return s.min_lr + coeff * (s.max_lr - s.min_lr);
}

}  // namespace dg
