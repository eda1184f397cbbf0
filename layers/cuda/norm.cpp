// Host side of the CUDA RMSNorm (layers/ops/norm.h): dtype checks, scratch, kernel launches
// (layers/cuda/norm.cu). Shapes were validated by the dispatchers in layers/cpu/norm.cpp.
#include "layers/cuda/check.h"
#include "layers/cuda/context.h"
#include "layers/cuda/norm_kernels.h"
#include "layers/ops.h"

namespace dg::cuda {

namespace {

bool f32_or_bf16(const Tensor& t) { return t.dtype() == DType::F32 || t.dtype() == DType::BF16; }

void check_types(const char* op, std::initializer_list<const Tensor*> acts, const Tensor* weight,
                 const Tensor& rstd) {
  const Tensor& first = **acts.begin();
  for (const Tensor* t : acts)
    DG_CHECK(f32_or_bf16(*t) && t->dtype() == first.dtype(),
             "{}: activations must all be bf16 or all f32 on the device, got {} and {}", op, first.describe(),
             t->describe());
  if (weight) DG_CHECK(f32_or_bf16(*weight), "{}: weight {} must be bf16 or f32", op, weight->describe());
  DG_CHECK(rstd.dtype() == DType::F32, "{}: rstd {} must be f32", op, rstd.describe());
}

}  // namespace

void rms_norm(const Tensor& x, const Tensor* weight, float eps, Tensor& y, Tensor& rstd) {
  check_types("rms_norm", {&x, &y}, weight, rstd);
  const std::int64_t d = x.size(-1), rows = x.numel() / d;
  DG_CUDA(kernels::rms_norm(x.raw(), x.dtype(), weight ? weight->raw() : nullptr,
                            weight ? weight->dtype() : DType::F32, eps, y.raw(), rstd.data<float>(), rows, d,
                            stream()));
}

void rms_norm_backward(const Tensor& dy, const Tensor& x, const Tensor* weight, const Tensor& rstd, Tensor& dx,
                       Tensor* dweight) {
  check_types("rms_norm_backward", {&dy, &x, &dx}, weight, rstd);
  if (dweight)
    DG_CHECK(f32_or_bf16(*dweight), "rms_norm_backward: dweight {} must be bf16 or f32", dweight->describe());
  const std::int64_t d = x.size(-1), rows = x.numel() / d;
  const float* r = rstd.data<float>();
  // The weight gradient first: dx may overwrite dy.
  Tensor partial;  // [chunks, d] f32 scratch, kept until every launch is enqueued
  if (dweight) {
    const kernels::RowChunks ch = kernels::rms_norm_dweight_chunks(rows);
    partial = Tensor::empty({ch.chunks, d}, DType::F32, Device::CUDA);
    DG_CUDA(kernels::rms_norm_backward_dweight(dy.raw(), x.raw(), x.dtype(), r, partial.data<float>(), dweight->raw(),
                                               dweight->dtype(), rows, d, stream()));
  }
  DG_CUDA(kernels::rms_norm_backward_dx(dy.raw(), x.raw(), x.dtype(), weight ? weight->raw() : nullptr,
                                        weight ? weight->dtype() : DType::F32, r, dx.raw(), rows, d, stream()));
}

}  // namespace dg::cuda
