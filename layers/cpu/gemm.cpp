// CPU GEMM on OpenBLAS (row-major cblas_sgemm), batched by a loop over strided entries.
#include <cblas.h>

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <vector>

#include "layers/ops.h"

namespace dg {

namespace {
bool g_batch_invariant = false;
}  // namespace

void set_batch_invariant(bool on) { g_batch_invariant = on; }
bool batch_invariant() { return g_batch_invariant; }

}  // namespace dg

namespace dg::cpu {

namespace {

void blas(bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k, float alpha, const float* a,
          std::int64_t lda, const float* b, std::int64_t ldb, float beta, float* c, std::int64_t ldc) {
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
              static_cast<blasint>(m), static_cast<blasint>(n), static_cast<blasint>(k), alpha, a,
              static_cast<blasint>(lda), b, static_cast<blasint>(ldb), beta, c, static_cast<blasint>(ldc));
}

// Batch-invariant form: one BLAS call per row of A, on copies of the row and of its output in 64-byte
// aligned scratch, so every call has the same shape and the same alignment whatever the call's row count
// and the row's place in it: a row's result depends on that row and B only. (OpenBLAS's kernels choose
// their blocking, edge handling and alignment peeling from the whole call, so a row's arithmetic can
// change with its batch mates.) The cost: B is streamed once per row instead of once per call.
void sgemm_rowwise(bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k, float alpha, const float* a,
                   std::int64_t lda, const float* b, std::int64_t ldb, float beta, float* c, std::int64_t ldc) {
  struct Free {
    void operator()(float* p) const { std::free(p); }
  };
  auto aligned = [](std::int64_t count) {
    return std::unique_ptr<float, Free>(static_cast<float*>(std::aligned_alloc(64, static_cast<std::size_t>((count * 4 + 63) / 64 * 64))));
  };
  const auto row = aligned(k), out = aligned(n);
  for (std::int64_t i = 0; i < m; ++i) {
    std::copy_n(a + i * lda, k, row.get());
    if (beta != 0.0f) std::copy_n(c + i * ldc, n, out.get());
    blas(false, trans_b, 1, n, k, alpha, row.get(), k, b, ldb, beta, out.get(), n);
    std::copy_n(out.get(), n, c + i * ldc);
  }
}

}  // namespace

void sgemm(bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k, float alpha,
           const float* a, std::int64_t lda, const float* b, std::int64_t ldb, float beta, float* c,
           std::int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (k == 0) {  // BLAS would be asked for nothing: C = beta * C by hand (beta = 0 clears NaNs)
    for (std::int64_t i = 0; i < m; ++i)
      for (std::int64_t j = 0; j < n; ++j) c[i * ldc + j] = beta == 0.f ? 0.f : beta * c[i * ldc + j];
    return;
  }
  if (batch_invariant() && !trans_a) return sgemm_rowwise(trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  blas(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

void gemm(const Tensor& a, const Tensor& b, Tensor& c, const GemmOpts& o) {
  const GemmDims d = gemm_dims(a, b, c, o);
  DG_CHECK(a.dtype() == DType::F32 && b.dtype() == DType::F32 && c.dtype() == DType::F32,
           "CPU gemm is f32 only: {}, {}, {}", a.describe(), b.describe(), c.describe());
  const float* pa = a.data<float>();
  const float* pb = b.data<float>();
  float* pc = c.data<float>();
  for (std::int64_t i = 0; i < d.batch; ++i)
    sgemm(o.trans_a, o.trans_b, d.m, d.n, d.k, o.alpha, pa + i * d.stride_a, d.lda, pb + i * d.stride_b, d.ldb,
          o.beta, pc + i * d.stride_c, d.ldc);
}

}  // namespace dg::cpu
