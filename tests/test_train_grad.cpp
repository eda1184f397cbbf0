// The SFT forward/backward of layers/train.h on the tiny6 fixture model (6 layers: 5 sliding with
// window 6 and 1 full with K=V, GQA, partial RoPE, 8 experts top-2, canvas block 4, V = 96):
//  1. central-difference gradient check of the total loss (diffusion + AR) w.r.t. sampled entries of
//     every trainable tensor, with a self-conditioning coin of 1 and 0 in one batch and with no coin;
//  2. frozen tensors (router proj/scale/per_expert_scale, layer scalars) get exactly zero gradient;
//  3. the leak invariant at the model level (training.md §4.3);
//  4. the losses equal an independent recomputation through encode() / decode() / logits() of
//     layers/model.h, one example and one canvas block at a time (the generation cache geometry).
//
// Tolerances. Finite differences in fp32 with steps h = 1e-3 (1e-3 · |x| for larger entries) and h/2:
// the loss is O(5) and carries ~1e-6 of fp32 rounding, so a derivative is good to ~1e-3 absolute plus
// the O(h²) truncation. An entry passes when |numeric - analytic| <= 3e-2 · max(|analytic|, 0.05 · the
// largest |analytic| of its tensor, 1e-4) plus the fp32 noise of the difference itself (4 ulp of the
// loss over the step). The router of the fixture has near-ties, so top-k selection flips within a few
// 1e-3 for some entries (piecewise-constant routing): an entry whose
// numeric derivatives at h and h/2 disagree by more than 25% is taken as a routing flip and skipped
// (at most a few per run are allowed). Forward parity (4): 1e-5 relative (both sides fp32, different
// summation orders only). Leak (3): the diffusion loss must not move by more than 1e-6 relative
// (bitwise in practice), and must move by > 1e-4 when an earlier clean token changes.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "jobs/model_load.h"
#include "layers/model.h"
#include "layers/ops.h"
#include "layers/train.h"
#include "optim/adamw.h"
#include "tests/sft_test_batch.h"

using namespace dg;

namespace {

HfModel load_tiny6() { return load_hf_model(std::string(DGEMMA_FIXTURES) + "/model/tiny6"); }

double max_abs(const Tensor& t) {
  double m = 0;
  for (std::int64_t i = 0; i < t.numel(); ++i) m = std::max(m, std::fabs(double(t.data<float>()[i])));
  return m;
}

struct CheckStats {
  int checked = 0, skipped = 0, failed = 0;
};

void gradcheck_all(const ModelConfig& c, ModelWeights& w, const SftBatch& b, CheckStats& st) {
  ModelGrads g = allocate_grads(c);
  sft_forward_backward(c, w, b, g);
  const auto params = model_tensors(c, w);
  const auto grads = model_tensors(c, g);
  const bool any_coin = std::any_of(b.sc_coin.begin(), b.sc_coin.end(), [](std::uint8_t x) { return x != 0; });
  const double base_loss = sft_forward(c, w, b).total;
  std::mt19937 rng(5);
  for (std::size_t ti = 0; ti < params.size(); ++ti) {
    const std::string& name = params[ti].name;
    if (!sft_trainable(name)) continue;
    Tensor x = params[ti].tensor;
    const Tensor& ga = grads[ti].tensor;
    const double gmax = max_abs(ga);
    CAPTURE(name);
    if (!any_coin && name.find("self_conditioning") != std::string::npos) {
      CHECK(gmax == 0.0);  // no example self-conditioned: the MLP is unused
      continue;
    }
    CHECK(gmax > 0.0);  // every trainable tensor is on the loss's path
    // The 3 entries with the largest |gradient| and 3 random ones.
    std::vector<std::int64_t> idx(static_cast<std::size_t>(x.numel()));
    for (std::int64_t i = 0; i < x.numel(); ++i) idx[static_cast<std::size_t>(i)] = i;
    const std::size_t top = std::min<std::size_t>(3, idx.size());
    std::partial_sort(idx.begin(), idx.begin() + static_cast<std::ptrdiff_t>(top), idx.end(),
                      [&](std::int64_t a, std::int64_t bb) {
                        return std::fabs(ga.data<float>()[a]) > std::fabs(ga.data<float>()[bb]);
                      });
    std::vector<std::int64_t> pick(idx.begin(), idx.begin() + static_cast<std::ptrdiff_t>(top));
    for (int r = 0; r < 3; ++r) pick.push_back(static_cast<std::int64_t>(rng() % static_cast<std::uint32_t>(x.numel())));
    for (const std::int64_t i : pick) {
      float* p = x.data<float>() + i;
      const float keep = *p;
      const float h = std::max(1e-3f, 1e-3f * std::fabs(keep));
      auto deriv = [&](float step) {
        *p = keep + step;
        const double up = sft_forward(c, w, b).total;
        *p = keep - step;
        const double down = sft_forward(c, w, b).total;
        *p = keep;
        return (up - down) / (2.0 * double(step));
      };
      const double d1 = deriv(h), d2 = deriv(h / 2);
      const double ana = ga.data<float>()[i];
      const double denom = std::max({std::fabs(ana), 0.05 * gmax, 1e-4});
      if (std::fabs(d1 - d2) > 0.25 * std::max({std::fabs(d1), std::fabs(d2), denom})) {
        ++st.skipped;  // routing flip inside [x - h, x + h]
        MESSAGE("skipped (top-k flip?) ", name, "[", i, "] numeric ", d1, " / ", d2, " analytic ", ana);
        continue;
      }
      ++st.checked;
      // fp32 evaluation noise of a central difference at step h/2: ~4 ulp of the loss over h.
      const double noise = 4.0 * 1.2e-7 * std::fabs(base_loss) / (0.5 * double(h));
      const double err = std::min(std::fabs(d1 - ana), std::fabs(d2 - ana)) / (denom + noise / 3e-2);
      if (err > 3e-2) {
        ++st.failed;
        MESSAGE(name, "[", i, "] numeric ", d1, " / ", d2, " analytic ", ana, " rel err ", err);
      }
    }
  }
}

// Cross-entropy of softcapped logits [C, V] row j against target, in double.
double ce_row(const Tensor& lg, std::int64_t j, std::int32_t target) {
  const std::int64_t V = lg.size(-1);
  const float* r = lg.data<float>() + j * V;
  double m = r[0];
  for (std::int64_t v = 1; v < V; ++v) m = std::max(m, double(r[v]));
  double s = 0;
  for (std::int64_t v = 0; v < V; ++v) s += std::exp(double(r[v]) - m);
  return m + std::log(s) - double(r[target]);
}

Tensor slice_row(const Tensor& t, std::int64_t b, std::int64_t begin, std::int64_t end) {
  const std::int64_t S = t.size(1);
  std::vector<std::int32_t> v(t.data<std::int32_t>() + b * S + begin, t.data<std::int32_t>() + b * S + end);
  return Tensor::from_i32({1, end - begin}, v);
}

}  // namespace

