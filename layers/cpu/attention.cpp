// Attention on the CPU (fp32, the exact reference): shape validation shared by the backends, the
// dispatcher (device tensors go to dg::cuda, layers/cuda/attention.cpp), and a tiled forward /
// backward. Per batch entry and tile of query rows the visibility of every key is evaluated once
// from the rule (attn_visible, layers/ops/attn_rule.h) and the key padding; the column range
// holding any visible key bounds the sgemm calls (scores, P.V, and the backward products), so causal
// and canvas masks skip most masked work. Scratch is one [tile, Tc + S] block per head, never [S, S].
// Threads (layers/cpu/parallel.h): per tile, the GEMMs of every head run first (OpenBLAS threads them),
// then the softmax (or its gradient) of every (head, row) on the CPU threads, then the next GEMMs, each
// call the same as in a head-by-head loop, so the results do not depend on the thread count.
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "layers/cpu/parallel.h"
#include "layers/cpu/vmath.h"
#include "layers/ops.h"

namespace dg {

namespace {

void check_shape(const Tensor& t, const Shape& want, const std::string& what) {
  DG_CHECK(t.shape() == want, "attention {} is {}, should be {}", what, t.describe(), shape_str(want));
}

const char* kind_name(AttnMaskKind k) {
  switch (k) {
    case AttnMaskKind::Causal:
      return "causal";
    case AttnMaskKind::Generation:
      return "generation";
    case AttnMaskKind::Canvas:
      return "canvas";
  }
  return "?";
}

}  // namespace

AttnDims attn_dims(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& k_cache, const Tensor& v_cache,
                   const AttnOpts& o) {
  DG_CHECK(q.defined() && q.ndim() == 4, "attention q must be [B, S, nh, hd], got {}", q.describe());
  AttnDims d{};
  d.batch = q.size(0);
  d.len = q.size(1);
  d.heads = q.size(2);
  d.head_dim = q.size(3);
  DG_CHECK(k.defined() && k.ndim() == 4, "attention k must be [B, S, nkv, hd], got {}", k.describe());
  d.kv_heads = k.size(2);
  check_shape(k, {d.batch, d.len, d.kv_heads, d.head_dim}, "k (q is [B, S, nh, hd] = " + q.describe() + ")");
  check_shape(v, k.shape(), "v (like k)");
  DG_CHECK(d.kv_heads > 0 && d.heads % d.kv_heads == 0,
           "attention needs nh % nkv == 0 (query heads share kv heads in groups): nh = {}, nkv = {}", d.heads,
           d.kv_heads);
  DG_CHECK(k_cache.defined() == v_cache.defined(), "attention k_cache {} and v_cache {}: both or neither",
           k_cache.describe(), v_cache.describe());
  d.cache_len = 0;
  if (k_cache.defined()) {
    DG_CHECK(k_cache.ndim() == 4, "attention k_cache must be [B, Tc, nkv, hd], got {}", k_cache.describe());
    d.cache_len = k_cache.size(1);
    check_shape(k_cache, {d.batch, d.cache_len, d.kv_heads, d.head_dim}, "k_cache");
    check_shape(v_cache, k_cache.shape(), "v_cache (like k_cache)");
  }

  const AttnMask& m = o.mask;
  DG_CHECK(m.window >= 0, "attention window {} must be >= 0 (0 = full layer)", m.window);
  if (m.kind == AttnMaskKind::Canvas) {
    DG_CHECK(m.block_len > 0, "attention canvas rule needs block_len > 0, got {}", m.block_len);
    DG_CHECK(static_cast<std::int64_t>(o.examples.size()) == d.batch,
             "attention canvas rule needs one AttnExample per batch entry: {} for B = {}", o.examples.size(), d.batch);
    for (std::size_t b = 0; b < o.examples.size(); ++b) {
      const AttnExample& e = o.examples[b];
      DG_CHECK(
          e.prompt_len >= 0 && e.canvas_len >= 0 && e.canvas_len <= d.len && e.prompt_len + e.canvas_len <= d.cache_len,
          "attention canvas example {}: prompt_len {} + canvas_len {} must fit the {} encoder tokens, "
          "canvas_len at most the {} canvas tokens",
          b, e.prompt_len, e.canvas_len, d.cache_len, d.len);
    }
  } else {
    DG_CHECK(o.examples.empty(), "attention {} rule takes no per-example geometry ({} AttnExample given)",
             kind_name(m.kind), o.examples.size());
  }
  if (o.key_valid.defined()) {
    DG_CHECK(o.key_valid.dtype() == DType::I32, "attention key_valid must be i32, got {}", o.key_valid.describe());
    check_shape(o.key_valid, {d.batch, d.cache_len + d.len}, "key_valid ([B, Tc + S])");
  }
  return d;
}

void attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& k_cache, const Tensor& v_cache,
               const AttnOpts& opts, Tensor& out, Tensor& lse) {
  if (any_on_cuda({&q, &k, &v, &k_cache, &v_cache, &opts.key_valid, &out, &lse})) {
    require_cuda("attention", {&q, &k, &v, &k_cache, &v_cache, &opts.key_valid, &out, &lse});
    cuda::attention(q, k, v, k_cache, v_cache, opts, out, lse);
    return;
  }
  require_cpu("attention", {&q, &k, &v, &k_cache, &v_cache, &opts.key_valid, &out, &lse});
  cpu::attention(q, k, v, k_cache, v_cache, opts, out, lse);
}

