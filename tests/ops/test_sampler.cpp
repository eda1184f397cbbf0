// The fused sampler step lm_head_sampler (layers/ops/head.h) against the three ops it replaces in
// generation: lm_head_entropy_argmax (entropy, argmax, logsumexp), lm_head_sample (the inverse-CDF sample
// with that logsumexp) and lm_head_soft_embedding. The fused op shares their per-row arithmetic, so
// entropy, argmax, sample and soft embedding are compared bit for bit, over a table of shapes (vocab
// chunks of 1, not dividing V, equal to V, larger than V; softcap 30, 2 and none; sharp rows) and
// uniforms including 0 and the largest float below 1 (the end of the CDF). The separate ops are checked
// against double references in test_head.cpp and test_self_conditioning.cpp. Also: a row's results do
// not depend on its batch mates (batch-invariant GEMMs on), and argument errors.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "tests/op_test_util.h"

using namespace dg;
using dg::test::random_tensor;

namespace {

struct Case {
  std::int64_t t, h, v, chunk;
  float cap, temperature, hidden_scale;
};

const std::vector<Case> kCases = {
    {5, 8, 37, 7, 30.0f, 0.8f, 1.0f},   {3, 16, 64, 64, 30.0f, 0.40833333f, 2.0f},
    {6, 4, 50, 100, 2.0f, 1.0f, 1.0f},  {4, 12, 41, 1, 30.0f, 0.5f, 1.0f},
    {5, 6, 29, 8, 0.0f, 0.4f, 40.0f},   // sharp rows (entropies below the stopping bound)
    {2, 5, 1, 1, 30.0f, 1.0f, 1.0f},    // V = 1
    {9, 32, 300, 64, 30.0f, 0.6f, 4.0f},
};

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.numel() == b.numel() && a.dtype() == b.dtype() &&
         std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

Tensor uniforms_for(std::int64_t t_count, std::uint32_t round) {
  Tensor u = Tensor::empty({t_count}, DType::F32);
  std::mt19937 rng(90 + round);
  for (std::int64_t t = 0; t < t_count; ++t)
    u.data<float>()[t] = round == 0 ? 0.0f
                         : round == 1 ? std::nextafter(1.0f, 0.0f)
                                      : std::uniform_real_distribution<float>(0.0f, 1.0f)(rng);
  return u;
}

struct Outputs {
  Tensor entropy, argmax, sampled, soft;
};

Outputs fused(const Tensor& hidden, const Tensor& emb, float temperature, float scale, const Tensor& u,
              const LmHeadOpts& opts) {
  const std::int64_t t_count = hidden.size(0);
  Outputs o{Tensor::empty({t_count}, DType::F32), Tensor::empty({t_count}, DType::I32),
            Tensor::empty({t_count}, DType::I32), Tensor::empty({t_count, hidden.size(1)}, DType::F32)};
  lm_head_sampler(hidden, emb, temperature, scale, u, o.entropy, o.argmax, o.sampled, o.soft, opts);
  return o;
}

}  // namespace

TEST_CASE("lm_head_sampler equals lm_head_entropy_argmax + lm_head_sample + lm_head_soft_embedding") {
  int samples = 0, multi_chunk_samples = 0;
  for (const Case& c : kCases) {
    CAPTURE(c.t); CAPTURE(c.v); CAPTURE(c.chunk); CAPTURE(c.cap); CAPTURE(c.temperature);
    const Tensor hidden = random_tensor({c.t, c.h}, 80 + static_cast<std::uint32_t>(c.v), c.hidden_scale);
    const Tensor emb = random_tensor({c.v, c.h}, 81);
    const LmHeadOpts opts{.softcap = c.cap, .vocab_chunk = c.chunk};
    const float scale = 1.5f;
    Tensor ent = Tensor::empty({c.t}, DType::F32), am = Tensor::empty({c.t}, DType::I32);
    Tensor lse = Tensor::empty({c.t}, DType::F32), soft = Tensor::empty({c.t, c.h}, DType::F32);
    lm_head_entropy_argmax(hidden, emb, c.temperature, ent, am, &lse, opts);
    lm_head_soft_embedding(hidden, emb, c.temperature, scale, soft, opts);
    for (std::uint32_t round = 0; round < 6; ++round) {
      CAPTURE(round);
      const Tensor u = uniforms_for(c.t, round);
      Tensor sampled = Tensor::empty({c.t}, DType::I32);
      lm_head_sample(hidden, emb, c.temperature, lse, u, sampled, opts);
      const Outputs got = fused(hidden, emb, c.temperature, scale, u, opts);
      CHECK(same_bits(got.entropy, ent));
      CHECK(same_bits(got.argmax, am));
      CHECK(same_bits(got.soft, soft));
      CHECK(same_bits(got.sampled, sampled));
      samples += static_cast<int>(c.t);
      if (c.v > c.chunk) multi_chunk_samples += static_cast<int>(c.t);
    }
  }
  CHECK(multi_chunk_samples >= 100);  // the chunk-mass path (recomputed chunks) is exercised
  CHECK(samples > multi_chunk_samples);
}

