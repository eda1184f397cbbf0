// CUDA embedding ops (layers/ops/embedding.h) against the CPU ops. Runs only with a GPU (else exit 77).
// Inputs are rounded to bf16 first and the CPU ops run on f32 copies of the rounded values.
// Tolerances:
//  - embedding: fp32(table[id]) · scale is one fp32 product on both sides: f32 outputs are equal bit for
//    bit; bf16 outputs are that product rounded once (equal to the CPU result rounded to bf16).
//  - embedding_backward: the kernel adds scale · d_out[t] per token in token order in fp32, exactly the
//    CPU loop: an f32 d_table is equal bit for bit, a bf16 one equals the CPU's f32 result rounded once.
//  - soft_embedding(_backward): with mag the sum of the magnitudes of the terms of each output (e.g.
//    scale · Σ_v P·|E| for soft), |cuda − cpu| <= 2e-5 · mag for f32 (the fp32 GEMM accumulation over
//    <= 300 terms: 300 · 2^-24 = 1.8e-5 worst case, plus ~1e-6 from P = exp(logit − lse)); the bf16
//    path rounds P to bf16 for the GEMMs (2^-8 · mag more) and bf16 outputs add 2^-8 · |cpu|. lse is
//    fp32 on both sides: 1e-5 relative.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "tests/op_test_util.h"

using namespace dg;
using dg::test::max_abs_diff;
using dg::test::random_tensor;

namespace {

constexpr double kBf16 = 1.0 / 256;

Tensor rounded(const Tensor& t) { return t.to(DType::BF16).to(DType::F32); }
Tensor on_device(const Tensor& t, DType dtype) { return t.to(dtype).to(Device::CUDA); }
Tensor on_host(const Tensor& t) {
  Tensor h = t.to(Device::CPU);
  return h.dtype() == DType::F32 ? h : h.to(DType::F32);
}
Shape leading(const Shape& s) { return Shape(s.begin(), s.end() - 1); }
Shape with_last(Shape s, std::int64_t last) {
  s.back() = last;
  return s;
}

// max over elements of |got − ref| / (rtol·|ref| + mtol·mag): <= 1 passes.
double worst_mag(const Tensor& got, const Tensor& ref, const std::vector<double>& mag, double rtol, double mtol) {
  REQUIRE(got.numel() == ref.numel());
  REQUIRE(std::int64_t(mag.size()) == ref.numel());
  double w = 0;
  for (std::int64_t i = 0; i < ref.numel(); ++i) {
    const double r = ref.data<float>()[i], g = got.data<float>()[i];
    w = std::max(w, std::fabs(g - r) / (rtol * std::fabs(r) + mtol * mag[std::size_t(i)] + 1e-30));
  }
  return w;
}

Tensor random_ids(Shape shape, std::int32_t vocab, std::uint32_t seed) {
  Tensor ids = Tensor::empty(std::move(shape), DType::I32);
  std::mt19937 rng(seed);
  for (std::int64_t i = 0; i < ids.numel(); ++i) ids.data<std::int32_t>()[i] = std::int32_t(rng() % vocab);
  return ids;
}

struct LookupCase {
  std::int64_t vocab, hidden;
  Shape ids;
};
const LookupCase kLookupCases[] = {{11, 6, {1}},     {11, 6, {9}},     {11, 6, {2, 7}},  {300, 33, {64}},
                                   {50, 2816, {40}}, {5, 300, {3, 100}}, {7, 4, {0}}};

struct SoftCase {
  Shape logits;  // [..., V]
  std::int64_t hidden;
  std::int64_t chunk;
};
// The CPU table's cases (chunks of 1, non-divisors, exactly V, beyond V), no rows, and several aligned
// 8192-row chunks of a larger vocabulary.
const SoftCase kSoftCases[] = {
    {{1, 1}, 4, 1},      {{3, 7}, 5, 3},     {{1, 99}, 32, 8192}, {{4, 99}, 1, 99},  {{2, 5, 99}, 8, 10},
    {{25, 300}, 32, 7},  {{6, 300}, 16, 128}, {{2, 300}, 12, 1},   {{0, 50}, 8, 16}, {{3, 20000}, 64, 8192},
};

struct SoftTypes {
  DType logits, table, out;  // out: soft, d_logits and d_table
};
const SoftTypes kSoftTypes[] = {{DType::F32, DType::F32, DType::F32},
                                {DType::BF16, DType::BF16, DType::BF16},
                                {DType::BF16, DType::BF16, DType::F32},
                                {DType::F32, DType::BF16, DType::F32}};

}  // namespace