void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& k_cache, const Tensor& v_cache,
                        const AttnOpts& opts, const Tensor& out, const Tensor& lse, const Tensor& d_out, Tensor& d_q,
                        Tensor& d_k, Tensor& d_v, Tensor& d_k_cache, Tensor& d_v_cache) {
  if (any_on_cuda({&q, &k, &v, &k_cache, &v_cache, &opts.key_valid, &out, &lse, &d_out, &d_q, &d_k, &d_v, &d_k_cache,
                   &d_v_cache})) {
    require_cuda("attention_backward", {&q, &k, &v, &k_cache, &v_cache, &opts.key_valid, &out, &lse, &d_out, &d_q,
                                        &d_k, &d_v, &d_k_cache, &d_v_cache});
    cuda::attention_backward(q, k, v, k_cache, v_cache, opts, out, lse, d_out, d_q, d_k, d_v, d_k_cache, d_v_cache);
    return;
  }
  require_cpu("attention_backward", {&q, &k, &v, &k_cache, &v_cache, &opts.key_valid, &out, &lse, &d_out, &d_q, &d_k,
                                     &d_v, &d_k_cache, &d_v_cache});
  cpu::attention_backward(q, k, v, k_cache, v_cache, opts, out, lse, d_out, d_q, d_k, d_v, d_k_cache, d_v_cache);
}

