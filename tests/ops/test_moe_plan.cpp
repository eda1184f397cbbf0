// grouped_gemm_plan (layers/ops/moe.h), the host side of the CUDA grouped GEMM, on the CPU: row offsets,
// one problem per expert with rows (none for empty experts), tiles that cover every output element once,
// and — the contract the CUDA kernel implements — executing the plan's problems with its offsets, leading
// dimensions and transposes reproduces grouped_gemm and grouped_gemm_backward of the CPU backend,
// including dw += for experts with rows and bit-for-bit untouched dw for experts without.
//
// Tolerance: the plan executor sums in double, the CPU ops in fp32 (OpenBLAS) over K <= 40 products of
// numbers in [-1, 1]: 1e-5 absolute, as the CPU MoE tests (a wrong offset or transpose is O(0.1)).
#include <doctest/doctest.h>

#include <algorithm>
#include <numeric>
#include <tuple>
#include <utility>
#include <vector>

#include "tests/op_test_util.h"

using namespace dg;
using dg::test::max_abs_diff;
using dg::test::random_tensor;

namespace {

constexpr double kTol = 1e-5;

// C_p = alpha · op(A_p) op(B_p) + beta · C_p for every tile of the plan, exactly as documented.
void execute(const GroupedGemmPlan& plan, const float* a, const float* b, float* c, std::int64_t tile_rows,
             std::int64_t tile_cols, float alpha, float beta) {
  for (const GroupedGemmTile& t : plan.tiles) {
    const GroupedGemmProblem& p = plan.problems[static_cast<std::size_t>(t.problem)];
    for (std::int64_t i = t.tile_m * tile_rows; i < std::min((t.tile_m + 1) * tile_rows, p.m); ++i)
      for (std::int64_t j = t.tile_n * tile_cols; j < std::min((t.tile_n + 1) * tile_cols, p.n); ++j) {
        double acc = 0;
        for (std::int64_t q = 0; q < p.k; ++q) {
          const float av = plan.trans_a ? a[p.a_offset + q * plan.lda + i] : a[p.a_offset + i * plan.lda + q];
          const float bv = plan.trans_b ? b[p.b_offset + j * plan.ldb + q] : b[p.b_offset + q * plan.ldb + j];
          acc += double(av) * bv;
        }
        float& out = c[p.c_offset + i * plan.ldc + j];
        out = static_cast<float>(alpha * acc + (beta != 0.0f ? double(beta) * out : 0.0));
      }
  }
}

struct Case {
  std::vector<std::int32_t> counts;
  std::int64_t kdim, m;
};

const std::vector<Case> kCases = {{{3, 0, 5, 0, 1}, 9, 13}, {{0, 0, 4}, 7, 6},  {{2}, 5, 3},
                                  {{0, 0, 0}, 4, 5},        {{7, 1, 0, 6}, 12, 10}, {{17, 0, 9}, 40, 1}};

}  // namespace

TEST_CASE("grouped_gemm_plan: offsets, a problem per expert with rows, tiles covering each output once") {
  for (const Case& c : kCases)
    for (const GroupedGemmPass pass : {GroupedGemmPass::forward, GroupedGemmPass::d_input, GroupedGemmPass::d_weight})
      for (const auto& [tr, tc] : {std::pair<std::int64_t, std::int64_t>{4, 8}, {3, 5}, {128, 128}}) {
        const std::int64_t e = static_cast<std::int64_t>(c.counts.size());
        const std::int64_t n = std::accumulate(c.counts.begin(), c.counts.end(), std::int64_t{0});
        CAPTURE(e); CAPTURE(n); CAPTURE(static_cast<int>(pass)); CAPTURE(tr); CAPTURE(tc);
        const GroupedGemmPlan plan = grouped_gemm_plan("t", c.counts, n, c.kdim, c.m, pass, tr, tc);
        REQUIRE(plan.row_offset.size() == static_cast<std::size_t>(e + 1));
        for (std::int64_t i = 0; i < e; ++i) CHECK(plan.row_offset[i + 1] - plan.row_offset[i] == c.counts[i]);

        std::vector<std::int64_t> experts;
        for (std::int64_t i = 0; i < e; ++i)
          if (c.counts[i] > 0) experts.push_back(i);
        REQUIRE(plan.problems.size() == experts.size());
        for (std::size_t pi = 0; pi < experts.size(); ++pi) {
          const GroupedGemmProblem& p = plan.problems[pi];
          const std::int64_t x = experts[pi], off = plan.row_offset[x], rows = c.counts[x];
          CHECK(p.expert == x);
          switch (pass) {
            case GroupedGemmPass::forward:
              CHECK((p.m == rows && p.n == c.m && p.k == c.kdim));
              CHECK((p.a_offset == off * c.kdim && p.b_offset == x * c.kdim * c.m && p.c_offset == off * c.m));
              break;
            case GroupedGemmPass::d_input:
              CHECK((p.m == rows && p.n == c.kdim && p.k == c.m));
              CHECK((p.a_offset == off * c.m && p.b_offset == x * c.kdim * c.m && p.c_offset == off * c.kdim));
              break;
            case GroupedGemmPass::d_weight:
              CHECK((p.m == c.kdim && p.n == c.m && p.k == rows));
              CHECK((p.a_offset == off * c.kdim && p.b_offset == off * c.m && p.c_offset == x * c.kdim * c.m));
              break;
          }
        }

        // every C element of every problem lies in exactly one tile; tiles ascend (problem, tile_m, tile_n)
        std::vector<std::vector<int>> hits(plan.problems.size());
        for (std::size_t pi = 0; pi < plan.problems.size(); ++pi)
          hits[pi].assign(static_cast<std::size_t>(plan.problems[pi].m * plan.problems[pi].n), 0);
        for (std::size_t ti = 0; ti < plan.tiles.size(); ++ti) {
          const GroupedGemmTile& t = plan.tiles[ti];
          REQUIRE((t.problem >= 0 && static_cast<std::size_t>(t.problem) < plan.problems.size()));
          const GroupedGemmProblem& p = plan.problems[static_cast<std::size_t>(t.problem)];
          CHECK((t.tile_m * tr < p.m && t.tile_n * tc < p.n));  // no empty tiles
          for (std::int64_t i = t.tile_m * tr; i < std::min((t.tile_m + 1) * tr, p.m); ++i)
            for (std::int64_t j = t.tile_n * tc; j < std::min((t.tile_n + 1) * tc, p.n); ++j)
              ++hits[static_cast<std::size_t>(t.problem)][static_cast<std::size_t>(i * p.n + j)];
          if (ti > 0) {
            const GroupedGemmTile& u = plan.tiles[ti - 1];
            CHECK(std::tie(u.problem, u.tile_m, u.tile_n) < std::tie(t.problem, t.tile_m, t.tile_n));
          }
        }
        for (const auto& h : hits)
          for (int v : h) CHECK(v == 1);
      }
}

