// CUDA generation-path entry points for a CPU-only build: any call is an error (see layers/cpu/no_cuda.cpp).
#include "layers/ops.h"

namespace dg::cuda {
void fill_(Tensor&, double) { fail("this dgemma was built without CUDA"); }
void token_positions(const Tensor&, std::int64_t, Tensor&) { fail("this dgemma was built without CUDA"); }
void concat_tokens(const Tensor&, const Tensor&, Tensor&) { fail("this dgemma was built without CUDA"); }
void entropy_bound_accept_rows(const Tensor&, double, Tensor&) { fail("this dgemma was built without CUDA"); }
void denoise_update(Tensor&, Tensor&, Tensor&, Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                    const Tensor&, double) {
  fail("this dgemma was built without CUDA");
}
}  // namespace dg::cuda