TEST_CASE("SFT gradients match central differences for every trainable tensor") {
  HfModel m = load_tiny6();
  CheckStats st;
  SUBCASE("coin 1 and coin 0 in one batch, given self-conditioning logits") {
    // Finite differences need the self-conditioning signal as an input (the reference detaches it).
    SftBatch b = dg::test::make_sft_batch(m.config, {1, 0});
    b.sc_logits = Tensor::empty({b.canvas.size(0), b.canvas.size(1), m.config.vocab_size}, DType::F32);
    std::mt19937 rng(3);
    std::normal_distribution<float> nd(0.0f, 3.0f);
    for (std::int64_t i = 0; i < b.sc_logits.numel(); ++i) b.sc_logits.data<float>()[i] = nd(rng);
    gradcheck_all(m.config, m.weights, b, st);
  }
  SUBCASE("no self-conditioning") { gradcheck_all(m.config, m.weights, dg::test::make_sft_batch(m.config, {0, 0}), st); }
  MESSAGE("checked ", st.checked, " entries, skipped ", st.skipped, ", failed ", st.failed);
  CHECK(st.failed == 0);
  CHECK(st.checked > 400);
  CHECK(st.skipped <= st.checked / 20);
}

TEST_CASE("frozen tensors get exactly zero gradient; gradients accumulate and scale with loss_scale") {
  HfModel m = load_tiny6();
  const ModelConfig& c = m.config;
  const SftBatch b = dg::test::make_sft_batch(c, {1, 1});
  ModelGrads g1 = allocate_grads(c), g2 = allocate_grads(c);
  const StepLosses l1 = sft_forward_backward(c, m.weights, b, g1);
  sft_forward_backward(c, m.weights, b, g2, {.loss_scale = 0.5f});
  sft_forward_backward(c, m.weights, b, g2, {.loss_scale = 1.5f});
  const auto t1 = model_tensors(c, g1), t2 = model_tensors(c, g2);
  int frozen = 0;
  for (std::size_t i = 0; i < t1.size(); ++i) {
    CAPTURE(t1[i].name);
    if (!sft_trainable(t1[i].name)) {
      ++frozen;
      CHECK(max_abs(t1[i].tensor) == 0.0);
      CHECK(max_abs(t2[i].tensor) == 0.0);
      continue;
    }
    // g2 = (0.5 + 1.5) · g1
    double worst = 0, scale = 1e-12;
    for (std::int64_t k = 0; k < t1[i].tensor.numel(); ++k) {
      const double a = t1[i].tensor.data<float>()[k], bb = t2[i].tensor.data<float>()[k];
      worst = std::max(worst, std::fabs(bb - 2 * a));
      scale = std::max(scale, std::fabs(2 * a));
    }
    CHECK(worst / scale < 1e-5);
  }
  CHECK(frozen == 5 * c.num_layers);  // gate proj, scale, per_expert_scale, layer_scalar, encoder_layer_scalar
  CHECK(l1.total == doctest::Approx(l1.diffusion + l1.ar));
  CHECK(l1.diff_tokens == 8.0);  // one block of 4 per example
}

