// Host side of the CUDA attention (kernels in layers/cuda/attention.cu): validation of shapes (the
// shared attn_dims()) and dtypes, the per-example canvas geometry and the backward's row scratch in a
// reusable device workspace, and the launches on the op stream.
#include <string>

#include "layers/cuda/attention_kernels.h"
#include "layers/cuda/check.h"
#include "layers/cuda/context.h"
#include "layers/ops.h"

namespace dg::cuda {

namespace {

void check_shape(const Tensor& t, const Shape& want, const std::string& what) {
  DG_CHECK(t.shape() == want, "attention {} is {}, should be {}", what, t.describe(), shape_str(want));
}

bool is_bf16_or_f32(const Tensor& t) { return t.dtype() == DType::BF16 || t.dtype() == DType::F32; }

void check_float(const char* op, const char* what, const Tensor& t) {
  if (!is_bf16_or_f32(t)) fail("CUDA {}: {} must be bf16 or f32, got {}", op, what, t.describe());
}

// Device scratch reused across calls (grown on demand, never shrunk): the canvas examples and the
// backward's D rows. Every use is ordered on the op stream, so one buffer serves all calls; growing
// frees the old buffer with cudaFree, which waits for the work still using it. One device per process.
void* workspace(std::size_t bytes) {
  static void* buffer = nullptr;
  static std::size_t capacity = 0;
  if (bytes > capacity) {
    if (buffer != nullptr) DG_CUDA(cudaFree(buffer));
    buffer = nullptr;
    capacity = 0;
    DG_CUDA(cudaMalloc(&buffer, bytes));
    capacity = bytes;
  }
  return buffer;
}

constexpr std::size_t align256(std::size_t n) { return (n + 255) / 256 * 256; }

// Validates what forward and backward share and fills the common kernel inputs. `scratch_floats`
// extra f32 elements are reserved in the workspace after the examples; returns their address.
float* common_inputs(const char* op, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& k_cache,
                     const Tensor& v_cache, const AttnOpts& o, const AttnDims& d, std::size_t scratch_floats,
                     kernels::AttnInputs& in) {
  DG_CHECK(q.dtype() == DType::BF16 || q.dtype() == DType::F32, "CUDA {} takes bf16 or f32 q, got {}", op,
           q.describe());
  for (const Tensor* t : {&k, &v, &k_cache, &v_cache})
    if (t->defined())
      DG_CHECK(t->dtype() == q.dtype(), "CUDA {} needs q, k, v, k_cache, v_cache of one dtype: q is {}, got {}", op,
               q.describe(), t->describe());
  DG_CHECK(d.batch <= 65535 && d.heads <= 65535, "CUDA {}: B = {} and nh = {} must be at most 65535", op, d.batch,
           d.heads);

  // shared memory of the largest kernel for this head dim against what the device grants a block
  int device = 0, optin = 0;
  DG_CUDA(cudaGetDevice(&device));
  DG_CUDA(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  const std::size_t smem = kernels::attention_smem_bytes(d.head_dim);
  DG_CHECK(smem <= static_cast<std::size_t>(optin),
           "CUDA {}: head_dim {} needs {} bytes of shared memory per block, the device allows {}", op, d.head_dim,
           smem, optin);

  in.d = {d.batch, d.len, d.cache_len, d.heads, d.kv_heads, d.head_dim};
  in.mask = o.mask;
  in.scale = o.scale;
  in.key_valid = o.key_valid.defined() && o.key_valid.numel() > 0 ? o.key_valid.data<std::int32_t>() : nullptr;
  in.q = q.raw();
  in.k = k.raw();
  in.v = v.raw();
  in.k_cache = d.cache_len > 0 ? k_cache.raw() : nullptr;
  in.v_cache = d.cache_len > 0 ? v_cache.raw() : nullptr;
  in.in_bf16 = q.dtype() == DType::BF16;

  const std::size_t ex_bytes = align256(o.examples.size() * sizeof(AttnExample));
  const std::size_t total = ex_bytes + scratch_floats * sizeof(float);
  if (total == 0) return nullptr;
  char* ws = static_cast<char*>(workspace(total));
  if (!o.examples.empty()) {
    // Pageable source: the copy is staged before cudaMemcpyAsync returns, so the vector may go away.
    DG_CUDA(cudaMemcpyAsync(ws, o.examples.data(), o.examples.size() * sizeof(AttnExample), cudaMemcpyHostToDevice,
                            stream()));
    in.examples = reinterpret_cast<const AttnExample*>(ws);
  }
  return scratch_floats > 0 ? reinterpret_cast<float*>(ws + ex_bytes) : nullptr;
}

}  // namespace

void attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& k_cache, const Tensor& v_cache,
               const AttnOpts& o, Tensor& out, Tensor& lse) {
  const AttnDims d = attn_dims(q, k, v, k_cache, v_cache, o);
  check_shape(out, q.shape(), "out (like q)");
  check_float("attention", "out", out);
  if (lse.defined()) {
    check_shape(lse, {d.batch, d.heads, d.len}, "lse ([B, nh, S])");
    DG_CHECK(lse.dtype() == DType::F32, "CUDA attention lse must be f32, got {}", lse.describe());
  }
  if (d.batch == 0 || d.len == 0 || d.heads == 0) return;

  kernels::AttnForwardArgs a;
  common_inputs("attention", q, k, v, k_cache, v_cache, o, d, 0, a.in);
  a.out = out.raw();
  a.out_bf16 = out.dtype() == DType::BF16;
  a.lse = lse.defined() ? lse.data<float>() : nullptr;
  DG_CUDA(kernels::attention_forward(a, stream()));
}

void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& k_cache, const Tensor& v_cache,
                        const AttnOpts& o, const Tensor& out, const Tensor& lse, const Tensor& d_out, Tensor& d_q,
                        Tensor& d_k, Tensor& d_v, Tensor& d_k_cache, Tensor& d_v_cache) {
  const AttnDims d = attn_dims(q, k, v, k_cache, v_cache, o);
  DG_CHECK(lse.defined(), "attention_backward needs the forward's lse ([B, nh, S] = [{}, {}, {}])", d.batch, d.heads,
           d.len);
  check_shape(lse, {d.batch, d.heads, d.len}, "lse ([B, nh, S])");
  DG_CHECK(lse.dtype() == DType::F32, "CUDA attention_backward lse must be f32, got {}", lse.describe());
  check_shape(out, q.shape(), "out (like q)");
  check_shape(d_out, q.shape(), "d_out (like q)");
  check_shape(d_q, q.shape(), "d_q (like q)");
  check_shape(d_k, k.shape(), "d_k (like k)");
  check_shape(d_v, k.shape(), "d_v (like k)");
  const Shape cache_shape{d.batch, d.cache_len, d.kv_heads, d.head_dim};
  if (d_k_cache.defined()) check_shape(d_k_cache, cache_shape, "d_k_cache (like k_cache)");
  if (d_v_cache.defined()) check_shape(d_v_cache, cache_shape, "d_v_cache (like v_cache)");
  const char* op = "attention_backward";
  check_float(op, "out", out);
  check_float(op, "d_out", d_out);
  check_float(op, "d_q", d_q);
  check_float(op, "d_k", d_k);
  check_float(op, "d_v", d_v);
  if (d_k_cache.defined()) check_float(op, "d_k_cache", d_k_cache);
  if (d_v_cache.defined()) check_float(op, "d_v_cache", d_v_cache);
  if (d.batch == 0 || d.len == 0) return;  // no query: d_k, d_v are empty, the caches get += 0

  kernels::AttnBackwardArgs a;
  a.delta = common_inputs(op, q, k, v, k_cache, v_cache, o, d, static_cast<std::size_t>(d.batch * d.heads * d.len),
                          a.in);
  a.out = out.raw();
  a.out_bf16 = out.dtype() == DType::BF16;
  a.lse = lse.data<float>();
  a.d_out = d_out.raw();
  a.d_out_bf16 = d_out.dtype() == DType::BF16;
  a.d_q = d_q.raw();
  a.d_q_bf16 = d_q.dtype() == DType::BF16;
  a.d_k = d_k.raw();
  a.d_k_bf16 = d_k.dtype() == DType::BF16;
  a.d_v = d_v.raw();
  a.d_v_bf16 = d_v.dtype() == DType::BF16;
  if (d.cache_len > 0 && d_k_cache.defined()) {
    a.d_k_cache = d_k_cache.raw();
    a.d_k_cache_bf16 = d_k_cache.dtype() == DType::BF16;
  }
  if (d.cache_len > 0 && d_v_cache.defined()) {
    a.d_v_cache = d_v_cache.raw();
    a.d_v_cache_bf16 = d_v_cache.dtype() == DType::BF16;
  }
  DG_CUDA(kernels::attention_backward(a, stream()));
}

}  // namespace dg::cuda
