// CPU (fp32) elementwise and row-wise ops, the AdamW update, and their dispatchers (layers/ops/elementwise.h).
#include <algorithm>
#include <cmath>

#include "layers/cpu/parallel.h"
#include "layers/cuda/adamw.h"
#include "layers/ops.h"

namespace dg {

namespace {
void check_f32(const char* op, const Tensor& t) {
  DG_CHECK(t.defined() && t.dtype() == DType::F32, "{}: {} must be f32 on the CPU", op, t.describe());
}

// Elements per item of the elementwise loops (the loops run over blocks of elements: one item each).
constexpr std::int64_t kBlock = 4096;

// fn(begin, end) over [0, n) in blocks of kBlock elements, on the CPU threads.
template <class F>
void elementwise(const char* name, std::int64_t n, F&& fn) {
  cpu::parallel_for(name, (n + kBlock - 1) / kBlock, kBlock,
                    [&](std::int64_t b) { fn(b * kBlock, std::min(n, (b + 1) * kBlock)); });
}
}  // namespace

void add_(Tensor& a, const Tensor& b) {
  DG_CHECK(a.numel() == b.numel(), "add_ {} += {}", a.describe(), b.describe());
  if (any_on_cuda({&a, &b})) {
    require_cuda("add_", {&a, &b});
    return cuda::add_(a, b);
  }
  check_f32("add_", a);
  check_f32("add_", b);
  float* pa = a.data<float>();
  const float* pb = b.data<float>();
  elementwise("elementwise.add", a.numel(), [&](std::int64_t i0, std::int64_t i1) {
    for (std::int64_t i = i0; i < i1; ++i) pa[i] += pb[i];
  });
}

void scale_by_(Tensor& x, const Tensor& s) {
  DG_CHECK(s.numel() == 1 && s.dtype() == DType::F32, "scale_by_: the scale {} must be f32 [1]", s.describe());
  if (any_on_cuda({&x, &s})) {
    require_cuda("scale_by_", {&x, &s});
    return cuda::scale_by_(x, s);
  }
  check_f32("scale_by_", x);
  const float k = s.data<float>()[0];
  float* p = x.data<float>();
  elementwise("elementwise.scale", x.numel(), [&](std::int64_t i0, std::int64_t i1) {
    for (std::int64_t i = i0; i < i1; ++i) p[i] *= k;
  });
}

void scale_rows_(Tensor& x, const Tensor& row_scale) {
  const std::int64_t R = row_scale.numel();
  DG_CHECK(row_scale.dtype() == DType::F32 && R > 0 && x.numel() % R == 0,
           "scale_rows_: {} rows of scale {} for {}", R, row_scale.describe(), x.describe());
  if (any_on_cuda({&x, &row_scale})) {
    require_cuda("scale_rows_", {&x, &row_scale});
    return cuda::scale_rows_(x, row_scale);
  }
  check_f32("scale_rows_", x);
  const std::int64_t n = x.numel() / R;
  float* p = x.data<float>();
  const float* s = row_scale.data<float>();
  cpu::parallel_for("elementwise.scale_rows", R, n, [&](std::int64_t r) {
    for (std::int64_t j = 0; j < n; ++j) p[r * n + j] *= s[r];
  });
}

void exp_minus_rows_(Tensor& x, const Tensor& lse) {
  DG_CHECK(x.ndim() == 2 && lse.numel() == x.size(0) && lse.dtype() == DType::F32,
           "exp_minus_rows_: x {} should be [T, n] with lse {} of T f32", x.describe(), lse.describe());
  if (any_on_cuda({&x, &lse})) {
    require_cuda("exp_minus_rows_", {&x, &lse});
    return cuda::exp_minus_rows_(x, lse);
  }
  check_f32("exp_minus_rows_", x);
  const std::int64_t T = x.size(0), n = x.size(1);
  float* p = x.data<float>();
  const float* l = lse.data<float>();
  cpu::parallel_for("elementwise.exp_minus_rows", T, 8 * n, [&](std::int64_t t) {
    for (std::int64_t j = 0; j < n; ++j) p[t * n + j] = std::exp(p[t * n + j] - l[t]);
  });
}

void zero_rows_where_(Tensor& x, const Tensor& ids, std::int32_t value) {
  const std::int64_t T = ids.numel();
  DG_CHECK(ids.dtype() == DType::I32 && T > 0 && x.numel() % T == 0, "zero_rows_where_: ids {} for {}",
           ids.describe(), x.describe());
  if (any_on_cuda({&x, &ids})) {
    require_cuda("zero_rows_where_", {&x, &ids});
    return cuda::zero_rows_where_(x, ids, value);
  }
  check_f32("zero_rows_where_", x);
  const std::int64_t n = x.numel() / T;
  float* p = x.data<float>();
  const std::int32_t* id = ids.data<std::int32_t>();
  for (std::int64_t t = 0; t < T; ++t)
    if (id[t] == value) std::fill_n(p + t * n, n, 0.0f);
}

double sum_all(const Tensor& x) {
  if (any_on_cuda({&x})) return cuda::sum_all(x);
  check_f32("sum_all", x);
  const float* p = x.data<float>();
  return cpu::parallel_sum("elementwise.sum_all", x.numel(), 1, [p](std::int64_t i) { return double(p[i]); });
}

double sum_squares(const Tensor& x) {
  if (any_on_cuda({&x})) return cuda::sum_squares(x);
  check_f32("sum_squares", x);
  const float* p = x.data<float>();
  return cpu::parallel_sum("elementwise.sum_squares", x.numel(), 1,
                           [p](std::int64_t i) { return static_cast<double>(p[i]) * static_cast<double>(p[i]); });
}

void adamw_step(Tensor& master, Tensor& exp_avg, Tensor& exp_avg_sq, const Tensor& grad, const AdamWStep& o) {
  DG_CHECK(master.numel() == grad.numel() && exp_avg.numel() == grad.numel() && exp_avg_sq.numel() == grad.numel(),
           "adamw_step: master {}, exp_avg {}, exp_avg_sq {} and grad {} differ in size", master.describe(),
           exp_avg.describe(), exp_avg_sq.describe(), grad.describe());
  if (any_on_cuda({&master, &exp_avg, &exp_avg_sq, &grad})) {
    require_cuda("adamw_step", {&master, &exp_avg, &exp_avg_sq, &grad});
    return cuda::adamw_update(master, exp_avg, exp_avg_sq, grad, o.lr, o.beta1, o.beta2, o.eps, o.weight_decay, o.step,
                              o.clip_coef);
  }
  for (const Tensor* t : std::initializer_list<const Tensor*>{&master, &exp_avg, &exp_avg_sq, &grad}) check_f32("adamw_step", *t);
  const auto t = static_cast<double>(o.step);
  // Python-float scalars as torch's single-tensor AdamW computes them, cast to fp32 for the element math.
  const auto decay = static_cast<float>(1.0 - o.lr * o.weight_decay);
  const double w1d = 1.0 - o.beta1;  // exp_avg.lerp_(grad, 1 - beta1)
  const auto w1 = static_cast<float>(w1d), one_minus_w1 = static_cast<float>(1.0 - w1d);
  const bool lerp_low = std::abs(w1d) < 0.5;
  const auto b2 = static_cast<float>(o.beta2), w2 = static_cast<float>(1.0 - o.beta2);
  const auto step_size = static_cast<float>(o.lr / (1.0 - std::pow(o.beta1, t)));
  const auto bc2_sqrt = static_cast<float>(std::sqrt(1.0 - std::pow(o.beta2, t)));
  const auto eps = static_cast<float>(o.eps);
  const auto clip = static_cast<float>(o.clip_coef);
  const bool wd = o.weight_decay != 0;
  float *p = master.data<float>(), *m = exp_avg.data<float>(), *v = exp_avg_sq.data<float>();
  const float* g = grad.data<float>();
  elementwise("elementwise.adamw", grad.numel(), [&](std::int64_t j0, std::int64_t j1) {
    for (std::int64_t j = j0; j < j1; ++j) {
      const float gj = g[j] * clip;
      if (wd) p[j] *= decay;
      m[j] = lerp_low ? m[j] + w1 * (gj - m[j]) : gj - (gj - m[j]) * one_minus_w1;
      v[j] = v[j] * b2 + w2 * gj * gj;
      const float denom = std::sqrt(v[j]) / bc2_sqrt + eps;
      p[j] = p[j] - step_size * (m[j] / denom);
    }
  });
}

}  // namespace dg
