// Gated GELU-tanh activation (layers/ops/activation.h): shape validation and dispatch, and the fp32
// CPU implementation. Each output element is computed in double from the fp32 inputs and rounded once.
#include "layers/ops/activation.h"

#include <cmath>

#include "layers/ops.h"

namespace dg {

namespace {

constexpr double kSqrt2OverPi = 0.79788456080286535588;  // √(2/π)
constexpr double kCubic = 0.044715;

double gelu_tanh(double g) { return 0.5 * g * (1.0 + std::tanh(kSqrt2OverPi * (g + kCubic * g * g * g))); }

double gelu_tanh_grad(double g) {
  const double th = std::tanh(kSqrt2OverPi * (g + kCubic * g * g * g));
  return 0.5 * (1.0 + th) + 0.5 * g * (1.0 - th * th) * kSqrt2OverPi * (1.0 + 3.0 * kCubic * g * g);
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
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* g = pgu + r * 2 * f;
    const float* u = g + f;
    float* a = pa + r * f;
    const double w = pw ? double(pw[r]) : 1.0;
    for (std::int64_t i = 0; i < f; ++i) a[i] = static_cast<float>(w * gelu_tanh(g[i]) * double(u[i]));
  }
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
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* g = pgu + r * 2 * f;
    const float* u = g + f;
    const float* da = pda + r * f;
    float* dg = pdgu + r * 2 * f;
    float* du = dg + f;
    const double w = pw ? double(pw[r]) : 1.0;
    double dw = 0;
    for (std::int64_t i = 0; i < f; ++i) {
      const double gi = g[i], ui = u[i], dai = da[i], act = gelu_tanh(gi);
      dw += dai * act * ui;
      dg[i] = static_cast<float>(dai * w * ui * gelu_tanh_grad(gi));
      du[i] = static_cast<float>(dai * w * act);
    }
    if (pdw) pdw[r] = static_cast<float>(dw);
  }
}

}  // namespace cpu
}  // namespace dg
