// Token embedding and self-conditioning soft embedding (layers/ops/embedding.h): the scale, shape
// validation and dispatch, and the fp32 CPU implementation. The soft embedding's vocabulary chunks are
// fp32 GEMMs (cpu::sgemm) against [rows, chunk] probabilities; softmax statistics are summed in double.
#include "layers/ops/embedding.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "layers/cpu/parallel.h"
#include "layers/ops.h"

namespace dg {

namespace {

Shape leading_shape(const Tensor& t) { return Shape(t.shape().begin(), t.shape().end() - 1); }

Shape with_last(const Tensor& t, std::int64_t last) {
  Shape s = t.shape();
  s.back() = last;
  return s;
}

void check_f32_cpu(const char* op, std::initializer_list<const Tensor*> tensors) {
  require_cpu(op, tensors);
  for (const Tensor* t : tensors)
    if (t) DG_CHECK(t->dtype() == DType::F32, "{}: the CPU op is f32 only, got {}", op, t->describe());
}

void check_table(const char* op, const Tensor& table) {
  DG_CHECK(table.ndim() == 2 && table.size(0) > 0, "{}: embedding table {} should be [V, H] with V > 0", op,
           table.describe());
}

void check_ids(const char* op, const Tensor& ids, const Tensor& rows_hv, std::int64_t hidden) {
  DG_CHECK(ids.dtype() == DType::I32, "{}: token ids {} should be i32", op, ids.describe());
  Shape want = ids.shape();
  want.push_back(hidden);
  DG_CHECK(rows_hv.shape() == want, "{}: {} should be {} (ids {} by hidden {})", op, rows_hv.describe(),
           shape_str(want), ids.describe(), hidden);
}

void check_soft(const char* op, const Tensor& logits, const Tensor& table, const Tensor& soft, const Tensor& lse,
                std::int64_t vocab_chunk) {
  check_table(op, table);
  DG_CHECK(logits.ndim() >= 1 && logits.size(-1) == table.size(0),
           "{}: logits {} should be [..., V] with V = {} (rows of the embedding table {})", op, logits.describe(),
           table.size(0), table.describe());
  DG_CHECK(soft.shape() == with_last(logits, table.size(1)), "{}: soft embedding {} should be {}", op, soft.describe(),
           shape_str(with_last(logits, table.size(1))));
  DG_CHECK(lse.shape() == leading_shape(logits), "{}: lse {} should be {} (logits {} without the vocabulary)", op,
           lse.describe(), shape_str(leading_shape(logits)), logits.describe());
  DG_CHECK(vocab_chunk > 0, "{}: vocab_chunk {} must be positive", op, vocab_chunk);
}

}  // namespace

float embed_scale(std::int64_t hidden, DType weight_dtype) {
  DG_CHECK(hidden > 0, "embed_scale: hidden size {} must be positive", hidden);
  const float s = static_cast<float>(std::sqrt(double(hidden)));  // the reference's fp32 buffer
  switch (weight_dtype) {
    case DType::F32:
      return s;
    case DType::BF16:
      return bf16_bits_to_f32(f32_to_bf16_bits(s));
    case DType::F16:
      return f16_bits_to_f32(f32_to_f16_bits(s));
    default:
      fail("embed_scale: weight dtype {} is not a float type", dtype_name(weight_dtype));
  }
}

void embedding(const Tensor& ids, const Tensor& table, float scale, Tensor& out) {
  check_table("embedding", table);
  check_ids("embedding", ids, out, table.size(1));
  if (any_on_cuda({&ids, &table, &out})) {
    require_cuda("embedding", {&ids, &table, &out});
    cuda::embedding(ids, table, scale, out);
    return;
  }
  require_cpu("embedding", {&ids});
  check_f32_cpu("embedding", {&table, &out});
  cpu::embedding(ids, table, scale, out);
}

void embedding_backward(const Tensor& ids, const Tensor& d_out, float scale, Tensor& d_table) {
  check_table("embedding_backward", d_table);
  check_ids("embedding_backward", ids, d_out, d_table.size(1));
  if (any_on_cuda({&ids, &d_out, &d_table})) {
    require_cuda("embedding_backward", {&ids, &d_out, &d_table});
    cuda::embedding_backward(ids, d_out, scale, d_table);
    return;
  }
  require_cpu("embedding_backward", {&ids});
  check_f32_cpu("embedding_backward", {&d_out, &d_table});
  cpu::embedding_backward(ids, d_out, scale, d_table);
}

void soft_embedding(const Tensor& logits, const Tensor& table, float scale, Tensor& soft, Tensor& lse,
                    std::int64_t vocab_chunk) {
  check_soft("soft_embedding", logits, table, soft, lse, vocab_chunk);
  if (any_on_cuda({&logits, &table, &soft, &lse})) {
    require_cuda("soft_embedding", {&logits, &table, &soft, &lse});
    cuda::soft_embedding(logits, table, scale, soft, lse, vocab_chunk);
    return;
  }
  check_f32_cpu("soft_embedding", {&logits, &table, &soft, &lse});
  cpu::soft_embedding(logits, table, scale, soft, lse, vocab_chunk);
}

void soft_embedding_backward(const Tensor& d_soft, const Tensor& logits, const Tensor& table, float scale,
                             const Tensor& soft, const Tensor& lse, Tensor* d_logits, Tensor& d_table,
                             std::int64_t vocab_chunk) {
  const char* op = "soft_embedding_backward";
  check_soft(op, logits, table, soft, lse, vocab_chunk);
  DG_CHECK(d_soft.shape() == soft.shape(), "{}: d_soft {} should have the shape of soft {}", op, d_soft.describe(),
           soft.describe());
  DG_CHECK(d_table.shape() == table.shape(), "{}: d_table {} should have the shape of the table {}", op,
           d_table.describe(), table.describe());
  if (d_logits)
    DG_CHECK(d_logits->shape() == logits.shape(), "{}: d_logits {} should have the shape of logits {}", op,
             d_logits->describe(), logits.describe());
  if (any_on_cuda({&d_soft, &logits, &table, &soft, &lse, d_logits, &d_table})) {
    require_cuda(op, {&d_soft, &logits, &table, &soft, &lse, d_logits, &d_table});
    cuda::soft_embedding_backward(d_soft, logits, table, scale, soft, lse, d_logits, d_table, vocab_chunk);
    return;
  }
  check_f32_cpu(op, {&d_soft, &logits, &table, &soft, &lse, d_logits, &d_table});
  cpu::soft_embedding_backward(d_soft, logits, table, scale, soft, lse, d_logits, d_table, vocab_chunk);
}

namespace cpu {

namespace {
void check_id(std::int32_t id, std::int64_t t, std::int64_t vocab) {
  if (id < 0 || id >= vocab)
    fail("embedding: token id {} at position {} is outside the vocabulary [0, {})", id, t, vocab);
}
}  // namespace

void embedding(const Tensor& ids, const Tensor& table, float scale, Tensor& out) {
  const std::int64_t vocab = table.size(0), hidden = table.size(1);
  const std::int32_t* pid = ids.data<std::int32_t>();
  const float* pt = table.data<float>();
  float* po = out.data<float>();
  const std::int64_t count = ids.numel();
  for (std::int64_t t = 0; t < count; ++t) check_id(pid[t], t, vocab);
  parallel_for("embedding.rows", count, hidden, [&](std::int64_t t) {
    const float* row = pt + std::int64_t(pid[t]) * hidden;
    for (std::int64_t h = 0; h < hidden; ++h) po[t * hidden + h] = row[h] * scale;
  });
}

void embedding_backward(const Tensor& ids, const Tensor& d_out, float scale, Tensor& d_table) {
  const std::int64_t vocab = d_table.size(0), hidden = d_table.size(1);
  const std::int32_t* pid = ids.data<std::int32_t>();
  for (std::int64_t t = 0; t < ids.numel(); ++t) check_id(pid[t], t, vocab);  // nothing written on a bad id
  const float* pd = d_out.data<float>();
  float* pt = d_table.data<float>();
  // Tokens with the same id add into the same row: the threads split the columns, each adding every
  // token in order into its columns.
  constexpr std::int64_t kColumns = 64;
  const std::int64_t count = ids.numel();
  const std::int64_t blocks = (hidden + kColumns - 1) / kColumns;
  parallel_for("embedding.backward.columns", blocks, kColumns * count, [&](std::int64_t blk) {
    const std::int64_t h0 = blk * kColumns, h1 = std::min(hidden, h0 + kColumns);
    for (std::int64_t t = 0; t < count; ++t) {
      float* row = pt + std::int64_t(pid[t]) * hidden;
      for (std::int64_t h = h0; h < h1; ++h) row[h] += scale * pd[t * hidden + h];
    }
  });
}

namespace {
// P[r, j] = exp(logits[r, v0 + j] − lse[r]) for one chunk of width c, packed [rows, c].
void chunk_probs(const float* logits, const std::vector<double>& lse, std::int64_t vocab, std::int64_t v0,
                 std::int64_t c, float* p) {
  const std::int64_t rows = static_cast<std::int64_t>(lse.size());
  parallel_for("embedding.soft.probs", rows, 20 * c, [&](std::int64_t r) {
    for (std::int64_t j = 0; j < c; ++j)
      p[r * c + j] =
          static_cast<float>(std::exp(double(logits[r * vocab + v0 + j]) - lse[static_cast<std::size_t>(r)]));
  });
}
}  // namespace

void soft_embedding(const Tensor& logits, const Tensor& table, float scale, Tensor& soft, Tensor& lse,
                    std::int64_t vocab_chunk) {
  const std::int64_t vocab = table.size(0), hidden = table.size(1), rows = lse.numel();
  const float* pl = logits.data<float>();
  const float* pt = table.data<float>();
  float* ps = soft.data<float>();
  float* plse = lse.data<float>();
  // Softmax statistics, one streaming pass per row. The forward uses them in double; the backward gets
  // the fp32 lse, whose rounding (<= 2e-6 relative for |lse| < 64) scales its P by as much.
  std::vector<double> row_lse(static_cast<std::size_t>(rows));
  parallel_for("embedding.soft.lse", rows, 20 * vocab, [&](std::int64_t r) {
    const float* l = pl + r * vocab;
    const double m = *std::max_element(l, l + vocab);
    double z = 0;
    for (std::int64_t v = 0; v < vocab; ++v) z += std::exp(double(l[v]) - m);
    row_lse[static_cast<std::size_t>(r)] = m + std::log(z);
    plse[r] = static_cast<float>(row_lse[static_cast<std::size_t>(r)]);
  });
  const std::int64_t chunk = std::min(vocab_chunk, vocab);
  std::vector<float> p(static_cast<std::size_t>(rows * chunk));
  for (std::int64_t v0 = 0; v0 < vocab; v0 += chunk) {
    const std::int64_t c = std::min(chunk, vocab - v0);
    chunk_probs(pl, row_lse, vocab, v0, c, p.data());
    sgemm(false, false, rows, hidden, c, 1.f, p.data(), c, pt + v0 * hidden, hidden, v0 == 0 ? 0.f : 1.f, ps, hidden);
  }
  parallel_for("embedding.soft.scale", rows, hidden, [&](std::int64_t r) {  // (P @ E) · scale, the reference's order
    for (std::int64_t i = r * hidden; i < (r + 1) * hidden; ++i) ps[i] *= scale;
  });
}

void soft_embedding_backward(const Tensor& d_soft, const Tensor& logits, const Tensor& table, float scale,
                             const Tensor& soft, const Tensor& lse, Tensor* d_logits, Tensor& d_table,
                             std::int64_t vocab_chunk) {
  const std::int64_t vocab = table.size(0), hidden = table.size(1), rows = lse.numel();
  const float* pds = d_soft.data<float>();
  const float* pl = logits.data<float>();
  const float* pt = table.data<float>();
  const std::vector<double> row_lse(lse.data<float>(), lse.data<float>() + rows);
  float* pdt = d_table.data<float>();
  float* pdl = d_logits ? d_logits->data<float>() : nullptr;
  std::vector<double> rho(static_cast<std::size_t>(rows), 0.0);  // Σ_v P·dP = Σ_h d_soft · soft
  if (pdl) {
    const float* ps = soft.data<float>();
    parallel_for("embedding.soft_backward.rho", rows, hidden, [&](std::int64_t r) {
      for (std::int64_t h = 0; h < hidden; ++h)
        rho[static_cast<std::size_t>(r)] += double(pds[r * hidden + h]) * double(ps[r * hidden + h]);
    });
  }
  const std::int64_t chunk = std::min(vocab_chunk, vocab);
  std::vector<float> p(static_cast<std::size_t>(rows * chunk));
  for (std::int64_t v0 = 0; v0 < vocab; v0 += chunk) {
    const std::int64_t c = std::min(chunk, vocab - v0);
    chunk_probs(pl, row_lse, vocab, v0, c, p.data());
    // d_table[v0 : v0 + c] += scale · P_cᵀ @ d_soft
    sgemm(true, false, c, hidden, rows, scale, p.data(), c, pds, hidden, 1.f, pdt + v0 * hidden, hidden);
    if (!pdl) continue;
    // dP_c = scale · d_soft @ table[v0 : v0 + c]ᵀ, written straight into d_logits[:, v0 : v0 + c]
    sgemm(false, true, rows, c, hidden, scale, pds, hidden, pt + v0 * hidden, hidden, 0.f, pdl + v0, vocab);
    parallel_for("embedding.soft_backward.dlogits", rows, 2 * c, [&](std::int64_t r) {
      for (std::int64_t j = 0; j < c; ++j) {
        float& d = pdl[r * vocab + v0 + j];
        d = static_cast<float>(double(p[r * c + j]) * (double(d) - rho[static_cast<std::size_t>(r)]));
      }
    });
  }
}

}  // namespace cpu

EmbeddingGradPlan embedding_grad_plan(const std::int32_t* ids, std::int64_t count, std::int64_t vocab) {
  DG_CHECK(count >= 0 && count <= std::numeric_limits<std::int32_t>::max(),
           "embedding_backward: {} tokens do not fit the i32 plan", count);
  for (std::int64_t t = 0; t < count; ++t) cpu::check_id(ids[t], t, vocab);  // the CPU op's error
  EmbeddingGradPlan plan;
  plan.order.resize(static_cast<std::size_t>(count));
  for (std::int64_t t = 0; t < count; ++t) plan.order[static_cast<std::size_t>(t)] = static_cast<std::int32_t>(t);
  std::stable_sort(plan.order.begin(), plan.order.end(),
                   [ids](std::int32_t a, std::int32_t b) { return ids[a] < ids[b]; });
  for (std::int64_t k = 0; k < count; ++k) {
    const std::int32_t id = ids[plan.order[static_cast<std::size_t>(k)]];
    if (plan.ids.empty() || plan.ids.back() != id) {
      plan.ids.push_back(id);
      plan.starts.push_back(static_cast<std::int32_t>(k));
    }
  }
  plan.starts.push_back(static_cast<std::int32_t>(count));
  return plan;
}

}  // namespace dg