TEST_CASE("cuda embedding lookup equals the CPU op (f32 bit for bit, bf16 rounded once)") {
  std::uint32_t seed = 1;
  for (const LookupCase& c : kLookupCases)
    for (const DType dt : {DType::F32, DType::BF16}) {
      CAPTURE(c.vocab);
      CAPTURE(shape_str(c.ids));
      CAPTURE(dtype_name(dt));
      const Tensor table = rounded(random_tensor({c.vocab, c.hidden}, seed++));
      Tensor ids = random_ids(c.ids, std::int32_t(c.vocab), seed++);
      if (ids.numel() > 1) {
        ids.data<std::int32_t>()[0] = 0;
        ids.data<std::int32_t>()[ids.numel() - 1] = std::int32_t(c.vocab - 1);
      }
      const float scale = embed_scale(c.hidden, dt);
      Shape out_shape = c.ids;
      out_shape.push_back(c.hidden);
      Tensor out = Tensor::empty(out_shape, DType::F32);
      embedding(ids, table, scale, out);

      Tensor gout = Tensor::empty(out_shape, dt, Device::CUDA);
      embedding(ids.to(Device::CUDA), on_device(table, dt), scale, gout);
      CHECK(max_abs_diff(on_host(gout), dt == DType::F32 ? out : rounded(out)) == 0);
    }
}

TEST_CASE("cuda embedding backward equals the CPU scatter-add (deterministic, repeated ids)") {
  std::uint32_t seed = 50;
  for (const LookupCase& c : kLookupCases)
    for (const DType dt : {DType::F32, DType::BF16}) {
      CAPTURE(c.vocab);
      CAPTURE(shape_str(c.ids));
      CAPTURE(dtype_name(dt));
      Tensor ids = random_ids(c.ids, std::int32_t(std::min<std::int64_t>(c.vocab, 4)), seed++);  // many repeats
      if (ids.numel() > 2) ids.data<std::int32_t>()[1] = std::int32_t(c.vocab - 1);
      Shape out_shape = c.ids;
      out_shape.push_back(c.hidden);
      const Tensor d_out = rounded(random_tensor(out_shape, seed++));
      const Tensor d0 = rounded(random_tensor({c.vocab, c.hidden}, seed++));
      const float scale = embed_scale(c.hidden, dt);
      Tensor d_table = d0.clone();
      embedding_backward(ids, d_out, scale, d_table);

      // d_out in dt, d_table f32 (fp32 gradient accumulation) and in dt
      const Tensor gids = ids.to(Device::CUDA), gd_out = on_device(d_out, dt);
      Tensor g32 = d0.to(Device::CUDA), g16 = on_device(d0, dt);
      embedding_backward(gids, gd_out, scale, g32);
      embedding_backward(gids, gd_out, scale, g16);
      CHECK(max_abs_diff(on_host(g32), d_table) == 0);
      CHECK(max_abs_diff(on_host(g16), dt == DType::F32 ? d_table : rounded(d_table)) == 0);
    }
}

TEST_CASE("cuda embedding ops reject bad ids like the CPU ops, before writing anything") {
  const Tensor table = random_tensor({99, 4}, 1).to(Device::CUDA);
  Tensor out = Tensor::empty({3, 4}, DType::F32, Device::CUDA);
  CHECK_THROWS_WITH_AS(embedding(Tensor::from_i32({3}, {1, 2, 99}).to(Device::CUDA), table, 1.f, out),
                       doctest::Contains("token id 99 at position 2 is outside the vocabulary [0, 99)"), Error);
  Tensor d_table = Tensor::zeros({99, 4}, DType::F32, Device::CUDA);
  const Tensor d_out = random_tensor({3, 4}, 2).to(Device::CUDA);
  CHECK_THROWS_WITH_AS(embedding_backward(Tensor::from_i32({3}, {5, -1, 2}).to(Device::CUDA), d_out, 1.f, d_table),
                       doctest::Contains("token id -1 at position 1"), Error);
  CHECK(max_abs_diff(on_host(d_table), Tensor::zeros({99, 4}, DType::F32)) == 0.0);
  CHECK_THROWS_WITH_AS(embedding(Tensor::from_i32({3}, {1, 2, 3}), table, 1.f, out), doctest::Contains("on the CPU"),
                       Error);
}

