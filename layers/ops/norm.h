// RMSNorm ops (spec/model.md §3.1, §8.2): y = x · (mean(x²) + eps)^(-1/2) · w, normalised over the
// last dimension. The weight multiplies directly (Gemma4: NOT 1 + w) and eps is added inside the mean.
// One op covers every use in the model:
//  - over the hidden size: input_layernorm, post_attention_layernorm, the feed-forward norms, the final
//    norm, self_conditioning.pre_norm (x [T, H], weight [H]);
//  - per head: q_norm / k_norm (x viewed as [T, heads, hd], one shared weight [hd]);
//  - weightless (weight = nullptr): v_norm, router.norm, self_conditioning.post_norm.
#pragma once
#include "layers/tensor.h"

namespace dg {

// x:      [..., d], normalised over its last dimension d (rows = x.numel() / d)
// weight: [d], or nullptr for the weightless variant
// y:      shape of x; may be x itself (in place)
// rstd:   x.shape[:-1] (a scalar row count is not enough: the shape must match), receives
//         (mean(x²) + eps)^(-1/2) per row for the backward
// eps is the config's rms_norm_eps (1e-6 for every norm of the model).
void rms_norm(const Tensor& x, const Tensor* weight, float eps, Tensor& y, Tensor& rstd);

// dy: shape of x. dx (shape of x) is written and may be dy itself. dweight ([d]) is accumulated (+=);
// pass nullptr to skip it (required to be nullptr for the weightless variant).
//   x̂ = x · rstd,  g = dy · w,  dx = rstd · (g − x̂ · mean(g · x̂)),  dweight += Σ_rows dy · x̂
void rms_norm_backward(const Tensor& dy, const Tensor& x, const Tensor* weight, const Tensor& rstd, Tensor& dx,
                       Tensor* dweight);

namespace cpu {
// fp32 implementations; arguments already validated by the dispatchers above.
void rms_norm(const Tensor& x, const Tensor* weight, float eps, Tensor& y, Tensor& rstd);
void rms_norm_backward(const Tensor& dy, const Tensor& x, const Tensor* weight, const Tensor& rstd, Tensor& dx,
                       Tensor* dweight);
}  // namespace cpu

namespace cuda {
// Device implementations (layers/cuda/norm.cpp); arguments already validated by the dispatchers above.
// x, y, dy, dx: bf16 or f32, one dtype for all four; weight: bf16 or f32; dweight: bf16 or f32;
// rstd: f32. Row statistics are fp32 sums of fp32 products; dweight is reduced over rows in a fixed
// order (per-chunk partials, then the chunks in order), so results are deterministic.
void rms_norm(const Tensor& x, const Tensor* weight, float eps, Tensor& y, Tensor& rstd);
void rms_norm_backward(const Tensor& dy, const Tensor& x, const Tensor* weight, const Tensor& rstd, Tensor& dx,
                       Tensor* dweight);
}  // namespace cuda

}  // namespace dg
