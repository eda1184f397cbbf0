// The attention visibility rule, the single source of truth for every backend: the mask kinds and
// their parameters, attn_visible() (the rule per (example, query, key), as the spec states it), and
// its decoded form AttnRowRule (the keys one query row sees, as at most two key ranges) with which
// the CUDA kernels mask elements and skip whole tiles. Everything here is plain data and
// constexpr functions usable on the host and, compiled by nvcc, on the device: this header includes
// nothing but <cstdint>, so that layers/cuda/*.cu can include it (they must not see layers/tensor.h).
// tests/ops/test_attn_rule.cpp proves attn_row_rule() equal to attn_visible() and to the CPU op.
#pragma once
#include <cstdint>

#ifndef DG_HOST_DEVICE
#if defined(__CUDACC__)
#define DG_HOST_DEVICE __host__ __device__
#else
#define DG_HOST_DEVICE
#endif
#endif

namespace dg {

// ---- The visibility rule ----------------------------------------------------------------------
// Indices: a query is an own token q in [0, S); a key indexes the concatenation [cache ; own], i.e.
// key in [0, Tc) is cached token `key` and key in [Tc, Tc + S) is own token `key - Tc`. The cache
// must hold the Tc tokens immediately preceding the own tokens (true for the encoder K/V of SFT, a
// full-layer cache and a W-1-trimmed sliding cache alike), so key - (Tc + q) is a position offset.
enum class AttnMaskKind : std::int32_t {
  // Encoder pass (model.md §6.2, training.md §4.1). Own token q sits at position Tc + q and sees
  // keys at positions <= its own; with a window W also (Tc + q) - key < W: the W most recent keys,
  // itself included.
  Causal = 0,
  // Decoder pass of generation (model.md §6.3): every canvas query sees the whole canvas
  // (bidirectional) and all Tc cached tokens; with a window W only the last W-1 cached tokens
  // (keys >= Tc - (W-1)), the same ones for every query (model.md §6.1: the dynamic sliding cache
  // keeps W-1 tokens). A cache already trimmed to W-1 is therefore unchanged by the rule.
  Generation = 1,
  // Decoder pass of SFT (training.md §4.2), per example b with prompt length P and canvas length R
  // (AttnExample); the cache is the encoder K/V of the clean sequence, the own tokens the canvas.
  // Canvas query j (j < R) is in block bq = j / Bk. It sees
  //  - encoder column c iff c < P + Bk*bq: the whole prompt and the clean response blocks < bq
  //    (this is the spec's strict bq > bk(c) with bk(c) = (c-P)/Bk for c >= P, -1 in the prompt,
  //    and implies c < P + R: tail padding is never visible); with a window W additionally
  //    c >= P + Bk*bq - (W-1): the W-1 cached tokens before the block start, the same for every
  //    query of the block (block-anchored window, clamped at 0);
  //  - canvas key j' iff j' < R and j' / Bk == bq (its own block, bidirectional).
  // Canvas rows j >= R (padding of a shorter example) see nothing, so they output 0 (NeMo instead
  // unmasks their diagonal; either way no real row sees them and they carry no loss).
  Canvas = 2,
};

struct AttnMask {
  AttnMaskKind kind = AttnMaskKind::Causal;
  std::int64_t window = 0;     // W of a sliding layer (config sliding_window); 0 = full-attention layer
  std::int64_t block_len = 0;  // Canvas only: the canvas block length Bk (256 in the release)
};

// Per-example geometry of the Canvas rule (training.md §2.3); the other kinds take none.
struct AttnExample {
  std::int64_t prompt_len = 0;  // P_b: encoder index of the first response token (canvas token 0)
  std::int64_t canvas_len = 0;  // R_b: valid canvas tokens (rows and keys); P_b + R_b <= Tc
};

// Whether own token q may attend key `key` under the rule (key padding not included). Pure and
// constexpr, host and device: the CPU op evaluates exactly this per (query, key).
DG_HOST_DEVICE constexpr bool attn_visible(const AttnMask& m, const AttnExample& ex, std::int64_t cache_len,
                                           std::int64_t q, std::int64_t key) noexcept {
  switch (m.kind) {
    case AttnMaskKind::Causal: {
      const std::int64_t pos = cache_len + q;
      return key <= pos && (m.window == 0 || pos - key < m.window);
    }
    case AttnMaskKind::Generation:
      return key >= cache_len || m.window == 0 || key >= cache_len - (m.window - 1);
    case AttnMaskKind::Canvas: {
      if (q >= ex.canvas_len) return false;
      const std::int64_t block = q / m.block_len;
      if (key >= cache_len) {
        const std::int64_t j = key - cache_len;
        return j < ex.canvas_len && j / m.block_len == block;
      }
      const std::int64_t block_start = ex.prompt_len + m.block_len * block;  // first clean token of the block
      return key < block_start && (m.window == 0 || key >= block_start - (m.window - 1));
    }
  }
  return false;
}

// ---- The decoded rule of one query row -----------------------------------------------------------
// Under every kind the keys a query sees form at most two ranges of [cache ; own]: the row sees key
// iff lo[0] <= key < hi[0] or lo[1] <= key < hi[1] (an empty range has lo == hi). Causal and
// Generation need one range; Canvas has the cached (block-causal, windowed) range and the own block.
struct AttnRowRule {
  std::int64_t lo[2] = {0, 0};
  std::int64_t hi[2] = {0, 0};
};

DG_HOST_DEVICE constexpr bool attn_row_visible(const AttnRowRule& r, std::int64_t key) noexcept {
  return (key >= r.lo[0] && key < r.hi[0]) || (key >= r.lo[1] && key < r.hi[1]);
}

// Whether the row sees any key in [first, end) (tile skipping).
DG_HOST_DEVICE constexpr bool attn_row_any(const AttnRowRule& r, std::int64_t first, std::int64_t end) noexcept {
  for (int s = 0; s < 2; ++s) {
    const std::int64_t a = r.lo[s] > first ? r.lo[s] : first, b = r.hi[s] < end ? r.hi[s] : end;
    if (a < b) return true;
  }
  return false;
}

// Decodes the rule for own query q (0 <= q < len) of an example, with cache_len = Tc and len = S; the
// result equals attn_visible(m, ex, cache_len, q, key) for every key in [0, Tc + S) whenever the
// shapes are valid (Canvas: block_len > 0, 0 <= canvas_len <= len, prompt_len >= 0 and
// prompt_len + canvas_len <= cache_len, as attn_dims() checks).
DG_HOST_DEVICE constexpr AttnRowRule attn_row_rule(const AttnMask& m, const AttnExample& ex, std::int64_t cache_len,
                                                   std::int64_t len, std::int64_t q) noexcept {
  AttnRowRule r{};
  switch (m.kind) {
    case AttnMaskKind::Causal: {
      const std::int64_t pos = cache_len + q, first = pos - m.window + 1;
      r.lo[0] = m.window == 0 || first < 0 ? 0 : first;
      r.hi[0] = pos + 1;
      break;
    }
    case AttnMaskKind::Generation: {
      const std::int64_t first = cache_len - (m.window - 1);
      r.lo[0] = m.window == 0 || first < 0 ? 0 : first;
      r.hi[0] = cache_len + len;
      break;
    }
    case AttnMaskKind::Canvas: {
      if (q >= ex.canvas_len) break;  // padding row of a shorter canvas: sees nothing
      const std::int64_t block = q / m.block_len;
      const std::int64_t start = ex.prompt_len + m.block_len * block;  // first clean token of the block
      const std::int64_t first = start - (m.window - 1);
      r.hi[0] = start < cache_len ? start : cache_len;
      r.lo[0] = m.window == 0 || first < 0 ? 0 : first;
      if (r.lo[0] > r.hi[0]) r.lo[0] = r.hi[0];
      std::int64_t end = m.block_len * (block + 1);
      if (end > ex.canvas_len) end = ex.canvas_len;
      r.lo[1] = cache_len + m.block_len * block;
      r.hi[1] = cache_len + end;
      break;
    }
  }
  return r;
}

}  // namespace dg
