// CUDA MoE ops (layers/ops/moe.h) against the CPU ops. Runs only with a GPU (else exit 77).
// Every input is rounded to bf16 first; the CPU op runs on f32 copies of the rounded values and the CUDA
// op on device tensors in bf16 or f32 (the same numbers), so the only differences are fp32 summation
// order and, for bf16 outputs, the final rounding. Tolerances:
//  - router: probs and routing weights 1e-5 absolute (values <= 1.5; logits are fp32 sums of H <= 64
//    products in another order, ~1e-6), rstd 1e-5 relative, expert ids exact except where the CPU's
//    k-th and (k+1)-th probabilities are within 1e-4 (counted; a near tie may legitimately flip).
//  - router backward: dr and the parameter gradients 1e-4 of their max (chains of a few fp32 sums);
//    bf16 dr 2^-8 of max (one rounding, 2^-9, plus the fp32 part).
//  - permutation plan and gather: exact (integer bookkeeping and copies).
//  - gather_backward / combine: the CPU's order and roundings (fp32 adds, a rounded product then a
//    rounded add): 1e-6 of max in f32 (expected exact), 2^-8 of max for bf16 outputs.
//  - combine_backward: dy 1e-6 of max (one product), d_routing_weights 1e-5 of max(max, 1) (dot over H).
//  - grouped GEMM: bf16 x bf16 products are exact in fp32, accumulation order differs: 1e-4 of max |ref|
//    for f32 outputs (as tests/test_cuda.cpp), 2^-8 of max for bf16 outputs; experts with zero rows
//    leave dw bit for bit unchanged; two runs are bit-identical (no atomics).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "tests/op_test_util.h"

using namespace dg;
using dg::test::max_abs_diff;
using dg::test::random_tensor;

