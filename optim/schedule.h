// The learning-rate schedule of spec/training.md §6.2: Megatron's OptimizerParamScheduler as NeMo
// Automodel configures it (linear warmup from init_lr to max_lr, then cosine decay to min_lr).
//
//   n <= warmup_steps (and warmup_steps > 0):  lr = init_lr + (max_lr - init_lr) · n / warmup_steps
//   decay_style "constant":                    lr = max_lr
//   n > decay_steps:                           lr = min_lr
//   otherwise, r = (n - warmup_steps) / (decay_steps - warmup_steps):
//     cosine:  lr = min_lr + 0.5 · (1 + cos(π r)) · (max_lr - min_lr)
//     linear:  lr = min_lr + (1 - r) · (max_lr - min_lr)
//
// n is the number of scheduler steps taken so far. The reference steps the scheduler *after* each
// optimizer step, so optimizer step k (0-based, Adam's step count t = k + 1) runs with lr(k): the very
// first update uses lr(0) = init_lr = 0. The schedule's only state is n (the driver's step counter),
// which the checkpoint stores.
#pragma once
#include <cstdint>
#include <string>

namespace dg {

struct LrSchedule {
  double init_lr = 0.0;       // lr at n = 0 (start of warmup)
  double max_lr = 1.5e-4;     // peak, reached at n = warmup_steps
  double min_lr = 1.5e-5;     // floor, reached at n = decay_steps and kept after
  std::int64_t warmup_steps = 25;
  std::int64_t decay_steps = 800;  // the reference: total steps = min(epochs · epoch_len, max_steps)
  std::string decay_style = "cosine";  // cosine | linear | constant
};

// ConfigError naming the offending option (the same checks as Megatron's constructor: 0 <= min_lr <=
// max_lr, 0 <= init_lr <= max_lr, 0 <= warmup_steps < decay_steps, a known decay style).
void validate(const LrSchedule& s);

// lr after n scheduler steps (n >= 0). Pure: no state besides n.
double learning_rate(const LrSchedule& s, std::int64_t n);

}  // namespace dg
