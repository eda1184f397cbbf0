// Generation-path ops (layers/ops/decoding.h) on the CPU: fill_, token_positions, concat_tokens,
// entropy_bound_accept_rows and denoise_update against references written here (exact: these ops are
// integer work, copies, and running sums whose order the references repeat), plus the error messages.
// Last, generate() end to end in strict-device mode (in a forked child, the mode aborts by design): it
// runs with the weights device-resident and gives the tokens of the normal run, with its two named reads.
#include <doctest/doctest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "jobs/model_load.h"
#include "layers/generation.h"
#include "tests/op_test_util.h"

using namespace dg;

namespace {

std::vector<std::int32_t> ints(const Tensor& t) {
  return std::vector<std::int32_t>(t.data<std::int32_t>(), t.data<std::int32_t>() + t.numel());
}

Tensor random_ints(Shape shape, std::uint32_t seed, std::int32_t lo, std::int32_t hi) {
  Tensor t = Tensor::empty(std::move(shape), DType::I32);
  std::mt19937 rng(seed);
  std::uniform_int_distribution<std::int32_t> u(lo, hi);
  for (std::int64_t i = 0; i < t.numel(); ++i) t.data<std::int32_t>()[i] = u(rng);
  return t;
}

// The entropy-bound rule written out: stable order by entropy, fp32 running sum, accept when the sum
// before the position is <= gamma.
std::vector<std::int32_t> reference_accept(const std::vector<float>& e, double gamma) {
  std::vector<std::size_t> order(e.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return e[a] < e[b]; });
  std::vector<std::int32_t> out(e.size());
  float before = 0;
  for (std::size_t j : order) {
    const float inclusive = before + e[j];
    out[j] = inclusive - e[j] <= static_cast<float>(gamma) ? 1 : 0;
    before = inclusive;
  }
  return out;
}

}  // namespace

TEST_CASE("fill_ writes one value into f32 and i32 tensors; an i32 fill needs an integer") {
  Tensor f = Tensor::empty({3, 5}, DType::F32), i = Tensor::empty({7}, DType::I32), none = Tensor::empty({0}, DType::I32);
  fill_(f, 0.25);
  fill_(i, -1);
  fill_(none, 3);
  CHECK(std::all_of(f.data<float>(), f.data<float>() + 15, [](float v) { return v == 0.25f; }));
  CHECK(ints(i) == std::vector<std::int32_t>(7, -1));
  CHECK_THROWS_WITH_AS(fill_(i, 0.5), doctest::Contains("is not an i32 value"), Error);
}

TEST_CASE("token_positions: start + row offset + t, clamped at 0; no offsets means none") {
  Tensor p = Tensor::empty({3, 4}, DType::I32);
  token_positions(Tensor::from_i32({3}, {0, -2, -6}), 5, p);
  CHECK(ints(p) == std::vector<std::int32_t>{5, 6, 7, 8, 3, 4, 5, 6, 0, 0, 1, 2});
  token_positions(Tensor(), 2, p);
  CHECK(ints(p) == std::vector<std::int32_t>{2, 3, 4, 5, 2, 3, 4, 5, 2, 3, 4, 5});
  token_positions(Tensor::empty({0}, DType::I32), 0, p);
  CHECK(ints(p) == std::vector<std::int32_t>{0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3});
  CHECK_THROWS_WITH_AS(token_positions(Tensor::from_i32({2}, {0, 0}), 0, p), doctest::Contains("row_offset"), Error);
}

