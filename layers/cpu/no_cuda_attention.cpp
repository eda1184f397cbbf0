// CUDA attention entry points for a CPU-only build: any attempt to run attention on a device is an error.
#include "layers/error.h"
#include "layers/ops.h"

namespace dg::cuda {

void attention(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const AttnOpts&, Tensor&,
               Tensor&) {
  fail("this dgemma was built without CUDA");
}

void attention_backward(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const AttnOpts&,
                        const Tensor&, const Tensor&, const Tensor&, Tensor&, Tensor&, Tensor&, Tensor&, Tensor&) {
  fail("this dgemma was built without CUDA");
}

}  // namespace dg::cuda
