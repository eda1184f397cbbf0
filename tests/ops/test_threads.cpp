// Threading of the CPU ops (layers/cpu/parallel.h): the same bits at 1, 2 and 3 threads.
//  1. parallel_for: every item runs once, a body's exception surfaces (the first block's), nested loops
//     run inline, parallel_sum's blocks do not depend on the thread count;
//  2. the SFT forward + backward on the tiny6 fixture (every op and its backward, the self-conditioning
//     sampler pass), with every loop of two or more items threaded: losses and gradients bit for bit;
//  3. generation on the fixture (decoder, fused sampler, acceptance, renoise): every denoising step's
//     canvas, entropies, argmax, samples and the generated tokens bit for bit;
//  4. ops at larger shapes with the default thresholds (the loops that thread on their own).
#include <doctest/doctest.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <utility>

#include "jobs/model_load.h"
#include "layers/cpu/parallel.h"
#include "layers/generation.h"
#include "layers/ops.h"
#include "layers/train.h"
#include "tests/op_test_util.h"
#include "tests/sft_test_batch.h"

using namespace dg;
using dg::test::random_tensor;

namespace {

// Named outputs of one run, as bytes.
using Outputs = std::vector<std::pair<std::string, std::vector<char>>>;

void append(Outputs& out, const std::string& name, const void* p, std::size_t bytes) {
  out.emplace_back(name, std::vector<char>(static_cast<const char*>(p), static_cast<const char*>(p) + bytes));
}
void append(Outputs& out, const std::string& name, const Tensor& t) { append(out, name, t.raw(), t.nbytes()); }
template <class T>
void append(Outputs& out, const std::string& name, const std::vector<T>& v) {
  append(out, name, v.data(), v.size() * sizeof(T));
}

// Runs f at 1, 2 and 3 CPU threads (min_work: the least work a loop needs to thread) and checks that
// every run's outputs equal the first run's, byte for byte.
template <class F>
void same_at_every_thread_count(F&& f, std::int64_t min_work) {
  const int threads_before = cpu_threads();
  const std::int64_t work_before = cpu::set_min_parallel_work(min_work);
  std::vector<Outputs> results;
  for (int n : {1, 2, 3}) {
    set_cpu_threads(n);
    REQUIRE(cpu_threads() == n);
    results.push_back(f());
  }
  set_cpu_threads(threads_before);
  cpu::set_min_parallel_work(work_before);
  for (std::size_t i = 1; i < results.size(); ++i) {
    CAPTURE(i + 1);
    REQUIRE(results[i].size() == results[0].size());
    for (std::size_t j = 0; j < results[0].size(); ++j) {
      CAPTURE(results[0][j].first);
      CHECK(results[i][j].second == results[0][j].second);
    }
  }
}

const HfModel& tiny6() {
  static const HfModel m = load_hf_model(std::string(DGEMMA_FIXTURES) + "/model/tiny6");
  return m;
}

}  // namespace

TEST_CASE("parallel_for: every item once, exceptions rethrown after the loop, nested loops inline") {
  const int before = cpu_threads();
  const std::int64_t work = cpu::set_min_parallel_work(1);
  set_cpu_threads(3);
  std::vector<std::atomic<int>> hits(1000);
  cpu::parallel_for("test.hits", 1000, 1, [&](std::int64_t i) { hits[static_cast<std::size_t>(i)]++; });
  for (const auto& h : hits) CHECK(h.load() == 1);

  // The lowest failing item's error, as the serial loop would report it.
  auto failing = [] {
    cpu::parallel_for("test.throw", 999, 1, [](std::int64_t i) {
      if (i == 400 || i == 900) throw std::runtime_error("item " + std::to_string(i));
    });
  };
  CHECK_THROWS_WITH_AS(failing(), "item 400", std::runtime_error);

  std::atomic<int> inner_threaded{0};
  cpu::parallel_for("test.outer", 8, 1, [&](std::int64_t) {
    if (cpu::loop_threads(100, 1000) > 1) ++inner_threaded;
  });
  CHECK(inner_threaded.load() == 0);
  set_cpu_threads(before);
  cpu::set_min_parallel_work(work);
}

