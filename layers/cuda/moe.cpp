// Host side of the CUDA MoE ops (layers/ops/moe.h): dtype checks, stream-ordered scratch, the grouped
// GEMM plan, kernel launches (layers/cuda/moe.cu). Shapes were validated by the dispatchers in
// layers/cpu/moe.cpp.
//
// Grouped GEMM: why a custom kernel. CUDA 13's cublasGemmGroupedBatchedEx takes bf16 operands only with
// a bf16 C (its type table has no bf16 x bf16 -> f32), so the expert weight gradient could not
// accumulate (+=) into an fp32 buffer across passes, and cuBLASLt 13 has no grouped matmul. A loop of
// cuBLASLt calls would be a launch per expert. So grouped_gemm_plan (plain C++, CPU-tested) turns the
// counts into per-expert problems and one tile list, and a single tiled kernel (bf16 WMMA tensor cores,
// fp32 accumulation) runs every tile of every expert in one launch. Experts with zero rows have no
// problem, hence no tile: their dw[e] is never written, not even rescaled by beta = 1.
#include <cuda_runtime.h>

#include <climits>
#include <cmath>
#include <vector>

#include "layers/cuda/check.h"
#include "layers/cuda/context.h"
#include "layers/cuda/moe_kernels.h"
#include "layers/ops.h"

