// Host side of the CUDA gated GELU-tanh (layers/ops/activation.h): dtype checks and launches
// (layers/cuda/activation.cu). Shapes were validated by the dispatchers in layers/cpu/activation.cpp.
#include <algorithm>

#include "layers/cuda/activation_kernels.h"
#include "layers/cuda/check.h"
#include "layers/cuda/context.h"
#include "layers/ops.h"

namespace dg::cuda {

namespace {

void check_types(const char* op, std::initializer_list<const Tensor*> acts, std::initializer_list<const Tensor*> f32s) {
  for (const Tensor* t : acts)
    DG_CHECK(t->dtype() == DType::F32 || t->dtype() == DType::BF16, "{}: {} must be bf16 or f32", op, t->describe());
  for (const Tensor* t : f32s)
    if (t) DG_CHECK(t->dtype() == DType::F32, "{}: routing weights {} must be f32", op, t->describe());
}

}  // namespace

void geglu(const Tensor& gate_up, const Tensor* weights, Tensor& act) {
  const char* op = weights ? "geglu_weighted" : "geglu";
  check_types(op, {&gate_up, &act}, {weights});
  const std::int64_t f = gate_up.size(-1) / 2, rows = gate_up.numel() / std::max<std::int64_t>(gate_up.size(-1), 1);
  DG_CUDA(kernels::geglu(gate_up.raw(), gate_up.dtype(), weights ? weights->data<float>() : nullptr, act.raw(),
                         act.dtype(), rows, f, stream()));
}

void geglu_backward(const Tensor& d_act, const Tensor& gate_up, const Tensor* weights, Tensor& d_gate_up,
                    Tensor* d_weights) {
  const char* op = weights ? "geglu_weighted_backward" : "geglu_backward";
  DG_CHECK(!weights == !d_weights, "{}: routing weights and their gradient go together", op);
  check_types(op, {&d_act, &gate_up, &d_gate_up}, {weights, d_weights});
  // Rows from the leading shape (weights has it): with F = 0 there are still rows whose d_w is 0.
  const std::int64_t f = gate_up.size(-1) / 2;
  const std::int64_t rows = weights ? weights->numel() : gate_up.numel() / std::max<std::int64_t>(gate_up.size(-1), 1);
  DG_CUDA(kernels::geglu_backward(d_act.raw(), d_act.dtype(), gate_up.raw(), gate_up.dtype(),
                                  weights ? weights->data<float>() : nullptr, d_gate_up.raw(), d_gate_up.dtype(),
                                  d_weights ? d_weights->data<float>() : nullptr, rows, f, stream()));
}

}  // namespace dg::cuda
