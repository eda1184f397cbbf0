// Host side of the CUDA LM-head ops (layers/ops/head.h, layers/ops/embedding.h's soft embedding from
// hidden states): dtype checks, stream-ordered scratch, and the chunk loops. Each op walks the
// vocabulary in LmHeadOpts::vocab_chunk pieces; a piece's logits [rows, chunk] come from cuBLASLt
// (dg::cuda::gemm: bf16 or f32 operands, fp32 accumulation, f32 logits) and are reduced by the kernels
// of layers/cuda/head.cu. Rows are processed in tiles so that a logits chunk never exceeds
// kLogitsBudget floats: no op holds [T, V]. Shapes were validated by the dispatchers.
//
// GEMM operand alignment: cuBLASLt's heuristic assumes 256-byte aligned operands unless told otherwise
// (dg::cuda::gemm does not tell it), and the algorithm it picks may then refuse a less aligned pointer.
// Every operand passed here is therefore 256-byte aligned: scratch is (CUDA allocations are), and views
// of embedding rows (v0·H elements in) or row tiles are whenever H · element size is a multiple of 256
// (the real model: 2816 · 2 = 22 · 256) and the tensor's base is; otherwise the view is staged through
// aligned scratch (a device copy; the dembedding chunk is copied in and back out around its += GEMM).
//
// Host synchronisation: lm_head_cross_entropy(_backward) read the number of weighted rows (and a bad
// target, reported like the CPU) before launching the chunk loop, and the forward returns the loss;
// lm_head_sample reads the uniforms (range check) and, after each chunk, how many rows still wait for
// their sample (it stops at the chunk where every row has one). The other ops never synchronise.
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <vector>

#include "layers/cuda/check.h"
#include "layers/cuda/context.h"
#include "layers/cuda/head_kernels.h"
#include "layers/ops.h"

namespace dg::cuda {

namespace {

// Largest logits chunk held at once, in floats (256 MiB): rows per tile = kLogitsBudget / vocab_chunk.
constexpr std::int64_t kLogitsBudget = std::int64_t{64} << 20;

// Scratch, to_device, to_host: layers/cuda/context.h.

bool f32_or_bf16(const Tensor& t) { return t.dtype() == DType::F32 || t.dtype() == DType::BF16; }

void expect_type(const char* op, const char* name, const Tensor& t, DType dtype) {
  DG_CHECK(t.dtype() == dtype, "{}: {} must be {} on the device, got {}", op, name, dtype_name(dtype), t.describe());
}

// hidden and the tied embedding feed one GEMM: both bf16 or both f32.
void check_head_types(const char* op, const Tensor& hidden, const Tensor& embedding) {
  DG_CHECK(f32_or_bf16(hidden) && embedding.dtype() == hidden.dtype(),
           "{}: hidden {} and embedding {} must both be bf16 or both f32 on the device", op, hidden.describe(),
           embedding.describe());
  DG_CHECK(hidden.size(0) <= INT32_MAX && embedding.size(0) <= INT32_MAX, "{}: {} / {} too large for i32 row ids", op,
           hidden.describe(), embedding.describe());
}

constexpr std::uintptr_t kGemmAlign = 256;
bool gemm_aligned(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % kGemmAlign == 0; }

// A [rows, cols] device view at `p` (rows x cols elements of dtype).
Tensor view(const void* p, std::int64_t rows, std::int64_t cols, DType dtype) {
  return Tensor::view_of(const_cast<void*>(p), {rows, cols}, dtype, Device::CUDA);
}

// Rows of a tile of [n, H] row-major storage.
const void* row_ptr(const void* base, std::int64_t row, std::int64_t hidden, DType dtype) {
  return static_cast<const char*>(base) + static_cast<std::size_t>(row * hidden) * dtype_size(dtype);
}

// Stages [rows, cols] views whose pointer is not 256-byte aligned through an aligned buffer of `bytes`
// (0 when the caller knows every view it will pass is aligned).
class Stager {
 public:
  explicit Stager(std::size_t bytes) : buf_(bytes), bytes_(bytes) {
    DG_CHECK(bytes == 0 || gemm_aligned(buf_.as<void>()), "device scratch {} is not 256-byte aligned",
             buf_.as<void>());
  }
  // An aligned view with the contents of the view at p.
  Tensor in(const void* p, std::int64_t rows, std::int64_t cols, DType dtype) {
    if (gemm_aligned(p)) return view(p, rows, cols, dtype);
    const std::size_t n = static_cast<std::size_t>(rows * cols) * dtype_size(dtype);
    DG_CHECK(n <= bytes_, "staging {} bytes in a {}-byte buffer", n, bytes_);
    DG_CUDA(cudaMemcpyAsync(buf_.as<void>(), p, n, cudaMemcpyDeviceToDevice, stream()));
    return view(buf_.as<void>(), rows, cols, dtype);
  }
  // Copies a staged view back to p (nothing when `staged` is p itself).
  void out(const Tensor& staged, void* p) {
    if (staged.raw() != p) DG_CUDA(cudaMemcpyAsync(p, staged.raw(), staged.nbytes(), cudaMemcpyDeviceToDevice, stream()));
  }

