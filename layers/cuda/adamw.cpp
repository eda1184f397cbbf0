// Host side of the CUDA AdamW update (layers/cuda/adamw.h): checks, the double-precision scalars rounded
// to fp32 exactly as adamw_update (optim/adamw.cpp) rounds them (optim/adamw.cpp), and the launch.
#include "layers/cuda/adamw.h"

#include <cmath>
#include <initializer_list>

#include "layers/cuda/adamw_kernels.h"
#include "layers/cuda/check.h"
#include "layers/cuda/context.h"

namespace dg::cuda {

void adamw_update(Tensor& master, Tensor& exp_avg, Tensor& exp_avg_sq, const Tensor& grad, double lr, double beta1,
                  double beta2, double eps, double weight_decay, std::int64_t step, double clip_coef) {
  for (const Tensor* t : std::initializer_list<const Tensor*>{&master, &exp_avg, &exp_avg_sq, &grad})
    DG_CHECK(t->defined() && t->device() == Device::CUDA && t->numel() == grad.numel(),
             "adamw_update: {} should be a device tensor of {} elements (master {}, exp_avg {}, exp_avg_sq {}, grad {})",
             t->describe(), grad.numel(), master.describe(), exp_avg.describe(), exp_avg_sq.describe(),
             grad.describe());
  for (const Tensor* t : std::initializer_list<const Tensor*>{&master, &exp_avg, &exp_avg_sq})
    DG_CHECK(t->dtype() == DType::F32, "adamw_update: optimizer state {} must be f32", t->describe());
  DG_CHECK(grad.dtype() == DType::F32 || grad.dtype() == DType::BF16, "adamw_update: grad {} must be f32 or bf16",
           grad.describe());
  DG_CHECK(step >= 1, "adamw_update: step {} must be >= 1 (the number of this update)", step);
  DG_CHECK(std::isfinite(lr) && std::isfinite(beta1) && std::isfinite(beta2) && std::isfinite(eps) &&
               std::isfinite(weight_decay) && std::isfinite(clip_coef),
           "adamw_update: non-finite scalar (lr {}, betas {} {}, eps {}, weight_decay {}, clip {})", lr, beta1, beta2,
           eps, weight_decay, clip_coef);

  // The scalars of adamw_update (optim/adamw.cpp), in the same double expressions and fp32 roundings.
  const auto t = static_cast<double>(step);
  kernels::AdamWScalars s{};
  s.clip = static_cast<float>(clip_coef);
  s.decay_on = weight_decay != 0;
  s.decay = static_cast<float>(1.0 - lr * weight_decay);
  const double w1d = 1.0 - beta1;
  s.lerp_low = std::abs(w1d) < 0.5;
  s.w1 = static_cast<float>(w1d);
  s.one_minus_w1 = static_cast<float>(1.0 - w1d);
  s.b2 = static_cast<float>(beta2);
  s.w2 = static_cast<float>(1.0 - beta2);
  s.step_size = static_cast<float>(lr / (1.0 - std::pow(beta1, t)));
  s.bc2_sqrt = static_cast<float>(std::sqrt(1.0 - std::pow(beta2, t)));
  s.eps = static_cast<float>(eps);
  DG_CUDA(kernels::adamw_update(master.data<float>(), exp_avg.data<float>(), exp_avg_sq.data<float>(), grad.raw(),
                                grad.dtype(), s, grad.numel(), stream()));
}

}  // namespace dg::cuda
