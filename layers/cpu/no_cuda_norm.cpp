// CUDA RMSNorm entry points for a CPU-only build: any call is an error (see layers/cpu/no_cuda.cpp).
#include "layers/ops.h"

namespace dg::cuda {
void rms_norm(const Tensor&, const Tensor*, float, Tensor&, Tensor&) { fail("this dgemma was built without CUDA"); }
void rms_norm_backward(const Tensor&, const Tensor&, const Tensor*, const Tensor&, Tensor&, Tensor*) {
  fail("this dgemma was built without CUDA");
}
}  // namespace dg::cuda
