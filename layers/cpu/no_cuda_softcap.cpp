// CUDA softcap entry points for a CPU-only build: any call is an error (see layers/cpu/no_cuda.cpp).
#include "layers/ops.h"

namespace dg::cuda {
void softcap(const Tensor&, float, Tensor&) { fail("this dgemma was built without CUDA"); }
void softcap_backward(const Tensor&, const Tensor&, float, Tensor&) { fail("this dgemma was built without CUDA"); }
}  // namespace dg::cuda
