// The CUDA MoE ops (layers/ops/moe.h, namespace dg::cuda) in a CPU-only build: device tensors cannot
// exist there, so reaching any of these is an error.
#include "layers/ops.h"

namespace dg::cuda {

namespace {
[[noreturn]] void no_cuda() { fail("this dgemma was built without CUDA"); }
}  // namespace

void moe_router(const Tensor&, const Tensor&, const Tensor&, const Tensor&, Tensor&, Tensor&, Tensor&, Tensor&, float) {
  no_cuda();
}
void moe_router_backward(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                         const Tensor&, const Tensor&, Tensor&, const RouterGrads&) {
  no_cuda();
}
std::int64_t moe_permute_plan(const Tensor&, std::int64_t, Tensor&, Tensor&, Tensor&, const Tensor&) { no_cuda(); }
void moe_gather(const Tensor&, const Tensor&, Tensor&) { no_cuda(); }
void moe_gather_backward(const Tensor&, const Tensor&, Tensor&) { no_cuda(); }
void moe_combine(const Tensor&, const Tensor&, const Tensor&, Tensor&) { no_cuda(); }
void moe_combine_backward(const Tensor&, const Tensor&, const Tensor&, const Tensor&, Tensor&, Tensor&) { no_cuda(); }
void grouped_gemm(const Tensor&, const Tensor&, const Tensor&, Tensor&) { no_cuda(); }
void grouped_gemm_backward(const Tensor&, const Tensor&, const Tensor&, const Tensor&, Tensor*, Tensor*) { no_cuda(); }

}  // namespace dg::cuda