TEST_CASE("parallel_sum and sum_squares: fixed blocks, the same bits at any thread count") {
  const Tensor x = random_tensor({3 * cpu::kSumBlock + 123}, 5);
  same_at_every_thread_count([&] {
    Outputs out;
    const double s = sum_squares(x), a = sum_all(x);
    append(out, "sum_squares", &s, sizeof s);
    append(out, "sum_all", &a, sizeof a);
    return out;
  }, 1);
}

TEST_CASE("SFT forward + backward: losses and every gradient bit for bit at 1, 2 and 3 threads") {
  const HfModel& m = tiny6();
  const ModelConfig& c = m.config;
  const SftBatch b = dg::test::make_sft_batch(c, {1, 0}, /*all_blocks=*/true, /*seed=*/7);
  same_at_every_thread_count([&] {
    ModelGrads g = allocate_grads(c);
    const StepLosses l = sft_forward_backward(c, m.weights, b, g);
    Outputs out;
    append(out, "total loss", &l.total, sizeof l.total);
    append(out, "diffusion loss", &l.diffusion, sizeof l.diffusion);
    append(out, "ar loss", &l.ar, sizeof l.ar);
    for (const NamedTensor& t : model_tensors(c, g)) append(out, "grad " + t.name, t.tensor);
    return out;
  }, 1);
}

TEST_CASE("generation: every denoising step and the generated tokens bit for bit at 1, 2 and 3 threads") {
  const HfModel& m = tiny6();
  GenerationConfig g;
  g.max_new_tokens = 8;
  g.max_denoising_steps = 6;
  g.seed = 3;
  const std::vector<GenerationRequest> reqs = {
      {{2, 10, 11, 12, 13, 14, 15}, 0, -1}, {{2, 20, 21}, 1, -1}, {{2, 30, 31, 32, 33}, 2, 4}};
  same_at_every_thread_count([&] {
    Outputs out;
    const auto trace = [&](const DenoisingStepTrace& s) {
      const std::string step = "canvas " + std::to_string(s.canvas) + " step " + std::to_string(s.remaining) + ": ";
      append(out, step + "x", s.x);
      append(out, step + "entropy", s.entropy);
      append(out, step + "argmax", s.argmax);
      append(out, step + "sampled", s.sampled);
      append(out, step + "accepted", s.accepted);
    };
    for (const GenerationResult& r : generate(m.config, m.weights, reqs, g, nullptr, trace))
      append(out, "tokens", r.tokens);
    return out;
  }, 1);
}

