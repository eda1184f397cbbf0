// CUDA LM-head ops (layers/ops/head.h: fused cross-entropy and its backward, entropy / argmax /
// logsumexp, the categorical sample, and lm_head_soft_embedding) against the CPU ops. Runs only with a
// GPU (else exit 77). Inputs are rounded to bf16; the CPU op runs on f32 copies of the rounded values, the
// CUDA op on device tensors in bf16 or f32 (the same numbers). bf16 x bf16 products are exact in fp32,
// so the logits differ from the CPU's only by fp32 summation order (~1e-7 relative). Tolerances:
//  - loss and lse: 1e-5 relative (as the CPU tests: double running sums on both sides).
//  - dhidden / dembedding: f32 path 2e-6 · max(10, max |s|) of max: dlogits = exp(s - lse) - onehot from
//    fp32 s and lse, each good to ~1e-7 · |s| on either side (the CPU tests' argument, doubled);
//    bf16 path 2^-7 of max: g = dlogits is rounded to bf16 (2^-9 relative per element) before the two
//    GEMMs, and |g| sums to at most 2·dloss·w/normaliser per row while |dh| is O(that)·max|E| (the
//    one-hot term dominates), so the error stays below 2^-8 of max; bf16 dhidden adds 2^-9.
//  - entropy 2e-5 absolute (the CPU tests' 1e-5 against double, for the two sides) and 1e-3 relative
//    below the 0.005 stopping bound; logsumexp 1e-5 relative.
//  - argmax and samples exact, except where the double reference sees a near tie (< 1e-4 for argmax,
//    a uniform within 1e-4 of a CDF step for samples), which are counted and skipped.
//  - soft embedding: f32 path 5e-5 of max |soft|: a logit error δ (~1e-7 · |lg|, |lg| <= 75 here, on
//    either side) moves soft by at most 2δ · max |E - soft|; bf16 path 2^-7 · scale · max |E|: the
//    softmax weights are rounded to bf16 (2^-9 relative each) and soft is their normalised combination
//    of embedding rows, so it moves by at most 2^-9 · max |E_v - soft| <= 2^-8 · max |E| (times scale),
//    plus the bf16 output's own 2^-9 · |soft|.
// A case with T · vocab_chunk above the 64 Mi-float logits budget exercises the row tiling.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <random>
#include <vector>

#include "tests/op_test_util.h"

using namespace dg;
using dg::test::max_abs_diff;
using dg::test::random_tensor;

