// CUDA GEMM on cuBLASLt: bf16 (or f32) inputs, fp32 accumulation, bf16 or f32 output, strided batches.
// Row-major C = op(A) op(B) is computed as the column-major C^T = op(B)^T op(A)^T, so A and B swap places.
#include <cublasLt.h>

#include <algorithm>
#include <cstdint>
#include <memory>

#include "layers/cuda/check.h"
#include "layers/cuda/context.h"
#include "layers/ops.h"

namespace dg::cuda {

namespace {

cudaDataType_t cuda_type(DType t) {
  switch (t) {
    case DType::F32: return CUDA_R_32F;
    case DType::BF16: return CUDA_R_16BF;
    case DType::F16: return CUDA_R_16F;
    default: fail("cuBLASLt gemm does not take {} operands", dtype_name(t));
  }
}

struct LtLayout {
  cublasLtMatrixLayout_t h = nullptr;
  // A row-major [rows, cols] matrix with leading dimension ld is a column-major [cols, rows] one.
  LtLayout(DType t, std::int64_t rows, std::int64_t cols, std::int64_t ld, std::int64_t batch, std::int64_t stride) {
    DG_CUBLAS(cublasLtMatrixLayoutCreate(&h, cuda_type(t), static_cast<std::uint64_t>(cols),
                                         static_cast<std::uint64_t>(rows), ld));
    if (batch > 1) {
      const int count = static_cast<int>(batch);
      DG_CUBLAS(cublasLtMatrixLayoutSetAttribute(h, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof(count)));
      DG_CUBLAS(cublasLtMatrixLayoutSetAttribute(h, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride,
                                                 sizeof(stride)));
    }
  }
  ~LtLayout() { cublasLtMatrixLayoutDestroy(h); }
  LtLayout(const LtLayout&) = delete;
  LtLayout& operator=(const LtLayout&) = delete;
};

// One cuBLASLt matmul on raw pointers: row-major C = alpha op(A) op(B) + beta C with the dims d.
void matmul(const void* a, DType at, const void* b, DType bt, void* c, DType ct, const GemmDims& d,
            const GemmOpts& o) {
  cublasLtMatmulDesc_t op = nullptr;
  DG_CUBLAS(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  std::unique_ptr<std::remove_pointer_t<cublasLtMatmulDesc_t>, decltype(&cublasLtMatmulDescDestroy)> op_guard(
      op, cublasLtMatmulDescDestroy);
  // Column-major view: first operand is B (op = trans_b), second is A (op = trans_a).
  const cublasOperation_t tb = o.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t ta = o.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  DG_CUBLAS(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &tb, sizeof(tb)));
  DG_CUBLAS(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &ta, sizeof(ta)));

  const std::int64_t b_rows = o.trans_b ? d.n : d.k, b_cols = o.trans_b ? d.k : d.n;
  const std::int64_t a_rows = o.trans_a ? d.k : d.m, a_cols = o.trans_a ? d.m : d.k;
  const LtLayout lb(bt, b_rows, b_cols, d.ldb, d.batch, d.stride_b);
  const LtLayout la(at, a_rows, a_cols, d.lda, d.batch, d.stride_a);
  const LtLayout lc(ct, d.m, d.n, d.ldc, d.batch, d.stride_c);

  std::size_t ws_bytes = 0;
  void* ws = lt_workspace(&ws_bytes);
  cublasLtMatmulPreference_t pref = nullptr;
  DG_CUBLAS(cublasLtMatmulPreferenceCreate(&pref));
  std::unique_ptr<std::remove_pointer_t<cublasLtMatmulPreference_t>, decltype(&cublasLtMatmulPreferenceDestroy)>
      pref_guard(pref, cublasLtMatmulPreferenceDestroy);
  DG_CUBLAS(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_bytes,
                                                 sizeof(ws_bytes)));
  // cuBLASLt assumes 256-byte aligned operands unless told otherwise; row views (vocabulary chunks,
  // expert slices) need not be, so state each pointer's actual alignment.
  auto alignment = [](const void* p) {
    const auto addr = reinterpret_cast<std::uintptr_t>(p);
    std::uint32_t bytes = 256;
    while (bytes > 1 && addr % bytes != 0) bytes /= 2;
    return bytes;
  };
  const std::uint32_t al_b = alignment(b), al_a = alignment(a), al_c = alignment(c);
  // Column-major view: cuBLASLt's A is our B, its B is our A; C and D are c.
  DG_CUBLAS(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_b, sizeof(al_b)));
  DG_CUBLAS(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_a, sizeof(al_a)));
  DG_CUBLAS(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_c, sizeof(al_c)));
  DG_CUBLAS(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_c, sizeof(al_c)));
  cublasLtMatmulHeuristicResult_t heur{};
  int found = 0;
  DG_CUBLAS(cublasLtMatmulAlgoGetHeuristic(lt_handle(), op, lb.h, la.h, lc.h, lc.h, pref, 1, &heur, &found));
  if (found == 0) fail("cuBLASLt found no algorithm for gemm m={} n={} k={} batch={}", d.m, d.n, d.k, d.batch);
  DG_CUBLAS(cublasLtMatmul(lt_handle(), op, &o.alpha, b, lb.h, a, la.h, &o.beta, c, lc.h, c, lc.h, &heur.algo, ws,
                           ws_bytes, stream()));
}

