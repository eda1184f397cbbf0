// Launchers of the attention kernels (layers/cuda/attention.cu). Like layers/cuda/kernels.h this is
// the boundary between host C++ and nvcc-compiled code: it includes only the CUDA runtime, dtype.h and
// the visibility rule (layers/ops/attn_rule.h, plain data + host/device functions). Every pointer is
// device memory; every launcher enqueues on `stream` and returns the launch status.
//
// Layouts (row-major, elements): q, out, d_out, d_q [B, S, nh, hd]; k, v, d_k, d_v [B, S, nkv, hd];
// k_cache, v_cache, d_k_cache, d_v_cache [B, Tc, nkv, hd]; lse, delta [B, nh, S] f32; key_valid
// [B, Tc + S] i32; examples [B] AttnExample (Canvas only). Query head n uses kv head n / (nh / nkv).
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "layers/dtype.h"
#include "layers/ops/attn_rule.h"

namespace dg::cuda::kernels {

struct AttnShape {
  std::int64_t batch, len, cache_len, heads, kv_heads, head_dim;  // B, S, Tc, nh, nkv, hd
};

// Inputs common to the forward and the backward.
struct AttnInputs {
  AttnShape d{};
  AttnMask mask{};
  float scale = 1.0f;
  const AttnExample* examples = nullptr;  // [B] on the device, Canvas only (else null)
  const std::int32_t* key_valid = nullptr;  // [B, Tc + S], null: no padding
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  const void* k_cache = nullptr;  // null when Tc = 0
  const void* v_cache = nullptr;
  bool in_bf16 = false;  // q, k, v, k_cache, v_cache: bf16, else f32
};

struct AttnForwardArgs {
  AttnInputs in;
  void* out = nullptr;  // written
  bool out_bf16 = false;
  float* lse = nullptr;  // written when not null
};

struct AttnBackwardArgs {
  AttnInputs in;
  const void* out = nullptr;
  bool out_bf16 = false;
  const float* lse = nullptr;
  const void* d_out = nullptr;
  bool d_out_bf16 = false;
  void* d_q = nullptr;  // written
  bool d_q_bf16 = false;
  void* d_k = nullptr;  // written
  bool d_k_bf16 = false;
  void* d_v = nullptr;  // written
  bool d_v_bf16 = false;
  void* d_k_cache = nullptr;  // accumulated (+=) when not null
  bool d_k_cache_bf16 = false;
  void* d_v_cache = nullptr;  // accumulated (+=) when not null
  bool d_v_cache_bf16 = false;
  float* delta = nullptr;  // scratch [B, nh, S] f32: rowsum(d_out * out)
};

// Dynamic shared memory the largest attention kernel needs for this head dim (the host checks it
// against the device's opt-in limit before launching).
std::size_t attention_smem_bytes(std::int64_t head_dim);

cudaError_t attention_forward(const AttnForwardArgs& a, cudaStream_t stream);
cudaError_t attention_backward(const AttnBackwardArgs& a, cudaStream_t stream);

}  // namespace dg::cuda::kernels
