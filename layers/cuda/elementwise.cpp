// Host side of the CUDA elementwise ops (layers/ops/elementwise.h): dtype checks and launches
// (layers/cuda/elementwise.cu). Shapes were validated by the dispatchers in layers/cpu/elementwise.cpp.
#include <vector>

#include "layers/cuda/check.h"
#include "layers/cuda/context.h"
#include "layers/cuda/elementwise_kernels.h"
#include "layers/ops.h"

namespace dg::cuda {

namespace {
void check_float(const char* op, const Tensor& t) {
  DG_CHECK(t.dtype() == DType::F32 || t.dtype() == DType::BF16, "{}: {} must be bf16 or f32", op, t.describe());
}

double reduce(const Tensor& x, bool squares) {
  check_float(squares ? "sum_squares" : "sum_all", x);
  const std::int64_t n = x.numel();
  if (n == 0) return 0;
  const auto blocks = static_cast<std::size_t>((n + kernels::kSumBlockElems - 1) / kernels::kSumBlockElems);
  Scratch partial(blocks * sizeof(double));
  DG_CUDA(kernels::block_sums(x.raw(), x.dtype(), n, squares, partial.as<double>(), stream()));
  std::vector<double> host(blocks);
  DG_CUDA(cudaMemcpyAsync(host.data(), partial.as<double>(), blocks * sizeof(double), cudaMemcpyDeviceToHost, stream()));
  DG_CUDA(cudaStreamSynchronize(stream()));  // the result is a host scalar: the caller's named read
  double s = 0;
  for (double v : host) s += v;
  return s;
}
}  // namespace

void add_(Tensor& a, const Tensor& b) {
  check_float("add_", a);
  check_float("add_", b);
  DG_CUDA(kernels::add(a.raw(), a.dtype(), b.raw(), b.dtype(), a.numel(), stream()));
}

void scale_by_(Tensor& x, const Tensor& s) {
  check_float("scale_by_", x);
  DG_CUDA(kernels::scale_by(x.raw(), x.dtype(), static_cast<const float*>(s.raw()), x.numel(), stream()));
}

void scale_rows_(Tensor& x, const Tensor& row_scale) {
  check_float("scale_rows_", x);
  const std::int64_t R = row_scale.numel();
  DG_CUDA(kernels::scale_rows(x.raw(), x.dtype(), static_cast<const float*>(row_scale.raw()), R, x.numel() / R,
                              stream()));
}

void exp_minus_rows_(Tensor& x, const Tensor& lse) {
  DG_CHECK(x.dtype() == DType::F32, "exp_minus_rows_: {} must be f32", x.describe());
  DG_CUDA(kernels::exp_minus_rows(static_cast<float*>(x.raw()), static_cast<const float*>(lse.raw()), x.size(0),
                                  x.size(1), stream()));
}

void zero_rows_where_(Tensor& x, const Tensor& ids, std::int32_t value) {
  check_float("zero_rows_where_", x);
  const std::int64_t T = ids.numel();
  DG_CUDA(kernels::zero_rows_where(x.raw(), x.dtype(), static_cast<const std::int32_t*>(ids.raw()), value, T,
                                   x.numel() / T, stream()));
}

double sum_all(const Tensor& x) { return reduce(x, false); }
double sum_squares(const Tensor& x) { return reduce(x, true); }

}  // namespace dg::cuda
