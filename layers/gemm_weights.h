// Constant GEMM operands: weights the CPU backend may keep packed.
//
// While a ConstantWeights lives, the caller promises that the given tensors are neither written nor freed.
// A batch-invariant CPU GEMM (layers/ops.h, set_batch_invariant) whose B lies inside them (one tensor, or
// adjacent ones such as the gate and up views of a fused weight) then runs on oneDNN's matmul
// (DGEMMA_ONEDNN builds) with a copy of B reordered once into the primitive's blocked layout, made the first
// time B is used and reused by every later call: OpenBLAS packs B again in every call, which at `generate`'s
// 16-row tiles costs about as much as the multiplication itself (docs/performance.md, "GEMM library"). Only
// a B of at least kMinPackedWeightElements elements, and only where oneDNN has its brgemm kernels (AVX-512
// CPUs), is packed; every other GEMM stays on OpenBLAS. The packed copies cost about the weights' size in
// memory again; they are released with the last ConstantWeights covering them. Without oneDNN it does
// nothing.
//
// A packed GEMM spreads its 16-row tiles over the CPU threads (cpu_threads()), one oneDNN thread per tile.
// Results: a different fp32 summation than OpenBLAS's (tolerance-level differences), still batch invariant
// (one primitive of shape [16, N, K] per weight shape, the same for every tile) and independent of the thread
// count. Nested or overlapping scopes are allowed.
#pragma once
#include <cstdint>
#include <vector>

#include "layers/tensor.h"

namespace dg {

constexpr std::int64_t kMinPackedWeightElements = 65536;  // N x K; smaller B gain little or lose

class ConstantWeights {
 public:
  // CPU f32 tensors (others are ignored); views are fine (their element range is registered).
  explicit ConstantWeights(const std::vector<Tensor>& tensors);
  ~ConstantWeights();
  ConstantWeights(const ConstantWeights&) = delete;
  ConstantWeights& operator=(const ConstantWeights&) = delete;

 private:
  std::vector<std::int64_t> ids_;
};

}  // namespace dg