TEST_CASE("concat_tokens keeps the last K tokens of a ++ b per row, for any dtype and trailing shape") {
  std::uint32_t seed = 1;
  for (const DType dt : {DType::F32, DType::I32})
    for (const std::int64_t t0 : {std::int64_t{0}, std::int64_t{1}, std::int64_t{5}})
      for (const std::int64_t t1 : {std::int64_t{1}, std::int64_t{3}})
        for (std::int64_t k = 1; k <= t0 + t1; ++k) {
          CAPTURE(t0);
          CAPTURE(t1);
          CAPTURE(k);
          const std::int64_t B = 3, n = 2, d = 3;
          Tensor a = random_ints({B, t0, n, d}, seed++, -1000, 1000), b = random_ints({B, t1, n, d}, seed++, -1000, 1000);
          if (dt == DType::F32) a = a.to(DType::F32), b = b.to(DType::F32);
          Tensor out = Tensor::empty({B, k, n, d}, dt);
          concat_tokens(t0 ? a : Tensor(), b, out);
          const std::size_t tok = static_cast<std::size_t>(n * d) * 4;
          bool same = true;
          for (std::int64_t r = 0; r < B; ++r)
            for (std::int64_t t = 0; t < k; ++t) {
              const std::int64_t src = t0 + t1 - k + t;
              const char* want = src < t0 ? static_cast<const char*>(a.raw()) + (r * t0 + src) * tok
                                          : static_cast<const char*>(b.raw()) + (r * t1 + src - t0) * tok;
              same = same && std::memcmp(static_cast<const char*>(out.raw()) + (r * k + t) * tok, want, tok) == 0;
            }
          CHECK(same);
        }
  Tensor out = Tensor::empty({2, 5, 4}, DType::F32);
  CHECK_THROWS_WITH_AS(concat_tokens(Tensor::zeros({2, 1, 4}, DType::F32), Tensor::zeros({2, 3, 4}, DType::F32), out),
                       doctest::Contains("concat_tokens: out"), Error);
  CHECK_THROWS_WITH_AS(concat_tokens(Tensor::zeros({2, 3, 5}, DType::F32), Tensor::zeros({2, 3, 4}, DType::F32), out),
                       doctest::Contains("differ"), Error);
}

TEST_CASE("entropy_bound_accept_rows: the worked example, stable ties, the minimum always accepted, random rows") {
  Tensor e = Tensor::from({3, 5}, {0.3f, 0.001f, 0.08f, 0.02f, 0.05f,   // sorted: 0.001 0.02 0.05 0.08 0.3
                                   0.06f, 0.06f, 0.06f, 0.06f, 0.01f,   // ties: index order decides
                                   5.f, 3.f, 4.f, 3.f, 9.f});           // only the first minimum
  Tensor acc = Tensor::empty({3, 5}, DType::I32);
  entropy_bound_accept_rows(e, 0.1, acc);
  CHECK(ints(acc) == std::vector<std::int32_t>{0, 1, 1, 1, 1, 1, 1, 0, 0, 1, 0, 1, 0, 0, 0});
  // The host form (layers/generation.h) is the same op.
  CHECK(entropy_bound_accept(e.data<float>() + 5, 5, 0.1) == std::vector<bool>{true, true, false, false, true});

  std::mt19937 rng(3);
  for (const std::int64_t C : {std::int64_t{1}, std::int64_t{7}, std::int64_t{32}, std::int64_t{300}}) {
    const std::int64_t R = 5;
    Tensor ent = Tensor::empty({R, C}, DType::F32), got = Tensor::empty({R, C}, DType::I32);
    std::uniform_int_distribution<int> q(0, 40);  // quantised: many ties
    for (std::int64_t i = 0; i < ent.numel(); ++i) ent.data<float>()[i] = static_cast<float>(q(rng)) * 0.0037f;
    for (const double gamma : {0.01, 0.1, 1.0}) {
      entropy_bound_accept_rows(ent, gamma, got);
      for (std::int64_t r = 0; r < R; ++r) {
        const std::vector<float> row(ent.data<float>() + r * C, ent.data<float>() + (r + 1) * C);
        CHECK(std::vector<std::int32_t>(got.data<std::int32_t>() + r * C, got.data<std::int32_t>() + (r + 1) * C) ==
              reference_accept(row, gamma));
      }
    }
  }
  Tensor bad = Tensor::empty({3, 4}, DType::I32);
  CHECK_THROWS_WITH_AS(entropy_bound_accept_rows(e, 0.1, bad), doctest::Contains("accepted"), Error);
}

