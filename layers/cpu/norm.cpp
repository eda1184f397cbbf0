// RMSNorm (layers/ops/norm.h): shape validation and dispatch, and the fp32 CPU implementation.
// Row sums are accumulated in double, so the CPU result is the exactly rounded reference; the
// multiplications x · rstd and · w are rounded separately in fp32, in the reference's order (§8.2).
#include "layers/ops/norm.h"

#include <algorithm>
#include <cmath>

#include "layers/cpu/parallel.h"
#include "layers/ops.h"

namespace dg {

namespace {

Shape leading_shape(const Tensor& x) { return Shape(x.shape().begin(), x.shape().end() - 1); }

void check_rows_and_weight(const char* op, const Tensor& x, const Tensor* weight, const Tensor& rstd) {
  DG_CHECK(x.ndim() >= 1 && x.size(-1) > 0, "{}: x {} needs a non-empty last dimension", op, x.describe());
  DG_CHECK(rstd.shape() == leading_shape(x), "{}: rstd {} should be {} (x {} without its last dimension)", op,
           rstd.describe(), shape_str(leading_shape(x)), x.describe());
  if (weight)
    DG_CHECK(weight->ndim() == 1 && weight->size(0) == x.size(-1), "{}: weight {} should be [{}] (last dim of x {})",
             op, weight->describe(), x.size(-1), x.describe());
}

void check_f32(const char* op, std::initializer_list<const Tensor*> tensors) {
  for (const Tensor* t : tensors)
    if (t) DG_CHECK(t->dtype() == DType::F32, "{}: the CPU op is f32 only, got {}", op, t->describe());
}

}  // namespace

void rms_norm(const Tensor& x, const Tensor* weight, float eps, Tensor& y, Tensor& rstd) {
  check_rows_and_weight("rms_norm", x, weight, rstd);
  DG_CHECK(y.shape() == x.shape(), "rms_norm: y {} should have the shape of x {}", y.describe(), x.describe());
  DG_CHECK(eps >= 0.f, "rms_norm: eps {} must be non-negative", eps);
  if (any_on_cuda({&x, weight, &y, &rstd})) {
    require_cuda("rms_norm", {&x, weight, &y, &rstd});
    cuda::rms_norm(x, weight, eps, y, rstd);
    return;
  }
  require_cpu("rms_norm", {&x, weight, &y, &rstd});
  check_f32("rms_norm", {&x, weight, &y, &rstd});
  cpu::rms_norm(x, weight, eps, y, rstd);
}

void rms_norm_backward(const Tensor& dy, const Tensor& x, const Tensor* weight, const Tensor& rstd, Tensor& dx,
                       Tensor* dweight) {
  check_rows_and_weight("rms_norm_backward", x, weight, rstd);
  DG_CHECK(dy.shape() == x.shape(), "rms_norm_backward: dy {} should have the shape of x {}", dy.describe(),
           x.describe());
  DG_CHECK(dx.shape() == x.shape(), "rms_norm_backward: dx {} should have the shape of x {}", dx.describe(),
           x.describe());
  DG_CHECK(weight || !dweight, "rms_norm_backward: dweight {} given for the weightless norm", dweight->describe());
  if (dweight)
    DG_CHECK(dweight->shape() == weight->shape(), "rms_norm_backward: dweight {} should have the shape of weight {}",
             dweight->describe(), weight->describe());
  if (any_on_cuda({&dy, &x, weight, &rstd, &dx, dweight})) {
    require_cuda("rms_norm_backward", {&dy, &x, weight, &rstd, &dx, dweight});
    cuda::rms_norm_backward(dy, x, weight, rstd, dx, dweight);
    return;
  }
  require_cpu("rms_norm_backward", {&dy, &x, weight, &rstd, &dx, dweight});
  check_f32("rms_norm_backward", {&dy, &x, weight, &rstd, &dx, dweight});
  cpu::rms_norm_backward(dy, x, weight, rstd, dx, dweight);
}

namespace cpu {

void rms_norm(const Tensor& x, const Tensor* weight, float eps, Tensor& y, Tensor& rstd) {
  const std::int64_t d = x.size(-1), rows = x.numel() / d;
  const float* px = x.data<float>();
  const float* pw = weight ? weight->data<float>() : nullptr;
  float* py = y.data<float>();
  float* pr = rstd.data<float>();
  parallel_for("norm.rows", rows, 2 * d, [&](std::int64_t r) {
    const float* xr = px + r * d;
    float* yr = py + r * d;
    double ss = 0;
    for (std::int64_t i = 0; i < d; ++i) ss += double(xr[i]) * double(xr[i]);
    const float s = static_cast<float>(1.0 / std::sqrt(ss / double(d) + double(eps)));
    pr[r] = s;
    if (pw)
      for (std::int64_t i = 0; i < d; ++i) yr[i] = (xr[i] * s) * pw[i];
    else
      for (std::int64_t i = 0; i < d; ++i) yr[i] = xr[i] * s;
  });
}

void rms_norm_backward(const Tensor& dy, const Tensor& x, const Tensor* weight, const Tensor& rstd, Tensor& dx,
                       Tensor* dweight) {
  const std::int64_t d = x.size(-1), rows = x.numel() / d;
  const float* pdy = dy.data<float>();
  const float* px = x.data<float>();
  const float* pw = weight ? weight->data<float>() : nullptr;
  const float* pr = rstd.data<float>();
  float* pdx = dx.data<float>();
  // dweight first (dx may alias dy): Σ over rows, in row order, of dy · x̂ per column; the columns are
  // split over the threads in blocks of kColumns, each block's sums running over the rows
  if (dweight) {
    constexpr std::int64_t kColumns = 64;
    float* pdw = dweight->data<float>();
    parallel_for("norm.backward.dweight", (d + kColumns - 1) / kColumns, kColumns * rows, [&](std::int64_t blk) {
      const std::int64_t i0 = blk * kColumns, i1 = std::min(d, i0 + kColumns);
      double dw[kColumns] = {};
      for (std::int64_t r = 0; r < rows; ++r) {
        const double s = pr[r];
        for (std::int64_t i = i0; i < i1; ++i) dw[i - i0] += double(pdy[r * d + i]) * (double(px[r * d + i]) * s);
      }
      for (std::int64_t i = i0; i < i1; ++i) pdw[i] += static_cast<float>(dw[i - i0]);
    });
  }
  parallel_for("norm.backward.rows", rows, 3 * d, [&](std::int64_t r) {
    const float* dyr = pdy + r * d;
    const float* xr = px + r * d;
    float* dxr = pdx + r * d;
    const double s = pr[r];
    double c = 0;  // Σ g · x̂ (first pass: dx may alias dy, so nothing is written yet)
    for (std::int64_t i = 0; i < d; ++i) {
      const double xh = double(xr[i]) * s;
      const double g = pw ? double(dyr[i]) * double(pw[i]) : double(dyr[i]);
      c += g * xh;
    }
    c /= double(d);
    for (std::int64_t i = 0; i < d; ++i) {
      const double xh = double(xr[i]) * s;
      const double g = pw ? double(dyr[i]) * double(pw[i]) : double(dyr[i]);
      dxr[i] = static_cast<float>(s * (g - xh * c));
    }
  });
}

}  // namespace cpu
}  // namespace dg