namespace {

constexpr double kBf16Tol = 0.00390625;  // 2^-8

Tensor rounded(const Tensor& t) { return t.to(DType::BF16).to(DType::F32); }
// A CPU f32 tensor on the device as `dtype`.
Tensor dev(const Tensor& t, DType dtype) { return (dtype == DType::F32 ? t : t.to(dtype)).to(Device::CUDA); }
Tensor dev_i32(const Tensor& t) { return t.to(Device::CUDA); }
Tensor host_f32(const Tensor& d) {
  Tensor h = d.to(Device::CPU);
  return h.dtype() == DType::F32 ? h : h.to(DType::F32);
}
double max_abs(const Tensor& t) {
  double m = 0;
  for (std::int64_t i = 0; i < t.numel(); ++i) m = std::max(m, std::fabs(double(t.data<float>()[i])));
  return m;
}
// max |got - ref| / max(max |ref|, floor)
double rel(const Tensor& got, const Tensor& ref, double floor = 1e-6) {
  return max_abs_diff(got, ref) / std::max(max_abs(ref), floor);
}
bool same_i32(const Tensor& a, const Tensor& b) {
  if (a.numel() != b.numel()) return false;
  for (std::int64_t i = 0; i < a.numel(); ++i)
    if (a.data<std::int32_t>()[i] != b.data<std::int32_t>()[i]) return false;
  return true;
}
bool bitwise_equal(const Tensor& a, const Tensor& b) {
  const Tensor ha = a.to(Device::CPU), hb = b.to(Device::CPU);
  return ha.nbytes() == hb.nbytes() && std::memcmp(ha.raw(), hb.raw(), ha.nbytes()) == 0;
}
double out_tol(DType out) { return out == DType::F32 ? 1e-6 : kBf16Tol; }

Tensor positive(Shape shape, std::uint32_t seed, float lo, float hi) {
  Tensor t = random_tensor(std::move(shape), seed);
  for (std::int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = lo + (hi - lo) * 0.5f * (t.data<float>()[i] + 1);
  return t;
}

// A CPU permutation plan of random expert ids (ids drawn from `used` so other experts get zero rows).
struct Plan {
  Tensor ids, counts, row_token, slot_row;
  std::int64_t n = 0;
};
Plan cpu_plan(std::int64_t t_count, std::int64_t k, std::int64_t e, const std::vector<int>& used, std::uint32_t seed,
              const Tensor& mask = Tensor()) {
  std::mt19937 rng(seed);
  std::vector<std::int32_t> ids(static_cast<std::size_t>(t_count * k));
  for (auto& id : ids) id = used[rng() % used.size()];
  Plan p{Tensor::from_i32({t_count, k}, ids), Tensor::empty({e}, DType::I32), Tensor::empty({t_count * k}, DType::I32),
         Tensor::empty({t_count, k}, DType::I32)};
  p.n = moe_permute_plan(p.ids, e, p.counts, p.row_token, p.slot_row, mask);
  return p;
}

}  // namespace

// ---- router ------------------------------------------------------------------------------------------------

TEST_CASE("cuda moe_router matches the CPU router (bf16 and f32, ties to the lower id)") {
  struct Case {
    std::int64_t t, h, e, k;
  };
  int near_ties = 0, compared = 0;
  for (const Case c : {Case{1, 8, 4, 1}, Case{5, 33, 8, 2}, Case{37, 64, 16, 4}, Case{19, 17, 6, 6}, Case{70, 40, 32, 8}}) {
    for (const DType rt : {DType::F32, DType::BF16})
      for (const DType wt : {DType::F32, DType::BF16}) {
        CAPTURE(c.t); CAPTURE(c.h); CAPTURE(c.e); CAPTURE(c.k); CAPTURE(dtype_name(rt)); CAPTURE(dtype_name(wt));
        const Tensor r = rounded(random_tensor({c.t, c.h}, 1, 2.0f)), scale = rounded(positive({c.h}, 2, 0.5f, 1.5f));
        const Tensor proj = rounded(random_tensor({c.e, c.h}, 3, 3.0f)), pes = rounded(positive({c.e}, 4, 0.5f, 1.5f));
        Tensor ids = Tensor::empty({c.t, c.k}, DType::I32), w = Tensor::empty({c.t, c.k}, DType::F32);
        Tensor probs = Tensor::empty({c.t, c.e}, DType::F32), rstd = Tensor::empty({c.t}, DType::F32);
        moe_router(r, scale, proj, pes, ids, w, probs, rstd);

        Tensor d_ids = Tensor::empty({c.t, c.k}, DType::I32, Device::CUDA);
        Tensor d_w = Tensor::empty({c.t, c.k}, DType::F32, Device::CUDA);
        Tensor d_probs = Tensor::empty({c.t, c.e}, DType::F32, Device::CUDA);
        Tensor d_rstd = Tensor::empty({c.t}, DType::F32, Device::CUDA);
        moe_router(dev(r, rt), dev(scale, wt), dev(proj, wt), dev(pes, wt), d_ids, d_w, d_probs, d_rstd);
        const Tensor g_ids = d_ids.to(Device::CPU), g_w = host_f32(d_w);
        CHECK(max_abs_diff(host_f32(d_probs), probs) < 1e-5);
        CHECK(rel(host_f32(d_rstd), rstd) < 1e-5);
        for (std::int64_t t = 0; t < c.t; ++t) {
          std::vector<float> row(probs.data<float>() + t * c.e, probs.data<float>() + (t + 1) * c.e);
          std::sort(row.rbegin(), row.rend());
          if (c.k < c.e && row[c.k - 1] - row[c.k] < 1e-4f) {
            ++near_ties;
            continue;
          }
          ++compared;
          for (std::int64_t j = 0; j < c.k; ++j) {
            CHECK(g_ids.data<std::int32_t>()[t * c.k + j] == ids.data<std::int32_t>()[t * c.k + j]);
            CHECK(std::fabs(g_w.data<float>()[t * c.k + j] - w.data<float>()[t * c.k + j]) < 1e-5);
          }
        }
      }
  }
  CHECK(compared > 10 * near_ties);

  // exact ties: a zero projection gives uniform probabilities, so the ids must be 0, 1, ..., k-1
  const std::int64_t t = 3, h = 8, e = 6, k = 3;
  Tensor d_ids = Tensor::empty({t, k}, DType::I32, Device::CUDA), d_w = Tensor::empty({t, k}, DType::F32, Device::CUDA);
  Tensor d_probs = Tensor::empty({t, e}, DType::F32, Device::CUDA), d_rstd = Tensor::empty({t}, DType::F32, Device::CUDA);
  moe_router(dev(random_tensor({t, h}, 5), DType::BF16), dev(positive({h}, 6, 0.5f, 1.5f), DType::BF16),
             dev(Tensor::zeros({e, h}, DType::F32), DType::BF16), dev(positive({e}, 7, 0.5f, 1.5f), DType::BF16), d_ids,
             d_w, d_probs, d_rstd);
  const Tensor g_ids = d_ids.to(Device::CPU);
  for (std::int64_t i = 0; i < t; ++i)
    for (std::int64_t j = 0; j < k; ++j) CHECK(g_ids.data<std::int32_t>()[i * k + j] == j);
}

TEST_CASE("cuda moe_router reports a non-finite logit naming the token") {
  Tensor r = random_tensor({4, 8}, 8);
  r.data<float>()[2 * 8 + 3] = std::numeric_limits<float>::infinity();
  Tensor d_ids = Tensor::empty({4, 2}, DType::I32, Device::CUDA), d_w = Tensor::empty({4, 2}, DType::F32, Device::CUDA);
  Tensor d_probs = Tensor::empty({4, 5}, DType::F32, Device::CUDA), d_rstd = Tensor::empty({4}, DType::F32, Device::CUDA);
  CHECK_THROWS_WITH_AS(moe_router(dev(r, DType::F32), dev(positive({8}, 9, 0.5f, 1.5f), DType::F32),
                                  dev(random_tensor({5, 8}, 10), DType::F32), dev(positive({5}, 11, 0.5f, 1.5f), DType::F32),
                                  d_ids, d_w, d_probs, d_rstd),
                       doctest::Contains("router logit of token 2"), Error);
}

TEST_CASE("cuda moe_router_backward matches the CPU (dr and the optional parameter gradients)") {
  struct Case {
    std::int64_t t, h, e, k;
  };
  for (const Case c : {Case{1, 8, 4, 1}, Case{9, 33, 8, 2}, Case{40, 64, 16, 4}, Case{11, 24, 5, 5}}) {
    for (const DType dt : {DType::F32, DType::BF16}) {
      CAPTURE(c.t); CAPTURE(c.h); CAPTURE(c.e); CAPTURE(c.k); CAPTURE(dtype_name(dt));
      const Tensor r = rounded(random_tensor({c.t, c.h}, 20, 2.0f)), scale = rounded(positive({c.h}, 21, 0.5f, 1.5f));
      const Tensor proj = rounded(random_tensor({c.e, c.h}, 22, 3.0f)), pes = rounded(positive({c.e}, 23, 0.5f, 1.5f));
      Tensor ids = Tensor::empty({c.t, c.k}, DType::I32), w = Tensor::empty({c.t, c.k}, DType::F32);
      Tensor probs = Tensor::empty({c.t, c.e}, DType::F32), rstd = Tensor::empty({c.t}, DType::F32);
      moe_router(r, scale, proj, pes, ids, w, probs, rstd);
      const Tensor dw = random_tensor({c.t, c.k}, 24);
      const Tensor gs0 = random_tensor({c.h}, 25), gp0 = random_tensor({c.e, c.h}, 26), ge0 = random_tensor({c.e}, 27);
      Tensor dr = Tensor::empty({c.t, c.h}, DType::F32);
      Tensor gs = gs0.clone(), gp = gp0.clone(), ge = ge0.clone();
      moe_router_backward(r, scale, proj, pes, ids, probs, rstd, dw, dr, {&gs, &gp, &ge});

      // the device gets the CPU forward's ids / probs / rstd: the backward is compared on its own
      Tensor d_dr = Tensor::empty({c.t, c.h}, dt, Device::CUDA);
      Tensor d_gs = gs0.to(Device::CUDA), d_gp = gp0.to(Device::CUDA), d_ge = ge0.to(Device::CUDA);
      moe_router_backward(dev(r, dt), dev(scale, dt), dev(proj, dt), dev(pes, dt), dev_i32(ids), dev(probs, DType::F32),
                          dev(rstd, DType::F32), dev(dw, DType::F32), d_dr, {&d_gs, &d_gp, &d_ge});
      CHECK(rel(host_f32(d_dr), dr) < (dt == DType::F32 ? 1e-4 : kBf16Tol));
      CHECK(rel(host_f32(d_gs), gs) < 1e-4);
      CHECK(rel(host_f32(d_gp), gp) < 1e-4);
      CHECK(rel(host_f32(d_ge), ge) < 1e-4);

      // frozen router (no parameter gradients): the same dr
      Tensor d_dr2 = Tensor::empty({c.t, c.h}, dt, Device::CUDA);
      moe_router_backward(dev(r, dt), dev(scale, dt), dev(proj, dt), dev(pes, dt), dev_i32(ids), dev(probs, DType::F32),
                          dev(rstd, DType::F32), dev(dw, DType::F32), d_dr2);
      CHECK(bitwise_equal(d_dr2, d_dr));
    }
  }
}

// ---- permutation plan ------------------------------------------------------------------------------------

TEST_CASE("cuda moe_permute_plan equals the CPU's stable counting sort (masks, zero-row experts, T = 0)") {
  struct Case {
    std::int64_t t, k, e;
    std::vector<int> used;
  };
  const std::vector<Case> cases = {{0, 2, 4, {0, 1}},          {1, 1, 1, {0}},          {7, 2, 5, {1, 3, 4}},
                                   {300, 4, 64, {0, 5, 9, 63}}, {129, 8, 16, {2, 3, 7}}, {1000, 1, 3, {0, 1, 2}}};
  for (const Case& c : cases)
    for (int mask_kind = 0; mask_kind < 3; ++mask_kind) {
      CAPTURE(c.t); CAPTURE(c.k); CAPTURE(c.e); CAPTURE(mask_kind);
      Tensor mask;
      if (mask_kind > 0) {
        std::vector<float> m(static_cast<std::size_t>(c.t));
        for (std::int64_t t = 0; t < c.t; ++t) m[t] = t % 3 == 1 ? 0.0f : 1.0f;
        mask = Tensor::from({c.t}, m);
        if (mask_kind == 2) {
          std::vector<std::int32_t> mi(m.begin(), m.end());
          mask = Tensor::from_i32({c.t}, mi);
        }
      }
      const Plan p = cpu_plan(c.t, c.k, c.e, c.used, 30 + static_cast<std::uint32_t>(c.t), mask);
      Tensor d_counts = Tensor::empty({c.e}, DType::I32, Device::CUDA);
      Tensor d_rt = Tensor::empty({c.t * c.k}, DType::I32, Device::CUDA);
      Tensor d_sr = Tensor::empty({c.t, c.k}, DType::I32, Device::CUDA);
      const std::int64_t n = moe_permute_plan(dev_i32(p.ids), c.e, d_counts, d_rt, d_sr,
                                              mask.defined() ? mask.to(Device::CUDA) : Tensor());
      CHECK(n == p.n);
      CHECK(same_i32(d_counts.to(Device::CPU), p.counts));
      CHECK(same_i32(d_rt.to(Device::CPU), p.row_token));
      CHECK(same_i32(d_sr.to(Device::CPU), p.slot_row));
    }
}

TEST_CASE("cuda moe_permute_plan reports expert ids outside [0, E) like the CPU") {
  const Tensor ids = Tensor::from_i32({4, 2}, {0, 1, 2, 3, 4, 0, 3, 7});
  Tensor d_counts = Tensor::empty({5}, DType::I32, Device::CUDA), d_rt = Tensor::empty({8}, DType::I32, Device::CUDA);
  Tensor d_sr = Tensor::empty({4, 2}, DType::I32, Device::CUDA);
  CHECK_THROWS_WITH_AS(moe_permute_plan(dev_i32(ids), 5, d_counts, d_rt, d_sr),
                       doctest::Contains("expert id 7 of token 3 slot 1 outside [0, 5)"), Error);
  // a masked token's id is never looked at
  const Tensor mask = Tensor::from({4}, {1.0f, 1.0f, 1.0f, 0.0f});
  CHECK(moe_permute_plan(dev_i32(ids), 5, d_counts, d_rt, d_sr, mask.to(Device::CUDA)) == 6);
}

// ---- gather / combine ------------------------------------------------------------------------------------

TEST_CASE("cuda moe_gather / moe_combine and their backward match the CPU") {
  struct Case {
    std::int64_t t, k, e, h;
  };
  for (const Case c : {Case{1, 1, 2, 1}, Case{7, 2, 5, 7}, Case{33, 4, 8, 64}, Case{50, 2, 4, 130}})
    for (const DType dt : {DType::F32, DType::BF16})
      for (const DType out : {DType::F32, DType::BF16}) {
        CAPTURE(c.t); CAPTURE(c.k); CAPTURE(c.h); CAPTURE(dtype_name(dt)); CAPTURE(dtype_name(out));
        std::vector<float> m(static_cast<std::size_t>(c.t), 1.0f);
        if (c.t > 2) m[1] = 0.0f;  // a dropped token
        const Tensor mask = Tensor::from({c.t}, m);
        std::vector<int> used = {0, static_cast<int>(c.e - 1)};
        if (c.e > 3) used.push_back(2);
        const Plan p = cpu_plan(c.t, c.k, c.e, used, 40, mask);
        const Tensor d_rt = dev_i32(p.row_token), d_sr = dev_i32(p.slot_row);

        const Tensor x = rounded(random_tensor({c.t, c.h}, 41));
        Tensor xp = Tensor::empty({p.n, c.h}, DType::F32);
        moe_gather(x, p.row_token, xp);
        Tensor d_xp = Tensor::empty({p.n, c.h}, dt, Device::CUDA);
        moe_gather(dev(x, dt), d_rt, d_xp);
        CHECK(max_abs_diff(host_f32(d_xp), xp) == 0.0);

        const Tensor dxp = rounded(random_tensor({p.n, c.h}, 42));
        Tensor dx = Tensor::empty({c.t, c.h}, DType::F32);
        moe_gather_backward(dxp, p.slot_row, dx);
        Tensor d_dx = Tensor::empty({c.t, c.h}, out, Device::CUDA);
        moe_gather_backward(dev(dxp, dt), d_sr, d_dx);
        CHECK(rel(host_f32(d_dx), dx) <= out_tol(out));

        const Tensor y = rounded(random_tensor({p.n, c.h}, 43)), w = positive({c.t, c.k}, 44, 0.1f, 1.2f);
        Tensor o = Tensor::empty({c.t, c.h}, DType::F32);
        moe_combine(y, w, p.slot_row, o);
        Tensor d_o = Tensor::empty({c.t, c.h}, out, Device::CUDA);
        moe_combine(dev(y, dt), dev(w, DType::F32), d_sr, d_o);
        CHECK(rel(host_f32(d_o), o) <= out_tol(out));

        const Tensor g = rounded(random_tensor({c.t, c.h}, 45));
        Tensor dy = Tensor::empty({p.n, c.h}, DType::F32), dwt = Tensor::empty({c.t, c.k}, DType::F32);
        moe_combine_backward(g, y, w, p.slot_row, dy, dwt);
        Tensor d_dy = Tensor::empty({p.n, c.h}, out, Device::CUDA);
        Tensor d_dwt = Tensor::empty({c.t, c.k}, DType::F32, Device::CUDA);
        moe_combine_backward(dev(g, dt), dev(y, dt), dev(w, DType::F32), d_sr, d_dy, d_dwt);
        CHECK(rel(host_f32(d_dy), dy) <= out_tol(out));
        CHECK(max_abs_diff(host_f32(d_dwt), dwt) <= 1e-5 * std::max(max_abs(dwt), 1.0));

        // deterministic: a second run is bit-identical
        Tensor d_dx2 = Tensor::empty({c.t, c.h}, out, Device::CUDA);
        moe_gather_backward(dev(dxp, dt), d_sr, d_dx2);
        CHECK(bitwise_equal(d_dx2, d_dx));
      }
}

// ---- grouped GEMM ----------------------------------------------------------------------------------------

TEST_CASE("cuda grouped_gemm and its backward match the CPU, zero-row experts untouched, deterministic") {
  struct Case {
    std::vector<std::int32_t> counts;
    std::int64_t kdim, m;
  };
  const std::vector<Case> cases = {
      {{3, 0, 5, 0, 1}, 9, 13},       {{0, 0, 4}, 7, 6},        {{0, 0, 0}, 4, 5},  {{2}, 5, 3},
      {{130, 0, 1, 169, 0}, 160, 257}, {{64, 64}, 128, 128},    {{200, 57}, 33, 40}, {{0, 300, 0, 5}, 64, 96},
  };
  struct Types {
    DType in, out;
  };
  for (const Case& c : cases)
    for (const Types ty : {Types{DType::BF16, DType::F32}, Types{DType::BF16, DType::BF16}, Types{DType::F32, DType::F32}}) {
      const std::int64_t e = static_cast<std::int64_t>(c.counts.size());
      const std::int64_t n = std::accumulate(c.counts.begin(), c.counts.end(), std::int64_t{0});
      CAPTURE(e); CAPTURE(n); CAPTURE(c.kdim); CAPTURE(c.m); CAPTURE(dtype_name(ty.in)); CAPTURE(dtype_name(ty.out));
      const double tol = ty.out == DType::F32 ? 1e-4 : kBf16Tol;
      const Tensor counts = Tensor::from_i32({e}, c.counts), d_counts = dev_i32(counts);
      const Tensor x = rounded(random_tensor({n, c.kdim}, 80)), w = rounded(random_tensor({e, c.kdim, c.m}, 81));
      const Tensor dx_in = dev(x, ty.in), dw_in = dev(w, ty.in);

      Tensor y = Tensor::empty({n, c.m}, DType::F32);
      grouped_gemm(x, w, counts, y);
      Tensor d_y = Tensor::empty({n, c.m}, ty.out, Device::CUDA);
      grouped_gemm(dx_in, dw_in, d_counts, d_y);
      CHECK(rel(host_f32(d_y), y) <= tol);

      const Tensor g = rounded(random_tensor({n, c.m}, 82));
      const Tensor dw0 = rounded(random_tensor({e, c.kdim, c.m}, 83));  // dw accumulates onto these values
      Tensor dx = Tensor::empty({n, c.kdim}, DType::F32), dw = dw0.clone();
      grouped_gemm_backward(x, w, counts, g, &dx, &dw);
      Tensor d_dx = Tensor::empty({n, c.kdim}, ty.out, Device::CUDA), d_dw = dev(dw0, ty.out);
      const Tensor d_g = dev(g, ty.in);
      grouped_gemm_backward(dx_in, dw_in, d_counts, d_g, &d_dx, &d_dw);
      CHECK(rel(host_f32(d_dx), dx) <= tol);
      const Tensor got_dw = host_f32(d_dw);
      CHECK(rel(got_dw, dw) <= tol);
      for (std::int64_t i = 0; i < e; ++i)
        if (c.counts[i] == 0) CHECK(max_abs_diff(got_dw.rows(i, i + 1), dw0.rows(i, i + 1)) == 0.0);  // bit for bit

      // zero-initialised dw: experts without rows stay exactly zero
      Tensor d_dw_zero = Tensor::zeros({e, c.kdim, c.m}, ty.out, Device::CUDA);
      grouped_gemm_backward(dx_in, dw_in, d_counts, d_g, nullptr, &d_dw_zero);
      const Tensor got_zero = host_f32(d_dw_zero);
      for (std::int64_t i = 0; i < e; ++i)
        if (c.counts[i] == 0) CHECK(max_abs(got_zero.rows(i, i + 1)) == 0.0);

      // dx alone gives the same bits; a second run of either pass is bit-identical
      Tensor d_dx2 = Tensor::empty({n, c.kdim}, ty.out, Device::CUDA), d_dw2 = dev(dw0, ty.out);
      grouped_gemm_backward(dx_in, dw_in, d_counts, d_g, &d_dx2, nullptr);
      grouped_gemm_backward(dx_in, dw_in, d_counts, d_g, nullptr, &d_dw2);
      CHECK(bitwise_equal(d_dx2, d_dx));
      CHECK(bitwise_equal(d_dw2, d_dw));
      Tensor d_y2 = Tensor::empty({n, c.m}, ty.out, Device::CUDA);
      grouped_gemm(dx_in, dw_in, d_counts, d_y2);
      CHECK(bitwise_equal(d_y2, d_y));
    }
}

TEST_CASE("cuda grouped_gemm rejects counts that do not cover x") {
  const Tensor x = dev(random_tensor({5, 4}, 90), DType::BF16), w = dev(random_tensor({3, 4, 6}, 91), DType::BF16);
  Tensor y = Tensor::empty({5, 6}, DType::F32, Device::CUDA);
  CHECK_THROWS_WITH_AS(grouped_gemm(x, w, dev_i32(Tensor::from_i32({3}, {2, 2, 0})), y),
                       doctest::Contains("expert_counts sum to 4 but x has 5 rows"), Error);
  CHECK_THROWS_WITH_AS(grouped_gemm(x, w, dev_i32(Tensor::from_i32({3}, {6, -1, 0})), y),
                       doctest::Contains("expert 1 has a negative row count"), Error);
  CHECK_THROWS_WITH_AS(grouped_gemm(x, w, Tensor::from_i32({3}, {5, 0, 0}), y),
                       doctest::Contains("is on the CPU while other operands are on the device"), Error);
}