TEST_CASE("cuda soft_embedding and its backward match the CPU ops over the chunk table") {
  std::uint32_t seed = 100;
  for (const SoftCase& c : kSoftCases)
    for (const SoftTypes& ty : kSoftTypes) {
      const std::int64_t V = c.logits.back(), H = c.hidden, rows = shape_numel(c.logits) / V;
      CAPTURE(shape_str(c.logits));
      CAPTURE(H);
      CAPTURE(c.chunk);
      CAPTURE(dtype_name(ty.logits));
      CAPTURE(dtype_name(ty.table));
      CAPTURE(dtype_name(ty.out));
      const Tensor logits = rounded(random_tensor(c.logits, seed++, 8.0f));
      const Tensor table = rounded(random_tensor({V, H}, seed++));
      const float scale = embed_scale(H, ty.table);
      const Shape soft_shape = with_last(c.logits, H);

      // forward
      Tensor soft = Tensor::empty(soft_shape, DType::F32), lse = Tensor::empty(leading(c.logits), DType::F32);
      soft_embedding(logits, table, scale, soft, lse, c.chunk);
      const Tensor glogits = on_device(logits, ty.logits), gtable = on_device(table, ty.table);
      Tensor gsoft = Tensor::empty(soft_shape, ty.out, Device::CUDA);
      Tensor glse = Tensor::empty(leading(c.logits), DType::F32, Device::CUDA);
      soft_embedding(glogits, gtable, scale, gsoft, glse, c.chunk);

      // P in double from the CPU's lse, for the magnitudes of the terms
      std::vector<double> p(std::size_t(rows * V));
      for (std::int64_t r = 0; r < rows; ++r)
        for (std::int64_t v = 0; v < V; ++v)
          p[std::size_t(r * V + v)] = std::exp(double(logits.data<float>()[r * V + v]) - lse.data<float>()[r]);
      std::vector<double> mag_soft(std::size_t(rows * H), 0.0);
      for (std::int64_t r = 0; r < rows; ++r)
        for (std::int64_t h = 0; h < H; ++h)
          for (std::int64_t v = 0; v < V; ++v)
            mag_soft[std::size_t(r * H + h)] +=
                scale * p[std::size_t(r * V + v)] * std::fabs(double(table.data<float>()[v * H + h]));
      const bool bf16_gemm = ty.table == DType::BF16;
      const double mtol = 2e-5 + (bf16_gemm ? kBf16 : 0), rtol = ty.out == DType::BF16 ? kBf16 : 0;
      const Tensor hlse = on_host(glse);
      double lse_worst = 0;
      for (std::int64_t r = 0; r < rows; ++r)
        lse_worst = std::max(lse_worst, std::fabs(double(hlse.data<float>()[r]) - lse.data<float>()[r]) /
                                            (1e-5 * std::max(1.0, std::fabs(double(lse.data<float>()[r])))));
      CHECK(lse_worst <= 1);
      CHECK(worst_mag(on_host(gsoft), soft, mag_soft, rtol, mtol) <= 1);

      // backward, from the CPU forward's lse and soft (soft as the device stores it)
      const Tensor soft_in = ty.out == DType::BF16 ? rounded(soft) : soft;
      const Tensor d_soft = rounded(random_tensor(soft_shape, seed++));
      const Tensor d0 = rounded(random_tensor({V, H}, seed++));
      Tensor d_logits = Tensor::empty(c.logits, DType::F32), d_table = d0.clone();
      soft_embedding_backward(d_soft, logits, table, scale, soft_in, lse, &d_logits, d_table, c.chunk);

      const Tensor gd_soft = on_device(d_soft, ty.out), gsoft_in = on_device(soft_in, ty.out), glse_cpu = lse.to(Device::CUDA);
      Tensor gd_logits = Tensor::empty(c.logits, ty.out, Device::CUDA), gd_table = on_device(d0, ty.out);
      soft_embedding_backward(gd_soft, glogits, gtable, scale, gsoft_in, glse_cpu, &gd_logits, gd_table, c.chunk);

      std::vector<double> mag_table(std::size_t(V * H)), mag_logits(std::size_t(rows * V), 0.0), rho_mag(std::size_t(rows), 0.0);
      for (std::int64_t v = 0; v < V; ++v)
        for (std::int64_t h = 0; h < H; ++h) {
          double m = std::fabs(double(d0.data<float>()[v * H + h]));
          for (std::int64_t r = 0; r < rows; ++r)
            m += scale * p[std::size_t(r * V + v)] * std::fabs(double(d_soft.data<float>()[r * H + h]));
          mag_table[std::size_t(v * H + h)] = m;
        }
      for (std::int64_t r = 0; r < rows; ++r)
        for (std::int64_t h = 0; h < H; ++h)
          rho_mag[std::size_t(r)] += std::fabs(double(d_soft.data<float>()[r * H + h]) * soft_in.data<float>()[r * H + h]);
      for (std::int64_t r = 0; r < rows; ++r)
        for (std::int64_t v = 0; v < V; ++v) {
          double dp = 0;
          for (std::int64_t h = 0; h < H; ++h)
            dp += scale * std::fabs(double(d_soft.data<float>()[r * H + h]) * table.data<float>()[v * H + h]);
          mag_logits[std::size_t(r * V + v)] = p[std::size_t(r * V + v)] * (dp + rho_mag[std::size_t(r)]);
        }
      CHECK(worst_mag(on_host(gd_table), d_table, mag_table, rtol, mtol) <= 1);
      // d_logits uses fp32 P and fp32 GEMM accumulation of the (exact) bf16 operands: no P rounding
      CHECK(worst_mag(on_host(gd_logits), d_logits, mag_logits, rtol, 2e-5) <= 1);

      // Without d_logits (the detached training case) d_table is the same, bit for bit.
      Tensor gd_table2 = on_device(d0, ty.out);
      soft_embedding_backward(gd_soft, glogits, gtable, scale, gsoft_in, glse_cpu, nullptr, gd_table2, c.chunk);
      CHECK(max_abs_diff(on_host(gd_table2), on_host(gd_table)) == 0);
    }
}

