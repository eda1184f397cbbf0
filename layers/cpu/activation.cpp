// Gated GELU-tanh activation (layers/ops/activation.h): shape validation and dispatch, and the fp32
// CPU implementation, vectorised (layers/cpu/vmath.h). GELU-tanh is evaluated in the cancellation-free
// form 0.5·g·(1 + tanh(y)) = g·σ(2y) = g / (1 + exp(-2y)), y = √(2/π)(g + 0.044715 g³), and its
// derivative as σ + 2g·σ(1 - σ)·√(2/π)(1 + 3·0.044715 g²) with 1 - σ = exp(-2y)·σ, all in fp32: the
// error is a few ulp of y amplified by |2y|(1 - σ) in the negative tail: measured against double
// <= 1e-7 relative for g >= -1, 2.6e-7 at g = -3, 4.5e-6 at g = -6 (where |gelu| < 1e-8), against the
// double evaluation's 0.5 ulp at several times the cost.
#include "layers/ops/activation.h"

#include <algorithm>
#include <cmath>

#include "layers/cpu/parallel.h"
#include "layers/cpu/vmath.h"
#include "layers/ops.h"

namespace dg {
namespace vm = cpu::vm;

namespace {

constexpr float kSqrt2OverPi = 0.79788456080286535588f;  // √(2/π)
constexpr float kCubic = 0.044715f;

// σ = 1 / (1 + exp(-2y)) and 1 - σ (exact 1 where exp overflows) for the gates g.
struct Sigmoid2y {
  vm::f32v s, one_minus_s;
};
inline Sigmoid2y sigmoid_2y(vm::f32v g) {
  const vm::f32v y = vm::splat(kSqrt2OverPi) * (g + vm::splat(kCubic) * g * g * g);
  const vm::f32v e = vm::exp(vm::splat(-2.0f) * y);
  const vm::f32v s = vm::splat(1.0f) / (vm::splat(1.0f) + e);
  return {s, vm::select(e == vm::splat(__builtin_inff()), vm::splat(1.0f), e * s)};
}

// Lanes i0 .. i0+3 of a row (a padded copy for the row's tail), so every element takes the vector path.
struct Lanes {
  const float* p;
  std::int64_t i0, n;
  vm::f32v get() const {
    if (i0 + vm::kLanes <= n) return vm::load(p + i0);
    float buf[vm::kLanes] = {};
    std::copy(p + i0, p + n, buf);
    return vm::load(buf);
  }
};
inline void put(float* p, std::int64_t i0, std::int64_t n, vm::f32v v) {
  if (i0 + vm::kLanes <= n) return vm::store(p + i0, v);
  float buf[vm::kLanes];
  vm::store(buf, v);
  std::copy(buf, buf + (n - i0), p + i0);
}

Shape with_last(const Tensor& t, std::int64_t last) {
  Shape s = t.shape();
  s.back() = last;
  return s;
}

Shape leading_shape(const Tensor& t) { return Shape(t.shape().begin(), t.shape().end() - 1); }

// Checks gate_up [..., 2F], the [..., F] tensor `act` (act or d_act) and, when given, the per-row weights.
void check_geglu(const char* op, const Tensor& gate_up, const Tensor& act, const Tensor* weights) {
  DG_CHECK(gate_up.ndim() >= 1 && gate_up.size(-1) % 2 == 0,
           "{}: gate_up {} should be [..., 2F] (gate | up halves), its last dimension is odd", op, gate_up.describe());
  const Shape half = with_last(gate_up, gate_up.size(-1) / 2);
  DG_CHECK(act.shape() == half, "{}: {} should be {} for gate_up {}", op, act.describe(), shape_str(half),
           gate_up.describe());
  if (weights)
    DG_CHECK(weights->shape() == leading_shape(gate_up),
             "{}: routing weights {} should be {} (one per row of gate_up {})", op, weights->describe(),
             shape_str(leading_shape(gate_up)), gate_up.describe());
}

void check_f32_cpu(const char* op, std::initializer_list<const Tensor*> tensors) {
  require_cpu(op, tensors);
  for (const Tensor* t : tensors)
    if (t) DG_CHECK(t->dtype() == DType::F32, "{}: the CPU op is f32 only, got {}", op, t->describe());
}

}  // namespace

void geglu(const Tensor& gate_up, Tensor& act) {
  check_geglu("geglu", gate_up, act, nullptr);
  if (any_on_cuda({&gate_up, &act})) {
    require_cuda("geglu", {&gate_up, &act});
    cuda::geglu(gate_up, nullptr, act);
    return;
  }
  check_f32_cpu("geglu", {&gate_up, &act});
  cpu::geglu(gate_up, nullptr, act);
}

void geglu_backward(const Tensor& d_act, const Tensor& gate_up, Tensor& d_gate_up) {
  check_geglu("geglu_backward", gate_up, d_act, nullptr);
  DG_CHECK(d_gate_up.shape() == gate_up.shape(), "geglu_backward: d_gate_up {} should have the shape of gate_up {}",
           d_gate_up.describe(), gate_up.describe());
  if (any_on_cuda({&d_act, &gate_up, &d_gate_up})) {
    require_cuda("geglu_backward", {&d_act, &gate_up, &d_gate_up});
    cuda::geglu_backward(d_act, gate_up, nullptr, d_gate_up, nullptr);
    return;
  }
  check_f32_cpu("geglu_backward", {&d_act, &gate_up, &d_gate_up});
  cpu::geglu_backward(d_act, gate_up, nullptr, d_gate_up, nullptr);
}

void geglu_weighted(const Tensor& gate_up, const Tensor& weights, Tensor& act) {
  check_geglu("geglu_weighted", gate_up, act, &weights);
  if (any_on_cuda({&gate_up, &weights, &act})) {
    require_cuda("geglu_weighted", {&gate_up, &weights, &act});
    cuda::geglu(gate_up, &weights, act);
    return;
  }
  check_f32_cpu("geglu_weighted", {&gate_up, &weights, &act});
  cpu::geglu(gate_up, &weights, act);
}

void geglu_weighted_backward(const Tensor& d_act, const Tensor& gate_up, const Tensor& weights, Tensor& d_gate_up,
                             Tensor& d_weights) {
  check_geglu("geglu_weighted_backward", gate_up, d_act, &weights);
  DG_CHECK(d_gate_up.shape() == gate_up.shape(),
           "geglu_weighted_backward: d_gate_up {} should have the shape of gate_up {}", d_gate_up.describe(),
           gate_up.describe());
  DG_CHECK(d_weights.shape() == weights.shape(),
           "geglu_weighted_backward: d_weights {} should have the shape of weights {}", d_weights.describe(),
           weights.describe());
  if (any_on_cuda({&d_act, &gate_up, &weights, &d_gate_up, &d_weights})) {
    require_cuda("geglu_weighted_backward", {&d_act, &gate_up, &weights, &d_gate_up, &d_weights});
    cuda::geglu_backward(d_act, gate_up, &weights, d_gate_up, &d_weights);
    return;
  }
  check_f32_cpu("geglu_weighted_backward", {&d_act, &gate_up, &weights, &d_gate_up, &d_weights});
  cpu::geglu_backward(d_act, gate_up, &weights, d_gate_up, &d_weights);
}

namespace cpu {

void geglu(const Tensor& gate_up, const Tensor* weights, Tensor& act) {
  const std::int64_t f = gate_up.size(-1) / 2, rows = f ? act.numel() / f : 0;
  const float* pgu = gate_up.data<float>();
  const float* pw = weights ? weights->data<float>() : nullptr;
  float* pa = act.data<float>();
  parallel_for("activation.geglu", rows, 8 * f, [&](std::int64_t r) {
    const float* g = pgu + r * 2 * f;
    const float* u = g + f;
    const vm::f32v w = vm::splat(pw ? pw[r] : 1.0f);
    for (std::int64_t i = 0; i < f; i += vm::kLanes) {
      const vm::f32v gi = Lanes{g, i, f}.get();
      put(pa + r * f, i, f, w * (gi * sigmoid_2y(gi).s) * Lanes{u, i, f}.get());
    }
  });
}

void geglu_backward(const Tensor& d_act, const Tensor& gate_up, const Tensor* weights, Tensor& d_gate_up,
                    Tensor* d_weights) {
  const std::int64_t f = gate_up.size(-1) / 2, rows = f ? d_act.numel() / f : 0;
  const float* pda = d_act.data<float>();
  const float* pgu = gate_up.data<float>();
  const float* pw = weights ? weights->data<float>() : nullptr;
  float* pdgu = d_gate_up.data<float>();
  float* pdw = d_weights ? d_weights->data<float>() : nullptr;
  if (f == 0 && pdw)  // no channels: every routing-weight gradient is an empty sum
    for (std::int64_t r = 0; r < d_weights->numel(); ++r) pdw[r] = 0.f;
  const vm::f32v two_k = vm::splat(2.0f * kSqrt2OverPi), three_c = vm::splat(3.0f * kCubic), one = vm::splat(1.0f);
  parallel_for("activation.geglu_backward", rows, 12 * f, [&](std::int64_t r) {
    const float* g = pgu + r * 2 * f;
    const float* u = g + f;
    const float* da = pda + r * f;
    float* dg = pdgu + r * 2 * f;
    float* du = dg + f;
    const vm::f32v w = vm::splat(pw ? pw[r] : 1.0f);
    double dw = 0;  // Σ da·act·u over the row, in double (lane products summed in element order)
    for (std::int64_t i = 0; i < f; i += vm::kLanes) {
      const vm::f32v gi = Lanes{g, i, f}.get(), ui = Lanes{u, i, f}.get(), dai = Lanes{da, i, f}.get();
      const Sigmoid2y sg = sigmoid_2y(gi);
      const vm::f32v act = gi * sg.s;
      const vm::f32v grad = sg.s + gi * two_k * sg.s * sg.one_minus_s * (one + three_c * gi * gi);
      put(dg, i, f, dai * w * ui * grad);
      put(du, i, f, dai * w * act);
      const vm::f32v prod = dai * act * ui;
      for (std::int64_t l = 0; l < std::min<std::int64_t>(vm::kLanes, f - i); ++l) dw += double(prod[l]);
    }
    if (pdw) pdw[r] = static_cast<float>(dw);
  });
}

}  // namespace cpu
}  // namespace dg