namespace {

Tensor rounded(const Tensor& t) { return t.to(DType::BF16).to(DType::F32); }
Tensor dev(const Tensor& t, DType dtype) { return (dtype == DType::F32 ? t : t.to(dtype)).to(Device::CUDA); }
Tensor host_f32(const Tensor& d) {
  Tensor h = d.to(Device::CPU);
  return h.dtype() == DType::F32 ? h : h.to(DType::F32);
}
double max_abs(const Tensor& t) {
  double m = 0;
  for (std::int64_t i = 0; i < t.numel(); ++i) m = std::max(m, std::fabs(double(t.data<float>()[i])));
  return m;
}
double rel(const Tensor& got, const Tensor& ref, double floor = 1e-6) {
  return max_abs_diff(got, ref) / std::max(max_abs(ref), floor);
}

// Row t of softcap(hidden · Eᵀ) / temperature in double.
std::vector<double> reference_logits(const Tensor& hidden, const Tensor& emb, float cap, double temperature,
                                     std::int64_t t) {
  const std::int64_t h = hidden.size(1), v = emb.size(0);
  std::vector<double> s(static_cast<std::size_t>(v));
  for (std::int64_t x = 0; x < v; ++x) {
    double z = 0;
    for (std::int64_t i = 0; i < h; ++i) z += double(hidden.data<float>()[t * h + i]) * emb.data<float>()[x * h + i];
    if (cap > 0) z = cap * std::tanh(z / cap);
    s[x] = z / temperature;
  }
  return s;
}

struct HeadCase {
  std::int64_t t, h, v, chunk;
  float cap, hidden_scale;
};

const std::vector<HeadCase> kCases = {
    {5, 8, 37, 7, 30.0f, 1.0f},   {3, 16, 64, 64, 30.0f, 1.0f},    {6, 4, 50, 100, 2.0f, 1.0f},
    {4, 12, 41, 1, 30.0f, 1.0f},  {7, 9, 53, 10, 0.0f, 3.0f},      {1, 5, 2, 1, 30.0f, 1.0f},
    {4, 6, 29, 8, 0.0f, 20.0f},   {64, 48, 1000, 256, 30.0f, 1.0f}, {33, 40, 300, 1000, 2.0f, 2.0f},
};
// T · chunk > 64 Mi floats: two row tiles of 4096 and 1504 rows (4200 weighted rows for the loss: 4096 + 104)
const HeadCase kTiledCase = {5600, 8, 16400, 16384, 30.0f, 1.0f};

struct CeInputs {
  Tensor hidden, emb, targets, mask;
  double normaliser = 3.5;
};

CeInputs ce_inputs(const HeadCase& c, std::uint32_t seed) {
  CeInputs in{rounded(random_tensor({c.t, c.h}, seed, c.hidden_scale)), rounded(random_tensor({c.v, c.h}, seed + 1)),
              Tensor(), Tensor()};
  std::vector<std::int32_t> tg(static_cast<std::size_t>(c.t));
  std::vector<float> w(static_cast<std::size_t>(c.t));
  std::mt19937 rng(seed + 2);
  for (std::int64_t t = 0; t < c.t; ++t) {
    tg[t] = static_cast<std::int32_t>(rng() % c.v);
    w[t] = t % 4 == 1 ? 0.0f : (t % 4 == 2 ? 0.5f : 1.0f);
    if (w[t] == 0.0f) tg[t] = -100;  // ignored rows may carry any target
  }
  if (c.t == 1) w[0] = 2.0f;
  in.targets = Tensor::from_i32({c.t}, tg);
  in.mask = Tensor::from({c.t}, w);
  return in;
}

void check_cross_entropy(const HeadCase& c, DType dt) {
  CAPTURE(c.t); CAPTURE(c.h); CAPTURE(c.v); CAPTURE(c.chunk); CAPTURE(c.cap); CAPTURE(dtype_name(dt));
  const CeInputs in = ce_inputs(c, 7 + static_cast<std::uint32_t>(c.v));
  const LmHeadOpts opts{.softcap = c.cap, .vocab_chunk = c.chunk};
  Tensor lse = Tensor::empty({c.t}, DType::F32);
  const double loss = lm_head_cross_entropy(in.hidden, in.emb, in.targets, in.mask, in.normaliser, lse, opts);
  const Tensor d_hidden = dev(in.hidden, dt), d_emb = dev(in.emb, dt);
  const Tensor d_targets = in.targets.to(Device::CUDA), d_mask = in.mask.to(Device::CUDA);
  Tensor d_lse = Tensor::empty({c.t}, DType::F32, Device::CUDA);
  const double d_loss = lm_head_cross_entropy(d_hidden, d_emb, d_targets, d_mask, in.normaliser, d_lse, opts);
  CHECK(std::fabs(d_loss - loss) <= 1e-5 * std::fabs(loss));
  CHECK(rel(host_f32(d_lse), lse) < 1e-5);

  const float dloss = 1.7f;
  Tensor dh = Tensor::empty({c.t, c.h}, DType::F32), de = Tensor::zeros({c.v, c.h}, DType::F32);
  lm_head_cross_entropy_backward(in.hidden, in.emb, in.targets, in.mask, in.normaliser, lse, dloss, dh, &de, opts);
  Tensor s = Tensor::empty({c.t, c.v}, DType::F32);  // the logits' range sets the f32 tolerance
  gemm(in.hidden, in.emb, s, {.trans_b = true});
  const double s_max = std::min<double>(max_abs(s), c.cap > 0 ? c.cap : 1e30);
  const double tol = 2e-6 * std::max(10.0, s_max) + (dt == DType::F32 ? 0.0 : 0.0078125);  // bf16: + 2^-7
  for (const DType out : {DType::F32, DType::BF16}) {
    CAPTURE(dtype_name(out));
    Tensor d_dh = Tensor::empty({c.t, c.h}, out, Device::CUDA), d_de = Tensor::zeros({c.v, c.h}, DType::F32, Device::CUDA);
    lm_head_cross_entropy_backward(d_hidden, d_emb, d_targets, d_mask, in.normaliser, d_lse, dloss, d_dh, &d_de, opts);
    CHECK(rel(host_f32(d_dh), dh) <= tol + (out == DType::BF16 ? 0.001953125 : 0.0));
    const Tensor got_de = host_f32(d_de);
    CHECK(rel(got_de, de) <= tol);
    // dembedding accumulates: a second call doubles it; no dembedding: the same dhidden bits
    Tensor d_dh2 = Tensor::empty({c.t, c.h}, out, Device::CUDA);
    lm_head_cross_entropy_backward(d_hidden, d_emb, d_targets, d_mask, in.normaliser, d_lse, dloss, d_dh2, &d_de, opts);
    Tensor twice = got_de.clone();
    for (std::int64_t i = 0; i < twice.numel(); ++i) twice.data<float>()[i] *= 2.0f;
    CHECK(rel(host_f32(d_de), twice) <= 1e-6);
    Tensor d_dh3 = Tensor::empty({c.t, c.h}, out, Device::CUDA);
    lm_head_cross_entropy_backward(d_hidden, d_emb, d_targets, d_mask, in.normaliser, d_lse, dloss, d_dh3, nullptr, opts);
    CHECK(max_abs_diff(host_f32(d_dh3), host_f32(d_dh)) == 0.0);
  }
}

}  // namespace