namespace dg::cuda {

namespace {

bool f32_or_bf16(const Tensor& t) { return t.dtype() == DType::F32 || t.dtype() == DType::BF16; }

void expect_float(const char* op, const char* name, const Tensor& t) {
  DG_CHECK(f32_or_bf16(t), "{}: {} must be bf16 or f32 on the device, got {}", op, name, t.describe());
}

void expect_type(const char* op, const char* name, const Tensor& t, DType dtype) {
  DG_CHECK(t.dtype() == dtype, "{}: {} must be {} on the device, got {}", op, name, dtype_name(dtype), t.describe());
}

// Scratch, to_device, to_host: layers/cuda/context.h.

Tensor device_view(void* p, Shape shape) { return Tensor::view_of(p, std::move(shape), DType::F32, Device::CUDA); }

void check_router_types(const char* op, const Tensor& r, const Tensor& scale, const Tensor& proj,
                        const Tensor& per_expert_scale, const Tensor& expert_ids) {
  expect_float(op, "r", r);
  DG_CHECK(f32_or_bf16(proj) && scale.dtype() == proj.dtype() && per_expert_scale.dtype() == proj.dtype(),
           "{}: the router parameters must share one dtype, bf16 or f32, on the device: scale {}, proj {}, "
           "per_expert_scale {}",
           op, scale.describe(), proj.describe(), per_expert_scale.describe());
  expect_type(op, "expert_ids", expert_ids, DType::I32);
}

// Launches one pass of a grouped GEMM plan: C = alpha · op(A) op(B) + beta · C over every tile.
void run_plan(const char* op, const GroupedGemmPlan& plan, const Tensor& a, const Tensor& b, Tensor& c, float alpha,
              float beta) {
  if (plan.tiles.empty()) return;
  std::vector<kernels::GroupedProblem> problems;
  problems.reserve(plan.problems.size());
  for (const GroupedGemmProblem& p : plan.problems) {
    DG_CHECK(p.m <= INT32_MAX && p.n <= INT32_MAX && p.k <= INT32_MAX, "{}: problem {}x{}x{} of expert {} is too large",
             op, p.m, p.n, p.k, p.expert);
    problems.push_back({p.a_offset, p.b_offset, p.c_offset, static_cast<std::int32_t>(p.m),
                        static_cast<std::int32_t>(p.n), static_cast<std::int32_t>(p.k), 0});
  }
  std::vector<kernels::GroupedTile> tiles;
  tiles.reserve(plan.tiles.size());
  for (const GroupedGemmTile& t : plan.tiles) tiles.push_back({t.problem, t.tile_m, t.tile_n, 0});
  // one buffer: problems (32-byte records) first, then tiles (16-byte records)
  const std::size_t problem_bytes = problems.size() * sizeof(kernels::GroupedProblem);
  Scratch dev(problem_bytes + tiles.size() * sizeof(kernels::GroupedTile));
  auto* dev_problems = dev.as<kernels::GroupedProblem>();
  auto* dev_tiles = reinterpret_cast<kernels::GroupedTile*>(dev.as<char>() + problem_bytes);
  to_device(dev_problems, problems.data(), problems.size());
  to_device(dev_tiles, tiles.data(), tiles.size());
  DG_CUDA(kernels::grouped_gemm(a.raw(), b.raw(), a.dtype(), c.raw(), c.dtype(), plan.trans_a, plan.trans_b, plan.lda,
                                plan.ldb, plan.ldc, dev_problems, dev_tiles, static_cast<std::int64_t>(tiles.size()),
                                alpha, beta, stream()));
}

std::vector<std::int32_t> counts_on_host(const Tensor& expert_counts) {
  std::vector<std::int32_t> counts(static_cast<std::size_t>(expert_counts.numel()));
  to_host(counts.data(), expert_counts.data<std::int32_t>(), counts.size());
  return counts;
}

}  // namespace

// ---- router -----------------------------------------------------------------------------------------------

void moe_router(const Tensor& r, const Tensor& scale, const Tensor& proj, const Tensor& per_expert_scale,
                Tensor& expert_ids, Tensor& routing_weights, Tensor& probs, Tensor& rstd, float eps) {
  const char* op = "moe_router";
  check_router_types(op, r, scale, proj, per_expert_scale, expert_ids);
  expect_type(op, "routing_weights", routing_weights, DType::F32);
  expect_type(op, "probs", probs, DType::F32);
  expect_type(op, "rstd", rstd, DType::F32);
  const std::int64_t t_count = r.size(0), h = r.size(1), e = proj.size(0), k = expert_ids.size(1);
  DG_CHECK(t_count <= INT32_MAX && h <= INT32_MAX && e <= INT32_MAX, "{}: {} too large for the device router", op,
           r.describe());
  if (t_count == 0) return;
  Scratch bad(sizeof(std::int32_t));
  const std::int32_t none = INT32_MAX;
  to_device(bad.as<std::int32_t>(), &none, 1);
  DG_CUDA(kernels::moe_router(r.raw(), r.dtype(), scale.raw(), proj.raw(), per_expert_scale.raw(), proj.dtype(), t_count,
                              h, e, k, eps, expert_ids.data<std::int32_t>(), routing_weights.data<float>(),
                              probs.data<float>(), rstd.data<float>(), bad.as<std::int32_t>(), stream()));
  std::int32_t bad_token = none;
  to_host(&bad_token, bad.as<std::int32_t>(), 1);
  if (bad_token != none) {  // the kernel left that token's raw logits in probs
    std::vector<float> logits(static_cast<std::size_t>(e));
    to_host(logits.data(), probs.data<float>() + bad_token * e, logits.size());
    for (std::int64_t x = 0; x < e; ++x)
      if (!std::isfinite(logits[x])) fail("{}: router logit of token {} for expert {} is {}", op, bad_token, x, logits[x]);
    fail("{}: router logit of token {} is not finite", op, bad_token);
  }
}

void moe_router_backward(const Tensor& r, const Tensor& scale, const Tensor& proj, const Tensor& per_expert_scale,
                         const Tensor& expert_ids, const Tensor& probs, const Tensor& rstd,
                         const Tensor& d_routing_weights, Tensor& dr, const RouterGrads& grads) {
  const char* op = "moe_router_backward";
  check_router_types(op, r, scale, proj, per_expert_scale, expert_ids);
  expect_type(op, "probs", probs, DType::F32);
  expect_type(op, "rstd", rstd, DType::F32);
  expect_type(op, "d_routing_weights", d_routing_weights, DType::F32);
  DG_CHECK(dr.dtype() == r.dtype(), "{}: dr {} must have the dtype of r {}", op, dr.describe(), r.describe());
  if (grads.scale) expect_type(op, "grads.scale", *grads.scale, DType::F32);
  if (grads.proj) expect_type(op, "grads.proj", *grads.proj, DType::F32);
  if (grads.per_expert_scale) expect_type(op, "grads.per_expert_scale", *grads.per_expert_scale, DType::F32);
  const std::int64_t t_count = r.size(0), h = r.size(1), e = proj.size(0), k = expert_ids.size(1);
  DG_CHECK(t_count <= INT32_MAX && h <= INT32_MAX && e <= INT32_MAX, "{}: {} too large for the device router", op,
           r.describe());
  if (t_count == 0) return;

  // per-row terms of the optional parameter gradients, reduced below in a fixed order
  Scratch dlogits(grads.proj ? static_cast<std::size_t>(t_count * e) * 4 : 0);
  Scratch z(grads.proj ? static_cast<std::size_t>(t_count * h) * 4 : 0);
  Scratch scale_terms(grads.scale ? static_cast<std::size_t>(t_count * h) * 4 : 0);
  Scratch pes_terms(grads.per_expert_scale ? static_cast<std::size_t>(t_count * k) * 4 : 0);
  DG_CUDA(kernels::moe_router_backward(r.raw(), r.dtype(), scale.raw(), proj.raw(), per_expert_scale.raw(), proj.dtype(),
                                       expert_ids.data<std::int32_t>(), probs.data<float>(), rstd.data<float>(),
                                       d_routing_weights.data<float>(), t_count, h, e, k, dr.raw(), dlogits.as<float>(),
                                       z.as<float>(), scale_terms.as<float>(), pes_terms.as<float>(), stream()));
  if (grads.proj) {  // d proj += d(logits)ᵀ · z
    const Tensor dl = device_view(dlogits.as<float>(), {t_count, e}), zt = device_view(z.as<float>(), {t_count, h});
    cuda::gemm(dl, zt, *grads.proj, {.trans_a = true, .beta = 1.0f});
  }
  if (grads.scale) DG_CUDA(kernels::column_sum_add(scale_terms.as<float>(), t_count, h, grads.scale->data<float>(), stream()));
  if (grads.per_expert_scale)
    DG_CUDA(kernels::expert_sum_add(pes_terms.as<float>(), expert_ids.data<std::int32_t>(), t_count * k, e,
                                    grads.per_expert_scale->data<float>(), stream()));
}

// ---- permutation plan ------------------------------------------------------------------------------------

std::int64_t moe_permute_plan(const Tensor& expert_ids, std::int64_t num_experts, Tensor& expert_counts,
                              Tensor& row_token, Tensor& slot_row, const Tensor& token_mask) {
  const char* op = "moe_permute_plan";
  expect_type(op, "expert_ids", expert_ids, DType::I32);
  expect_type(op, "expert_counts", expert_counts, DType::I32);
  expect_type(op, "row_token", row_token, DType::I32);
  expect_type(op, "slot_row", slot_row, DType::I32);
  if (token_mask.defined())
    DG_CHECK(token_mask.dtype() == DType::F32 || token_mask.dtype() == DType::I32,
             "{}: token_mask should be f32 or i32, got {}", op, token_mask.describe());
  DG_CHECK(num_experts <= INT32_MAX, "{}: {} experts overflow the i32 ids", op, num_experts);
  const std::int64_t t_count = expert_ids.size(0), k = expert_ids.size(1), pairs = t_count * k;
  const std::int64_t chunks = kernels::moe_permute_chunks(pairs);
  Scratch scratch(static_cast<std::size_t>((chunks + 1) * num_experts) * 4);
  Scratch status(2 * sizeof(std::int32_t));
  const std::int32_t init[2] = {0, INT32_MAX};
  to_device(status.as<std::int32_t>(), init, 2);
  DG_CUDA(kernels::moe_permute_plan(expert_ids.data<std::int32_t>(), t_count, k, num_experts,
                                    token_mask.defined() ? token_mask.raw() : nullptr,
                                    token_mask.defined() ? token_mask.dtype() : DType::F32, scratch.as<std::int32_t>(),
                                    expert_counts.data<std::int32_t>(), row_token.data<std::int32_t>(),
                                    slot_row.data<std::int32_t>(), status.as<std::int32_t>(), stream()));
  std::int32_t result[2] = {0, INT32_MAX};
  to_host(result, status.as<std::int32_t>(), 2);
  if (result[1] != INT32_MAX) {
    const std::int64_t p = result[1];
    std::int32_t id = 0;
    to_host(&id, expert_ids.data<std::int32_t>() + p, 1);
    fail("{}: expert id {} of token {} slot {} outside [0, {})", op, id, p / k, p % k, num_experts);
  }
  return result[0];
}

// ---- gather / combine ------------------------------------------------------------------------------------

void moe_gather(const Tensor& x, const Tensor& row_token, Tensor& xp) {
  const char* op = "moe_gather";
  DG_CHECK(is_float(x.dtype()) && xp.dtype() == x.dtype(), "{}: x {} and xp {} must share one float dtype", op,
           x.describe(), xp.describe());
  expect_type(op, "row_token", row_token, DType::I32);
  DG_CUDA(kernels::moe_gather(x.raw(), x.size(0), x.size(1), dtype_size(x.dtype()), row_token.data<std::int32_t>(),
                              xp.raw(), xp.size(0), stream()));
}

void moe_gather_backward(const Tensor& dxp, const Tensor& slot_row, Tensor& dx) {
  const char* op = "moe_gather_backward";
  expect_float(op, "dxp", dxp);
  expect_float(op, "dx", dx);
  expect_type(op, "slot_row", slot_row, DType::I32);
  DG_CUDA(kernels::moe_gather_backward(dxp.raw(), dxp.dtype(), dxp.size(0), slot_row.data<std::int32_t>(), dx.size(0),
                                       slot_row.size(1), dx.size(1), dx.raw(), dx.dtype(), stream()));
}

void moe_combine(const Tensor& y, const Tensor& routing_weights, const Tensor& slot_row, Tensor& out) {
  const char* op = "moe_combine";
  expect_float(op, "y", y);
  expect_float(op, "out", out);
  expect_type(op, "routing_weights", routing_weights, DType::F32);
  expect_type(op, "slot_row", slot_row, DType::I32);
  DG_CUDA(kernels::moe_combine(y.raw(), y.dtype(), y.size(0), routing_weights.data<float>(),
                               slot_row.data<std::int32_t>(), out.size(0), slot_row.size(1), out.size(1), out.raw(),
                               out.dtype(), stream()));
}

void moe_combine_backward(const Tensor& dout, const Tensor& y, const Tensor& routing_weights, const Tensor& slot_row,
                          Tensor& dy, Tensor& d_routing_weights) {
  const char* op = "moe_combine_backward";
  expect_float(op, "dout", dout);
  expect_float(op, "y", y);
  expect_float(op, "dy", dy);
  expect_type(op, "routing_weights", routing_weights, DType::F32);
  expect_type(op, "d_routing_weights", d_routing_weights, DType::F32);
  expect_type(op, "slot_row", slot_row, DType::I32);
  DG_CUDA(kernels::moe_combine_backward(dout.raw(), dout.dtype(), y.raw(), y.dtype(), y.size(0),
                                        routing_weights.data<float>(), slot_row.data<std::int32_t>(), dout.size(0),
                                        slot_row.size(1), y.size(1), dy.raw(), dy.dtype(),
                                        d_routing_weights.data<float>(), stream()));
}

// ---- grouped GEMM ----------------------------------------------------------------------------------------

void grouped_gemm(const Tensor& x, const Tensor& w, const Tensor& expert_counts, Tensor& y) {
  const char* op = "grouped_gemm";
  DG_CHECK(f32_or_bf16(x) && w.dtype() == x.dtype(), "{}: x {} and w {} must both be bf16 or both f32", op,
           x.describe(), w.describe());
  expect_float(op, "y", y);
  expect_type(op, "expert_counts", expert_counts, DType::I32);
  const GroupedGemmPlan plan = grouped_gemm_plan(op, counts_on_host(expert_counts), x.size(0), w.size(1), w.size(2),
                                                 GroupedGemmPass::forward, kernels::kGroupedTileRows,
                                                 kernels::kGroupedTileCols);
  run_plan(op, plan, x, w, y, 1.0f, 0.0f);
}

void grouped_gemm_backward(const Tensor& x, const Tensor& w, const Tensor& expert_counts, const Tensor& dy, Tensor* dx,
                           Tensor* dw) {
  const char* op = "grouped_gemm_backward";
  DG_CHECK(f32_or_bf16(x) && w.dtype() == x.dtype() && dy.dtype() == x.dtype(),
           "{}: x {}, w {} and dy {} must all be bf16 or all f32", op, x.describe(), w.describe(), dy.describe());
  if (dx) expect_float(op, "dx", *dx);
  if (dw) expect_float(op, "dw", *dw);
  expect_type(op, "expert_counts", expert_counts, DType::I32);
  const std::vector<std::int32_t> counts = counts_on_host(expert_counts);
  const std::int64_t n = x.size(0), kdim = w.size(1), mdim = w.size(2);
  if (dx)  // dx_e = dy_e · w[e]ᵀ (written)
    run_plan(op,
             grouped_gemm_plan(op, counts, n, kdim, mdim, GroupedGemmPass::d_input, kernels::kGroupedTileRows,
                               kernels::kGroupedTileCols),
             dy, w, *dx, 1.0f, 0.0f);
  if (dw)  // dw[e] += x_eᵀ · dy_e, experts with rows only
    run_plan(op,
             grouped_gemm_plan(op, counts, n, kdim, mdim, GroupedGemmPass::d_weight, kernels::kGroupedTileRows,
                               kernels::kGroupedTileCols),
             x, dy, *dw, 1.0f, 1.0f);
  if (!dx && !dw)  // nothing to compute; the counts are still validated
    grouped_gemm_plan(op, counts, n, kdim, mdim, GroupedGemmPass::forward, kernels::kGroupedTileRows,
                      kernels::kGroupedTileCols);
}

}  // namespace dg::cuda
