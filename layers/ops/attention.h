// Attention op group: softmax(scale * q k^T + mask) v with GQA over the keys [cached K/V ; own K/V],
// where the mask is a RULE (causal / generation / SFT canvas, each optionally sliding) evaluated per
// (example, query, key) by attn_visible(), plus optional per-example key padding. Forward saves the
// per-row log-sum-exp; the backward recomputes the probabilities from it (flash-attention style).
// Spec: model.md §3.4 (attention, GQA, scale 1.0), §6 (masks, KV cache), §8.6 (fp32 softmax);
// training.md §4 (encoder and canvas masks, the leak-free invariant).
#pragma once
#include <cstdint>
#include <vector>

#include "layers/ops/attn_rule.h"
#include "layers/tensor.h"

namespace dg {

// The visibility rule (AttnMaskKind, AttnMask, AttnExample, attn_visible) and its decoded per-row
// form (AttnRowRule, attn_row_rule) live in layers/ops/attn_rule.h, shared with the CUDA kernels.

// ---- The op ------------------------------------------------------------------------------------
// Everything attention needs besides its tensors.
struct AttnOpts {
  AttnMask mask;
  std::vector<AttnExample> examples;  // Canvas: one per batch entry; must be empty for the other kinds
  Tensor key_valid;                   // optional i32 [B, Tc + S]: 0 = padding key, never attended
  float scale = 1.0f;                 // multiplies q.k (the model uses 1.0, model.md §3.4)
};

// Shapes of one attention call after validation; shared by the backends.
struct AttnDims {
  std::int64_t batch, len, cache_len, heads, kv_heads, head_dim;  // B, S, Tc, nh, nkv, hd
};
AttnDims attn_dims(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& k_cache, const Tensor& v_cache,
                   const AttnOpts& opts);

// The decoded rule of own query q of batch entry b (host side of what the CUDA kernels evaluate):
// attn_row_rule() with the entry's AttnExample (Canvas) or none. Key padding (key_valid) is separate.
inline AttnRowRule attn_row_rule(const AttnOpts& opts, const AttnDims& d, std::int64_t b, std::int64_t q) {
  const AttnExample ex = opts.examples.empty() ? AttnExample{} : opts.examples[static_cast<std::size_t>(b)];
  return attn_row_rule(opts.mask, ex, d.cache_len, d.len, q);
}

// Forward.
//   q        [B, S, nh, hd]  own queries (token-major, as the q projection writes them)
//   k, v     [B, S, nkv, hd] own keys / values; query head n uses kv head n / (nh / nkv)
//   k_cache, v_cache [B, Tc, nkv, hd] cached (encoder) keys / values; both undefined when Tc = 0
//   out      [B, S, nh, hd]  written
//   lse      [B, nh, S]      written: per-row log-sum-exp of the scaled visible scores, needed by the
//            backward; may be undefined for a pass without gradient (generation, decode pass 1)
// A query row that sees no key (all its keys masked or padded) outputs 0 and stores lse = +inf, so
// exp(s - lse) recomputes its probabilities as 0; its gradients are 0. Softmax in fp32.
void attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& k_cache, const Tensor& v_cache,
               const AttnOpts& opts, Tensor& out, Tensor& lse);

// Backward, given the forward's inputs, its out and lse, and d_out = dL/d(out) [B, S, nh, hd].
//   d_q [B, S, nh, hd], d_k, d_v [B, S, nkv, hd]: written (=).
//   d_k_cache, d_v_cache [B, Tc, nkv, hd]: ACCUMULATED (+=), since several canvas passes (and the
//   encoder's own use) feed the same encoder K/V; either may be undefined to skip it.
void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& k_cache, const Tensor& v_cache,
                        const AttnOpts& opts, const Tensor& out, const Tensor& lse, const Tensor& d_out, Tensor& d_q,
                        Tensor& d_k, Tensor& d_v, Tensor& d_k_cache, Tensor& d_v_cache);

namespace cpu {
void attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& k_cache, const Tensor& v_cache,
               const AttnOpts& opts, Tensor& out, Tensor& lse);
void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& k_cache, const Tensor& v_cache,
                        const AttnOpts& opts, const Tensor& out, const Tensor& lse, const Tensor& d_out, Tensor& d_q,
                        Tensor& d_k, Tensor& d_v, Tensor& d_k_cache, Tensor& d_v_cache);
}  // namespace cpu

// CUDA (layers/cuda/attention.cpp): q, k, v, k_cache, v_cache all bf16 or all f32; out, d_out, d_q,
// d_k, d_v, d_k_cache, d_v_cache each bf16 or f32; lse f32; key_valid i32; fp32 scores, softmax and
// accumulation. Flash-style tiles, no [S, S] matrix; deterministic (no float atomics).
namespace cuda {
void attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& k_cache, const Tensor& v_cache,
               const AttnOpts& opts, Tensor& out, Tensor& lse);
void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& k_cache, const Tensor& v_cache,
                        const AttnOpts& opts, const Tensor& out, const Tensor& lse, const Tensor& d_out, Tensor& d_q,
                        Tensor& d_k, Tensor& d_v, Tensor& d_k_cache, Tensor& d_v_cache);
}  // namespace cuda

}  // namespace dg
