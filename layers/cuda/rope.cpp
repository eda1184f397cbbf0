// Host side of the CUDA RoPE ops (layers/ops/rope.h): dtype checks and launches (layers/cuda/rope.cu).
// Shapes were validated by the dispatchers in layers/cpu/rope.cpp.
#include <vector>

#include "layers/cuda/check.h"
#include "layers/cuda/context.h"
#include "layers/cuda/rope_kernels.h"
#include "layers/ops.h"

namespace dg::cuda {

namespace {

bool f32_or_bf16(const Tensor& t) { return t.dtype() == DType::F32 || t.dtype() == DType::BF16; }

void rotate(const char* op, const Tensor& x, const Tensor& cos, const Tensor& sin, Tensor& y, float sign) {
  DG_CHECK(f32_or_bf16(x) && y.dtype() == x.dtype(), "{}: input {} and output {} must both be bf16 or both f32", op,
           x.describe(), y.describe());
  DG_CHECK(f32_or_bf16(cos) && sin.dtype() == cos.dtype(), "{}: cos {} and sin {} must both be bf16 or both f32", op,
           cos.describe(), sin.describe());
  DG_CUDA(kernels::rope_rotate(x.raw(), x.dtype(), cos.raw(), sin.raw(), cos.dtype(), y.raw(), x.size(0), x.size(1),
                               x.size(2) / 2, sign, stream()));
}

}  // namespace

void rope_table(const Tensor& positions, const Tensor& inv_freq, Tensor& cos, Tensor& sin) {
  DG_CHECK(f32_or_bf16(cos) && sin.dtype() == cos.dtype(), "rope_table: cos {} and sin {} must both be bf16 or f32",
           cos.describe(), sin.describe());
  const std::int64_t tokens = positions.size(0);
  // The CPU op's check of the positions, on a host copy (one synchronising copy of T values).
  std::vector<std::int32_t> pos(static_cast<std::size_t>(tokens));
  if (tokens > 0) {
    DG_CUDA(cudaMemcpyAsync(pos.data(), positions.raw(), pos.size() * sizeof(std::int32_t), cudaMemcpyDeviceToHost,
                            stream()));
    DG_CUDA(cudaStreamSynchronize(stream()));
  }
  for (std::int64_t t = 0; t < tokens; ++t)
    if (pos[static_cast<std::size_t>(t)] < 0)
      fail("rope_table: position {} of token {} is negative", pos[static_cast<std::size_t>(t)], t);
  DG_CUDA(kernels::rope_table(positions.data<std::int32_t>(), inv_freq.data<float>(), cos.raw(), sin.raw(),
                              cos.dtype(), tokens, inv_freq.size(0), stream()));
}

void rope(const Tensor& x, const Tensor& cos, const Tensor& sin, Tensor& y) { rotate("rope", x, cos, sin, y, 1.f); }

void rope_backward(const Tensor& dy, const Tensor& cos, const Tensor& sin, Tensor& dx) {
  rotate("rope_backward", dy, cos, sin, dx, -1.f);
}

}  // namespace dg::cuda
