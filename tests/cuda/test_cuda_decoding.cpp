// CUDA generation-path ops (layers/ops/decoding.h) against the CPU ops. Runs only with a GPU (else exit 77).
// Tolerance: none. The ops are integer work and byte copies, and the two running sums (the acceptance's
// fp32 prefix sum in stable entropy order, the stopping rule's fp64 mean entropy) are done by one thread
// per row in the CPU's order with one rounding per operation, so every output must equal the CPU's.
#include <doctest/doctest.h>

#include <cstring>
#include <random>
#include <vector>

#include "tests/op_test_util.h"

using namespace dg;

namespace {

Tensor random_ints(Shape shape, std::uint32_t seed, std::int32_t lo, std::int32_t hi) {
  Tensor t = Tensor::empty(std::move(shape), DType::I32);
  std::mt19937 rng(seed);
  std::uniform_int_distribution<std::int32_t> u(lo, hi);
  for (std::int64_t i = 0; i < t.numel(); ++i) t.data<std::int32_t>()[i] = u(rng);
  return t;
}

// Entropies quantised so that many are equal (the stable-order ties matter).
Tensor random_entropy(Shape shape, std::uint32_t seed, float step) {
  Tensor t = Tensor::empty(std::move(shape), DType::F32);
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> q(0, 40);
  for (std::int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = static_cast<float>(q(rng)) * step;
  return t;
}

Tensor dev(const Tensor& t) { return t.to(Device::CUDA); }

bool same_bytes(const Tensor& device, const Tensor& host) {
  const Tensor back = device.to(Device::CPU);
  return back.shape() == host.shape() && back.dtype() == host.dtype() &&
         std::memcmp(back.raw(), host.raw(), host.nbytes()) == 0;
}

}  // namespace

TEST_CASE("cuda fill_ and token_positions equal the CPU ops") {
  for (const DType dt : {DType::F32, DType::I32}) {
    Tensor h = Tensor::empty({5, 7}, dt), d = dev(h);
    fill_(h, -3);
    fill_(d, -3);
    CHECK(same_bytes(d, h));
  }
  Tensor bf = Tensor::empty({9}, DType::BF16, Device::CUDA);
  fill_(bf, 0.1);
  CHECK(same_bytes(bf, Tensor::from({9}, std::vector<float>(9, 0.1f)).to(DType::BF16)));  // one rounding to bf16
  const Tensor off = Tensor::from_i32({3}, {0, -4, -30});
  for (const std::int64_t start : {std::int64_t{0}, std::int64_t{17}}) {
    Tensor h = Tensor::empty({3, 9}, DType::I32), d = dev(h);
    token_positions(off, start, h);
    token_positions(dev(off), start, d);
    CHECK(same_bytes(d, h));
    token_positions(Tensor(), start, h);
    token_positions(Tensor(), start, d);
    CHECK(same_bytes(d, h));
  }
}

TEST_CASE("cuda concat_tokens equals the CPU op for f32, bf16 and i32 tokens") {
  std::uint32_t seed = 1;
  for (const DType dt : {DType::F32, DType::BF16, DType::I32})
    for (const std::int64_t t0 : {std::int64_t{0}, std::int64_t{3}, std::int64_t{40}})
      for (const std::int64_t t1 : {std::int64_t{1}, std::int64_t{8}})
        for (const std::int64_t tail : {std::int64_t{1}, std::int64_t{3}, std::int64_t{64}})
          for (const std::int64_t k : {std::int64_t{1}, t1, t0 + t1}) {
            CAPTURE(dtype_name(dt));
            CAPTURE(t0);
            CAPTURE(t1);
            CAPTURE(tail);
            CAPTURE(k);
            Tensor a = random_ints({2, t0, tail}, seed++, -100, 100), b = random_ints({2, t1, tail}, seed++, -100, 100);
            if (dt != DType::I32) a = a.to(DType::F32).to(dt), b = b.to(DType::F32).to(dt);
            Tensor h = Tensor::empty({2, k, tail}, dt), d = Tensor::empty({2, k, tail}, dt, Device::CUDA);
            concat_tokens(t0 ? a : Tensor(), b, h);
            concat_tokens(t0 ? dev(a) : Tensor(), dev(b), d);
            CHECK(same_bytes(d, h));
          }
}

TEST_CASE("cuda entropy_bound_accept_rows and denoise_update equal the CPU ops") {
  std::uint32_t seed = 100;
  for (const std::int64_t C : {std::int64_t{1}, std::int64_t{8}, std::int64_t{33}, std::int64_t{256}, std::int64_t{1000}})
    for (const double gamma : {0.01, 0.1, 2.0}) {
      CAPTURE(C);
      CAPTURE(gamma);
      const Tensor e = random_entropy({6, C}, seed++, 0.0037f);
      Tensor h = Tensor::empty({6, C}, DType::I32), d = Tensor::empty({6, C}, DType::I32, Device::CUDA);
      entropy_bound_accept_rows(e, gamma, h);
      entropy_bound_accept_rows(dev(e), gamma, d);
      CHECK(same_bytes(d, h));
    }
  for (const std::int64_t M : {std::int64_t{0}, std::int64_t{1}, std::int64_t{3}})
    for (const std::int64_t C : {std::int64_t{4}, std::int64_t{300}}) {
      CAPTURE(M);
      CAPTURE(C);
      const std::int64_t B = 7;
      // Few distinct argmax values so that some rows are stable; a threshold that some means pass.
      Tensor x = random_ints({B, C}, seed++, 0, 50), amax = random_ints({B, C}, seed++, 0, 50);
      Tensor hist = random_ints({B, M, C}, seed++, 0, 1), done = random_ints({B}, seed++, 0, 1);
      const Tensor acc = random_ints({B, C}, seed++, 0, 1), sampled = random_ints({B, C}, seed++, 0, 99);
      const Tensor renoise = random_ints({B, C}, seed++, 100, 199), step_amax = random_ints({B, C}, seed++, 0, 1);
      const Tensor ent = random_entropy({B, C}, seed++, 0.001f);
      Tensor dx = dev(x), damax = dev(amax), dhist = dev(hist), ddone = dev(done);
      for (int step = 0; step < 3; ++step) {  // repeated: history rotation and rows stopping in between
        denoise_update(x, amax, hist, done, acc, sampled, renoise, step_amax, ent, 0.02);
        denoise_update(dx, damax, dhist, ddone, dev(acc), dev(sampled), dev(renoise), dev(step_amax), dev(ent), 0.02);
        CHECK(same_bytes(dx, x));
        CHECK(same_bytes(damax, amax));
        CHECK(same_bytes(dhist, hist));
        CHECK(same_bytes(ddone, done));
      }
    }
}