namespace cpu {
namespace {

constexpr std::int64_t kTileRows = 32;  // query rows per tile
constexpr float kInf = std::numeric_limits<float>::infinity();

// pr[key] = vis[key] ? exp(pr[key] - sub) : 0 for keys [k0, k1): the vectorised fp32 exp (vmath.h).
void masked_exp(float* pr, const std::uint8_t* vis, std::int64_t k0, std::int64_t k1, float sub) {
  if (k1 <= k0) return;
  const vm::f32v sv = vm::splat(sub);
  vm::map(pr + k0, pr + k0, k1 - k0, [&](vm::f32v x) { return vm::exp(x - sv); });
  for (std::int64_t key = k0; key < k1; ++key)
    if (!vis[key]) pr[key] = 0.f;
}

void check_f32(const char* op, std::initializer_list<const Tensor*> tensors) {
  for (const Tensor* t : tensors)
    if (t->defined()) DG_CHECK(t->dtype() == DType::F32, "CPU {} is f32 only: {}", op, t->describe());
}

// The key set of one batch entry, as two segments of the concatenation [cache ; own]: segment 0 is
// the cache (keys [0, Tc)), segment 1 the own tokens (keys [Tc, Tc + S)). Rows are token-major
// [rows, nkv, hd]; `k`/`v` point at kv head 0 of row 0.
struct KeySegment {
  const float* k = nullptr;
  const float* v = nullptr;
  float* dk = nullptr;  // backward only; null: no gradient wanted for this segment
  float* dv = nullptr;
  std::int64_t first_key = 0;  // index of the segment's row 0 in [cache ; own]
  std::int64_t rows = 0;
};

// Visibility of every key for one tile of query rows, and the per-segment ranges [lo, hi) (segment
// rows) outside which nothing is visible.
struct Tile {
  std::int64_t first = 0, rows = 0;
  std::vector<std::uint8_t> visible;  // [rows, Tk]
  std::int64_t lo[2] = {0, 0}, hi[2] = {0, 0};
};

void build_tile(const AttnDims& d, const AttnOpts& o, std::int64_t b, std::int64_t first, std::int64_t rows,
                const KeySegment seg[2], Tile& t) {
  const std::int64_t tk = d.cache_len + d.len;
  t.first = first;
  t.rows = rows;
  t.visible.assign(static_cast<std::size_t>(t.rows * tk), 0);
  const AttnExample ex = o.examples.empty() ? AttnExample{} : o.examples[static_cast<std::size_t>(b)];
  const std::int32_t* valid = o.key_valid.defined() ? o.key_valid.data<std::int32_t>() + b * tk : nullptr;
  parallel_for("attention.visibility", t.rows, 4 * tk, [&](std::int64_t r) {
    for (std::int64_t key = 0; key < tk; ++key)
      t.visible[static_cast<std::size_t>(r * tk + key)] =
          attn_visible(o.mask, ex, d.cache_len, first + r, key) && !(valid && valid[key] == 0);
  });
  for (int s = 0; s < 2; ++s) {  // the columns of each segment visible from any row of the tile
    t.lo[s] = seg[s].rows;
    t.hi[s] = 0;
    for (std::int64_t r = 0; r < t.rows; ++r) {
      const std::uint8_t* vis = t.visible.data() + r * tk + seg[s].first_key;
      std::int64_t lo = 0, hi = seg[s].rows;
      while (lo < hi && !vis[lo]) ++lo;
      while (hi > lo && !vis[hi - 1]) --hi;
      if (lo == hi) continue;
      t.lo[s] = std::min(t.lo[s], lo);
      t.hi[s] = std::max(t.hi[s], hi);
    }
    if (t.hi[s] <= t.lo[s]) t.lo[s] = t.hi[s] = 0;
  }
}

// The forward's query tiles of one batch entry, {first row, rows}: aligned to the entry's first valid own
// token (its left padding), so that a token's tile, and with it the key range of every GEMM around it,
// does not depend on how much padding its batch mates force on it: the forward is batch-invariant.
std::vector<std::pair<std::int64_t, std::int64_t>> query_tiles(const AttnDims& d, const AttnOpts& o, std::int64_t b) {
  std::int64_t q0 = 0;
  if (o.key_valid.defined()) {
    const std::int32_t* own = o.key_valid.data<std::int32_t>() + b * (d.cache_len + d.len) + d.cache_len;
    while (q0 < d.len && own[q0] == 0) ++q0;
  }
  std::vector<std::pair<std::int64_t, std::int64_t>> tiles;
  if (q0 > 0) tiles.emplace_back(0, q0);
  for (std::int64_t first = q0; first < d.len; first += kTileRows) tiles.emplace_back(first, std::min(kTileRows, d.len - first));
  return tiles;
}

// scores[r, key] = scale * q[r] . k[key] for the keys in the tile's ranges (other columns untouched).
// `q` points at head n of the tile's first row (row stride nh*hd); kv is the kv head of n.
void tile_scores(const AttnDims& d, const Tile& t, const KeySegment seg[2], const float* q, std::int64_t kv,
                 float scale, float* scores) {
  const std::int64_t tk = d.cache_len + d.len, kstride = d.kv_heads * d.head_dim;
  for (int s = 0; s < 2; ++s)
    sgemm(false, true, t.rows, t.hi[s] - t.lo[s], d.head_dim, scale, q, d.heads * d.head_dim,
          seg[s].k + t.lo[s] * kstride + kv * d.head_dim, kstride, 0.f, scores + seg[s].first_key + t.lo[s], tk);
}

// One batch entry's key segments.
void key_segments(const AttnDims& d, std::int64_t b, const Tensor& k, const Tensor& v, const Tensor& k_cache,
                  const Tensor& v_cache, KeySegment seg[2]) {
  const std::int64_t kstride = d.kv_heads * d.head_dim;
  seg[1] = {};
  seg[1].k = k.data<float>() + b * d.len * kstride;
  seg[1].v = v.data<float>() + b * d.len * kstride;
  seg[1].first_key = d.cache_len;
  seg[1].rows = d.len;
  seg[0] = {};
  seg[0].rows = d.cache_len;
  // Without a cache, segment 0 points at the own rows (never read: it has no rows) so that the
  // zero-width sgemm calls below still get valid pointers.
  seg[0].k = d.cache_len > 0 ? k_cache.data<float>() + b * d.cache_len * kstride : seg[1].k;
  seg[0].v = d.cache_len > 0 ? v_cache.data<float>() + b * d.cache_len * kstride : seg[1].v;
}

// fp32 softmax over the visible keys of row r of one head's tile scores (p: the head's [rows, Tk] block), in
// place: masked entries in the tile's ranges become exact zeros. Returns the row's log-sum-exp (+inf: no
// visible key, the row stays 0).
float softmax_row(const AttnDims& d, const Tile& t, const KeySegment seg[2], std::int64_t r, float* p) {
  const std::int64_t tk = d.cache_len + d.len;
  float* pr = p + r * tk;
  const std::uint8_t* vis = t.visible.data() + r * tk;
  float mx = -kInf;
  for (int s = 0; s < 2; ++s)
    for (std::int64_t key = seg[s].first_key + t.lo[s]; key < seg[s].first_key + t.hi[s]; ++key)
      if (vis[key]) mx = std::max(mx, pr[key]);
  float sum = 0.f;
  for (int s = 0; s < 2; ++s) {
    masked_exp(pr, vis, seg[s].first_key + t.lo[s], seg[s].first_key + t.hi[s], mx);
    for (std::int64_t key = seg[s].first_key + t.lo[s]; key < seg[s].first_key + t.hi[s]; ++key) sum += pr[key];
  }
  const float inv = sum > 0.f ? 1.f / sum : 0.f;
  for (int s = 0; s < 2; ++s)
    for (std::int64_t key = seg[s].first_key + t.lo[s]; key < seg[s].first_key + t.hi[s]; ++key) pr[key] *= inv;
  return sum > 0.f ? mx + std::log(sum) : kInf;
}

// The backward's operands and its per-head tile scratch (P and dS, [heads][kTileRows, Tk] each).
struct BackwardTile {
  const AttnDims& d;
  const AttnOpts& o;
  const float *q, *out, *d_out, *lse;
  float* d_q;
  std::vector<float> p, ds;
};

// Row r of head n: P = exp(s - lse) and dS = P * (dP - D) with D = dO . O, in the head's P and dS blocks.
void softmax_grad_row(BackwardTile& bt, std::int64_t b, const Tile& t, const KeySegment seg[2], std::int64_t n,
                      std::int64_t r) {
  const AttnDims& d = bt.d;
  const std::int64_t tk = d.cache_len + d.len, qstride = d.heads * d.head_dim;
  const std::int64_t at = (b * d.len + t.first + r) * qstride + n * d.head_dim;  // row r of head n in q/out
  const float row_lse = bt.lse[(b * d.heads + n) * d.len + t.first + r];      // +inf: empty row
  float dsum = 0.f;
  for (std::int64_t c = 0; c < d.head_dim; ++c) dsum += bt.d_out[at + c] * bt.out[at + c];
  float* pr = bt.p.data() + (n * kTileRows + r) * tk;
  float* dr = bt.ds.data() + (n * kTileRows + r) * tk;
  const std::uint8_t* vis = t.visible.data() + r * tk;
  for (int s = 0; s < 2; ++s) {
    masked_exp(pr, vis, seg[s].first_key + t.lo[s], seg[s].first_key + t.hi[s], row_lse);
    for (std::int64_t key = seg[s].first_key + t.lo[s]; key < seg[s].first_key + t.hi[s]; ++key)
      dr[key] = pr[key] * (dr[key] - dsum);
  }
}

// One query tile of batch entry b: the score and dP GEMMs of every head, then the softmax gradient of every
// (head, row) on the CPU threads, then the dQ / dK / dV GEMMs head by head (dK and dV accumulate in that order).
void backward_tile(BackwardTile& bt, std::int64_t b, const Tile& t, const KeySegment seg[2]) {
  const AttnDims& d = bt.d;
  const std::int64_t tk = d.cache_len + d.len, group = d.heads / d.kv_heads, head_tile = kTileRows * tk;
  const std::int64_t qstride = d.heads * d.head_dim, kstride = d.kv_heads * d.head_dim;
  const std::int64_t row0 = (b * d.len + t.first) * qstride;  // q/out offset of the tile's head 0
  for (std::int64_t n = 0; n < d.heads; ++n) {
    const std::int64_t kv = n / group;
    tile_scores(d, t, seg, bt.q + row0 + n * d.head_dim, kv, bt.o.scale, bt.p.data() + n * head_tile);
    for (int s = 0; s < 2; ++s)  // dP = dO . V^T into ds
      sgemm(false, true, t.rows, t.hi[s] - t.lo[s], d.head_dim, 1.f, bt.d_out + row0 + n * d.head_dim, qstride,
            seg[s].v + t.lo[s] * kstride + kv * d.head_dim, kstride, 0.f,
            bt.ds.data() + n * head_tile + seg[s].first_key + t.lo[s], tk);
  }
  parallel_for("attention.backward.softmax", d.heads * t.rows, 4 * tk + d.head_dim,
               [&](std::int64_t i) { softmax_grad_row(bt, b, t, seg, i / t.rows, i % t.rows); });
  for (std::int64_t n = 0; n < d.heads; ++n)
    for (int s = 0; s < 2; ++s) {
      const std::int64_t cols = t.hi[s] - t.lo[s], key0 = n * head_tile + seg[s].first_key + t.lo[s];
      const std::int64_t krow = t.lo[s] * kstride + (n / group) * d.head_dim, at = row0 + n * d.head_dim;
      // dQ (written: the first call overwrites, also when its range is empty)
      sgemm(false, false, t.rows, d.head_dim, cols, bt.o.scale, bt.ds.data() + key0, tk, seg[s].k + krow, kstride,
            s == 0 ? 0.f : 1.f, bt.d_q + at, qstride);
      if (seg[s].dk)
        sgemm(true, false, cols, d.head_dim, t.rows, bt.o.scale, bt.ds.data() + key0, tk, bt.q + at, qstride, 1.f,
              seg[s].dk + krow, kstride);
      if (seg[s].dv)
        sgemm(true, false, cols, d.head_dim, t.rows, 1.f, bt.p.data() + key0, tk, bt.d_out + at, qstride, 1.f,
              seg[s].dv + krow, kstride);
    }
}

}  // namespace

void attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& k_cache, const Tensor& v_cache,
               const AttnOpts& o, Tensor& out, Tensor& lse) {
  const AttnDims d = attn_dims(q, k, v, k_cache, v_cache, o);
  check_f32("attention", {&q, &k, &v, &k_cache, &v_cache, &out, &lse});
  check_shape(out, q.shape(), "out (like q)");
  if (lse.defined()) check_shape(lse, {d.batch, d.heads, d.len}, "lse ([B, nh, S])");

  const std::int64_t tk = d.cache_len + d.len, group = d.heads / d.kv_heads;
  const std::int64_t qstride = d.heads * d.head_dim, kstride = d.kv_heads * d.head_dim;
  std::vector<float> p;  // per head [rows, Tk]: scores, then probabilities
  const float* pq = q.data<float>();
  float* pout = out.data<float>();
  float* plse = lse.defined() ? lse.data<float>() : nullptr;
  Tile t;
  KeySegment seg[2];
  for (std::int64_t b = 0; b < d.batch; ++b) {
    key_segments(d, b, k, v, k_cache, v_cache, seg);
    for (const auto& [first, rows] : query_tiles(d, o, b)) {
      build_tile(d, o, b, first, rows, seg, t);
      const std::int64_t head_tile = t.rows * tk;  // (a left-padding tile may have more than kTileRows rows)
      const auto need = static_cast<std::size_t>(d.heads * head_tile);
      if (p.size() < need) p.resize(need);
      const std::int64_t row0 = (b * d.len + first) * qstride;  // q/out offset of the tile's head 0
      for (std::int64_t n = 0; n < d.heads; ++n)
        tile_scores(d, t, seg, pq + row0 + n * d.head_dim, n / group, o.scale, p.data() + n * head_tile);
      parallel_for("attention.softmax", d.heads * t.rows, 4 * tk, [&](std::int64_t i) {
        const std::int64_t n = i / t.rows, r = i % t.rows;
        const float row_lse = softmax_row(d, t, seg, r, p.data() + n * head_tile);
        if (plse) plse[(b * d.heads + n) * d.len + first + r] = row_lse;
      });
      // out = P_cache . V_cache + P_own . V_own (the first call overwrites, also when its range is empty)
      for (std::int64_t n = 0; n < d.heads; ++n)
        for (int s = 0; s < 2; ++s)
          sgemm(false, false, t.rows, d.head_dim, t.hi[s] - t.lo[s], 1.f,
                p.data() + n * head_tile + seg[s].first_key + t.lo[s], tk,
                seg[s].v + t.lo[s] * kstride + (n / group) * d.head_dim, kstride, s == 0 ? 0.f : 1.f,
                pout + row0 + n * d.head_dim, qstride);
    }
  }
}