// ---- fused cross-entropy ---------------------------------------------------------------------------------

TEST_CASE("cuda lm_head_cross_entropy forward and backward match the CPU (bf16 and f32)") {
  for (const HeadCase& c : kCases)
    for (const DType dt : {DType::F32, DType::BF16}) check_cross_entropy(c, dt);
}

TEST_CASE("cuda lm_head_cross_entropy with more rows than one logits tile holds") {
  check_cross_entropy(kTiledCase, DType::BF16);
}

TEST_CASE("cuda lm_head_cross_entropy: all rows masked, and a bad target") {
  const HeadCase c{6, 8, 37, 7, 30.0f, 1.0f};
  CeInputs in = ce_inputs(c, 3);
  const Tensor zero_mask = Tensor::zeros({c.t}, DType::F32);
  const Tensor d_hidden = dev(in.hidden, DType::BF16), d_emb = dev(in.emb, DType::BF16);
  Tensor d_lse = dev(random_tensor({c.t}, 4), DType::F32);
  CHECK(lm_head_cross_entropy(d_hidden, d_emb, in.targets.to(Device::CUDA), zero_mask.to(Device::CUDA), 1.0, d_lse) == 0.0);
  CHECK(max_abs(host_f32(d_lse)) == 0.0);
  Tensor d_dh = dev(random_tensor({c.t, c.h}, 5), DType::F32);
  const Tensor de0 = random_tensor({c.v, c.h}, 6);
  Tensor d_de = de0.to(Device::CUDA);
  lm_head_cross_entropy_backward(d_hidden, d_emb, in.targets.to(Device::CUDA), zero_mask.to(Device::CUDA), 1.0, d_lse,
                                 1.0f, d_dh, &d_de);
  CHECK(max_abs(host_f32(d_dh)) == 0.0);
  CHECK(max_abs_diff(host_f32(d_de), de0) == 0.0);

  std::vector<std::int32_t> tg(static_cast<std::size_t>(c.t), 1);
  tg[2] = 99;
  CHECK_THROWS_WITH_AS(lm_head_cross_entropy(d_hidden, d_emb, Tensor::from_i32({c.t}, tg).to(Device::CUDA),
                                             Tensor::from({c.t}, std::vector<float>(6, 1.0f)).to(Device::CUDA), 1.0, d_lse),
                       doctest::Contains("target 99 of row 2 (weight 1) outside [0, 37)"), Error);
}

// ---- sampler statistics ------------------------------------------------------------------------------------

