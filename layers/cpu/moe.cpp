// MoE ops: the dispatchers (a device tensor sends an op to its dg::cuda implementation after a
// dtype-agnostic shape check) and the CPU (fp32) implementations of the permutation plan, gather, combine
// and the grouped expert GEMM, each with its backward; also the grouped GEMM plan the CUDA backend launches
// from. The router is in moe_router.cpp. Declarations and the math: layers/ops/moe.h.
#include <algorithm>
#include <climits>
#include <string>
#include <vector>

#include "layers/cpu/check.h"
#include "layers/cpu/parallel.h"
#include "layers/ops.h"

namespace dg {
namespace {

using cpu::expect;

// ---- shape checks of the device path (dtypes are checked by dg::cuda; the CPU path keeps its own
// dtype-and-shape checks and messages) ----

void expect_shape(const char* op, const char* name, const Tensor& t, const Shape& shape) {
  if (!t.defined() || t.shape() != shape)
    fail("{}: {} should be {}, got {}", op, name, shape_str(shape), t.defined() ? t.describe() : std::string("nothing"));
}

// slot_row [T,k] for T = t_count; returns k.
std::int64_t check_slot_row_shape(const char* op, const Tensor& slot_row, std::int64_t t_count) {
  DG_CHECK(slot_row.ndim() == 2, "{}: slot_row should be [T, k], got {}", op, slot_row.describe());
  expect_shape(op, "slot_row", slot_row, {t_count, slot_row.size(1)});
  return slot_row.size(1);
}

// x [N,K], w [E,K,M], expert_counts [E].
void check_grouped_shapes(const char* op, const Tensor& x, const Tensor& w, const Tensor& expert_counts) {
  DG_CHECK(x.ndim() == 2 && w.ndim() == 3, "{}: x {} and w {} should be [N, K] and [E, K, M]", op, x.describe(),
           w.describe());
  expect_shape(op, "x", x, {x.size(0), w.size(1)});
  expect_shape(op, "expert_counts", expert_counts, {w.size(0)});
}

bool mask_keeps(const Tensor& mask, std::int64_t t) {
  if (!mask.defined()) return true;
  return mask.dtype() == DType::I32 ? mask.data<std::int32_t>()[t] != 0 : mask.data<float>()[t] != 0.0f;
}

}  // namespace

// ---- Permutation ------------------------------------------------------------------------------------

std::int64_t moe_permute_plan(const Tensor& expert_ids, std::int64_t num_experts, Tensor& expert_counts,
                              Tensor& row_token, Tensor& slot_row, const Tensor& token_mask) {
  const char* op = "moe_permute_plan";
  if (any_on_cuda({&expert_ids, &expert_counts, &row_token, &slot_row, &token_mask})) {
    require_cuda(op, {&expert_ids, &expert_counts, &row_token, &slot_row, &token_mask});
    DG_CHECK(expert_ids.ndim() == 2, "{}: expert_ids should be [T, k], got {}", op, expert_ids.describe());
    const std::int64_t t_count = expert_ids.size(0), k = expert_ids.size(1);
    DG_CHECK(num_experts >= 1, "{}: num_experts {} must be positive", op, num_experts);
    DG_CHECK(t_count * k <= INT32_MAX, "{}: {} (token, slot) pairs overflow the i32 row indices", op, t_count * k);
    expect_shape(op, "expert_counts", expert_counts, {num_experts});
    expect_shape(op, "row_token", row_token, {t_count * k});
    expect_shape(op, "slot_row", slot_row, {t_count, k});
    if (token_mask.defined()) expect_shape(op, "token_mask", token_mask, {t_count});
    return cuda::moe_permute_plan(expert_ids, num_experts, expert_counts, row_token, slot_row, token_mask);
  }
  require_cpu(op, {&expert_ids, &expert_counts, &row_token, &slot_row, &token_mask});
  DG_CHECK(expert_ids.ndim() == 2, "{}: expert_ids should be [T, k], got {}", op, expert_ids.describe());
  const std::int64_t t_count = expert_ids.size(0), k = expert_ids.size(1);
  DG_CHECK(num_experts >= 1, "{}: num_experts {} must be positive", op, num_experts);
  DG_CHECK(t_count * k <= INT32_MAX, "{}: {} (token, slot) pairs overflow the i32 row indices", op, t_count * k);
  expect(op, "expert_ids", expert_ids, DType::I32, {t_count, k});
  expect(op, "expert_counts", expert_counts, DType::I32, {num_experts});
  expect(op, "row_token", row_token, DType::I32, {t_count * k});
  expect(op, "slot_row", slot_row, DType::I32, {t_count, k});
  if (token_mask.defined()) {
    DG_CHECK(token_mask.dtype() == DType::F32 || token_mask.dtype() == DType::I32,
             "{}: token_mask should be f32 or i32, got {}", op, token_mask.describe());
    DG_CHECK(token_mask.shape() == Shape{t_count}, "{}: token_mask should be [{}], got {}", op, t_count,
             token_mask.describe());
  }
  const std::int32_t* ids = expert_ids.data<std::int32_t>();
  std::int32_t* counts = expert_counts.data<std::int32_t>();
  std::int32_t* rt = row_token.data<std::int32_t>();
  std::int32_t* sr = slot_row.data<std::int32_t>();

  // counting sort: count, exclusive prefix offsets, then place pairs in (t, j) order (stable)
  std::vector<std::int64_t> offset(static_cast<std::size_t>(num_experts) + 1, 0);
  for (std::int64_t t = 0; t < t_count; ++t) {
    if (!mask_keeps(token_mask, t)) continue;
    for (std::int64_t j = 0; j < k; ++j) {
      const std::int32_t x = ids[t * k + j];
      if (x < 0 || x >= num_experts)
        fail("{}: expert id {} of token {} slot {} outside [0, {})", op, x, t, j, num_experts);
      ++offset[x + 1];
    }
  }
  for (std::int64_t x = 0; x < num_experts; ++x) {
    counts[x] = static_cast<std::int32_t>(offset[x + 1]);
    offset[x + 1] += offset[x];
  }
  const std::int64_t n = offset[num_experts];
  std::fill(rt, rt + t_count * k, -1);
  for (std::int64_t t = 0; t < t_count; ++t) {
    const bool keep = mask_keeps(token_mask, t);
    for (std::int64_t j = 0; j < k; ++j) {
      if (!keep) {
        sr[t * k + j] = -1;
        continue;
      }
      const std::int64_t row = offset[ids[t * k + j]]++;
      sr[t * k + j] = static_cast<std::int32_t>(row);
      rt[row] = static_cast<std::int32_t>(t);
    }
  }
  return n;
}

void moe_gather(const Tensor& x, const Tensor& row_token, Tensor& xp) {
  const char* op = "moe_gather";
  if (any_on_cuda({&x, &row_token, &xp})) {
    require_cuda(op, {&x, &row_token, &xp});
    DG_CHECK(x.ndim() == 2 && xp.ndim() == 2, "{}: x {} and xp {} should be [T, H] and [N, H]", op, x.describe(),
             xp.describe());
    expect_shape(op, "xp", xp, {xp.size(0), x.size(1)});
    DG_CHECK(row_token.ndim() == 1 && row_token.size(0) >= xp.size(0), "{}: row_token should be i32 [>= {}], got {}",
             op, xp.size(0), row_token.describe());
    cuda::moe_gather(x, row_token, xp);
    return;
  }
  require_cpu(op, {&x, &row_token, &xp});
  DG_CHECK(x.ndim() == 2 && xp.ndim() == 2, "{}: x {} and xp {} should be [T, H] and [N, H]", op, x.describe(),
           xp.describe());
  const std::int64_t t_count = x.size(0), h = x.size(1), n = xp.size(0);
  expect(op, "x", x, DType::F32, {t_count, h});
  expect(op, "xp", xp, DType::F32, {n, h});
  DG_CHECK(row_token.dtype() == DType::I32 && row_token.ndim() == 1 && row_token.size(0) >= n,
           "{}: row_token should be i32 [>= {}], got {}", op, n, row_token.describe());
  const std::int32_t* rt = row_token.data<std::int32_t>();
  const float* px = x.data<float>();
  float* out = xp.data<float>();
  for (std::int64_t i = 0; i < n; ++i)
    if (rt[i] < 0 || rt[i] >= t_count) fail("{}: row {} comes from token {}, outside [0, {})", op, i, rt[i], t_count);
  cpu::parallel_for("moe.gather.rows", n, h,
                    [&](std::int64_t i) { std::copy(px + rt[i] * h, px + (rt[i] + 1) * h, out + i * h); });
}

namespace {
// Checks slot_row [T,k] against N permuted rows; returns k.
std::int64_t check_slot_row(const char* op, const Tensor& slot_row, std::int64_t t_count, std::int64_t n) {
  DG_CHECK(slot_row.ndim() == 2, "{}: slot_row should be [T, k], got {}", op, slot_row.describe());
  const std::int64_t k = slot_row.size(1);
  expect(op, "slot_row", slot_row, DType::I32, {t_count, k});
  const std::int32_t* sr = slot_row.data<std::int32_t>();
  for (std::int64_t i = 0; i < t_count * k; ++i)
    if (sr[i] < -1 || sr[i] >= n) fail("{}: slot_row[{}, {}] = {} outside [-1, {})", op, i / k, i % k, sr[i], n);
  return k;
}
}  // namespace

void moe_gather_backward(const Tensor& dxp, const Tensor& slot_row, Tensor& dx) {
  const char* op = "moe_gather_backward";
  if (any_on_cuda({&dxp, &slot_row, &dx})) {
    require_cuda(op, {&dxp, &slot_row, &dx});
    DG_CHECK(dxp.ndim() == 2 && dx.ndim() == 2, "{}: dxp {} and dx {} should be [N, H] and [T, H]", op,
             dxp.describe(), dx.describe());
    expect_shape(op, "dx", dx, {dx.size(0), dxp.size(1)});
    check_slot_row_shape(op, slot_row, dx.size(0));
    cuda::moe_gather_backward(dxp, slot_row, dx);
    return;
  }
  require_cpu(op, {&dxp, &slot_row, &dx});
  DG_CHECK(dxp.ndim() == 2 && dx.ndim() == 2, "{}: dxp {} and dx {} should be [N, H] and [T, H]", op,
           dxp.describe(), dx.describe());
  const std::int64_t n = dxp.size(0), h = dxp.size(1), t_count = dx.size(0);
  expect(op, "dxp", dxp, DType::F32, {n, h});
  expect(op, "dx", dx, DType::F32, {t_count, h});
  const std::int64_t k = check_slot_row(op, slot_row, t_count, n);
  const std::int32_t* sr = slot_row.data<std::int32_t>();
  const float* g = dxp.data<float>();
  float* out = dx.data<float>();
  cpu::parallel_for("moe.gather_backward.rows", t_count, k * h, [&](std::int64_t t) {
    float* row = out + t * h;
    std::fill(row, row + h, 0.0f);
    for (std::int64_t j = 0; j < k; ++j) {
      const std::int32_t i = sr[t * k + j];
      if (i < 0) continue;
      for (std::int64_t c = 0; c < h; ++c) row[c] += g[i * h + c];
    }
  });
}

// ---- Combine ----------------------------------------------------------------------------------------

void moe_combine(const Tensor& y, const Tensor& routing_weights, const Tensor& slot_row, Tensor& out) {
  const char* op = "moe_combine";
  if (any_on_cuda({&y, &routing_weights, &slot_row, &out})) {
    require_cuda(op, {&y, &routing_weights, &slot_row, &out});
    DG_CHECK(y.ndim() == 2 && out.ndim() == 2, "{}: y {} and out {} should be [N, H] and [T, H]", op, y.describe(),
             out.describe());
    expect_shape(op, "out", out, {out.size(0), y.size(1)});
    const std::int64_t k = check_slot_row_shape(op, slot_row, out.size(0));
    expect_shape(op, "routing_weights", routing_weights, {out.size(0), k});
    cuda::moe_combine(y, routing_weights, slot_row, out);
    return;
  }
  require_cpu(op, {&y, &routing_weights, &slot_row, &out});
  DG_CHECK(y.ndim() == 2 && out.ndim() == 2, "{}: y {} and out {} should be [N, H] and [T, H]", op, y.describe(),
           out.describe());
  const std::int64_t n = y.size(0), h = y.size(1), t_count = out.size(0);
  expect(op, "y", y, DType::F32, {n, h});
  expect(op, "out", out, DType::F32, {t_count, h});
  const std::int64_t k = check_slot_row(op, slot_row, t_count, n);
  expect(op, "routing_weights", routing_weights, DType::F32, {t_count, k});
  const std::int32_t* sr = slot_row.data<std::int32_t>();
  const float* w = routing_weights.data<float>();
  const float* py = y.data<float>();
  float* po = out.data<float>();
  cpu::parallel_for("moe.combine.rows", t_count, 2 * k * h, [&](std::int64_t t) {
    float* row = po + t * h;
    std::fill(row, row + h, 0.0f);
    for (std::int64_t j = 0; j < k; ++j) {
      const std::int32_t i = sr[t * k + j];
      if (i < 0) continue;
      const float wj = w[t * k + j];
      for (std::int64_t c = 0; c < h; ++c) row[c] += wj * py[i * h + c];
    }
  });
}

void moe_combine_backward(const Tensor& dout, const Tensor& y, const Tensor& routing_weights,
                          const Tensor& slot_row, Tensor& dy, Tensor& d_routing_weights) {
  const char* op = "moe_combine_backward";
  if (any_on_cuda({&dout, &y, &routing_weights, &slot_row, &dy, &d_routing_weights})) {
    require_cuda(op, {&dout, &y, &routing_weights, &slot_row, &dy, &d_routing_weights});
    DG_CHECK(y.ndim() == 2 && dout.ndim() == 2, "{}: y {} and dout {} should be [N, H] and [T, H]", op,
             y.describe(), dout.describe());
    const std::int64_t t_count = dout.size(0), n = y.size(0), h = y.size(1);
    expect_shape(op, "dout", dout, {t_count, h});
    expect_shape(op, "dy", dy, {n, h});
    const std::int64_t k = check_slot_row_shape(op, slot_row, t_count);
    expect_shape(op, "routing_weights", routing_weights, {t_count, k});
    expect_shape(op, "d_routing_weights", d_routing_weights, {t_count, k});
    cuda::moe_combine_backward(dout, y, routing_weights, slot_row, dy, d_routing_weights);
    return;
  }
  require_cpu(op, {&dout, &y, &routing_weights, &slot_row, &dy, &d_routing_weights});
  DG_CHECK(y.ndim() == 2 && dout.ndim() == 2, "{}: y {} and dout {} should be [N, H] and [T, H]", op,
           y.describe(), dout.describe());
  const std::int64_t n = y.size(0), h = y.size(1), t_count = dout.size(0);
  expect(op, "dout", dout, DType::F32, {t_count, h});
  expect(op, "dy", dy, DType::F32, {n, h});
  const std::int64_t k = check_slot_row(op, slot_row, t_count, n);
  expect(op, "routing_weights", routing_weights, DType::F32, {t_count, k});
  expect(op, "d_routing_weights", d_routing_weights, DType::F32, {t_count, k});
  const std::int32_t* sr = slot_row.data<std::int32_t>();
  const float* w = routing_weights.data<float>();
  const float* py = y.data<float>();
  const float* g = dout.data<float>();
  float* pdy = dy.data<float>();
  float* pdw = d_routing_weights.data<float>();
  std::vector<char> written(static_cast<std::size_t>(n), 0);  // each permuted row: the target of one slot
  for (std::int64_t s = 0; s < t_count * k; ++s) {
    if (sr[s] < 0) continue;
    if (written[sr[s]]) fail("{}: permuted row {} is the target of more than one slot", op, sr[s]);
    written[sr[s]] = 1;
  }
  for (std::int64_t i = 0; i < n; ++i)
    if (!written[i]) fail("{}: permuted row {} belongs to no slot", op, i);
  cpu::parallel_for("moe.combine_backward.rows", t_count, 3 * k * h, [&](std::int64_t t) {
    for (std::int64_t j = 0; j < k; ++j) {
      const std::int32_t i = sr[t * k + j];
      if (i < 0) {
        pdw[t * k + j] = 0.0f;
        continue;
      }
      double acc = 0;
      for (std::int64_t c = 0; c < h; ++c) {
        pdy[i * h + c] = w[t * k + j] * g[t * h + c];
        acc += static_cast<double>(g[t * h + c]) * py[i * h + c];
      }
      pdw[t * k + j] = static_cast<float>(acc);
    }
  });
}

// ---- Grouped GEMM ---------------------------------------------------------------------------------

namespace {
// Validates the grouped GEMM operands; returns the row offset of every expert (E + 1 entries).
std::vector<std::int64_t> expert_offsets(const char* op, const Tensor& x, const Tensor& w,
                                         const Tensor& expert_counts) {
  DG_CHECK(x.ndim() == 2 && w.ndim() == 3, "{}: x {} and w {} should be [N, K] and [E, K, M]", op, x.describe(),
           w.describe());
  const std::int64_t e = w.size(0);
  expect(op, "x", x, DType::F32, {x.size(0), w.size(1)});
  expect(op, "w", w, DType::F32, {e, w.size(1), w.size(2)});
  expect(op, "expert_counts", expert_counts, DType::I32, {e});
  const std::int32_t* counts = expert_counts.data<std::int32_t>();
  std::vector<std::int64_t> off(static_cast<std::size_t>(e) + 1, 0);
  for (std::int64_t i = 0; i < e; ++i) {
    if (counts[i] < 0) fail("{}: expert {} has a negative row count {}", op, i, counts[i]);
    off[i + 1] = off[i] + counts[i];
  }
  if (off[e] != x.size(0)) fail("{}: expert_counts sum to {} but x has {} rows", op, off[e], x.size(0));
  return off;
}
}  // namespace

void grouped_gemm(const Tensor& x, const Tensor& w, const Tensor& expert_counts, Tensor& y) {
  const char* op = "grouped_gemm";
  if (any_on_cuda({&x, &w, &expert_counts, &y})) {
    require_cuda(op, {&x, &w, &expert_counts, &y});
    check_grouped_shapes(op, x, w, expert_counts);
    expect_shape(op, "y", y, {x.size(0), w.size(2)});
    cuda::grouped_gemm(x, w, expert_counts, y);
    return;
  }
  require_cpu(op, {&x, &w, &expert_counts, &y});
  const std::vector<std::int64_t> off = expert_offsets(op, x, w, expert_counts);
  const std::int64_t e = w.size(0), kdim = w.size(1), m = w.size(2);
  expect(op, "y", y, DType::F32, {x.size(0), m});
  const float* px = x.data<float>();
  const float* pw = w.data<float>();
  float* py = y.data<float>();
  for (std::int64_t i = 0; i < e; ++i) {
    const std::int64_t rows = off[i + 1] - off[i];
    if (rows == 0) continue;
    cpu::sgemm(false, false, rows, m, kdim, 1.0f, px + off[i] * kdim, kdim, pw + i * kdim * m, m, 0.0f,
               py + off[i] * m, m);
  }
}

void grouped_gemm_backward(const Tensor& x, const Tensor& w, const Tensor& expert_counts, const Tensor& dy,
                           Tensor* dx, Tensor* dw) {
  const char* op = "grouped_gemm_backward";
  if (any_on_cuda({&x, &w, &expert_counts, &dy, dx, dw})) {
    require_cuda(op, {&x, &w, &expert_counts, &dy, dx, dw});
    check_grouped_shapes(op, x, w, expert_counts);
    expect_shape(op, "dy", dy, {x.size(0), w.size(2)});
    if (dx) expect_shape(op, "dx", *dx, x.shape());
    if (dw) expect_shape(op, "dw", *dw, w.shape());
    cuda::grouped_gemm_backward(x, w, expert_counts, dy, dx, dw);
    return;
  }
  require_cpu(op, {&x, &w, &expert_counts, &dy, dx, dw});
  const std::vector<std::int64_t> off = expert_offsets(op, x, w, expert_counts);
  const std::int64_t e = w.size(0), kdim = w.size(1), m = w.size(2);
  expect(op, "dy", dy, DType::F32, {x.size(0), m});
  if (dx) expect(op, "dx", *dx, DType::F32, {x.size(0), kdim});
  if (dw) expect(op, "dw", *dw, DType::F32, {e, kdim, m});
  const float* px = x.data<float>();
  const float* pw = w.data<float>();
  const float* pdy = dy.data<float>();
  for (std::int64_t i = 0; i < e; ++i) {
    const std::int64_t rows = off[i + 1] - off[i];
    if (rows == 0) continue;  // no rows: dw[i] untouched, and dx has no rows of this expert
    if (dx)
      cpu::sgemm(false, true, rows, kdim, m, 1.0f, pdy + off[i] * m, m, pw + i * kdim * m, m, 0.0f,
                 dx->data<float>() + off[i] * kdim, kdim);
    if (dw)
      cpu::sgemm(true, false, kdim, m, rows, 1.0f, px + off[i] * kdim, kdim, pdy + off[i] * m, m, 1.0f,
                 dw->data<float>() + i * kdim * m, m);
  }
}

// ---- Grouped GEMM plan ------------------------------------------------------------------------------

GroupedGemmPlan grouped_gemm_plan(const char* op, const std::vector<std::int32_t>& expert_counts, std::int64_t rows,
                                  std::int64_t kdim, std::int64_t mdim, GroupedGemmPass pass, std::int64_t tile_rows,
                                  std::int64_t tile_cols) {
  DG_CHECK(tile_rows >= 1 && tile_cols >= 1, "{}: tile {}x{} must be positive", op, tile_rows, tile_cols);
  DG_CHECK(kdim >= 0 && mdim >= 0, "{}: dimensions K = {}, M = {} must be non-negative", op, kdim, mdim);
  const std::int64_t e = static_cast<std::int64_t>(expert_counts.size());
  GroupedGemmPlan plan;
  plan.row_offset.assign(static_cast<std::size_t>(e) + 1, 0);
  for (std::int64_t i = 0; i < e; ++i) {
    if (expert_counts[i] < 0) fail("{}: expert {} has a negative row count {}", op, i, expert_counts[i]);
    plan.row_offset[i + 1] = plan.row_offset[i] + expert_counts[i];
  }
  if (plan.row_offset[e] != rows) fail("{}: expert_counts sum to {} but x has {} rows", op, plan.row_offset[e], rows);

  switch (pass) {
    case GroupedGemmPass::forward: plan.lda = kdim, plan.ldb = mdim, plan.ldc = mdim; break;
    case GroupedGemmPass::d_input: plan.trans_b = true, plan.lda = mdim, plan.ldb = mdim, plan.ldc = kdim; break;
    case GroupedGemmPass::d_weight: plan.trans_a = true, plan.lda = kdim, plan.ldb = mdim, plan.ldc = mdim; break;
  }
  std::int64_t tile_count = 0;
  for (std::int64_t i = 0; i < e; ++i) {
    const std::int64_t off = plan.row_offset[i], count = expert_counts[i];
    if (count == 0) continue;  // no problem: the expert's dw[e] stays untouched
    GroupedGemmProblem p;
    p.expert = i;
    switch (pass) {
      case GroupedGemmPass::forward:
        p.a_offset = off * kdim, p.b_offset = i * kdim * mdim, p.c_offset = off * mdim;
        p.m = count, p.n = mdim, p.k = kdim;
        break;
      case GroupedGemmPass::d_input:
        p.a_offset = off * mdim, p.b_offset = i * kdim * mdim, p.c_offset = off * kdim;
        p.m = count, p.n = kdim, p.k = mdim;
        break;
      case GroupedGemmPass::d_weight:
        p.a_offset = off * kdim, p.b_offset = off * mdim, p.c_offset = i * kdim * mdim;
        p.m = kdim, p.n = mdim, p.k = count;
        break;
    }
    tile_count += ((p.m + tile_rows - 1) / tile_rows) * ((p.n + tile_cols - 1) / tile_cols);
    plan.problems.push_back(p);
  }
  DG_CHECK(tile_count <= INT32_MAX, "{}: {} output tiles overflow one launch", op, tile_count);
  plan.tiles.reserve(static_cast<std::size_t>(tile_count));
  for (std::size_t pi = 0; pi < plan.problems.size(); ++pi) {
    const GroupedGemmProblem& p = plan.problems[pi];
    const std::int64_t tiles_m = (p.m + tile_rows - 1) / tile_rows, tiles_n = (p.n + tile_cols - 1) / tile_cols;
    for (std::int64_t tm = 0; tm < tiles_m; ++tm)
      for (std::int64_t tn = 0; tn < tiles_n; ++tn)
        plan.tiles.push_back({static_cast<std::int32_t>(pi), static_cast<std::int32_t>(tm), static_cast<std::int32_t>(tn)});
  }
  return plan;
}

}  // namespace dg