TEST_CASE("cuda soft_embedding: misaligned views and a different d_soft dtype go through copies") {
  // A table view starting at row 1 of a bf16 [V + 1, H] buffer with odd H is not 256-byte aligned.
  const std::int64_t V = 37, H = 9, rows = 4;
  const Tensor logits = rounded(random_tensor({rows, V}, 1, 5.0f));
  const Tensor big = rounded(random_tensor({V + 1, H}, 2));
  Tensor table = Tensor::empty({V, H}, DType::F32);
  std::copy(big.data<float>() + H, big.data<float>() + (V + 1) * H, table.data<float>());
  const float scale = 3.0f;
  Tensor soft = Tensor::empty({rows, H}, DType::F32), lse = Tensor::empty({rows}, DType::F32);
  soft_embedding(logits, table, scale, soft, lse, 5);
  const Tensor d_soft = rounded(random_tensor({rows, H}, 3));
  Tensor d_table = Tensor::zeros({V, H}, DType::F32);
  soft_embedding_backward(d_soft, logits, table, scale, soft, lse, nullptr, d_table, 5);

  const Tensor gbig = on_device(big, DType::BF16), gtable = gbig.rows(1, V + 1);
  Tensor gsoft = Tensor::empty({rows, H}, DType::F32, Device::CUDA), glse = Tensor::empty({rows}, DType::F32, Device::CUDA);
  soft_embedding(logits.to(Device::CUDA), gtable, scale, gsoft, glse, 5);
  // P is rounded to bf16 for the GEMMs: <= 2^-8 · scale · Σ P·|E| per element, a few 2^-8 of max |soft|;
  // reading the wrong rows or an unaligned operand would be off by O(1).
  CHECK(dg::test::max_rel_diff(on_host(gsoft), soft) <= 4 * kBf16);
  // f32 d_soft against a bf16 table (converted), into a misaligned f32 d_table view
  Tensor gdbig = Tensor::zeros({V + 1, H}, DType::F32, Device::CUDA);
  Tensor gd_table = gdbig.rows(1, V + 1);
  soft_embedding_backward(d_soft.to(Device::CUDA), logits.to(Device::CUDA), gtable, scale, soft.to(Device::CUDA),
                          lse.to(Device::CUDA), nullptr, gd_table, 5);
  CHECK(dg::test::max_rel_diff(on_host(gd_table), d_table) <= 4 * kBf16);
  CHECK(dg::test::max_abs_diff(on_host(gdbig.rows(0, 1)), Tensor::zeros({1, H}, DType::F32)) == 0);  // row 0 untouched
}