namespace {
struct StatsCase {
  HeadCase c;
  float temperature;
};

void check_stats(const StatsCase& sc, DType dt, int& near_ties, int& compared) {
  const HeadCase& c = sc.c;
  CAPTURE(c.t); CAPTURE(c.v); CAPTURE(c.chunk); CAPTURE(c.cap); CAPTURE(sc.temperature); CAPTURE(dtype_name(dt));
  const Tensor hidden = rounded(random_tensor({c.t, c.h}, 50 + static_cast<std::uint32_t>(c.v), c.hidden_scale));
  const Tensor emb = rounded(random_tensor({c.v, c.h}, 51));
  const LmHeadOpts opts{.softcap = c.cap, .vocab_chunk = c.chunk};
  Tensor ent = Tensor::empty({c.t}, DType::F32), am = Tensor::empty({c.t}, DType::I32), lse = Tensor::empty({c.t}, DType::F32);
  lm_head_entropy_argmax(hidden, emb, sc.temperature, ent, am, &lse, opts);
  const Tensor d_hidden = dev(hidden, dt), d_emb = dev(emb, dt);
  Tensor d_ent = Tensor::empty({c.t}, DType::F32, Device::CUDA), d_am = Tensor::empty({c.t}, DType::I32, Device::CUDA);
  Tensor d_lse = Tensor::empty({c.t}, DType::F32, Device::CUDA);
  lm_head_entropy_argmax(d_hidden, d_emb, sc.temperature, d_ent, d_am, &d_lse, opts);
  const Tensor g_ent = host_f32(d_ent), g_am = d_am.to(Device::CPU);
  CHECK(rel(host_f32(d_lse), lse) < 1e-5);

  // samples: the device op with its own logsumexp against the CPU op with the CPU's
  constexpr int kRounds = 3;
  std::vector<Tensor> uniforms, want, got;
  for (std::uint32_t round = 0; round < kRounds; ++round) {
    Tensor u = Tensor::empty({c.t}, DType::F32);
    std::mt19937 rng(60 + round);
    for (std::int64_t t = 0; t < c.t; ++t)
      u.data<float>()[t] = round == 0 ? 0.0f : std::uniform_real_distribution<float>(0.0f, 1.0f)(rng);
    Tensor sampled = Tensor::empty({c.t}, DType::I32), d_sampled = Tensor::empty({c.t}, DType::I32, Device::CUDA);
    lm_head_sample(hidden, emb, sc.temperature, lse, u, sampled, opts);
    lm_head_sample(d_hidden, d_emb, sc.temperature, d_lse, u.to(Device::CUDA), d_sampled, opts);
    uniforms.push_back(u);
    want.push_back(sampled);
    got.push_back(d_sampled.to(Device::CPU));
  }

  for (std::int64_t t = 0; t < c.t; ++t) {
    const double e_ref = ent.data<float>()[t], e_got = g_ent.data<float>()[t];
    CHECK(std::fabs(e_got - e_ref) < 2e-5);
    if (e_ref < 0.005) CHECK(std::fabs(e_got - e_ref) <= 1e-3 * e_ref + 1e-9);
    const std::vector<double> lg = reference_logits(hidden, emb, c.cap, double(sc.temperature), t);
    std::vector<double> top = lg;
    std::partial_sort(top.begin(), top.begin() + std::min<std::int64_t>(2, c.v), top.end(), std::greater<>());
    if (c.v > 1 && top[0] - top[1] < 1e-4) {
      ++near_ties;
    } else {
      ++compared;
      CHECK(g_am.data<std::int32_t>()[t] == am.data<std::int32_t>()[t]);
    }
    for (int round = 0; round < kRounds; ++round) {
      const double u = uniforms[round].data<float>()[t], l = lse.data<float>()[t];
      double acc = 0, nearest = 1;
      for (double x : lg) nearest = std::min(nearest, std::fabs((acc += std::exp(x - l)) - u));
      if (u != 0.0 && nearest < 1e-4) {  // a uniform within 1e-4 of a CDF step may legitimately move
        ++near_ties;
        continue;
      }
      CHECK(got[round].data<std::int32_t>()[t] == want[round].data<std::int32_t>()[t]);
    }
  }
}
}  // namespace

TEST_CASE("cuda lm_head_entropy_argmax and lm_head_sample match the CPU") {
  const std::vector<StatsCase> cases = {
      {{5, 8, 37, 7, 30.0f, 1.0f}, 0.8f},       {{3, 16, 64, 64, 30.0f, 2.0f}, 0.40833333f},
      {{6, 4, 50, 100, 2.0f, 1.0f}, 1.0f},      {{4, 12, 41, 1, 30.0f, 1.0f}, 0.5f},
      {{5, 6, 29, 8, 0.0f, 40.0f}, 0.4f},       // sharp rows: entropies below the 0.005 stopping bound
      {{2, 5, 1, 1, 30.0f, 1.0f}, 1.0f},        // V = 1: entropy 0, argmax 0, sample 0
      {{64, 48, 1000, 256, 30.0f, 1.0f}, 0.7f}, {{33, 40, 300, 1000, 2.0f, 2.0f}, 1.0f},
  };
  int near_ties = 0, compared = 0;
  for (const StatsCase& sc : cases)
    for (const DType dt : {DType::F32, DType::BF16}) check_stats(sc, dt, near_ties, compared);
  CHECK(compared > 20 * near_ties);
}

TEST_CASE("cuda sampler statistics with more rows than one logits tile holds") {
  int near_ties = 0, compared = 0;
  check_stats({kTiledCase, 0.9f}, DType::BF16, near_ties, compared);
}

