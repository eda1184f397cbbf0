// CUDA embedding entry points for a CPU-only build: any call is an error (see layers/cpu/no_cuda.cpp).
#include "layers/ops.h"

namespace dg::cuda {
void embedding(const Tensor&, const Tensor&, float, Tensor&) { fail("this dgemma was built without CUDA"); }
void embedding_backward(const Tensor&, const Tensor&, float, Tensor&) { fail("this dgemma was built without CUDA"); }
void soft_embedding(const Tensor&, const Tensor&, float, Tensor&, Tensor&, std::int64_t) {
  fail("this dgemma was built without CUDA");
}
void soft_embedding_backward(const Tensor&, const Tensor&, const Tensor&, float, const Tensor&, const Tensor&, Tensor*,
                             Tensor&, std::int64_t) {
  fail("this dgemma was built without CUDA");
}
}  // namespace dg::cuda