TEST_CASE("ops at larger shapes, default thresholds: sampler, cross-entropy, attention, norm, AdamW") {
  // V a multiple of the chunk: OpenBLAS's own result can depend on its thread count for some inner
  // dimensions (it splits K differently; e.g. [37, 96] x [440, 96]), which is not what this test checks.
  const std::int64_t T = 37, H = 96, V = 3072;
  const Tensor h = random_tensor({T, H}, 1), emb = random_tensor({V, H}, 2, 0.2f);
  Tensor u = Tensor::empty({T}, DType::F32), tg = Tensor::empty({T}, DType::I32), mask = Tensor::empty({T}, DType::F32);
  for (std::int64_t t = 0; t < T; ++t) {
    u.data<float>()[t] = float(t) / float(T);
    tg.data<std::int32_t>()[t] = static_cast<std::int32_t>((t * 97) % V);
    mask.data<float>()[t] = t % 5 == 0 ? 0.0f : 1.0f;
  }
  const LmHeadOpts opts{.softcap = 30.0f, .vocab_chunk = 512};
  same_at_every_thread_count([&] {
    Outputs out;
    Tensor ent = Tensor::empty({T}, DType::F32), am = Tensor::empty({T}, DType::I32);
    Tensor smp = Tensor::empty({T}, DType::I32);
    Tensor soft = Tensor::empty({T, H}, DType::F32), lse = Tensor::empty({T}, DType::F32);
    Tensor dh = Tensor::empty({T, H}, DType::F32), demb = Tensor::zeros({V, H}, DType::F32);
    lm_head_sampler(h, emb, 0.7f, 2.0f, u, ent, am, smp, soft, opts);
    const double loss = lm_head_cross_entropy(h, emb, tg, mask, 30.0, lse, opts);
    lm_head_cross_entropy_backward(h, emb, tg, mask, 30.0, lse, 1.0f, dh, &demb, opts);
    append(out, "sampler entropy", ent);
    append(out, "sampler argmax", am);
    append(out, "sampler sampled", smp);
    append(out, "sampler soft", soft);
    append(out, "cross-entropy lse", lse);
    append(out, "cross-entropy loss", &loss, sizeof loss);
    append(out, "cross-entropy dhidden", dh);
    append(out, "cross-entropy dembedding", demb);
    return out;
  }, 16384);

  const std::int64_t B = 2, S = 70, Tc = 40, nh = 4, nkv = 2, hd = 32;
  const Tensor q = random_tensor({B, S, nh, hd}, 3), k = random_tensor({B, S, nkv, hd}, 4),
               v = random_tensor({B, S, nkv, hd}, 5), kc = random_tensor({B, Tc, nkv, hd}, 6),
               vc = random_tensor({B, Tc, nkv, hd}, 7), dout = random_tensor({B, S, nh, hd}, 8);
  AttnOpts ao;
  ao.mask = {AttnMaskKind::Causal, 0, 0};
  ao.scale = 0.125f;
  // entry 1: 3 cache keys and 40 own tokens of padding (a first query tile of 40 rows that sees cache keys)
  ao.key_valid = Tensor::empty({B, Tc + S}, DType::I32);
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t j = 0; j < Tc + S; ++j)
      ao.key_valid.data<std::int32_t>()[b * (Tc + S) + j] = b == 1 && (j < 3 || (j >= Tc && j < Tc + 40)) ? 0 : 1;
  same_at_every_thread_count([&] {
    Outputs out;
    Tensor o = Tensor::empty(q.shape(), DType::F32), lse = Tensor::empty({B, nh, S}, DType::F32);
    Tensor dq = Tensor::empty(q.shape(), DType::F32), dk = Tensor::empty(k.shape(), DType::F32),
           dv = Tensor::empty(k.shape(), DType::F32), dkc = Tensor::zeros(kc.shape(), DType::F32),
           dvc = Tensor::zeros(kc.shape(), DType::F32);
    attention(q, k, v, kc, vc, ao, o, lse);
    attention_backward(q, k, v, kc, vc, ao, o, lse, dout, dq, dk, dv, dkc, dvc);
    for (const auto& [name, t] : {std::pair{"attention out", &o}, {"attention lse", &lse}, {"attention dq", &dq},
                                  {"attention dk", &dk}, {"attention dv", &dv}, {"attention dk_cache", &dkc},
                                  {"attention dv_cache", &dvc}})
      append(out, name, *t);

    const Tensor x = random_tensor({300, 256}, 9), w = random_tensor({256}, 10), dy = random_tensor({300, 256}, 11);
    Tensor y = Tensor::empty(x.shape(), DType::F32), rstd = Tensor::empty({300}, DType::F32),
           dx = Tensor::empty(x.shape(), DType::F32), dw = Tensor::zeros({256}, DType::F32);
    rms_norm(x, &w, 1e-6f, y, rstd);
    rms_norm_backward(dy, x, &w, rstd, dx, &dw);
    for (const auto& [name, t] : {std::pair{"rms_norm y", &y}, {"rms_norm rstd", &rstd}, {"rms_norm dx", &dx},
                                  {"rms_norm dw", &dw}})
      append(out, name, *t);

    Tensor master = random_tensor({50000}, 12), m1 = random_tensor({50000}, 13), m2 = random_tensor({50000}, 14);
    for (std::int64_t i = 0; i < m2.numel(); ++i) m2.data<float>()[i] = std::abs(m2.data<float>()[i]);
    adamw_step(master, m1, m2, random_tensor({50000}, 15), AdamWStep{.lr = 1e-3, .weight_decay = 0.01, .step = 3});
    for (const auto& [name, t] :
         {std::pair{"adamw master", &master}, {"adamw exp_avg", &m1}, {"adamw exp_avg_sq", &m2}})
      append(out, name, *t);
    return out;
  }, 16384);
}