// With P recomputed from the saved lse (P = exp(s - lse)), dP = dO . V^T, D = rowsum(dO * O) and
// dS = P * (dP - D):  dQ = scale * dS . K,  dK += scale * dS^T . Q,  dV += P^T . dO.
void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& k_cache, const Tensor& v_cache,
                        const AttnOpts& o, const Tensor& out, const Tensor& lse, const Tensor& d_out, Tensor& d_q,
                        Tensor& d_k, Tensor& d_v, Tensor& d_k_cache, Tensor& d_v_cache) {
  const AttnDims d = attn_dims(q, k, v, k_cache, v_cache, o);
  check_f32("attention_backward",
            {&q, &k, &v, &k_cache, &v_cache, &out, &lse, &d_out, &d_q, &d_k, &d_v, &d_k_cache, &d_v_cache});
  DG_CHECK(lse.defined(), "attention_backward needs the forward's lse ([B, nh, S] = [{}, {}, {}])", d.batch, d.heads,
           d.len);
  check_shape(lse, {d.batch, d.heads, d.len}, "lse ([B, nh, S])");
  check_shape(out, q.shape(), "out (like q)");
  check_shape(d_out, q.shape(), "d_out (like q)");
  check_shape(d_q, q.shape(), "d_q (like q)");
  check_shape(d_k, k.shape(), "d_k (like k)");
  check_shape(d_v, k.shape(), "d_v (like k)");
  const Shape cache_shape{d.batch, d.cache_len, d.kv_heads, d.head_dim};
  if (d_k_cache.defined()) check_shape(d_k_cache, cache_shape, "d_k_cache (like k_cache)");
  if (d_v_cache.defined()) check_shape(d_v_cache, cache_shape, "d_v_cache (like v_cache)");

  d_k.zero_();  // own-token gradients are written; the loops below accumulate over heads and tiles
  d_v.zero_();
  const std::int64_t tk = d.cache_len + d.len, head_tile = kTileRows * tk, kstride = d.kv_heads * d.head_dim;
  BackwardTile bt{d, o, q.data<float>(), out.data<float>(), d_out.data<float>(), lse.data<float>(), d_q.data<float>(),
                  std::vector<float>(static_cast<std::size_t>(d.heads * head_tile)),
                  std::vector<float>(static_cast<std::size_t>(d.heads * head_tile))};
  Tile t;
  KeySegment seg[2];
  for (std::int64_t b = 0; b < d.batch; ++b) {
    key_segments(d, b, k, v, k_cache, v_cache, seg);
    if (d.cache_len > 0) {
      seg[0].dk = d_k_cache.defined() ? d_k_cache.data<float>() + b * d.cache_len * kstride : nullptr;
      seg[0].dv = d_v_cache.defined() ? d_v_cache.data<float>() + b * d.cache_len * kstride : nullptr;
    }
    seg[1].dk = d_k.data<float>() + b * d.len * kstride;
    seg[1].dv = d_v.data<float>() + b * d.len * kstride;
    for (std::int64_t first = 0; first < d.len; first += kTileRows) {
      build_tile(d, o, b, first, std::min(kTileRows, d.len - first), seg, t);
      backward_tile(bt, b, t, seg);
    }
  }
}

}  // namespace cpu
}  // namespace dg
