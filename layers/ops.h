// The op interface the model, the trainer and the generator call. Each op is declared once (here or
// in a layers/ops/<group>.h included at the end of this file) and has a CPU implementation
// (layers/cpu/, fp32, the exact reference) and a CUDA implementation (layers/cuda/, bf16 storage,
// fp32 accumulation). Ops dispatch on the device of their tensor arguments.
//
// Conventions every op follows:
//  - Outputs are tensors the caller allocated; shapes and dtypes are checked with messages that
//    describe the tensors. Nothing is allocated per call except small scratch.
//  - `<op>_backward` sits beside `<op>` (same header, same .cpp). The forward returns (in caller-given
//    tensors) whatever the backward needs; the backward never recomputes silently.
//  - Gradients of parameters are accumulated (+=) so that several passes over one parameter (encode,
//    decode x2) sum into one buffer; gradients of activations are written (=), unless an op documents
//    otherwise (the cached encoder K/V gradients of attention accumulate).
//  - Shapes use the model's names: T tokens (rows), H hidden, V vocabulary, E experts, k top-k,
//    nh / nkv query and key-value heads, hd head dim.
#pragma once
#include <initializer_list>

#include "layers/tensor.h"

namespace dg {

// Checks that every tensor of an op is on the CPU; ops without a CUDA implementation yet use it in
// their dispatcher so that a device tensor gives a clear error rather than a crash.
void require_cpu(const char* op, std::initializer_list<const Tensor*> tensors);

// Backend choice of a dispatcher: true when any given (defined) tensor lives on the device. Then
// every defined tensor must be on the same device (require_cuda throws naming the op and the
// offending tensor otherwise) and the op runs its dg::cuda implementation.
bool any_on_cuda(std::initializer_list<const Tensor*> tensors);
void require_cuda(const char* op, std::initializer_list<const Tensor*> tensors);

// ---- Batch invariance ----------------------------------------------------------------------------
// On: every GEMM whose rows are independent (A not transposed) runs in fixed row tiles on aligned copies
// (CPU: 16 rows per OpenBLAS call, or per oneDNN matmul on a constant weight packed once,
// layers/gemm_weights.h; CUDA: 64 rows per cuBLASLt call), so a row's result does not depend on
// how many rows share the call or where: a request's generation does not depend on its batch mates or the
// rank count.
// (The attention forward also aligns its query tiles to each row's first valid token.) Generation
// switches it on; it is slower than OpenBLAS (docs/runtime.md gives the cost).
void set_batch_invariant(bool on);
bool batch_invariant();

// ---- CPU threads ---------------------------------------------------------------------------------
// The threads of the CPU backend: its GEMMs (OpenBLAS) and the loops of its other ops (layers/cpu/parallel.h)
// both use cpu_threads(); a job sets it once at start (--threads). The other ops' results do not depend on it.
void set_cpu_threads(int n);
int cpu_threads();

// ---- GEMM ----------------------------------------------------------------------------------------
// Row-major C = alpha * op(A) @ op(B) + beta * C, where op(X) = X^T when trans_x.
//   A: [M, K] ([K, M] if trans_a), or batched [batch, ...]
//   B: [K, N] ([N, K] if trans_b), or batched [batch, ...]; a 2-D B is shared by every batch
//   C: [M, N] or [batch, M, N]; must be allocated; with beta = 0 its contents are ignored (NaN-safe)
// CPU: f32 only (OpenBLAS sgemm; batch-invariant tiles on constant weights: oneDNN). CUDA: A, B both bf16 or both f32; C bf16 or f32; fp32 accumulation.
struct GemmOpts {
  bool trans_a = false;
  bool trans_b = false;
  float alpha = 1.0f;
  float beta = 0.0f;
};
void gemm(const Tensor& a, const Tensor& b, Tensor& c, const GemmOpts& opts = {});

// Shapes of one gemm() call after validation; shared by both backends.
struct GemmDims {
  std::int64_t batch, m, n, k;
  std::int64_t stride_a, stride_b, stride_c;  // elements between batch entries (0: shared)
  std::int64_t lda, ldb, ldc;                 // row-major leading dimensions
};
GemmDims gemm_dims(const Tensor& a, const Tensor& b, const Tensor& c, const GemmOpts& opts);

namespace cpu {
void gemm(const Tensor& a, const Tensor& b, Tensor& c, const GemmOpts& opts);
// Raw row-major sgemm for op implementations that work on sub-blocks.
void sgemm(bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k, float alpha,
           const float* a, std::int64_t lda, const float* b, std::int64_t ldb, float beta, float* c,
           std::int64_t ldc);
}  // namespace cpu

namespace cuda {
void gemm(const Tensor& a, const Tensor& b, Tensor& c, const GemmOpts& opts);
// Element-type conversion on the device (f32 <-> bf16 / f16, round to nearest even).
void convert(const Tensor& src, Tensor& dst);
}  // namespace cuda

}  // namespace dg

// Op groups (each header declares its ops and their backward):
#include "layers/ops/attention.h"
#include "layers/ops/norm.h"
#include "layers/ops/rope.h"
#include "layers/ops/activation.h"
#include "layers/ops/embedding.h"
#include "layers/ops/moe.h"
#include "layers/ops/head.h"
#include "layers/ops/elementwise.h"
#include "layers/ops/decoding.h"
