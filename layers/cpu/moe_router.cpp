// The MoE router ops (layers/ops/moe.h): moe_router and moe_router_backward, their dispatchers (a device
// tensor sends an op to its dg::cuda implementation after a dtype-agnostic shape check) and the CPU (fp32)
// implementations: row loops on the CPU threads (layers/cpu/parallel.h) around the logit GEMMs; the parameter
// gradients are summed over the tokens in order.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "layers/cpu/check.h"
#include "layers/cpu/parallel.h"
#include "layers/ops.h"

namespace dg {
namespace {

using cpu::expect;

// z = ((r · rstd) ⊙ scale) · inv_sqrt_h for every row, in the spec's order (model.md §3.6).
void router_input(const float* r, const float* rstd, const float* scale, std::int64_t t_count, std::int64_t h,
                  float* z) {
  const float inv_sqrt_h = static_cast<float>(1.0 / std::sqrt(static_cast<double>(h)));
  cpu::parallel_for("moe.router.input", t_count, 3 * h, [&](std::int64_t t) {
    for (std::int64_t i = 0; i < h; ++i) z[t * h + i] = ((r[t * h + i] * rstd[t]) * scale[i]) * inv_sqrt_h;
  });
}

// One token's router output from its logits p [E] (softmax in place): the top-k expert ids (strict '>':
// the lower id wins a tie) and their renormalised weights times per_expert_scale. `taken`: [E] scratch.
void router_top_k(const char* op, float* p, std::int64_t e, std::int64_t k, const float* pes, std::vector<char>& taken,
                  std::int32_t* ids, float* w, std::int64_t t) {
  float m = p[0];
  for (std::int64_t x = 0; x < e; ++x) {
    if (!std::isfinite(p[x])) fail("{}: router logit of token {} for expert {} is {}", op, t, x, p[x]);
    m = std::max(m, p[x]);
  }
  double sum = 0;
  for (std::int64_t x = 0; x < e; ++x) sum += p[x] = std::exp(p[x] - m);
  const float inv = static_cast<float>(1.0 / sum);
  for (std::int64_t x = 0; x < e; ++x) p[x] *= inv;
  std::fill(taken.begin(), taken.end(), 0);
  float picked_sum = 0;
  for (std::int64_t j = 0; j < k; ++j) {
    std::int64_t best = -1;
    for (std::int64_t x = 0; x < e; ++x)
      if (!taken[x] && (best < 0 || p[x] > p[best])) best = x;
    taken[best] = 1;
    ids[j] = static_cast<std::int32_t>(best);
    w[j] = p[best];
    picked_sum += p[best];
  }
  const float denom = std::max(picked_sum, 1e-20f);
  for (std::int64_t j = 0; j < k; ++j) w[j] = (w[j] / denom) * pes[ids[j]];
}

// max(Σ_j p[id_j], 1e-20): the mass of a token's k chosen experts, as the forward renormalised with.
float picked_mass(const float* p, const std::int32_t* id, std::int64_t k) {
  float s = 0;
  for (std::int64_t j = 0; j < k; ++j) s += p[id[j]];
  return std::max(s, 1e-20f);
}

// One token's d(logits) [E] = P ⊙ (dP - <P, dP>), dP nonzero only on the k chosen experts, where
// dp_j = (dq_j - Σ_i dq_i q_i) / s for q = p / s and dq_j = dw_j · per_expert_scale[id_j]. dq: [k] scratch.
void router_dlogits(const float* p, const std::int32_t* id, const float* dw, const float* pes, std::int64_t e,
                    std::int64_t k, float* dq, float* dl) {
  const float denom = picked_mass(p, id, k);
  double dq_dot_q = 0;
  for (std::int64_t j = 0; j < k; ++j) {
    const float q = p[id[j]] / denom;
    dq[j] = dw[j] * pes[id[j]];
    dq_dot_q += static_cast<double>(dq[j]) * q;
  }
  std::fill(dl, dl + e, 0.0f);
  double p_dot_dp = 0;
  for (std::int64_t j = 0; j < k; ++j) {
    const float dp = static_cast<float>((dq[j] - dq_dot_q) / denom);
    dl[id[j]] = dp;
    p_dot_dp += static_cast<double>(p[id[j]]) * dp;
  }
  for (std::int64_t x = 0; x < e; ++x) dl[x] = p[x] * (dl[x] - static_cast<float>(p_dot_dp));
}

void check_router_params(const char* op, const Tensor& r, const Tensor& scale, const Tensor& proj,
                         const Tensor& per_expert_scale) {
  DG_CHECK(r.ndim() == 2, "{}: r should be [T, H], got {}", op, r.describe());
  DG_CHECK(proj.ndim() == 2, "{}: proj should be [E, H], got {}", op, proj.describe());
  const std::int64_t h = r.size(1), e = proj.size(0);
  expect(op, "r", r, DType::F32, {r.size(0), h});
  expect(op, "scale", scale, DType::F32, {h});
  expect(op, "proj", proj, DType::F32, {e, h});
  expect(op, "per_expert_scale", per_expert_scale, DType::F32, {e});
}

// ---- shape checks of the device path (dtypes are checked by dg::cuda; the CPU path keeps its own
// dtype-and-shape checks and messages) ----

// (as moe.cpp's)
void expect_shape(const char* op, const char* name, const Tensor& t, const Shape& shape) {
  if (!t.defined() || t.shape() != shape)
    fail("{}: {} should be {}, got {}", op, name, shape_str(shape), t.defined() ? t.describe() : std::string("nothing"));
}

// r [T,H], scale [H], proj [E,H], per_expert_scale [E], expert_ids [T,k]; returns k.
std::int64_t check_router_shapes(const char* op, const Tensor& r, const Tensor& scale, const Tensor& proj,
                                 const Tensor& per_expert_scale, const Tensor& expert_ids) {
  DG_CHECK(r.ndim() == 2, "{}: r should be [T, H], got {}", op, r.describe());
  DG_CHECK(proj.ndim() == 2, "{}: proj should be [E, H], got {}", op, proj.describe());
  DG_CHECK(expert_ids.ndim() == 2, "{}: expert_ids should be [T, k], got {}", op, expert_ids.describe());
  const std::int64_t t_count = r.size(0), h = r.size(1), e = proj.size(0), k = expert_ids.size(1);
  expect_shape(op, "scale", scale, {h});
  expect_shape(op, "proj", proj, {e, h});
  expect_shape(op, "per_expert_scale", per_expert_scale, {e});
  expect_shape(op, "expert_ids", expert_ids, {t_count, k});
  DG_CHECK(k >= 1 && k <= e, "{}: top-k {} must lie in [1, E = {}]", op, k, e);
  return k;
}

}  // namespace

void moe_router(const Tensor& r, const Tensor& scale, const Tensor& proj, const Tensor& per_expert_scale,
                Tensor& expert_ids, Tensor& routing_weights, Tensor& probs, Tensor& rstd, float eps) {
  const char* op = "moe_router";
  if (any_on_cuda({&r, &scale, &proj, &per_expert_scale, &expert_ids, &routing_weights, &probs, &rstd})) {
    require_cuda(op, {&r, &scale, &proj, &per_expert_scale, &expert_ids, &routing_weights, &probs, &rstd});
    const std::int64_t k = check_router_shapes(op, r, scale, proj, per_expert_scale, expert_ids);
    const std::int64_t t_count = r.size(0), e = proj.size(0);
    expect_shape(op, "routing_weights", routing_weights, {t_count, k});
    expect_shape(op, "probs", probs, {t_count, e});
    expect_shape(op, "rstd", rstd, {t_count});
    cuda::moe_router(r, scale, proj, per_expert_scale, expert_ids, routing_weights, probs, rstd, eps);
    return;
  }
  require_cpu(op, {&r, &scale, &proj, &per_expert_scale, &expert_ids, &routing_weights, &probs, &rstd});
  check_router_params(op, r, scale, proj, per_expert_scale);
  DG_CHECK(expert_ids.ndim() == 2, "{}: expert_ids should be [T, k], got {}", op, expert_ids.describe());
  const std::int64_t t_count = r.size(0), h = r.size(1), e = proj.size(0), k = expert_ids.size(1);
  DG_CHECK(k >= 1 && k <= e, "{}: top-k {} must lie in [1, E = {}]", op, k, e);
  expect(op, "expert_ids", expert_ids, DType::I32, {t_count, k});
  expect(op, "routing_weights", routing_weights, DType::F32, {t_count, k});
  expect(op, "probs", probs, DType::F32, {t_count, e});
  expect(op, "rstd", rstd, DType::F32, {t_count});
  if (t_count == 0) return;

  const float* pr = r.data<float>();
  float* prstd = rstd.data<float>();
  cpu::parallel_for("moe.router.rstd", t_count, 2 * h, [&](std::int64_t t) {
    double ss = 0;
    for (std::int64_t i = 0; i < h; ++i) ss += static_cast<double>(pr[t * h + i]) * pr[t * h + i];
    const float ms = static_cast<float>(ss / static_cast<double>(h)) + eps;
    prstd[t] = std::pow(ms, -0.5f);  // pow, not rsqrt, as model.md §3.1
  });
  std::vector<float> z(static_cast<std::size_t>(t_count * h));
  router_input(pr, prstd, scale.data<float>(), t_count, h, z.data());
  float* pp = probs.data<float>();  // logits first, softmax in place
  cpu::sgemm(false, true, t_count, e, h, 1.0f, z.data(), h, proj.data<float>(), h, 0.0f, pp, e);

  const float* pes = per_expert_scale.data<float>();
  std::int32_t* ids = expert_ids.data<std::int32_t>();
  float* w = routing_weights.data<float>();
  cpu::parallel_ranges("moe.router.topk", t_count, e * (k + 20), [&](std::int64_t t0, std::int64_t t1) {
    std::vector<char> taken(static_cast<std::size_t>(e));
    for (std::int64_t t = t0; t < t1; ++t) router_top_k(op, pp + t * e, e, k, pes, taken, ids + t * k, w + t * k, t);
  });
}

void moe_router_backward(const Tensor& r, const Tensor& scale, const Tensor& proj, const Tensor& per_expert_scale,
                         const Tensor& expert_ids, const Tensor& probs, const Tensor& rstd,
                         const Tensor& d_routing_weights, Tensor& dr, const RouterGrads& grads) {
  const char* op = "moe_router_backward";
  if (any_on_cuda({&r, &scale, &proj, &per_expert_scale, &expert_ids, &probs, &rstd, &d_routing_weights, &dr,
                   grads.scale, grads.proj, grads.per_expert_scale})) {
    require_cuda(op, {&r, &scale, &proj, &per_expert_scale, &expert_ids, &probs, &rstd, &d_routing_weights, &dr,
                      grads.scale, grads.proj, grads.per_expert_scale});
    const std::int64_t k = check_router_shapes(op, r, scale, proj, per_expert_scale, expert_ids);
    const std::int64_t t_count = r.size(0), h = r.size(1), e = proj.size(0);
    expect_shape(op, "probs", probs, {t_count, e});
    expect_shape(op, "rstd", rstd, {t_count});
    expect_shape(op, "d_routing_weights", d_routing_weights, {t_count, k});
    expect_shape(op, "dr", dr, {t_count, h});
    if (grads.scale) expect_shape(op, "grads.scale", *grads.scale, {h});
    if (grads.proj) expect_shape(op, "grads.proj", *grads.proj, {e, h});
    if (grads.per_expert_scale) expect_shape(op, "grads.per_expert_scale", *grads.per_expert_scale, {e});
    cuda::moe_router_backward(r, scale, proj, per_expert_scale, expert_ids, probs, rstd, d_routing_weights, dr, grads);
    return;
  }
  require_cpu(op, {&r, &scale, &proj, &per_expert_scale, &expert_ids, &probs, &rstd, &d_routing_weights, &dr,
                   grads.scale, grads.proj, grads.per_expert_scale});
  check_router_params(op, r, scale, proj, per_expert_scale);
  DG_CHECK(expert_ids.ndim() == 2, "{}: expert_ids should be [T, k], got {}", op, expert_ids.describe());
  const std::int64_t t_count = r.size(0), h = r.size(1), e = proj.size(0), k = expert_ids.size(1);
  expect(op, "expert_ids", expert_ids, DType::I32, {t_count, k});
  expect(op, "probs", probs, DType::F32, {t_count, e});
  expect(op, "rstd", rstd, DType::F32, {t_count});
  expect(op, "d_routing_weights", d_routing_weights, DType::F32, {t_count, k});
  expect(op, "dr", dr, DType::F32, {t_count, h});
  if (grads.scale) expect(op, "grads.scale", *grads.scale, DType::F32, {h});
  if (grads.proj) expect(op, "grads.proj", *grads.proj, DType::F32, {e, h});
  if (grads.per_expert_scale) expect(op, "grads.per_expert_scale", *grads.per_expert_scale, DType::F32, {e});
  if (t_count == 0) return;

  const std::int32_t* ids = expert_ids.data<std::int32_t>();
  const float* pp = probs.data<float>();
  const float* pes = per_expert_scale.data<float>();
  const float* dw = d_routing_weights.data<float>();
  for (std::int64_t i = 0; i < t_count * k; ++i)
    if (ids[i] < 0 || ids[i] >= e) fail("{}: expert id {} at [{}, {}] outside [0, {})", op, ids[i], i / k, i % k, e);

  // d(logits) [T,E] = P ⊙ (dP - <P, dP>), dP nonzero only on the k chosen experts, where
  // dp_j = (dq_j - Σ_i dq_i q_i) / s for q = p / s and dq_j = dw_j · per_expert_scale[id_j].
  // The forward's 1e-20 clamp on s never binds: the largest of E probabilities is >= 1/E.
  std::vector<float> dlogits(static_cast<std::size_t>(t_count * e));
  if (grads.per_expert_scale) {  // summed over the tokens in order (serial: T·k terms)
    float* dpes = grads.per_expert_scale->data<float>();
    for (std::int64_t t = 0; t < t_count; ++t) {
      const float denom = picked_mass(pp + t * e, ids + t * k, k);
      for (std::int64_t j = 0; j < k; ++j) dpes[ids[t * k + j]] += dw[t * k + j] * (pp[t * e + ids[t * k + j]] / denom);
    }
  }
  cpu::parallel_ranges("moe.router_backward.dlogits", t_count, e + 4 * k, [&](std::int64_t t0, std::int64_t t1) {
    std::vector<float> dq(static_cast<std::size_t>(k));
    for (std::int64_t t = t0; t < t1; ++t)
      router_dlogits(pp + t * e, ids + t * k, dw + t * k, pes, e, k, dq.data(), dlogits.data() + t * e);
  });

  // dz [T,H] = dlogits @ proj (kept in dr), d proj += dlogitsᵀ @ z
  float* pdr = dr.data<float>();
  cpu::sgemm(false, false, t_count, h, e, 1.0f, dlogits.data(), e, proj.data<float>(), h, 0.0f, pdr, h);
  const float* pr = r.data<float>();
  const float* prstd = rstd.data<float>();
  const float* psc = scale.data<float>();
  if (grads.proj) {
    std::vector<float> z(static_cast<std::size_t>(t_count * h));
    router_input(pr, prstd, psc, t_count, h, z.data());
    cpu::sgemm(true, false, e, h, t_count, 1.0f, dlogits.data(), e, z.data(), h, 1.0f, grads.proj->data<float>(), h);
  }

  // z = (x̂ ⊙ scale)·c with x̂ = r·rstd: d scale += Σ_t dz ⊙ x̂ · c; dx̂ = dz ⊙ scale · c;
  // dr = rstd · (dx̂ - x̂ · mean_h(dx̂ ⊙ x̂)).
  const float inv_sqrt_h = static_cast<float>(1.0 / std::sqrt(static_cast<double>(h)));
  if (grads.scale) {  // d scale: per column, summed over the tokens in order; the threads split the columns
    constexpr std::int64_t kColumns = 64;
    float* dsc = grads.scale->data<float>();
    const std::int64_t blocks = (h + kColumns - 1) / kColumns;
    cpu::parallel_for("moe.router_backward.dscale", blocks, kColumns * t_count, [&](std::int64_t b) {
      for (std::int64_t t = 0; t < t_count; ++t)
        for (std::int64_t i = b * kColumns; i < std::min(h, (b + 1) * kColumns); ++i)
          dsc[i] += pdr[t * h + i] * (pr[t * h + i] * prstd[t]) * inv_sqrt_h;
    });
  }
  cpu::parallel_for("moe.router_backward.dr", t_count, 6 * h, [&](std::int64_t t) {
    float* row = pdr + t * h;
    double dot = 0;
    for (std::int64_t i = 0; i < h; ++i) {
      const float xhat = pr[t * h + i] * prstd[t];
      row[i] = row[i] * psc[i] * inv_sqrt_h;  // dx̂
      dot += static_cast<double>(row[i]) * xhat;
    }
    const float mean = static_cast<float>(dot / static_cast<double>(h));
    for (std::int64_t i = 0; i < h; ++i) row[i] = prstd[t] * (row[i] - pr[t * h + i] * prstd[t] * mean);
  });
}

}  // namespace dg
