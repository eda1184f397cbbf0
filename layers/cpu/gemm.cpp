// CPU GEMM on OpenBLAS (row-major cblas_sgemm), batched by a loop over strided entries.
#include <cblas.h>

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <new>
#include <vector>

#include "layers/ops.h"

namespace dg {

namespace {
bool g_batch_invariant = false;
}  // namespace

void set_batch_invariant(bool on) { g_batch_invariant = on; }
bool batch_invariant() { return g_batch_invariant; }

void set_cpu_threads(int n) { openblas_set_num_threads(std::max(1, n)); }
int cpu_threads() { return openblas_get_num_threads(); }

}  // namespace dg

namespace dg::cpu {

namespace {

// 64-byte aligned scratch of the batch-invariant GEMM, grown as needed (the same alignment for every call).
class AlignedScratch {
 public:
  ~AlignedScratch() { release(); }
  float* get(std::int64_t count) {
    if (count > size_) {
      release();
      p_ = static_cast<float*>(::operator new(static_cast<std::size_t>(count) * sizeof(float), std::align_val_t{64}));
      std::fill_n(p_, count, 0.f);
      size_ = count;
    }
    return p_;
  }

 private:
  void release() {
    if (p_ != nullptr) ::operator delete(p_, std::align_val_t{64});
    p_ = nullptr;
    size_ = 0;
  }
  float* p_ = nullptr;
  std::int64_t size_ = 0;
};

void blas(bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k, float alpha, const float* a,
          std::int64_t lda, const float* b, std::int64_t ldb, float beta, float* c, std::int64_t ldc) {
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
              static_cast<blasint>(m), static_cast<blasint>(n), static_cast<blasint>(k), alpha, a,
              static_cast<blasint>(lda), b, static_cast<blasint>(ldb), beta, c, static_cast<blasint>(ldc));
}

// Batch-invariant form: A's rows go through BLAS in tiles of kInvariantRows, each tile copied into 64-byte
// aligned scratch, so every call has the same shape [kInvariantRows, n, k] and the same alignment whatever
// the call's row count and a row's place in it. OpenBLAS chooses its kernel, blocking and edge handling from
// the call's shape, and its micro-kernels run the same instructions for every row of a tile, so a row's
// result depends on that row and B only. (A tile's unused rows hold old scratch: GEMM rows do not mix.)
// The cost: up to kInvariantRows - 1 padding rows per call, and B streamed once per tile.
constexpr std::int64_t kInvariantRows = 16;

void sgemm_row_tiles(bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k, float alpha, const float* a,
                     std::int64_t lda, const float* b, std::int64_t ldb, float beta, float* c, std::int64_t ldc) {
  thread_local AlignedScratch tile_a, tile_c;
  float* ta = tile_a.get(kInvariantRows * k);
  float* tc = tile_c.get(kInvariantRows * n);
  for (std::int64_t r0 = 0; r0 < m; r0 += kInvariantRows) {
    const std::int64_t rows = std::min(kInvariantRows, m - r0);
    for (std::int64_t i = 0; i < rows; ++i) {
      std::copy_n(a + (r0 + i) * lda, k, ta + i * k);
      if (beta != 0.0f) std::copy_n(c + (r0 + i) * ldc, n, tc + i * n);
    }
    blas(false, trans_b, kInvariantRows, n, k, alpha, ta, k, b, ldb, beta, tc, n);
    for (std::int64_t i = 0; i < rows; ++i) std::copy_n(tc + i * n, n, c + (r0 + i) * ldc);
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
  if (batch_invariant() && !trans_a) return sgemm_row_tiles(trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
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
