// CPU GEMM (OpenBLAS) against a plain loop: transposes, strided batches, shared B, alpha/beta, errors.
// Tolerance: fp32 with K <= 96 and |x| <= 1 gives sums of magnitude <= ~10; OpenBLAS's blocked fp32
// summation differs from the double reference by a few ulps of that, so 1e-4 absolute is ample
// while any indexing or transpose mistake produces O(1) errors.
#include <doctest/doctest.h>

#include <cstring>
#include <limits>

#include "layers/gemm_weights.h"
#include "tests/gemm_reference.h"

using namespace dg;
using dg::test::gemm_reference;
using dg::test::max_abs_diff;
using dg::test::random_tensor;

TEST_CASE("cpu gemm matches the loop reference for every transpose combination") {
  const std::int64_t m = 17, n = 23, k = 31;
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      CAPTURE(ta);
      CAPTURE(tb);
      Tensor a = random_tensor(ta ? Shape{k, m} : Shape{m, k}, 1);
      Tensor b = random_tensor(tb ? Shape{n, k} : Shape{k, n}, 2);
      Tensor c = Tensor::empty({m, n}, DType::F32), ref = Tensor::empty({m, n}, DType::F32);
      gemm(a, b, c, {.trans_a = ta, .trans_b = tb});
      gemm_reference(a, b, ref, {.trans_a = ta, .trans_b = tb});
      CHECK(max_abs_diff(c, ref) < 1e-4);
    }
}

TEST_CASE("cpu gemm: strided batches, a shared B, alpha and beta accumulation") {
  const std::int64_t batch = 3, m = 5, n = 7, k = 96;
  Tensor a = random_tensor({batch, m, k}, 3);
  Tensor b3 = random_tensor({batch, n, k}, 4);
  Tensor b2 = random_tensor({k, n}, 5);
  Tensor c0 = random_tensor({batch, m, n}, 6);

  Tensor c = c0.clone(), ref = c0.clone();
  const GemmOpts acc{.trans_b = true, .alpha = 0.5f, .beta = 1.0f};
  gemm(a, b3, c, acc);
  gemm_reference(a, b3, ref, acc);
  CHECK(max_abs_diff(c, ref) < 1e-4);
  CHECK(max_abs_diff(c, c0) > 0.1);  // accumulation really changed C

  Tensor cs = Tensor::empty({batch, m, n}, DType::F32), refs = Tensor::empty({batch, m, n}, DType::F32);
  gemm(a, b2, cs, {});
  gemm_reference(a, b2, refs, {});
  CHECK(max_abs_diff(cs, refs) < 1e-4);
  // batch entry 1 uses the same B as entry 0: check against a 2-D call on that slice alone
  Tensor one = Tensor::empty({m, n}, DType::F32);
  gemm(a.rows(1, 2).reshape({m, k}), b2, one, {});
  CHECK(max_abs_diff(one, cs.rows(1, 2).reshape({m, n})) == 0.0);
}

TEST_CASE("cpu gemm: beta = 0 ignores NaN in C, K = 0 gives beta * C") {
  Tensor a = random_tensor({4, 8}, 7), b = random_tensor({8, 4}, 8);
  Tensor c = Tensor::from({4, 4}, std::vector<float>(16, std::numeric_limits<float>::quiet_NaN()));
  gemm(a, b, c, {});
  for (int i = 0; i < 16; ++i) CHECK(std::isfinite(c.data<float>()[i]));

  Tensor a0 = Tensor::empty({4, 0}, DType::F32), b0 = Tensor::empty({0, 4}, DType::F32);
  Tensor c2 = Tensor::from({4, 4}, std::vector<float>(16, 2.0f));
  gemm(a0, b0, c2, {.beta = 0.5f});
  for (int i = 0; i < 16; ++i) CHECK(c2.data<float>()[i] == 1.0f);
}

TEST_CASE("gemm rejects mismatched shapes and dtypes with a message") {
  Tensor a = random_tensor({4, 8}, 9), b = random_tensor({7, 4}, 10);
  Tensor c = Tensor::empty({4, 4}, DType::F32);
  CHECK_THROWS_WITH_AS(gemm(a, b, c, {}), doctest::Contains("inner dimensions differ"), Error);
  Tensor b_ok = random_tensor({8, 4}, 11);
  Tensor c_bad = Tensor::empty({4, 5}, DType::F32);
  CHECK_THROWS_WITH_AS(gemm(a, b_ok, c_bad, {}), doctest::Contains("should be [4, 4]"), Error);
  Tensor a16 = a.to(DType::BF16);
  CHECK_THROWS_WITH_AS(gemm(a16, b_ok, c, {}), doctest::Contains("f32 only"), Error);
}