 private:
  Scratch buf_;
  std::size_t bytes_;
};

// Bytes a Stager needs for views of `rows` x `cols` starting every `rows` rows from base: 0 when all
// of them are aligned.
std::size_t staging_bytes(const void* base, std::int64_t rows, std::int64_t cols, DType dtype, bool single) {
  const std::size_t view_bytes = static_cast<std::size_t>(rows * cols) * dtype_size(dtype);
  const bool aligned = gemm_aligned(base) && (single || view_bytes % kGemmAlign == 0);
  return aligned ? 0 : view_bytes;
}

struct Chunking {
  std::int64_t chunk = 1, tile_rows = 1;
};
Chunking chunking(const LmHeadOpts& opts, std::int64_t vocab, std::int64_t rows) {
  Chunking c;
  c.chunk = std::min(opts.vocab_chunk, vocab);
  c.tile_rows = std::max<std::int64_t>(1, std::min(rows, kLogitsBudget / c.chunk));
  return c;
}

// The GEMM operands of a chunk loop: row tiles of the (packed) hidden states and vocabulary chunks of
// the embedding, each 256-byte aligned (staged when the layout does not make it so).
class ChunkOperands {
 public:
  ChunkOperands(const void* hidden, std::int64_t rows, const Tensor& embedding, const Chunking& c)
      : h_(hidden),
        emb_(embedding.raw()),
        hdim_(embedding.size(1)),
        dt_(embedding.dtype()),
        h_stage_(staging_bytes(hidden, c.tile_rows, hdim_, dt_, rows <= c.tile_rows)),
        e_stage_(staging_bytes(emb_, c.chunk, hdim_, dt_, embedding.size(0) <= c.chunk)) {}
  Tensor hidden_tile(std::int64_t r0, std::int64_t nr) { return h_stage_.in(row_ptr(h_, r0, hdim_, dt_), nr, hdim_, dt_); }
  Tensor embedding_chunk(std::int64_t v0, std::int64_t vc) {
    return e_stage_.in(row_ptr(emb_, v0, hdim_, dt_), vc, hdim_, dt_);
  }