TEST_CASE("cuda lm_head_entropy_argmax: equal maxima give the lowest id, across chunk boundaries too") {
  // small integers: every logit is exact in any summation order, so rows 3 and 8 of E tie exactly
  const std::int64_t t_count = 3, h = 4, v = 16;
  const std::vector<float> w = {1.0f, -2.0f, 0.0f, 1.0f};
  Tensor emb = Tensor::zeros({v, h}, DType::F32);
  for (std::int64_t i = 0; i < h; ++i) emb.data<float>()[3 * h + i] = emb.data<float>()[8 * h + i] = w[i];
  Tensor hidden = Tensor::empty({t_count, h}, DType::F32);
  for (std::int64_t t = 0; t < t_count; ++t)
    for (std::int64_t i = 0; i < h; ++i) hidden.data<float>()[t * h + i] = w[i] * float(t + 1);
  for (const DType dt : {DType::F32, DType::BF16})
    for (std::int64_t chunk : {1, 4, 5, 16}) {
      CAPTURE(chunk); CAPTURE(dtype_name(dt));
      Tensor d_ent = Tensor::empty({t_count}, DType::F32, Device::CUDA);
      Tensor d_am = Tensor::empty({t_count}, DType::I32, Device::CUDA);
      lm_head_entropy_argmax(dev(hidden, dt), dev(emb, dt), 0.5f, d_ent, d_am, nullptr, {.vocab_chunk = chunk});
      const Tensor am = d_am.to(Device::CPU);
      for (std::int64_t t = 0; t < t_count; ++t) CHECK(am.data<std::int32_t>()[t] == 3);
    }
}

TEST_CASE("cuda lm_head_sample rejects uniforms outside [0, 1)") {
  const Tensor hidden = dev(random_tensor({2, 4}, 70), DType::BF16), emb = dev(random_tensor({9, 4}, 71), DType::BF16);
  Tensor ent = Tensor::empty({2}, DType::F32, Device::CUDA), am = Tensor::empty({2}, DType::I32, Device::CUDA);
  Tensor lse = Tensor::empty({2}, DType::F32, Device::CUDA), sampled = Tensor::empty({2}, DType::I32, Device::CUDA);
  lm_head_entropy_argmax(hidden, emb, 1.0f, ent, am, &lse);
  CHECK_THROWS_WITH_AS(lm_head_sample(hidden, emb, 1.0f, lse, Tensor::from({2}, {0.5f, 1.0f}).to(Device::CUDA), sampled),
                       doctest::Contains("uniform 1 of row 1 outside [0, 1)"), Error);
}

// ---- soft embedding ------------------------------------------------------------------------------------------

TEST_CASE("cuda lm_head_soft_embedding matches the CPU") {
  struct Case {
    std::int64_t t, h, v, chunk;
    float temperature, cap, hidden_scale;
  };
  const std::vector<Case> cases = {{3, 8, 50, 7, 0.8f, 30.f, 3.f},     {1, 4, 9, 64, 0.4f, 2.f, 3.f},
                                   {5, 16, 33, 33, 1.f, 0.f, 3.f},     {2, 8, 40, 1, 0.5f, 30.f, 3.f},
                                   {64, 48, 1000, 256, 1.f, 30.f, 0.3f}, {4200, 8, 16400, 16384, 0.9f, 30.f, 1.f}};
  const float scale = 1.5f;
  for (const Case& c : cases)
    for (const DType dt : {DType::F32, DType::BF16})
      for (const DType out : {DType::F32, DType::BF16}) {
        CAPTURE(c.t); CAPTURE(c.v); CAPTURE(c.chunk); CAPTURE(dtype_name(dt)); CAPTURE(dtype_name(out));
        const Tensor h = rounded(random_tensor({c.t, c.h}, 1, c.hidden_scale)), e = rounded(random_tensor({c.v, c.h}, 2, 2.f));
        const LmHeadOpts opts{.softcap = c.cap, .vocab_chunk = c.chunk};
        Tensor ref = Tensor::empty({c.t, c.h}, DType::F32);
        lm_head_soft_embedding(h, e, c.temperature, scale, ref, opts);
        Tensor d_soft = Tensor::empty({c.t, c.h}, out, Device::CUDA);
        lm_head_soft_embedding(dev(h, dt), dev(e, dt), c.temperature, scale, d_soft, opts);
        const double err = max_abs_diff(host_f32(d_soft), ref);
        if (dt == DType::F32 && out == DType::F32) CHECK(err <= 5e-5 * max_abs(ref));
        else CHECK(err <= 0.0078125 * scale * max_abs(e));
      }
}
