// CUDA elementwise entry points for a CPU-only build: any call is an error (see layers/cpu/no_cuda.cpp).
#include "layers/ops.h"

namespace dg::cuda {
void add_(Tensor&, const Tensor&) { fail("this dgemma was built without CUDA"); }
void scale_by_(Tensor&, const Tensor&) { fail("this dgemma was built without CUDA"); }
void scale_rows_(Tensor&, const Tensor&) { fail("this dgemma was built without CUDA"); }
void exp_minus_rows_(Tensor&, const Tensor&) { fail("this dgemma was built without CUDA"); }
void zero_rows_where_(Tensor&, const Tensor&, std::int32_t) { fail("this dgemma was built without CUDA"); }
double sum_all(const Tensor&) { fail("this dgemma was built without CUDA"); }
double sum_squares(const Tensor&) { fail("this dgemma was built without CUDA"); }
}  // namespace dg::cuda