TEST_CASE("executing the plan with its offsets, leading dimensions and transposes equals the CPU grouped GEMM") {
  for (const Case& c : kCases) {
    const std::int64_t e = static_cast<std::int64_t>(c.counts.size());
    const std::int64_t n = std::accumulate(c.counts.begin(), c.counts.end(), std::int64_t{0});
    CAPTURE(e); CAPTURE(n); CAPTURE(c.kdim); CAPTURE(c.m);
    const Tensor counts = Tensor::from_i32({e}, c.counts);
    const Tensor x = random_tensor({n, c.kdim}, 10), w = random_tensor({e, c.kdim, c.m}, 11);
    const Tensor dy = random_tensor({n, c.m}, 12);
    constexpr std::int64_t tr = 4, tc = 3;

    Tensor y = Tensor::empty({n, c.m}, DType::F32), y_plan = Tensor::zeros({n, c.m}, DType::F32);
    grouped_gemm(x, w, counts, y);
    execute(grouped_gemm_plan("t", c.counts, n, c.kdim, c.m, GroupedGemmPass::forward, tr, tc), x.data<float>(),
            w.data<float>(), y_plan.data<float>(), tr, tc, 1.0f, 0.0f);
    CHECK(max_abs_diff(y_plan, y) < kTol);

    Tensor dx = Tensor::empty({n, c.kdim}, DType::F32), dx_plan = Tensor::zeros({n, c.kdim}, DType::F32);
    const Tensor dw0 = random_tensor({e, c.kdim, c.m}, 13);  // dw accumulates onto these
    Tensor dw = dw0.clone(), dw_plan = dw0.clone();
    grouped_gemm_backward(x, w, counts, dy, &dx, &dw);
    execute(grouped_gemm_plan("t", c.counts, n, c.kdim, c.m, GroupedGemmPass::d_input, tr, tc), dy.data<float>(),
            w.data<float>(), dx_plan.data<float>(), tr, tc, 1.0f, 0.0f);
    execute(grouped_gemm_plan("t", c.counts, n, c.kdim, c.m, GroupedGemmPass::d_weight, tr, tc), x.data<float>(),
            dy.data<float>(), dw_plan.data<float>(), tr, tc, 1.0f, 1.0f);
    CHECK(max_abs_diff(dx_plan, dx) < kTol);
    CHECK(max_abs_diff(dw_plan, dw) < kTol);
    for (std::int64_t i = 0; i < e; ++i)
      if (c.counts[i] == 0) CHECK(max_abs_diff(dw_plan.rows(i, i + 1), dw0.rows(i, i + 1)) == 0.0);
  }
}

TEST_CASE("grouped_gemm_plan rejects negative counts and counts that do not cover the rows") {
  CHECK_THROWS_WITH_AS(grouped_gemm_plan("op", {2, 2, 0}, 5, 4, 6, GroupedGemmPass::forward, 128, 128),
                       doctest::Contains("op: expert_counts sum to 4 but x has 5 rows"), Error);
  CHECK_THROWS_WITH_AS(grouped_gemm_plan("op", {6, -1, 0}, 5, 4, 6, GroupedGemmPass::d_weight, 128, 128),
                       doctest::Contains("op: expert 1 has a negative row count -1"), Error);
  CHECK_THROWS_AS(grouped_gemm_plan("op", {1}, 1, 4, 6, GroupedGemmPass::forward, 0, 128), Error);
}