// Batch-invariant form (set_batch_invariant): cuBLASLt picks its kernel, tiling and split-K from the
// whole call's shape and the operands' alignment, so a row's arithmetic can change with the number of
// rows around it. Here every call has the same shape [kInvariantRows, N, K] and 256-byte aligned A and C:
// the rows are copied in fixed tiles into scratch, multiplied, and copied back (a tile's unused rows hold
// whatever the scratch held: a GEMM's output row depends on its own input row only, so they are harmless). A row's result
// then depends on that row and B only. The cost: up to kInvariantRows - 1 padding rows per call (a
// single-row GEMM does the work of kInvariantRows rows) and two extra copies of A's and C's rows.
constexpr std::int64_t kInvariantRows = 64;

void gemm_row_tiles(const Tensor& a, const Tensor& b, Tensor& c, const GemmDims& d, const GemmOpts& o) {
  const std::size_t ea = dtype_size(a.dtype()), ec = dtype_size(c.dtype()), eb = dtype_size(b.dtype());
  const Scratch ta(static_cast<std::size_t>(kInvariantRows * d.k) * ea);
  const Scratch tc(static_cast<std::size_t>(kInvariantRows * d.n) * ec);
  const GemmDims tile{1, kInvariantRows, d.n, d.k, 0, 0, 0, d.k, d.ldb, d.n};
  for (std::int64_t i = 0; i < d.batch; ++i)
    for (std::int64_t r0 = 0; r0 < d.m; r0 += kInvariantRows) {
      const std::int64_t rows = std::min(kInvariantRows, d.m - r0);
      const auto* pa = static_cast<const char*>(a.raw()) + ((i * d.stride_a) + r0 * d.lda) * ea;
      auto* pc = static_cast<char*>(c.raw()) + ((i * d.stride_c) + r0 * d.ldc) * ec;
      const auto* pb = static_cast<const char*>(b.raw()) + i * d.stride_b * eb;
      DG_CUDA(cudaMemcpy2DAsync(ta.as<void>(), d.k * ea, pa, d.lda * ea, d.k * ea, rows, cudaMemcpyDeviceToDevice,
                                stream()));
      if (o.beta != 0.f)
        DG_CUDA(cudaMemcpy2DAsync(tc.as<void>(), d.n * ec, pc, d.ldc * ec, d.n * ec, rows, cudaMemcpyDeviceToDevice,
                                  stream()));
      matmul(ta.as<void>(), a.dtype(), pb, b.dtype(), tc.as<void>(), c.dtype(), tile, o);
      DG_CUDA(cudaMemcpy2DAsync(pc, d.ldc * ec, tc.as<void>(), d.n * ec, d.n * ec, rows, cudaMemcpyDeviceToDevice,
                                stream()));
    }
}

}  // namespace

void gemm(const Tensor& a, const Tensor& b, Tensor& c, const GemmOpts& o) {
  const GemmDims d = gemm_dims(a, b, c, o);
  DG_CHECK(a.dtype() == b.dtype() && (a.dtype() == DType::BF16 || a.dtype() == DType::F32),
           "CUDA gemm takes bf16 x bf16 or f32 x f32, got {} x {}", a.describe(), b.describe());
  DG_CHECK(c.dtype() == DType::F32 || c.dtype() == a.dtype(), "CUDA gemm output {} for {} inputs", c.describe(),
           dtype_name(a.dtype()));
  if (d.m == 0 || d.n == 0 || d.batch == 0) return;
  if (batch_invariant() && !o.trans_a) return gemm_row_tiles(a, b, c, d, o);
  matmul(a.raw(), a.dtype(), b.raw(), b.dtype(), c.raw(), c.dtype(), d, o);
}

}  // namespace dg::cuda