TEST_CASE("denoise_update: frozen rows untouched; accept/renoise, argmax, history rotation and the stop rule") {
  const std::int64_t B = 4, C = 3, M = 2;
  Tensor x = Tensor::from_i32({B, C}, {9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9});
  Tensor amax = Tensor::from_i32({B, C}, {8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8});
  // Row 0 frozen; row 1 stable (both history canvases equal its argmax) and confident; row 2 stable but
  // not confident; row 3 confident but its oldest canvas differs.
  Tensor history = Tensor::from_i32({B, M, C}, {1, 1, 1, 2, 2, 2,
                                                5, 6, 7, 5, 6, 7,
                                                4, 4, 4, 4, 4, 4,
                                                0, 0, 0, 3, 2, 1});
  Tensor done = Tensor::from_i32({B}, {1, 0, 0, 0});
  const Tensor accepted = Tensor::from_i32({B, C}, {1, 1, 1, 1, 0, 1, 0, 0, 1, 0, 1, 0});
  const Tensor sampled = Tensor::from_i32({B, C}, {10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21});
  const Tensor renoise = Tensor::from_i32({B, C}, {30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41});
  const Tensor step_amax = Tensor::from_i32({B, C}, {7, 7, 7, 5, 6, 7, 4, 4, 4, 3, 2, 1});
  const Tensor entropy = Tensor::from({B, C}, {0, 0, 0, 0.001f, 0.002f, 0.003f, 0.5f, 0.5f, 0.5f, 0, 0, 0});
  denoise_update(x, amax, history, done, accepted, sampled, renoise, step_amax, entropy, 0.005);
  CHECK(ints(x) == std::vector<std::int32_t>{9, 9, 9, 13, 34, 15, 36, 37, 18, 39, 20, 41});
  CHECK(ints(amax) == std::vector<std::int32_t>{8, 8, 8, 5, 6, 7, 4, 4, 4, 3, 2, 1});
  CHECK(ints(history) == std::vector<std::int32_t>{1, 1, 1, 2, 2, 2,  5, 6, 7, 5, 6, 7,  4, 4, 4, 4, 4, 4,
                                                   3, 2, 1, 3, 2, 1});
  CHECK(ints(done) == std::vector<std::int32_t>{1, 1, 0, 0});
  // The mean is compared strictly: exactly at the threshold does not stop.
  Tensor d2 = Tensor::from_i32({B}, {0, 0, 0, 0});
  Tensor h0 = Tensor::empty({B, 0, C}, DType::I32);  // M = 0: always stable
  denoise_update(x, amax, h0, d2, accepted, sampled, renoise, step_amax, entropy, 0.5);
  CHECK(ints(d2) == std::vector<std::int32_t>{1, 1, 0, 1});
  CHECK_THROWS_WITH_AS(denoise_update(x, amax, h0, d2, accepted, sampled, renoise, step_amax, Tensor::zeros({B, C}, DType::I32), 0.5),
                       doctest::Contains("entropy"), Error);
}

namespace {
struct Outcome {
  std::vector<std::vector<std::int32_t>> tokens;
  std::vector<std::int64_t> steps;
};
Outcome run(const HfModel& m, const GenerationConfig& g) {
  const std::vector<GenerationRequest> reqs{{{2, 30, 31, 32, 33}, 0, -1}, {{2, 40}, 1, 3}, {{2, 50, 51}, 2, -1}};
  Outcome o;
  for (const GenerationResult& r : generate(m.config, m.weights, reqs, g)) {
    o.tokens.push_back(r.tokens);
    o.steps.push_back(r.denoising_steps);
  }
  return o;
}
}  // namespace

TEST_CASE("generate() is strict-device clean and gives the normal run's tokens with two named reads") {
  HfModel m = load_hf_model(std::string(DGEMMA_FIXTURES) + "/model/tiny6");
  GenerationConfig g;
  g.max_new_tokens = 16;
  g.max_denoising_steps = 5;
  g.seed = 4;
  for (const int threshold : {0, 1}) {  // 0: every row stops after one step (frozen rows, early ends)
    CAPTURE(threshold);
    g.stability_threshold = threshold;
    g.confidence_threshold = threshold == 0 ? 1e9 : 0.005;
    const Outcome normal = run(m, g);
    const pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      set_strict_device_mode(true);
      for (const ParamSpec& p : model_params(m.config)) p.slot(m.weights).mark_device_resident();
      reset_host_reads();
      Outcome strict;
      {
        ModelPathScope in_batch;
        strict = run(m, g);
      }
      const bool same = strict.tokens == normal.tokens && strict.steps == normal.steps;
      const auto& reads = host_reads();
      const bool named = reads.size() == 2 && reads.count("canvas") && reads.count("stop_flags");
      _exit(same ? (named ? 0 : 4) : 3);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
  }
}