 private:
  const void* h_;
  const void* emb_;
  std::int64_t hdim_;
  DType dt_;
  Stager h_stage_, e_stage_;
};

// The rows of a loss op: those with nonzero weight (ascending), checked against the vocabulary.
struct WeightedRows {
  Scratch rows;
  std::int64_t n = 0;
  explicit WeightedRows(std::int64_t tokens) : rows(static_cast<std::size_t>(tokens) * 4) {}
};

void find_weighted_rows(const char* op, const Tensor& targets, const Tensor& loss_mask, std::int64_t vocab,
                        WeightedRows& out) {
  const std::int64_t tokens = targets.size(0);
  Scratch status(2 * sizeof(std::int32_t));
  const std::int32_t init[2] = {0, INT32_MAX};
  to_device(status.as<std::int32_t>(), init, 2);
  DG_CUDA(kernels::lm_head_weighted_rows(loss_mask.data<float>(), targets.data<std::int32_t>(), tokens, vocab,
                                         out.rows.as<std::int32_t>(), status.as<std::int32_t>(), stream()));
  std::int32_t result[2] = {0, INT32_MAX};
  to_host(result, status.as<std::int32_t>(), 2);
  if (result[1] != INT32_MAX) {
    const std::int64_t t = result[1];
    std::int32_t target = 0;
    float weight = 0;
    to_host(&target, targets.data<std::int32_t>() + t, 1);
    to_host(&weight, loss_mask.data<float>() + t, 1);
    fail("{}: target {} of row {} (weight {}) outside [0, {})", op, target, t, weight, vocab);
  }
  out.n = result[0];
}

// The hidden rows a loss op works on: hidden itself when every row is weighted, else a packed copy.
struct PackedHidden {
  Scratch packed;
  const void* p = nullptr;
  PackedHidden(const Tensor& hidden, const WeightedRows& rows)
      : packed(rows.n < hidden.size(0) ? static_cast<std::size_t>(rows.n) * hidden.size(1) * dtype_size(hidden.dtype())
                                       : 0) {
    if (rows.n < hidden.size(0)) {
      DG_CUDA(kernels::lm_head_gather_rows(hidden.raw(), static_cast<std::size_t>(hidden.size(1)) * dtype_size(hidden.dtype()),
                                           rows.rows.as<std::int32_t>(), rows.n, packed.as<void>(), stream()));
      p = packed.as<void>();
    } else {
      p = hidden.raw();
    }
  }
};

}  // namespace

// ---- fused cross-entropy ----------------------------------------------------------------------------------

double lm_head_cross_entropy(const Tensor& hidden, const Tensor& embedding, const Tensor& targets,
                             const Tensor& loss_mask, double normaliser, Tensor& lse, const LmHeadOpts& opts) {
  const char* op = "lm_head_cross_entropy";
  check_head_types(op, hidden, embedding);
  expect_type(op, "targets", targets, DType::I32);
  expect_type(op, "loss_mask", loss_mask, DType::F32);
  expect_type(op, "lse", lse, DType::F32);
  const std::int64_t t_count = hidden.size(0), v = embedding.size(0);
  if (t_count == 0) return 0.0;
  DG_CUDA(cudaMemsetAsync(lse.raw(), 0, lse.nbytes(), stream()));  // 0 on rows with weight 0
  WeightedRows rows(t_count);
  find_weighted_rows(op, targets, loss_mask, v, rows);
  const std::int64_t n = rows.n;
  if (n == 0) return 0.0;
  const PackedHidden h(hidden, rows);
  const Chunking c = chunking(opts, v, n);

  ChunkOperands ops(h.p, n, embedding, c);
  Scratch m(static_cast<std::size_t>(n) * 4), sum(static_cast<std::size_t>(n) * 8), target_logit(static_cast<std::size_t>(n) * 4);
  Scratch logits(static_cast<std::size_t>(c.tile_rows * c.chunk) * 4);
  const std::int32_t* prow = rows.rows.as<std::int32_t>();
  for (std::int64_t r0 = 0; r0 < n; r0 += c.tile_rows) {
    const std::int64_t nr = std::min(c.tile_rows, n - r0);
    const Tensor h_tile = ops.hidden_tile(r0, nr);
    for (std::int64_t v0 = 0; v0 < v; v0 += c.chunk) {
      const std::int64_t vc = std::min(c.chunk, v - v0);
      Tensor lg = view(logits.as<float>(), nr, vc, DType::F32);
      cuda::gemm(h_tile, ops.embedding_chunk(v0, vc), lg, {.trans_b = true});
      DG_CUDA(kernels::lm_head_ce_chunk(logits.as<float>(), nr, vc, v0, opts.softcap, v0 == 0, prow + r0,
                                        targets.data<std::int32_t>(), m.as<float>() + r0, sum.as<double>() + r0,
                                        target_logit.as<float>() + r0, stream()));
    }
  }
  Scratch loss(sizeof(double));
  DG_CUDA(kernels::lm_head_ce_finish(m.as<float>(), sum.as<double>(), target_logit.as<float>(), prow,
                                     loss_mask.data<float>(), n, lse.data<float>(), loss.as<double>(), stream()));
  double total = 0;
  to_host(&total, loss.as<double>(), 1);
  return total / normaliser;
}

void lm_head_cross_entropy_backward(const Tensor& hidden, const Tensor& embedding, const Tensor& targets,
                                    const Tensor& loss_mask, double normaliser, const Tensor& lse, float dloss,
                                    Tensor& dhidden, Tensor* dembedding, const LmHeadOpts& opts) {
  const char* op = "lm_head_cross_entropy_backward";
  check_head_types(op, hidden, embedding);
  expect_type(op, "targets", targets, DType::I32);
  expect_type(op, "loss_mask", loss_mask, DType::F32);
  expect_type(op, "lse", lse, DType::F32);
  DG_CHECK(f32_or_bf16(dhidden), "{}: dhidden {} must be bf16 or f32 on the device", op, dhidden.describe());
  if (dembedding)
    DG_CHECK(dembedding->dtype() == DType::F32 || dembedding->dtype() == embedding.dtype(),
             "{}: dembedding {} must be f32 or the embedding's dtype", op, dembedding->describe());
  const std::int64_t t_count = hidden.size(0), hdim = hidden.size(1), v = embedding.size(0);
  const DType dt = hidden.dtype();
  if (t_count == 0) return;
  WeightedRows rows(t_count);
  find_weighted_rows(op, targets, loss_mask, v, rows);
  const std::int64_t n = rows.n;
  if (n < t_count) DG_CUDA(cudaMemsetAsync(dhidden.raw(), 0, dhidden.nbytes(), stream()));  // rows with weight 0
  if (n == 0) return;
  const PackedHidden h(hidden, rows);
  const Chunking c = chunking(opts, v, n);

  // logits (f32) -> g in the embedding's dtype (in place when f32), the operand of the two GEMMs below
  Scratch logits(static_cast<std::size_t>(c.tile_rows * c.chunk) * 4);
  Scratch g16(dt == DType::F32 ? 0 : static_cast<std::size_t>(c.tile_rows * c.chunk) * dtype_size(dt));
  void* g = dt == DType::F32 ? logits.as<void>() : g16.as<void>();
  Scratch dh(static_cast<std::size_t>(c.tile_rows * hdim) * 4);
  ChunkOperands ops(h.p, n, embedding, c);
  const DType de_type = dembedding ? dembedding->dtype() : DType::F32;
  Stager de_stage(dembedding ? staging_bytes(dembedding->raw(), c.chunk, hdim, de_type, v <= c.chunk) : 0);
  const std::int32_t* prow = rows.rows.as<std::int32_t>();
  for (std::int64_t r0 = 0; r0 < n; r0 += c.tile_rows) {
    const std::int64_t nr = std::min(c.tile_rows, n - r0);
    const Tensor h_tile = ops.hidden_tile(r0, nr);
    Tensor dh_tile = view(dh.as<float>(), nr, hdim, DType::F32);
    for (std::int64_t v0 = 0; v0 < v; v0 += c.chunk) {
      const std::int64_t vc = std::min(c.chunk, v - v0);
      const Tensor e_chunk = ops.embedding_chunk(v0, vc);
      Tensor lg = view(logits.as<float>(), nr, vc, DType::F32);
      cuda::gemm(h_tile, e_chunk, lg, {.trans_b = true});
      DG_CUDA(kernels::lm_head_ce_grad(logits.as<float>(), nr, vc, v0, opts.softcap, prow + r0,
                                       targets.data<std::int32_t>(), loss_mask.data<float>(), lse.data<float>(), dloss,
                                       normaliser, g, dt, stream()));
      const Tensor g_tile = view(g, nr, vc, dt);
      cuda::gemm(g_tile, e_chunk, dh_tile, {.beta = v0 == 0 ? 0.0f : 1.0f});  // dh = Σ_chunks g · E_chunk
      if (dembedding) {  // dE_chunk += gᵀ · h
        void* de_rows = const_cast<void*>(row_ptr(dembedding->raw(), v0, hdim, de_type));
        Tensor de_chunk = de_stage.in(de_rows, vc, hdim, de_type);
        cuda::gemm(g_tile, h_tile, de_chunk, {.trans_a = true, .beta = 1.0f});
        de_stage.out(de_chunk, de_rows);
      }
    }
    DG_CUDA(kernels::lm_head_scatter_rows(dh.as<float>(), nr, hdim, prow + r0, dhidden.raw(), dhidden.dtype(), stream()));
  }
}

// ---- sampler statistics -----------------------------------------------------------------------------------

void lm_head_entropy_argmax(const Tensor& hidden, const Tensor& embedding, float temperature, Tensor& entropy,
                            Tensor& argmax, Tensor* logsumexp, const LmHeadOpts& opts) {
  const char* op = "lm_head_entropy_argmax";
  check_head_types(op, hidden, embedding);
  expect_type(op, "entropy", entropy, DType::F32);
  expect_type(op, "argmax", argmax, DType::I32);
  if (logsumexp) expect_type(op, "logsumexp", *logsumexp, DType::F32);
  const std::int64_t t_count = hidden.size(0), v = embedding.size(0);
  if (t_count == 0) return;
  const Chunking c = chunking(opts, v, t_count);
  ChunkOperands ops(hidden.raw(), t_count, embedding, c);
  Scratch m(static_cast<std::size_t>(t_count) * 4), s(static_cast<std::size_t>(t_count) * 8),
      a(static_cast<std::size_t>(t_count) * 8);
  Scratch logits(static_cast<std::size_t>(c.tile_rows * c.chunk) * 4);
  for (std::int64_t r0 = 0; r0 < t_count; r0 += c.tile_rows) {
    const std::int64_t nr = std::min(c.tile_rows, t_count - r0);
    const Tensor h_tile = ops.hidden_tile(r0, nr);
    for (std::int64_t v0 = 0; v0 < v; v0 += c.chunk) {
      const std::int64_t vc = std::min(c.chunk, v - v0);
      Tensor lg = view(logits.as<float>(), nr, vc, DType::F32);
      cuda::gemm(h_tile, ops.embedding_chunk(v0, vc), lg, {.trans_b = true});
      DG_CUDA(kernels::lm_head_entropy_chunk(logits.as<float>(), nr, vc, v0, opts.softcap, temperature, v0 == 0,
                                             m.as<float>() + r0, s.as<double>() + r0, a.as<double>() + r0,
                                             argmax.data<std::int32_t>() + r0, stream()));
    }
  }
  DG_CUDA(kernels::lm_head_entropy_finish(m.as<float>(), s.as<double>(), a.as<double>(), t_count,
                                          entropy.data<float>(), logsumexp ? logsumexp->data<float>() : nullptr,
                                          stream()));
}

void lm_head_sample(const Tensor& hidden, const Tensor& embedding, float temperature, const Tensor& logsumexp,
                    const Tensor& uniforms, Tensor& sampled, const LmHeadOpts& opts) {
  const char* op = "lm_head_sample";
  check_head_types(op, hidden, embedding);
  expect_type(op, "logsumexp", logsumexp, DType::F32);
  expect_type(op, "uniforms", uniforms, DType::F32);
  expect_type(op, "sampled", sampled, DType::I32);
  const std::int64_t t_count = hidden.size(0), v = embedding.size(0);
  std::vector<float> u(static_cast<std::size_t>(t_count));
  to_host(u.data(), uniforms.data<float>(), u.size());
  for (std::int64_t t = 0; t < t_count; ++t)
    if (!(u[t] >= 0.0f && u[t] < 1.0f)) fail("{}: uniform {} of row {} outside [0, 1)", op, u[t], t);
  if (t_count == 0) return;
  const Chunking c = chunking(opts, v, t_count);
  // cum (double), last_nonzero and done (i32) start at 0, as on the CPU; then the remaining-row counter
  const std::size_t cum_bytes = static_cast<std::size_t>(t_count) * 8, idx_bytes = static_cast<std::size_t>(t_count) * 4;
  Scratch state(cum_bytes + 2 * idx_bytes + 4);
  DG_CUDA(cudaMemsetAsync(state.as<void>(), 0, cum_bytes + 2 * idx_bytes, stream()));
  double* cum = state.as<double>();
  auto* last_nonzero = reinterpret_cast<std::int32_t*>(state.as<char>() + cum_bytes);
  std::int32_t* done = last_nonzero + t_count;
  std::int32_t* remaining = done + t_count;
  ChunkOperands ops(hidden.raw(), t_count, embedding, c);
  Scratch logits(static_cast<std::size_t>(c.tile_rows * c.chunk) * 4);
  for (std::int64_t r0 = 0; r0 < t_count; r0 += c.tile_rows) {
    const std::int64_t nr = std::min(c.tile_rows, t_count - r0);
    const std::int32_t waiting = static_cast<std::int32_t>(nr);
    to_device(remaining, &waiting, 1);
    const Tensor h_tile = ops.hidden_tile(r0, nr);
    for (std::int64_t v0 = 0; v0 < v; v0 += c.chunk) {
      const std::int64_t vc = std::min(c.chunk, v - v0);
      Tensor lg = view(logits.as<float>(), nr, vc, DType::F32);
      cuda::gemm(h_tile, ops.embedding_chunk(v0, vc), lg, {.trans_b = true});
      DG_CUDA(kernels::lm_head_sample_chunk(logits.as<float>(), nr, vc, v0, opts.softcap, temperature,
                                            logsumexp.data<float>() + r0, uniforms.data<float>() + r0, cum + r0,
                                            last_nonzero + r0, done + r0, sampled.data<std::int32_t>() + r0, remaining,
                                            stream()));
      std::int32_t left = 0;
      to_host(&left, remaining, 1);
      if (left == 0) break;  // every row of the tile has its sample
    }
  }
  DG_CUDA(kernels::lm_head_sample_finish(done, last_nonzero, t_count, sampled.data<std::int32_t>(), stream()));
}

// ---- soft embedding ------------------------------------------------------------------------------------------

void lm_head_soft_embedding(const Tensor& hidden, const Tensor& embedding, float temperature, float scale,
                            Tensor& soft, const LmHeadOpts& opts) {
  const char* op = "lm_head_soft_embedding";
  check_head_types(op, hidden, embedding);
  DG_CHECK(f32_or_bf16(soft), "{}: soft {} must be bf16 or f32 on the device", op, soft.describe());
  const std::int64_t t_count = hidden.size(0), hdim = hidden.size(1), v = embedding.size(0);
  const DType dt = hidden.dtype();
  if (t_count == 0) return;
  DG_CHECK(v >= 1, "{}: empty vocabulary in {}", op, embedding.describe());
  const Chunking c = chunking(opts, v, t_count);
  Scratch m(static_cast<std::size_t>(t_count) * 4), z(static_cast<std::size_t>(t_count) * 8),
      rescale(static_cast<std::size_t>(t_count) * 4);
  // logits (f32) -> p = exp(lg - m) in the embedding's dtype (in place when f32), the GEMM operand
  Scratch logits(static_cast<std::size_t>(c.tile_rows * c.chunk) * 4);
  Scratch p16(dt == DType::F32 ? 0 : static_cast<std::size_t>(c.tile_rows * c.chunk) * dtype_size(dt));
  void* p = dt == DType::F32 ? logits.as<void>() : p16.as<void>();
  Scratch acc(static_cast<std::size_t>(c.tile_rows * hdim) * 4);
  ChunkOperands ops(hidden.raw(), t_count, embedding, c);
  for (std::int64_t r0 = 0; r0 < t_count; r0 += c.tile_rows) {
    const std::int64_t nr = std::min(c.tile_rows, t_count - r0);
    const Tensor h_tile = ops.hidden_tile(r0, nr);
    Tensor acc_tile = view(acc.as<float>(), nr, hdim, DType::F32);
    for (std::int64_t v0 = 0; v0 < v; v0 += c.chunk) {
      const std::int64_t vc = std::min(c.chunk, v - v0);
      const Tensor e_chunk = ops.embedding_chunk(v0, vc);
      Tensor lg = view(logits.as<float>(), nr, vc, DType::F32);
      cuda::gemm(h_tile, e_chunk, lg, {.trans_b = true});
      DG_CUDA(kernels::lm_head_soft_chunk(logits.as<float>(), nr, vc, opts.softcap, temperature, v0 == 0,
                                          m.as<float>() + r0, z.as<double>() + r0, rescale.as<float>() + r0, p, dt,
                                          stream()));
      if (v0 > 0) DG_CUDA(kernels::lm_head_scale_rows(acc.as<float>(), nr, hdim, rescale.as<float>() + r0, stream()));
      cuda::gemm(view(p, nr, vc, dt), e_chunk, acc_tile, {.beta = v0 == 0 ? 0.0f : 1.0f});  // acc += p · E_chunk
    }
    DG_CUDA(kernels::lm_head_soft_finish(acc.as<float>(), z.as<double>() + r0, nr, hdim, scale,
                                         static_cast<char*>(soft.raw()) +
                                             static_cast<std::size_t>(r0 * hdim) * dtype_size(soft.dtype()),
                                         soft.dtype(), stream()));
  }
}

}  // namespace dg::cuda
