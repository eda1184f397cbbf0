// Rotary position embedding (layers/ops/rope.h): the frequency tables, shape validation and dispatch,
// and the fp32 CPU rotation. Every table entry is rounded to fp32 at the step where the reference
// rounds it (exponent, power, reciprocal, angle, cos/sin), computing each step exactly in double.
#include "layers/ops/rope.h"

#include <cmath>

#include "layers/cpu/parallel.h"
#include "layers/ops.h"

namespace dg {

namespace {

// Shapes of a rotation; true when it runs on the device (every operand there), false for the f32 CPU op.
bool check_rotation(const char* op, const Tensor& x, const Tensor& cos, const Tensor& sin, const Tensor& y) {
  DG_CHECK(x.ndim() == 3, "{}: input {} should be [T, heads, hd]", op, x.describe());
  DG_CHECK(x.size(2) % 2 == 0, "{}: head dim of {} must be even for rotate-half pairs", op, x.describe());
  const Shape table{x.size(0), x.size(2) / 2};
  DG_CHECK(cos.shape() == table && sin.shape() == table, "{}: cos {} and sin {} should be {} for input {}", op,
           cos.describe(), sin.describe(), shape_str(table), x.describe());
  DG_CHECK(y.shape() == x.shape(), "{}: output {} should have the shape of the input {}", op, y.describe(),
           x.describe());
  if (any_on_cuda({&x, &cos, &sin, &y})) {
    require_cuda(op, {&x, &cos, &sin, &y});
    return true;
  }
  require_cpu(op, {&x, &cos, &sin, &y});
  for (const Tensor* t : {&x, &cos, &sin, &y})
    DG_CHECK(t->dtype() == DType::F32, "{}: the CPU op is f32 only, got {}", op, t->describe());
  return false;
}

// One rotation by +angle (sign = 1) or −angle (sign = −1) of every head of every token.
void rotate(const Tensor& x, const Tensor& cos, const Tensor& sin, Tensor& y, float sign) {
  const std::int64_t tokens = x.size(0), heads = x.size(1), half = x.size(2) / 2;
  const float* px = x.data<float>();
  const float* pc = cos.data<float>();
  const float* ps = sin.data<float>();
  float* py = y.data<float>();
  cpu::parallel_for("rope.tokens", tokens, heads * 2 * half, [&](std::int64_t t) {
    const float* c = pc + t * half;
    const float* s = ps + t * half;
    for (std::int64_t h = 0; h < heads; ++h) {
      const float* xr = px + (t * heads + h) * 2 * half;
      float* yr = py + (t * heads + h) * 2 * half;
      for (std::int64_t j = 0; j < half; ++j) {
        const float x1 = xr[j], x2 = xr[j + half], sj = sign * s[j];  // read both before writing (in place)
        yr[j] = x1 * c[j] - x2 * sj;
        yr[j + half] = x2 * c[j] + x1 * sj;
      }
    }
  });
}

}  // namespace

std::int64_t rope_angles(const RopeParams& p) {
  if (p.head_dim <= 0 || p.head_dim % 2 != 0) fail_config("RoPE head dim {} must be positive and even", p.head_dim);
  if (!(p.theta > 0)) fail_config("RoPE theta {} must be positive", p.theta);
  if (p.type == RopeType::Default) {
    if (p.partial_rotary_factor != 1.0)
      fail_config("default RoPE rotates every dimension: partial_rotary_factor {} must be 1", p.partial_rotary_factor);
    return p.head_dim / 2;
  }
  if (!(p.partial_rotary_factor >= 0.0 && p.partial_rotary_factor <= 1.0))
    fail_config("proportional RoPE partial_rotary_factor {} must be in [0, 1]", p.partial_rotary_factor);
  // int(factor · hd // 2): Python's float floor division; the division by 2 is exact.
  return static_cast<std::int64_t>(std::floor(p.partial_rotary_factor * double(p.head_dim) / 2.0));
}

void rope_inv_freq(const RopeParams& p, Tensor& inv_freq) {
  const std::int64_t angles = rope_angles(p), half = p.head_dim / 2;
  DG_CHECK(inv_freq.shape() == Shape{half} && inv_freq.dtype() == DType::F32 && inv_freq.is_cpu(),
           "rope_inv_freq: inv_freq {} should be f32 [{}] on the CPU", inv_freq.describe(), half);
  float* f = inv_freq.data<float>();
  const double theta = static_cast<float>(p.theta);  // torch promotes the Python float base to fp32
  for (std::int64_t j = 0; j < half; ++j) {
    if (j >= angles) {
      f[j] = 0.f;  // a "nope" slot: angle 0, cos 1, sin 0
      continue;
    }
    const float exponent = static_cast<float>(2 * j) / static_cast<float>(p.head_dim);
    const float power = static_cast<float>(std::pow(theta, double(exponent)));
    f[j] = 1.0f / power;
  }
}

void rope_table(const Tensor& positions, const Tensor& inv_freq, Tensor& cos, Tensor& sin) {
  DG_CHECK(positions.ndim() == 1 && positions.dtype() == DType::I32, "rope_table: positions {} should be i32 [T]",
           positions.describe());
  DG_CHECK(inv_freq.ndim() == 1 && inv_freq.dtype() == DType::F32, "rope_table: inv_freq {} should be f32 [hd/2]",
           inv_freq.describe());
  const Shape table{positions.size(0), inv_freq.size(0)};
  DG_CHECK(cos.shape() == table && sin.shape() == table, "rope_table: cos {} and sin {} should be {}", cos.describe(),
           sin.describe(), shape_str(table));
  if (any_on_cuda({&positions, &inv_freq, &cos, &sin})) {
    require_cuda("rope_table", {&positions, &inv_freq, &cos, &sin});
    cuda::rope_table(positions, inv_freq, cos, sin);
    return;
  }
  require_cpu("rope_table", {&positions, &inv_freq, &cos, &sin});
  DG_CHECK(cos.dtype() == DType::F32 && sin.dtype() == DType::F32, "rope_table: the CPU op is f32 only: {}, {}",
           cos.describe(), sin.describe());
  cpu::rope_table(positions, inv_freq, cos, sin);
}

void rope(const Tensor& x, const Tensor& cos, const Tensor& sin, Tensor& y) {
  if (check_rotation("rope", x, cos, sin, y)) {
    cuda::rope(x, cos, sin, y);
    return;
  }
  cpu::rope(x, cos, sin, y);
}

void rope_backward(const Tensor& dy, const Tensor& cos, const Tensor& sin, Tensor& dx) {
  if (check_rotation("rope_backward", dy, cos, sin, dx)) {
    cuda::rope_backward(dy, cos, sin, dx);
    return;
  }
  cpu::rope_backward(dy, cos, sin, dx);
}

namespace cpu {

void rope_table(const Tensor& positions, const Tensor& inv_freq, Tensor& cos, Tensor& sin) {
  const std::int64_t tokens = positions.size(0), half = inv_freq.size(0);
  const std::int32_t* pos = positions.data<std::int32_t>();
  const float* f = inv_freq.data<float>();
  float* pc = cos.data<float>();
  float* ps = sin.data<float>();
  for (std::int64_t t = 0; t < tokens; ++t)
    if (pos[t] < 0) fail("rope_table: position {} of token {} is negative", pos[t], t);
  parallel_for("rope.table", tokens, 40 * half, [&](std::int64_t t) {
    const float p = static_cast<float>(pos[t]);  // fp32(position), as the reference
    for (std::int64_t j = 0; j < half; ++j) {
      const float angle = p * f[j];  // the reference's fp32 product
      pc[t * half + j] = static_cast<float>(std::cos(double(angle)));
      ps[t * half + j] = static_cast<float>(std::sin(double(angle)));
    }
  });
}

void rope(const Tensor& x, const Tensor& cos, const Tensor& sin, Tensor& y) { rotate(x, cos, sin, y, 1.f); }

void rope_backward(const Tensor& dy, const Tensor& cos, const Tensor& sin, Tensor& dx) {
  rotate(dy, cos, sin, dx, -1.f);
}

}  // namespace cpu
}  // namespace dg
