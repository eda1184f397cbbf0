// Host side of the CUDA generation-path ops (layers/ops/decoding.h): dtype checks and launches
// (layers/cuda/decoding.cu). Shapes were validated by the dispatchers in layers/cpu/decoding.cpp. None of
// these ops synchronises with the host.
#include "layers/cuda/check.h"
#include "layers/cuda/context.h"
#include "layers/cuda/decoding_kernels.h"
#include "layers/ops.h"

namespace dg::cuda {

namespace {
const std::int32_t* i32(const Tensor& t) { return static_cast<const std::int32_t*>(t.raw()); }
std::int32_t* i32(Tensor& t) { return static_cast<std::int32_t*>(t.raw()); }
}  // namespace

void fill_(Tensor& x, double value) {
  DG_CHECK(x.dtype() == DType::F32 || x.dtype() == DType::BF16 || x.dtype() == DType::I32,
           "fill_: {} must be f32, bf16 or i32", x.describe());
  DG_CUDA(kernels::fill(x.raw(), x.dtype(), value, x.numel(), stream()));
}

void token_positions(const Tensor& row_offset, std::int64_t start, Tensor& positions) {
  const bool shifted = row_offset.defined() && row_offset.numel() > 0;
  DG_CUDA(kernels::token_positions(shifted ? i32(row_offset) : nullptr, start, positions.size(0), positions.size(1),
                                   i32(positions), stream()));
}

void concat_tokens(const Tensor& a, const Tensor& b, Tensor& out) {
  const bool has_a = a.defined() && a.numel() > 0;
  std::int64_t trailing = 1;  // elements per token
  for (int d = 2; d < b.ndim(); ++d) trailing *= b.size(d);
  DG_CUDA(kernels::concat_tokens(has_a ? a.raw() : nullptr, has_a ? a.size(1) : 0, b.raw(), b.size(1), out.raw(),
                                 out.size(1), out.size(0), static_cast<std::size_t>(trailing) * dtype_size(b.dtype()),
                                 stream()));
}

void entropy_bound_accept_rows(const Tensor& entropy, double gamma, Tensor& accepted) {
  DG_CHECK(entropy.size(1) <= kernels::kMaxAcceptCols, "entropy_bound_accept_rows: {} positions per row (at most {})",
           entropy.size(1), kernels::kMaxAcceptCols);
  DG_CUDA(kernels::entropy_bound_accept(static_cast<const float*>(entropy.raw()), entropy.size(0), entropy.size(1),
                                        static_cast<float>(gamma), i32(accepted), stream()));
}

void denoise_update(Tensor& x, Tensor& amax, Tensor& history, Tensor& done, const Tensor& accepted,
                    const Tensor& sampled, const Tensor& renoise, const Tensor& step_amax, const Tensor& entropy,
                    double confidence_threshold) {
  DG_CUDA(kernels::denoise_update(i32(x), i32(amax), history.numel() ? i32(history) : nullptr, i32(done),
                                  i32(accepted), i32(sampled), i32(renoise), i32(step_amax),
                                  static_cast<const float*>(entropy.raw()), x.size(0), x.size(1), history.size(1),
                                  confidence_threshold, stream()));
}

}  // namespace dg::cuda
