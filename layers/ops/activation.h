// Gated GELU activation of the MLPs and experts (spec/model.md §3.2, §3.5, §3.7; training.md §8.1):
//   gelu_tanh(g) = 0.5 · g · (1 + tanh(√(2/π) · (g + 0.044715 · g³)))        (gelu_pytorch_tanh)
//   geglu:           a = gelu_tanh(g) ⊙ u
//   geglu_weighted:  a = w · gelu_tanh(g) ⊙ u       (one routing weight w per row)
//
// Input layout: ONE fused tensor [..., 2F] whose rows are gate | up (gate in columns [0, F), up in
// [F, 2F)). That is what x @ moe.experts.gate_and_up_projs[e] ([E, H, 2·Fm], DESIGN.md) produces, and
// what the HF gate_up_proj split gives (gate first, model.md §2.2 / §9). The dense MLP and the
// self-conditioning MLP get the same layout from one GEMM when their gate_proj [F, H] and up_proj
// [F, H] are stored back to back (one [2F, H] matrix, x @ that^T).
//
// The weighted variant is the experts' activation with the routing weight applied BEFORE the down
// projection, as NeMo's fused GEGLU does (training.md §8.1); HF multiplies after the down projection
// (model.md §3.7), which is the same in exact arithmetic since the projection is linear.
#pragma once
#include "layers/tensor.h"

namespace dg {

// gate_up: [..., 2F]; act: [..., F] (same leading shape).
void geglu(const Tensor& gate_up, Tensor& act);
// d_act: [..., F]; d_gate_up: [..., 2F], written:
//   d_gate = d_act · u · gelu_tanh'(g),  d_up = d_act · gelu_tanh(g)
void geglu_backward(const Tensor& d_act, const Tensor& gate_up, Tensor& d_gate_up);

// gate_up: [..., 2F]; weights: gate_up.shape[:-1] (one routing weight per row, e.g. per (token, expert)
// pair in expert order); act: [..., F].
void geglu_weighted(const Tensor& gate_up, const Tensor& weights, Tensor& act);
// d_gate_up ([..., 2F]) and d_weights (shape of weights) are written (activation gradients):
//   d_gate = d_act · w · u · gelu_tanh'(g),  d_up = d_act · w · gelu_tanh(g),
//   d_w    = Σ_F d_act · gelu_tanh(g) · u   (the routing-weight gradient that reaches the router input)
void geglu_weighted_backward(const Tensor& d_act, const Tensor& gate_up, const Tensor& weights, Tensor& d_gate_up,
                             Tensor& d_weights);

namespace cpu {
// fp32 implementations (each element computed in double, rounded once); arguments already validated.
void geglu(const Tensor& gate_up, const Tensor* weights, Tensor& act);
void geglu_backward(const Tensor& d_act, const Tensor& gate_up, const Tensor* weights, Tensor& d_gate_up,
                    Tensor* d_weights);
}  // namespace cpu

namespace cuda {
// Device implementations (layers/cuda/activation.cpp), same arguments as the cpu:: ones. gate_up, act,
// d_act, d_gate_up: bf16 or f32 each (fp32 math, one rounding to the output dtype); weights and
// d_weights: f32 (routing weights stay fp32). d_weights is a per-row fp32 sum in a fixed order.
void geglu(const Tensor& gate_up, const Tensor* weights, Tensor& act);
void geglu_backward(const Tensor& d_act, const Tensor& gate_up, const Tensor* weights, Tensor& d_gate_up,
                    Tensor* d_weights);
}  // namespace cuda

}  // namespace dg