TEST_CASE("lm_head_sampler: a row's results do not depend on its batch mates") {
  const bool was = batch_invariant();
  set_batch_invariant(true);
  const std::int64_t t_count = 7, h = 24, v = 200;
  const Tensor hidden = random_tensor({t_count, h}, 85, 3.0f), emb = random_tensor({v, h}, 86);
  for (std::int64_t chunk : {std::int64_t{64}, std::int64_t{4096}}) {
    const LmHeadOpts opts{.softcap = 30.0f, .vocab_chunk = chunk};
    const Tensor u = uniforms_for(t_count, 3);
    const Outputs all = fused(hidden, emb, 0.7f, 2.0f, u, opts);
    for (std::int64_t t = 0; t < t_count; ++t) {
      CAPTURE(t);
      const Tensor row_u = Tensor::from({1}, {u.data<float>()[t]});
      const Outputs one = fused(hidden.rows(t, t + 1).clone(), emb, 0.7f, 2.0f, row_u, opts);
      CHECK(one.entropy.data<float>()[0] == all.entropy.data<float>()[t]);
      CHECK(one.argmax.data<std::int32_t>()[0] == all.argmax.data<std::int32_t>()[t]);
      CHECK(one.sampled.data<std::int32_t>()[0] == all.sampled.data<std::int32_t>()[t]);
      CHECK(std::memcmp(one.soft.data<float>(), all.soft.data<float>() + t * h, sizeof(float) * h) == 0);
    }
  }
  set_batch_invariant(was);
}

TEST_CASE("lm_head_sampler rejects bad temperatures, uniforms and shapes") {
  const Tensor hidden = random_tensor({2, 4}, 87), emb = random_tensor({9, 4}, 88);
  const Tensor u = Tensor::from({2}, {0.25f, 0.5f});
  Tensor ent = Tensor::empty({2}, DType::F32), am = Tensor::empty({2}, DType::I32), s = Tensor::empty({2}, DType::I32);
  Tensor soft = Tensor::empty({2, 4}, DType::F32);
  CHECK_THROWS_WITH_AS(lm_head_sampler(hidden, emb, 0.0f, 1.0f, u, ent, am, s, soft),
                       doctest::Contains("temperature 0 must be"), Error);
  CHECK_THROWS_WITH_AS(lm_head_sampler(hidden, emb, 1.0f, 1.0f, Tensor::from({2}, {0.5f, 1.0f}), ent, am, s, soft),
                       doctest::Contains("uniform 1 of row 1 outside [0, 1)"), Error);
  Tensor soft_bad = Tensor::empty({2, 5}, DType::F32);
  CHECK_THROWS_WITH_AS(lm_head_sampler(hidden, emb, 1.0f, 1.0f, u, ent, am, s, soft_bad),
                       doctest::Contains("soft should be f32[2, 4]"), Error);
  CHECK_THROWS_WITH_AS(lm_head_sampler(hidden, emb, 1.0f, 1.0f, u, ent, am, s, soft, {.vocab_chunk = 0}),
                       doctest::Contains("vocab_chunk 0 must be positive"), Error);
}
