// CUDA GEMM on cuBLASLt: bf16 (or f32) inputs, fp32 accumulation, bf16 or f32 output, strided batches.
// Row-major C = op(A) op(B) is computed as the column-major C^T = op(B)^T op(A)^T, so A and B swap places.
#include <cublasLt.h>

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

}  // namespace

void gemm(const Tensor& a, const Tensor& b, Tensor& c, const GemmOpts& o) {
  const GemmDims d = gemm_dims(a, b, c, o);
  DG_CHECK(a.dtype() == b.dtype() && (a.dtype() == DType::BF16 || a.dtype() == DType::F32),
           "CUDA gemm takes bf16 x bf16 or f32 x f32, got {} x {}", a.describe(), b.describe());
  DG_CHECK(c.dtype() == DType::F32 || c.dtype() == a.dtype(), "CUDA gemm output {} for {} inputs", c.describe(),
           dtype_name(a.dtype()));
  if (d.m == 0 || d.n == 0 || d.batch == 0) return;

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
  const LtLayout lb(b.dtype(), b_rows, b_cols, d.ldb, d.batch, d.stride_b);
  const LtLayout la(a.dtype(), a_rows, a_cols, d.lda, d.batch, d.stride_a);
  const LtLayout lc(c.dtype(), d.m, d.n, d.ldc, d.batch, d.stride_c);

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
  const std::uint32_t al_b = alignment(b.raw()), al_a = alignment(a.raw()), al_c = alignment(c.raw());
  // Column-major view: cuBLASLt's A is our B, its B is our A; C and D are c.
  DG_CUBLAS(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_b, sizeof(al_b)));
  DG_CUBLAS(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_a, sizeof(al_a)));
  DG_CUBLAS(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_c, sizeof(al_c)));
  DG_CUBLAS(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_c, sizeof(al_c)));
  cublasLtMatmulHeuristicResult_t heur{};
  int found = 0;
  DG_CUBLAS(cublasLtMatmulAlgoGetHeuristic(lt_handle(), op, lb.h, la.h, lc.h, lc.h, pref, 1, &heur, &found));
  if (found == 0) fail("cuBLASLt found no algorithm for gemm m={} n={} k={} batch={}", d.m, d.n, d.k, d.batch);
  DG_CUBLAS(cublasLtMatmul(lt_handle(), op, &o.alpha, b.raw(), lb.h, a.raw(), la.h, &o.beta, c.raw(), lc.h,
                           c.raw(), lc.h, &heur.algo, ws, ws_bytes, stream()));
}

}  // namespace dg::cuda
