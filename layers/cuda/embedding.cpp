// Host side of the CUDA embedding ops (layers/ops/embedding.h): dtype checks, the id check and the
// backward's sorted plan on the host, scratch, and the kernel launches (layers/cuda/embedding.cu) around
// the cuBLASLt GEMMs of the soft embedding. Shapes were validated by layers/cpu/embedding.cpp.
#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "layers/cuda/check.h"
#include "layers/cuda/context.h"
#include "layers/cuda/embedding_kernels.h"
#include "layers/ops.h"

namespace dg::cuda {

namespace {

void check_float(const char* op, std::initializer_list<const Tensor*> tensors) {
  for (const Tensor* t : tensors)
    if (t)
      DG_CHECK(t->dtype() == DType::F32 || t->dtype() == DType::BF16, "{}: {} must be bf16 or f32 on the device", op,
               t->describe());
}

std::vector<std::int32_t> ids_on_host(const Tensor& ids) {
  std::vector<std::int32_t> host(static_cast<std::size_t>(ids.numel()));
  if (!host.empty()) {
    DG_CUDA(cudaMemcpyAsync(host.data(), ids.raw(), host.size() * sizeof(std::int32_t), cudaMemcpyDeviceToHost,
                            stream()));
    DG_CUDA(cudaStreamSynchronize(stream()));
  }
  return host;
}

// cuBLASLt picks algorithms assuming 256-byte aligned operands unless told otherwise; the GEMMs here
// only get such operands (fresh allocations, or views that happen to be aligned; others are copied).
bool aligned(const Tensor& t) { return reinterpret_cast<std::uintptr_t>(t.raw()) % 256 == 0; }

// Rows [v0, v0 + c) of a [V, H] device table as a GEMM operand: the view when aligned, else a copy in
// `buf` (allocated on first need with `cap` rows).
Tensor table_rows(const Tensor& table, std::int64_t v0, std::int64_t c, std::int64_t cap, Tensor& buf) {
  Tensor v = table.rows(v0, v0 + c);
  if (aligned(v)) return v;
  if (!buf.raw()) buf = Tensor::empty({cap, table.size(1)}, table.dtype(), Device::CUDA);
  DG_CUDA(cudaMemcpyAsync(buf.raw(), v.raw(), v.nbytes(), cudaMemcpyDeviceToDevice, stream()));
  return Tensor::view_of(buf.raw(), {c, table.size(1)}, table.dtype(), Device::CUDA);
}

}  // namespace

void embedding(const Tensor& ids, const Tensor& table, float scale, Tensor& out) {
  check_float("embedding", {&table, &out});
  const std::int64_t vocab = table.size(0), hidden = table.size(1), count = ids.numel();
  const std::vector<std::int32_t> host = ids_on_host(ids);
  for (std::int64_t t = 0; t < count; ++t) {
    const std::int32_t id = host[static_cast<std::size_t>(t)];
    if (id < 0 || id >= vocab)
      fail("embedding: token id {} at position {} is outside the vocabulary [0, {})", id, t, vocab);
  }
  DG_CUDA(kernels::embedding_lookup(ids.data<std::int32_t>(), table.raw(), table.dtype(), scale, out.raw(),
                                    out.dtype(), count, vocab, hidden, stream()));
}

void embedding_backward(const Tensor& ids, const Tensor& d_out, float scale, Tensor& d_table) {
  check_float("embedding_backward", {&d_out, &d_table});
  const std::int64_t vocab = d_table.size(0), hidden = d_table.size(1);
  const std::vector<std::int32_t> host = ids_on_host(ids);
  const EmbeddingGradPlan plan = embedding_grad_plan(host.data(), ids.numel(), vocab);  // throws on a bad id
  const std::int64_t segments = static_cast<std::int64_t>(plan.ids.size());
  if (segments == 0 || hidden == 0) return;
  // One upload: order [T] | ids [U] | starts [U + 1].
  std::vector<std::int32_t> packed;
  packed.reserve(plan.order.size() + plan.ids.size() + plan.starts.size());
  packed.insert(packed.end(), plan.order.begin(), plan.order.end());
  packed.insert(packed.end(), plan.ids.begin(), plan.ids.end());
  packed.insert(packed.end(), plan.starts.begin(), plan.starts.end());
  Tensor dev = Tensor::empty({static_cast<std::int64_t>(packed.size())}, DType::I32, Device::CUDA);
  DG_CUDA(cudaMemcpyAsync(dev.raw(), packed.data(), packed.size() * sizeof(std::int32_t), cudaMemcpyHostToDevice,
                          stream()));
  const std::int32_t* order = dev.data<std::int32_t>();
  const std::int32_t* seg_ids = order + plan.order.size();
  const std::int32_t* starts = seg_ids + plan.ids.size();
  DG_CUDA(kernels::embedding_grad(order, seg_ids, starts, segments, d_out.raw(), d_out.dtype(), scale, d_table.raw(),
                                  d_table.dtype(), hidden, stream()));
  // `packed` must outlive the copy: make the stream reach it before the host buffer goes away.
  DG_CUDA(cudaStreamSynchronize(stream()));
}

void soft_embedding(const Tensor& logits, const Tensor& table, float scale, Tensor& soft, Tensor& lse,
                    std::int64_t vocab_chunk) {
  check_float("soft_embedding", {&logits, &table, &soft});
  DG_CHECK(lse.dtype() == DType::F32, "soft_embedding: lse {} must be f32", lse.describe());
  const std::int64_t vocab = table.size(0), hidden = table.size(1), rows = lse.numel();
  DG_CUDA(kernels::row_logsumexp(logits.raw(), logits.dtype(), lse.data<float>(), rows, vocab, stream()));
  if (rows == 0 || hidden == 0) return;

  const DType cd = table.dtype();  // the GEMMs' input dtype: probabilities are rounded to it
  const std::int64_t chunk = std::min(vocab_chunk, vocab);
  Tensor probs = Tensor::empty({rows * chunk}, cd, Device::CUDA);
  // fp32 accumulator of P @ E: soft itself when it is an aligned f32 tensor.
  const bool in_place = soft.dtype() == DType::F32 && aligned(soft);
  Tensor acc = in_place ? soft.reshape({rows, hidden}) : Tensor::empty({rows, hidden}, DType::F32, Device::CUDA);
  Tensor table_buf;
  for (std::int64_t v0 = 0; v0 < vocab; v0 += chunk) {
    const std::int64_t c = std::min(chunk, vocab - v0);
    DG_CUDA(kernels::softmax_chunk(logits.raw(), logits.dtype(), lse.data<float>(), rows, vocab, v0, c, probs.raw(),
                                   cd, stream()));
    const Tensor pc = Tensor::view_of(probs.raw(), {rows, c}, cd, Device::CUDA);
    cuda::gemm(pc, table_rows(table, v0, c, chunk, table_buf), acc, GemmOpts{.beta = v0 == 0 ? 0.0f : 1.0f});
  }
  // (P @ E) · scale, the reference's order
  DG_CUDA(kernels::scale_f32(acc.data<float>(), scale, soft.raw(), soft.dtype(), rows * hidden, stream()));
}

void soft_embedding_backward(const Tensor& d_soft, const Tensor& logits, const Tensor& table, float scale,
                             const Tensor& soft, const Tensor& lse, Tensor* d_logits, Tensor& d_table,
                             std::int64_t vocab_chunk) {
  const char* op = "soft_embedding_backward";
  check_float(op, {&d_soft, &logits, &table, &soft, d_logits, &d_table});
  DG_CHECK(lse.dtype() == DType::F32, "{}: lse {} must be f32", op, lse.describe());
  const std::int64_t vocab = table.size(0), hidden = table.size(1), rows = lse.numel();
  if (rows == 0) return;  // nothing to add to d_table; d_logits is empty

  const DType cd = table.dtype();
  // d_soft as a GEMM operand in the table's dtype, aligned.
  Tensor ds = d_soft.reshape({rows, hidden});
  if (ds.dtype() != cd || !aligned(ds)) {
    Tensor copy = Tensor::empty({rows, hidden}, cd, Device::CUDA);
    if (ds.dtype() != cd) cuda::convert(ds, copy);
    else DG_CUDA(cudaMemcpyAsync(copy.raw(), ds.raw(), ds.nbytes(), cudaMemcpyDeviceToDevice, stream()));
    ds = copy;
  }
  Tensor rho;  // Σ_h d_soft · soft per row (from the caller's d_soft, not the rounded copy)
  if (d_logits) {
    rho = Tensor::empty({rows}, DType::F32, Device::CUDA);
    DG_CUDA(kernels::row_dot(d_soft.raw(), d_soft.dtype(), soft.raw(), soft.dtype(), rho.data<float>(), rows, hidden,
                             stream()));
  }

  const std::int64_t chunk = std::min(vocab_chunk, vocab);
  Tensor probs = Tensor::empty({rows * chunk}, cd, Device::CUDA);
  Tensor dp = d_logits ? Tensor::empty({rows * chunk}, DType::F32, Device::CUDA) : Tensor();
  Tensor table_buf, grad_buf;
  for (std::int64_t v0 = 0; v0 < vocab; v0 += chunk) {
    const std::int64_t c = std::min(chunk, vocab - v0);
    DG_CUDA(kernels::softmax_chunk(logits.raw(), logits.dtype(), lse.data<float>(), rows, vocab, v0, c, probs.raw(),
                                   cd, stream()));
    const Tensor pc = Tensor::view_of(probs.raw(), {rows, c}, cd, Device::CUDA);
    // d_table[v0 : v0 + c] += scale · P_cᵀ @ d_soft: straight into d_table when cuBLASLt can write it,
    // else into f32 scratch that is then added.
    if (hidden > 0) {
      Tensor dtc = d_table.rows(v0, v0 + c);
      if (aligned(dtc) && (d_table.dtype() == DType::F32 || d_table.dtype() == cd)) {
        cuda::gemm(pc, ds, dtc, GemmOpts{.trans_a = true, .alpha = scale, .beta = 1.0f});
      } else {
        if (!grad_buf.raw()) grad_buf = Tensor::empty({chunk, hidden}, DType::F32, Device::CUDA);
        Tensor g = Tensor::view_of(grad_buf.raw(), {c, hidden}, DType::F32, Device::CUDA);
        cuda::gemm(pc, ds, g, GemmOpts{.trans_a = true, .alpha = scale, .beta = 0.0f});
        DG_CUDA(kernels::add_f32(g.data<float>(), dtc.raw(), dtc.dtype(), c * hidden, stream()));
      }
    }
    if (!d_logits) continue;
    // dP_c = scale · d_soft @ table[v0 : v0 + c]ᵀ, then d_logits = P ⊙ (dP − rho)
    Tensor dpc = Tensor::view_of(dp.raw(), {rows, c}, DType::F32, Device::CUDA);
    if (hidden > 0)
      cuda::gemm(ds, table_rows(table, v0, c, chunk, table_buf), dpc, GemmOpts{.trans_b = true, .alpha = scale});
    else
      DG_CUDA(cudaMemsetAsync(dpc.raw(), 0, dpc.nbytes(), stream()));
    DG_CUDA(kernels::soft_logits_grad(logits.raw(), logits.dtype(), lse.data<float>(), dpc.data<float>(),
                                      rho.data<float>(), rows, vocab, v0, c, d_logits->raw(), d_logits->dtype(),
                                      stream()));
  }
}

}  // namespace dg::cuda
