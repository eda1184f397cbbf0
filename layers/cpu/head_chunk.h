// CPU-internal pieces shared by the LM-head ops (head.cpp, self_conditioning.cpp) and the fused
// sampler (sampler.cpp): one vocabulary chunk of processed logits, and the one-pass sampler core that
// lm_head_entropy_argmax, lm_head_soft_embedding and lm_head_sampler all run, so their results agree
// bit for bit. Not part of the op interface.
#pragma once
#include <cstdint>

namespace dg::cpu {

// out [n, vc] = softcap(h [n,H] · E[v0 : v0+vc]ᵀ) / temperature (no division when temperature is 1;
// cap 0: no softcap). fp32: one sgemm, then cap · tanh(x / cap) (vectorised tanh) and the division.
void lm_head_chunk_logits(const float* h, std::int64_t n, std::int64_t hdim, const float* emb, std::int64_t v0,
                          std::int64_t vc, float cap, float temperature, float* out);

// What one pass of the sampler core writes; null members are skipped (soft needs its scale; sampled
// needs uniforms [T] in [0, 1), already validated).
struct SamplerOutputs {
  float* entropy = nullptr;       // [T]
  std::int32_t* argmax = nullptr;  // [T]
  float* logsumexp = nullptr;     // [T]
  float* soft = nullptr;          // [T, H]
  float scale = 1.0f;
  const float* uniforms = nullptr;
  std::int32_t* sampled = nullptr;  // [T]
};

// One pass over the vocabulary of lg = softcap(h · Eᵀ) / temperature for rows h [T, H], E [V, H]
// (chunks of `chunk` ids): the outputs requested in `out` (layers/ops/head.h gives their math).
void lm_head_sampler_pass(const float* h, std::int64_t t_count, std::int64_t hdim, const float* emb, std::int64_t v,
                          std::int64_t chunk, float cap, float temperature, const SamplerOutputs& out);

}  // namespace dg::cpu
