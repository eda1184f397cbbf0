// CUDA RoPE entry points for a CPU-only build: any call is an error (see layers/cpu/no_cuda.cpp).
#include "layers/ops.h"

namespace dg::cuda {
void rope_table(const Tensor&, const Tensor&, Tensor&, Tensor&) { fail("this dgemma was built without CUDA"); }
void rope(const Tensor&, const Tensor&, const Tensor&, Tensor&) { fail("this dgemma was built without CUDA"); }
void rope_backward(const Tensor&, const Tensor&, const Tensor&, Tensor&) { fail("this dgemma was built without CUDA"); }
}  // namespace dg::cuda
