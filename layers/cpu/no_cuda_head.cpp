// The CUDA LM-head ops (layers/ops/head.h, namespace dg::cuda; softcap excepted) in a CPU-only build:
// device tensors cannot exist there, so reaching any of these is an error.
#include "layers/ops.h"

namespace dg::cuda {

namespace {
[[noreturn]] void no_cuda() { fail("this dgemma was built without CUDA"); }
}  // namespace

double lm_head_cross_entropy(const Tensor&, const Tensor&, const Tensor&, const Tensor&, double, Tensor&,
                             const LmHeadOpts&) {
  no_cuda();
}
void lm_head_cross_entropy_backward(const Tensor&, const Tensor&, const Tensor&, const Tensor&, double, const Tensor&,
                                    float, Tensor&, Tensor*, const LmHeadOpts&) {
  no_cuda();
}
void lm_head_entropy_argmax(const Tensor&, const Tensor&, float, Tensor&, Tensor&, Tensor*, const LmHeadOpts&) {
  no_cuda();
}
void lm_head_sample(const Tensor&, const Tensor&, float, const Tensor&, const Tensor&, Tensor&, const LmHeadOpts&) {
  no_cuda();
}
void lm_head_soft_embedding(const Tensor&, const Tensor&, float, float, Tensor&, const LmHeadOpts&) { no_cuda(); }

}  // namespace dg::cuda
