// CUDA GEMM (cuBLASLt) and device conversions against the CPU. Runs only with a GPU (else exit 77).
// Inputs are rounded to bf16 first and the CPU reference uses the same rounded values, so the only
// differences are fp32 summation order (~1e-6 relative for K <= 256) and, for bf16 outputs, the final
// rounding (at most 2^-9 relative per element): tolerances 1e-4 (f32 out) and 2^-8 (bf16 out) of max |C|.
#include <doctest/doctest.h>

#include <cstring>

#include "tests/gemm_reference.h"

using namespace dg;
using namespace dg::test;

namespace {
Tensor bf16_rounded(Tensor t) { return t.to(DType::BF16).to(DType::F32); }
double max_abs(const Tensor& t) {
  double m = 0;
  for (std::int64_t i = 0; i < t.numel(); ++i) m = std::max(m, std::fabs(double(t.data<float>()[i])));
  return m;
}
}  // namespace

TEST_CASE("cuda gemm: bf16 inputs, f32 and bf16 outputs, transposes, batches, beta") {
  struct Case {
    std::int64_t batch, m, n, k;
    bool ta, tb, shared_b;
    float alpha, beta;
  };
  const Case cases[] = {{1, 64, 48, 32, false, false, false, 1, 0},  {1, 17, 33, 255, true, false, false, 1, 0},
                        {1, 128, 96, 64, false, true, false, 0.5, 1}, {1, 5, 7, 9, true, true, false, 1, 0},
                        {3, 16, 24, 40, false, true, false, 1, 1},    {4, 8, 8, 16, false, false, true, 2, 0}};
  for (const Case& cs : cases) {
    CAPTURE(cs.m);
    CAPTURE(cs.n);
    CAPTURE(cs.k);
    CAPTURE(cs.batch);
    CAPTURE(cs.ta);
    CAPTURE(cs.tb);
    Shape sa = cs.ta ? Shape{cs.k, cs.m} : Shape{cs.m, cs.k};
    Shape sb = cs.tb ? Shape{cs.n, cs.k} : Shape{cs.k, cs.n};
    if (cs.batch > 1) sa.insert(sa.begin(), cs.batch);
    if (cs.batch > 1 && !cs.shared_b) sb.insert(sb.begin(), cs.batch);
    Shape sc = cs.batch > 1 ? Shape{cs.batch, cs.m, cs.n} : Shape{cs.m, cs.n};
    Tensor a = bf16_rounded(random_tensor(sa, 1)), b = bf16_rounded(random_tensor(sb, 2));
    Tensor c0 = random_tensor(sc, 3);
    const GemmOpts o{.trans_a = cs.ta, .trans_b = cs.tb, .alpha = cs.alpha, .beta = cs.beta};
    Tensor ref = c0.clone();
    gemm_reference(a, b, ref, o);

    Tensor da = a.to(Device::CUDA).to(DType::BF16), db = b.to(Device::CUDA).to(DType::BF16);
    Tensor dc = c0.to(Device::CUDA);
    gemm(da, db, dc, o);
    CHECK(max_abs_diff(dc.to(Device::CPU), ref) <= 1e-4 * max_abs(ref));

    if (cs.beta == 0) {
      Tensor dc16 = Tensor::empty(sc, DType::BF16, Device::CUDA);
      gemm(da, db, dc16, o);
      CHECK(max_abs_diff(dc16.to(Device::CPU).to(DType::F32), ref) <= 0.00390625 * max_abs(ref));
    }
  }
}

// Batch-invariant mode (set_batch_invariant): every cuBLASLt call has the same [64, N, K] shape and
// aligned operands, so a row's bits do not depend on how many rows share the call or where it sits.
TEST_CASE("cuda gemm, batch-invariant mode: a row's bits do not depend on its batch mates") {
  const std::int64_t m = 150, n = 96, k = 320;
  for (DType dt : {DType::BF16, DType::F32}) {
    CAPTURE(dtype_name(dt));
    const Tensor a = bf16_rounded(random_tensor({m, k}, 21)).to(Device::CUDA).to(dt);
    const Tensor b = bf16_rounded(random_tensor({n, k}, 22)).to(Device::CUDA).to(dt);
    set_batch_invariant(true);
    Tensor full = Tensor::empty({m, n}, DType::F32, Device::CUDA);
    gemm(a, b, full, {.trans_b = true});
    const Tensor host = full.to(Device::CPU);
    for (auto [first, rows] : {std::pair<std::int64_t, std::int64_t>{0, 1}, {77, 1}, {3, 7}, {60, 9}, {1, 130}}) {
      CAPTURE(first);
      CAPTURE(rows);
      Tensor part = Tensor::empty({rows, n}, DType::F32, Device::CUDA);
      gemm(a.rows(first, first + rows), b, part, {.trans_b = true});
      const Tensor got = part.to(Device::CPU);
      CHECK(std::memcmp(got.raw(), host.data<float>() + first * n, static_cast<std::size_t>(rows * n) * 4) == 0);
    }
    set_batch_invariant(false);
    Tensor plain = Tensor::empty({m, n}, DType::F32, Device::CUDA);
    gemm(a, b, plain, {.trans_b = true});
    CHECK(max_abs_diff(plain.to(Device::CPU), host) <= 1e-4 * max_abs(host));
  }
}

TEST_CASE("cuda convert rounds like the host conversion") {
  Tensor x = random_tensor({4096}, 5, 100.f);
  Tensor host = x.to(DType::BF16), dev = x.to(Device::CUDA).to(DType::BF16).to(Device::CPU);
  int diff = 0;
  for (int i = 0; i < 4096; ++i) diff += host.data<std::uint16_t>()[i] != dev.data<std::uint16_t>()[i];
  CHECK(diff == 0);
  Tensor h16 = x.to(DType::F16), d16 = x.to(Device::CUDA).to(DType::F16).to(Device::CPU);
  diff = 0;
  for (int i = 0; i < 4096; ++i) diff += h16.data<std::uint16_t>()[i] != d16.data<std::uint16_t>()[i];
  CHECK(diff == 0);
}