TEST_CASE("leak invariant: a block's diffusion loss ignores its own and later clean tokens") {
  HfModel m = load_tiny6();
  const ModelConfig& c = m.config;
  for (const auto& coin : {std::vector<std::uint8_t>{1, 1}, std::vector<std::uint8_t>{0, 0}}) {
    const SftBatch b = dg::test::make_sft_batch(c, coin);
    const double base = sft_forward(c, m.weights, b).diffusion;
    // Change every clean token from the selected block's first position on (example 0: block 1
    // starts at 5 + 4 = 9; example 1: block 2 starts at 3 + 8 = 11); the targets stay as they are.
    SftBatch later = b;
    later.clean = b.clean.clone();
    const std::int64_t S = b.clean.size(1);
    const std::int64_t start[2] = {9, 11};
    for (std::int64_t i = 0; i < 2; ++i)
      for (std::int64_t t = start[i]; t < S; ++t) {
        std::int32_t& id = later.clean.data<std::int32_t>()[i * S + t];
        id = (id + 17) % c.vocab_size;
      }
    const double moved = sft_forward(c, m.weights, later).diffusion;
    CHECK(std::fabs(moved - base) <= 1e-6 * std::fabs(base));
    // The token just before the block is visible: changing it moves the loss.
    SftBatch earlier = b;
    earlier.clean = b.clean.clone();
    for (std::int64_t i = 0; i < 2; ++i) {
      std::int32_t& id = earlier.clean.data<std::int32_t>()[i * S + start[i] - 1];
      id = (id + 17) % c.vocab_size;
    }
    CHECK(std::fabs(sft_forward(c, m.weights, earlier).diffusion - base) > 1e-4 * std::fabs(base));
  }
}

TEST_CASE("SFT losses equal a recomputation through encode / decode / logits, block by block") {
  HfModel m = load_tiny6();
  const ModelConfig& c = m.config;
  const ModelWeights& w = m.weights;
  for (const auto& coin : {std::vector<std::uint8_t>{1, 0}, std::vector<std::uint8_t>{0, 1}}) {
    const SftBatch b = dg::test::make_sft_batch(c, coin, /*all_blocks=*/true);
    const StepLosses got = sft_forward(c, w, b);
    const std::int64_t S = b.clean.size(1), R = b.canvas.size(1), Bk = c.canvas_length;
    double diff = 0, ar = 0;
    for (std::int64_t i = 0; i < 2; ++i) {
      const auto u = static_cast<std::size_t>(i);
      const std::int64_t P = b.prompt_len[u], Rb = b.canvas_len[u];
      // AR: one causal encode of the example's content.
      {
        KVCache cache;
        const Tensor lg = logits(c, w, encode(c, w, slice_row(b.clean, i, 0, P + Rb), Tensor(), cache).hidden);
        for (std::int64_t t = 0; t + 1 < P + Rb; ++t)
          ar += ce_row(lg.reshape({P + Rb, c.vocab_size}), t, b.clean.data<std::int32_t>()[i * S + t + 1]);
      }
      // Diffusion: block k sees the cache of the clean tokens before it, as generation does.
      for (std::int64_t k = 0; k * Bk < Rb; ++k) {
        const std::int64_t j0 = k * Bk, j1 = std::min(Rb, j0 + Bk);
        KVCache cache;
        encode(c, w, slice_row(b.clean, i, 0, P + j0), Tensor(), cache);
        const Tensor blk = slice_row(b.canvas, i, j0, j1);
        const Tensor l1 = logits(c, w, decode(c, w, blk, Tensor(), cache));
        const Tensor l2 = b.sc_coin[u] ? logits(c, w, decode(c, w, blk, l1, cache)) : l1;
        for (std::int64_t j = j0; j < j1; ++j)
          diff += b.diff_mask.data<float>()[i * R + j] *
                  ce_row(l2.reshape({j1 - j0, c.vocab_size}), j - j0, b.diff_targets.data<std::int32_t>()[i * R + j]);
      }
    }
    diff /= b.n_diff;
    ar /= b.n_ar;
    CHECK(got.diffusion == doctest::Approx(diff).epsilon(1e-5));
    CHECK(got.ar == doctest::Approx(ar).epsilon(1e-5));
    CHECK(got.diff_tokens == 20.0);
  }
}
