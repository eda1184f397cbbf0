// The CUDA AdamW update for a CPU-only build: any call is an error (see layers/cpu/no_cuda.cpp).
#include "layers/cuda/adamw.h"

namespace dg::cuda {
void adamw_update(Tensor&, Tensor&, Tensor&, const Tensor&, double, double, double, double, double, std::int64_t,
                  double) {
  fail("this dgemma was built without CUDA");
}
}  // namespace dg::cuda
