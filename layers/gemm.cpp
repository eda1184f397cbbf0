// gemm(): shape validation shared by both backends, then dispatch by device.
#include "layers/ops.h"

namespace dg {

GemmDims gemm_dims(const Tensor& a, const Tensor& b, const Tensor& c, const GemmOpts& o) {
  DG_CHECK(a.device() == b.device() && b.device() == c.device(), "gemm operands on different devices: {}, {}, {}",
           a.describe(), b.describe(), c.describe());
  DG_CHECK(a.ndim() == 2 || a.ndim() == 3, "gemm A must be 2-D or 3-D, got {}", a.describe());
  DG_CHECK(b.ndim() == 2 || b.ndim() == 3, "gemm B must be 2-D or 3-D, got {}", b.describe());
  DG_CHECK(c.ndim() == std::max(a.ndim(), b.ndim()), "gemm C {} does not match A {} / B {}", c.describe(),
           a.describe(), b.describe());
  GemmDims d{};
  d.batch = c.ndim() == 3 ? c.size(0) : 1;
  const std::int64_t ar = a.size(-2), ac = a.size(-1), br = b.size(-2), bc = b.size(-1);
  d.m = o.trans_a ? ac : ar;
  d.k = o.trans_a ? ar : ac;
  d.n = o.trans_b ? br : bc;
  const std::int64_t kb = o.trans_b ? bc : br;
  DG_CHECK(kb == d.k, "gemm inner dimensions differ: A {} (trans {}) vs B {} (trans {})", a.describe(), o.trans_a,
           b.describe(), o.trans_b);
  DG_CHECK(c.size(-2) == d.m && c.size(-1) == d.n, "gemm C {} should be [{}, {}]", c.describe(), d.m, d.n);
  if (a.ndim() == 3) DG_CHECK(a.size(0) == d.batch, "gemm batch of A {} vs C {}", a.describe(), c.describe());
  if (b.ndim() == 3) DG_CHECK(b.size(0) == d.batch, "gemm batch of B {} vs C {}", b.describe(), c.describe());
  d.stride_a = a.ndim() == 3 ? ar * ac : 0;
  d.stride_b = b.ndim() == 3 ? br * bc : 0;
  d.stride_c = d.m * d.n;
  d.lda = ac;
  d.ldb = bc;
  d.ldc = d.n;
  return d;
}

void require_cpu(const char* op, std::initializer_list<const Tensor*> tensors) {
  for (const Tensor* t : tensors)
    if (t && t->defined() && !t->is_cpu()) fail("{}: no CUDA implementation yet ({} is on the device)", op, t->describe());
}

bool any_on_cuda(std::initializer_list<const Tensor*> tensors) {
  for (const Tensor* t : tensors)
    if (t && t->defined() && !t->is_cpu()) return true;
  return false;
}

void require_cuda(const char* op, std::initializer_list<const Tensor*> tensors) {
  for (const Tensor* t : tensors)
    if (t && t->defined() && t->is_cpu())
      fail("{}: {} is on the CPU while other operands are on the device (move all operands to one device)", op,
           t->describe());
}

void gemm(const Tensor& a, const Tensor& b, Tensor& c, const GemmOpts& opts) {
  if (c.device() == Device::CPU) cpu::gemm(a, b, c, opts);
  else cuda::gemm(a, b, c, opts);
}

}  // namespace dg
