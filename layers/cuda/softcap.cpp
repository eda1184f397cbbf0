// Host side of the CUDA logit softcap (layers/ops/head.h): dtype checks and launches
// (layers/cuda/softcap.cu). Shapes and cap were validated by the dispatchers in layers/cpu/head.cpp.
#include "layers/cuda/check.h"
#include "layers/cuda/context.h"
#include "layers/cuda/softcap_kernels.h"
#include "layers/ops.h"

namespace dg::cuda {

namespace {
void check_types(const char* op, std::initializer_list<const Tensor*> tensors) {
  for (const Tensor* t : tensors)
    DG_CHECK(t->dtype() == DType::F32 || t->dtype() == DType::BF16, "{}: {} must be bf16 or f32", op, t->describe());
}
}  // namespace

void softcap(const Tensor& x, float cap, Tensor& y) {
  check_types("softcap", {&x, &y});
  DG_CUDA(kernels::softcap(x.raw(), x.dtype(), cap, y.raw(), y.dtype(), x.numel(), stream()));
}

void softcap_backward(const Tensor& y, const Tensor& dy, float cap, Tensor& dx) {
  check_types("softcap_backward", {&y, &dy, &dx});
  DG_CUDA(kernels::softcap_backward(y.raw(), y.dtype(), dy.raw(), dy.dtype(), cap, dx.raw(), dx.dtype(), y.numel(),
                                    stream()));
}

}  // namespace dg::cuda
