// Rotary position embedding ops (spec/model.md §3.3, §8.4), rotate-half convention: element j of a
// head is paired with element j + hd/2,
//   y[j]      = x[j] · cos[j] − x[j + hd/2] · sin[j]
//   y[j+hd/2] = x[j + hd/2] · cos[j] + x[j] · sin[j]          j < hd/2
// with angle[j] = fp32(position) · inv_freq[j] (the reference's concat(angle, angle) table, stored once).
// Two frequency tables, one per layer type:
//  - default (sliding layers): inv_freq[j] = θ^(−2j/hd) for every j < hd/2 (θ = 1e4, hd = 256);
//  - proportional (full layers): rope_angles = int(partial_rotary_factor · hd // 2) frequencies
//    inv_freq[j] = θ^(−2j/hd) with the exponent over the FULL head dim, and inv_freq[j] = 0 (cos 1, sin 0:
//    the dimension passes through unchanged) for rope_angles <= j < hd/2. For the 26B (θ = 1e6, hd = 512,
//    factor 0.25) that is 64 rotating pairs: dims 0..63 and 256..319 of every head.
// The rope scaling `factor` of the reference is absent in this model's config (1, no effect) and not
// modelled; attention_scaling is 1.0.
//
// Use: build inv_freq once per layer type, the cos/sin table once per pass per layer type (shared by
// every layer of that type and by q and k), then rotate q and k after q_norm / k_norm.
#pragma once
#include "layers/tensor.h"

namespace dg {

enum class RopeType { Default, Proportional };

struct RopeParams {
  RopeType type = RopeType::Default;
  std::int64_t head_dim = 0;           // hd of the layer type (head_dim, or global_head_dim for full layers)
  double theta = 10000.0;              // rope_theta
  double partial_rotary_factor = 1.0;  // proportional only; the default type requires 1
};

// The number of non-zero frequencies: hd/2 for the default type, int(factor · hd // 2) for the
// proportional type. Throws dg::ConfigError for an odd or non-positive head dim, θ <= 0, a factor
// outside [0, 1], or a default-type factor other than 1.
std::int64_t rope_angles(const RopeParams& p);

// inv_freq: CPU f32 [hd/2], built in fp32 as the reference does: exponent = fp32(2j) / fp32(hd),
// inv_freq = 1 / fp32(θ^exponent) (each step rounded to fp32; torch's fp32 pow may differ by 1 ulp).
void rope_inv_freq(const RopeParams& p, Tensor& inv_freq);

// positions: i32 [T], absolute and >= 0 (any order, need not start at 0); inv_freq: f32 [hd/2].
// cos, sin: f32 [T, hd/2] with angle = fp32(positions[t]) · inv_freq[j] (an fp32 product) and cos/sin
// of that fp32 angle, rounded to fp32. (A CUDA backend casts the table to bf16 before use, §8.4.)
void rope_table(const Tensor& positions, const Tensor& inv_freq, Tensor& cos, Tensor& sin);

// x: [T, heads, hd]; cos, sin: [T, hd/2] from rope_table; y: shape of x, may be x itself (in place).
void rope(const Tensor& x, const Tensor& cos, const Tensor& sin, Tensor& y);
// The inverse (transposed) rotation: dx = R(−angle) dy. dx: shape of dy, written, may be dy itself.
void rope_backward(const Tensor& dy, const Tensor& cos, const Tensor& sin, Tensor& dx);

namespace cpu {
// fp32 implementations; arguments already validated by the dispatchers above.
void rope_table(const Tensor& positions, const Tensor& inv_freq, Tensor& cos, Tensor& sin);
void rope(const Tensor& x, const Tensor& cos, const Tensor& sin, Tensor& y);
void rope_backward(const Tensor& dy, const Tensor& cos, const Tensor& sin, Tensor& dx);
}  // namespace cpu

namespace cuda {
// Device implementations (layers/cuda/rope.cpp); arguments already validated by the dispatchers above.
// rope_table: positions i32, inv_freq f32, cos/sin f32 or bf16 (the §8.4 cast done by the op); the angle
// is the same fp32 product as on the CPU and cos/sin are evaluated in double and rounded once, so an f32
// table equals the CPU table. A negative position is a dg::Error naming it (one device-to-host copy).
// rope / rope_backward: x, y (dy, dx) bf16 or f32, one dtype; cos, sin bf16 or f32, one dtype; each
// pair rotated in fp32 (products and sum rounded to fp32 as on the CPU) and rounded once to the output.
void rope_table(const Tensor& positions, const Tensor& inv_freq, Tensor& cos, Tensor& sin);
void rope(const Tensor& x, const Tensor& cos, const Tensor& sin, Tensor& y);
void rope_backward(const Tensor& dy, const Tensor& cos, const Tensor& sin, Tensor& dx);
}  // namespace cuda

}  // namespace dg