// Batch invariance (set_batch_invariant): a row's result must not depend on how many rows share the
// call or where the row sits in it. Compared bit for bit: the promise is identical generations.
TEST_CASE("cpu gemm, batch-invariant mode: a row's bits do not depend on its batch mates") {
  const std::int64_t m = 37, n = 29, k = 203;
  const Tensor a = random_tensor({m, k}, 11), b = random_tensor({k, n}, 12), bt = random_tensor({n, k}, 13);
  set_batch_invariant(true);
  for (bool tb : {false, true}) {
    CAPTURE(tb);
    const Tensor& w = tb ? bt : b;
    Tensor full = Tensor::empty({m, n}, DType::F32);
    gemm(a, w, full, {.trans_b = tb});
    for (auto [first, rows] : {std::pair<std::int64_t, std::int64_t>{0, 1}, {5, 1}, {3, 7}, {30, 7}, {1, 32}}) {
      CAPTURE(first);
      CAPTURE(rows);
      Tensor part = Tensor::empty({rows, n}, DType::F32);
      gemm(a.rows(first, first + rows), w, part, {.trans_b = tb});
      CHECK(std::memcmp(part.raw(), full.data<float>() + first * n, static_cast<std::size_t>(rows * n) * 4) == 0);
    }
    Tensor ref = Tensor::empty({m, n}, DType::F32);
    gemm_reference(a, w, ref, {.trans_b = tb});
    CHECK(max_abs_diff(full, ref) < 1e-4);
  }
  set_batch_invariant(false);
}

// Constant weights (layers/gemm_weights.h): in batch-invariant mode a registered B of >= 65536 elements runs
// on its packed copy (oneDNN builds). Same promises as above (row bits independent of the batch mates and
// of the thread count; the reference within tolerance), and nothing stale once the scope is gone.
TEST_CASE("cpu gemm, batch-invariant mode on constant (packed) weights") {
  const std::int64_t m = 37, n = 256, k = 300;
  static_assert(n * k >= kMinPackedWeightElements);
  const double kTol = 5e-4;  // K = 300 (see the top of the file)
  const Tensor a = random_tensor({m, k}, 21);
  Tensor fused = random_tensor({2 * n, k}, 22);  // [2n, k]: two row views, like a fused gate_up weight
  Tensor bnn = random_tensor({k, n}, 23);
  const int threads = cpu_threads();
  set_batch_invariant(true);
  for (bool tb : {false, true}) {
    CAPTURE(tb);
    // tb: B = the whole fused weight, registered as its two halves; otherwise a plain [k, n] weight
    Tensor w = tb ? fused : bnn;
    const std::int64_t wn = tb ? 2 * n : n;
    Tensor full = Tensor::empty({m, wn}, DType::F32), ref = Tensor::empty({m, wn}, DType::F32);
    gemm_reference(a, w, ref, {.trans_b = tb});
    {
      const ConstantWeights constant(tb ? std::vector<Tensor>{fused.rows(0, n), fused.rows(n, 2 * n)}
                                        : std::vector<Tensor>{bnn});
      gemm(a, w, full, {.trans_b = tb});
      CHECK(max_abs_diff(full, ref) < kTol);
      for (auto [first, rows] : {std::pair<std::int64_t, std::int64_t>{0, 1}, {5, 1}, {3, 7}, {30, 7}, {1, 32}}) {
        CAPTURE(first);
        CAPTURE(rows);
        Tensor part = Tensor::empty({rows, wn}, DType::F32);
        gemm(a.rows(first, first + rows), w, part, {.trans_b = tb});
        CHECK(std::memcmp(part.raw(), full.data<float>() + first * wn, static_cast<std::size_t>(rows * wn) * 4) == 0);
      }
      for (int t : {2, 3}) {  // the tiles spread over the threads: the same bits
        CAPTURE(t);
        set_cpu_threads(t);
        Tensor other = Tensor::empty({m, wn}, DType::F32);
        gemm(a, w, other, {.trans_b = tb});
        set_cpu_threads(threads);
        CHECK(std::memcmp(other.raw(), full.raw(), full.nbytes()) == 0);
      }
      // accumulation (beta = 1) and alpha on the same weight
      Tensor acc = full.clone(), acc_ref = full.clone();
      gemm(a, w, acc, {.trans_b = tb, .alpha = 0.5f, .beta = 1.0f});
      gemm_reference(a, w, acc_ref, {.trans_b = tb, .alpha = 0.5f, .beta = 1.0f});
      CHECK(max_abs_diff(acc, acc_ref) < kTol);
    }
    // The scope is gone: the weight may change, and a new scope on the same memory packs the new values.
    w.data<float>()[0] += 1.0f;
    w.data<float>()[w.numel() - 1] -= 1.0f;
    gemm_reference(a, w, ref, {.trans_b = tb});
    gemm(a, w, full, {.trans_b = tb});
    CHECK(max_abs_diff(full, ref) < kTol);
    const ConstantWeights again({w});
    gemm(a, w, full, {.trans_b = tb});
    CHECK(max_abs_diff(full, ref) < kTol);
  }
  set_batch_invariant(false);
}
