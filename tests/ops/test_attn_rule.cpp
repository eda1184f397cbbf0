// The decoded attention rule (layers/ops/attn_rule.h: AttnRowRule, attn_row_rule, attn_row_visible,
// attn_row_any), which the CUDA kernels evaluate, against the rule the CPU op evaluates:
//  - exhaustively against attn_visible() over every mask kind, window, block length and canvas
//    geometry of a grid of small shapes, every (query, key);
//  - against the CPU attention op itself on one-hot values (q = 0, so a row's probabilities are
//    uniform over exactly the keys it sees, and v of key c is the unit vector e_c: out[.., c] > 0
//    iff the row sees c), key padding included, over the mask table of tests/ops/test_attention.cpp
//    plus multi-tile shapes;
//  - attn_row_any() (tile skipping) against a scan of attn_row_visible().
// All exact: no tolerance (the one-hot outputs are 1/count or exactly 0).
#include <doctest/doctest.h>

#include <array>
#include <string>
#include <vector>

#include "tests/op_test_util.h"

using namespace dg;

// The decoded rule is constexpr: the same code runs in the kernels.
static_assert(attn_row_visible(attn_row_rule({AttnMaskKind::Causal, 3, 0}, {}, 2, 4, 1), 1));   // 3 - 1 < 3
static_assert(!attn_row_visible(attn_row_rule({AttnMaskKind::Causal, 3, 0}, {}, 2, 4, 1), 0));  // 3 - 0 = 3
static_assert(!attn_row_visible(attn_row_rule({AttnMaskKind::Canvas, 0, 4}, {2, 8}, 10, 8, 4), 6));
static_assert(attn_row_visible(attn_row_rule({AttnMaskKind::Canvas, 0, 4}, {2, 8}, 10, 8, 4), 5));
static_assert(attn_row_any(attn_row_rule({AttnMaskKind::Generation, 3, 0}, {}, 10, 4, 0), 8, 9));
static_assert(!attn_row_any(attn_row_rule({AttnMaskKind::Generation, 3, 0}, {}, 10, 4, 0), 0, 8));

namespace {

// Mismatches between the decoded rule and attn_visible over all (q, key) of one geometry; also
// checks attn_row_any on every key range [first, end) of the row.
int mismatches(const AttnMask& m, const AttnExample& ex, std::int64_t Tc, std::int64_t S) {
  int bad = 0;
  const std::int64_t tk = Tc + S;
  for (std::int64_t q = 0; q < S; ++q) {
    const AttnRowRule r = attn_row_rule(m, ex, Tc, S, q);
    std::vector<bool> vis(static_cast<std::size_t>(tk));
    for (std::int64_t key = 0; key < tk; ++key) {
      vis[static_cast<std::size_t>(key)] = attn_visible(m, ex, Tc, q, key);
      bad += attn_row_visible(r, key) != vis[static_cast<std::size_t>(key)];
    }
    for (int s = 0; s < 2; ++s) bad += r.lo[s] < 0 || r.hi[s] > tk || r.lo[s] > r.hi[s];  // ranges inside [0, Tc + S)
    for (std::int64_t first = 0; first < tk; ++first) {
      bool any = false;
      for (std::int64_t end = first + 1; end <= tk; ++end) {
        any = any || vis[static_cast<std::size_t>(end - 1)];
        bad += attn_row_any(r, first, end) != any;
      }
    }
  }
  return bad;
}

}  // namespace

TEST_CASE("attn_row_rule equals attn_visible on every (query, key) of a grid of shapes") {
  int geometries = 0, bad = 0;
  for (std::int64_t W : {0, 1, 2, 3, 5, 9, 100})
    for (std::int64_t Tc : {0, 1, 4, 11})
      for (std::int64_t S : {1, 2, 7, 12}) {
        bad += mismatches({AttnMaskKind::Causal, W, 0}, {}, Tc, S);
        bad += mismatches({AttnMaskKind::Generation, W, 0}, {}, Tc, S);
        geometries += 2;
        for (std::int64_t Bk : {1, 2, 3, 4, 7, 16})
          for (std::int64_t R = 0; R <= S; ++R)
            for (std::int64_t P = 0; P + R <= Tc; ++P) {
              bad += mismatches({AttnMaskKind::Canvas, W, Bk}, {P, R}, Tc, S);
              ++geometries;
            }
      }
  CHECK(geometries > 2000);
  CHECK(bad == 0);
}

TEST_CASE("attn_row_rule(AttnOpts) picks the example of the batch entry") {
  AttnOpts o;
  o.mask = {AttnMaskKind::Canvas, 0, 2};
  o.examples = {{1, 4}, {3, 2}};
  const AttnDims d{2, 4, 6, 1, 1, 8};
  for (std::int64_t b = 0; b < 2; ++b)
    for (std::int64_t q = 0; q < 4; ++q) {
      const AttnRowRule r = attn_row_rule(o, d, b, q);
      for (std::int64_t key = 0; key < 10; ++key)
        CHECK(attn_row_visible(r, key) == attn_visible(o.mask, o.examples[static_cast<std::size_t>(b)], 6, q, key));
    }
  o.mask = {AttnMaskKind::Causal, 2, 0};
  o.examples.clear();
  const AttnRowRule r = attn_row_rule(o, d, 1, 3);  // position 9: keys 8, 9
  CHECK(r.lo[0] == 8);
  CHECK(r.hi[0] == 10);
  CHECK(r.lo[1] == r.hi[1]);
}

namespace {

struct OneHotCase {
  const char* name;
  AttnMask mask;
  std::int64_t B, S, Tc, nh, nkv;
  std::vector<AttnExample> examples = {};
  std::vector<std::array<std::int64_t, 3>> padding = {};  // {example, first key, end key}
};

}  // namespace

TEST_CASE("the CPU op attends exactly the keys of the decoded rule and the key padding (one-hot values)") {
  using K = AttnMaskKind;
  // clang-format off
  const std::vector<OneHotCase> table = {
      // the mask table of tests/ops/test_attention.cpp
      {"causal full, no cache", {K::Causal, 0, 0}, 2, 9, 0, 2, 2},
      {"causal full, cache, GQA 2", {K::Causal, 0, 0}, 2, 6, 5, 4, 2},
      {"causal sliding W=4, GQA 3", {K::Causal, 4, 0}, 2, 11, 0, 6, 2},
      {"causal sliding W=3, cache, left padding", {K::Causal, 3, 0}, 2, 5, 4, 2, 1, {}, {{1, 0, 6}}},
      {"causal full, right padding", {K::Causal, 0, 0}, 2, 7, 0, 2, 2, {}, {{0, 5, 7}}},
      {"generation full, left-padded cache", {K::Generation, 0, 0}, 2, 5, 7, 4, 2, {}, {{1, 0, 3}}},
      {"generation sliding W=4, untrimmed cache", {K::Generation, 4, 0}, 2, 5, 7, 2, 1},
      {"generation, no cache", {K::Generation, 0, 0}, 2, 6, 0, 2, 2},
      {"canvas full, ragged canvases", {K::Canvas, 0, 3}, 2, 6, 12, 4, 2, {{4, 6}, {2, 5}}},
      {"canvas sliding W=4", {K::Canvas, 4, 3}, 2, 6, 12, 2, 2, {{4, 6}, {7, 5}}},
      {"canvas single block", {K::Canvas, 0, 6}, 2, 6, 6, 2, 1, {{0, 6}, {0, 4}}},
      {"canvas sliding W=2, encoder tail padding", {K::Canvas, 2, 2}, 2, 4, 9, 2, 2, {{3, 4}, {5, 3}},
       {{0, 7, 9}, {1, 8, 9}}},
      // shapes spanning several 32-row / 32-key tiles of the CUDA kernels
      {"causal sliding W=37, cache 40, padding", {K::Causal, 37, 0}, 2, 70, 40, 2, 1, {}, {{1, 0, 45}}},
      {"generation sliding W=20, cache 50", {K::Generation, 20, 0}, 1, 33, 50, 1, 1},
      {"canvas Bk=16 W=6 (gaps between block windows)", {K::Canvas, 6, 16}, 2, 80, 100, 1, 1, {{10, 75}, {3, 80}}},
      {"canvas Bk=40 full", {K::Canvas, 0, 40}, 1, 90, 130, 1, 1, {{30, 90}}},
  };
  // clang-format on
  for (const OneHotCase& c : table) {
    CAPTURE(std::string(c.name));
    const std::int64_t tk = c.Tc + c.S, hd = tk;
    Tensor q = Tensor::zeros({c.B, c.S, c.nh, hd}, DType::F32);
    Tensor k = dg::test::random_tensor({c.B, c.S, c.nkv, hd}, 11);
    Tensor v = Tensor::zeros({c.B, c.S, c.nkv, hd}, DType::F32), kc, vc;
    for (std::int64_t b = 0; b < c.B; ++b)
      for (std::int64_t j = 0; j < c.S; ++j)
        for (std::int64_t g = 0; g < c.nkv; ++g) v.data<float>()[((b * c.S + j) * c.nkv + g) * hd + c.Tc + j] = 1.f;
    if (c.Tc > 0) {
      kc = dg::test::random_tensor({c.B, c.Tc, c.nkv, hd}, 12);
      vc = Tensor::zeros({c.B, c.Tc, c.nkv, hd}, DType::F32);
      for (std::int64_t b = 0; b < c.B; ++b)
        for (std::int64_t j = 0; j < c.Tc; ++j)
          for (std::int64_t g = 0; g < c.nkv; ++g) vc.data<float>()[((b * c.Tc + j) * c.nkv + g) * hd + j] = 1.f;
    }
    AttnOpts o;
    o.mask = c.mask;
    o.examples = c.examples;
    std::vector<std::int32_t> valid(static_cast<std::size_t>(c.B * tk), 1);
    for (const auto& p : c.padding)
      for (std::int64_t key = p[1]; key < p[2]; ++key) valid[static_cast<std::size_t>(p[0] * tk + key)] = 0;
    if (!c.padding.empty()) o.key_valid = Tensor::from_i32({c.B, tk}, valid);
    Tensor out = Tensor::empty(q.shape(), DType::F32), none;
    attention(q, k, v, kc, vc, o, out, none);

    const AttnDims d = attn_dims(q, k, v, kc, vc, o);
    int bad = 0, seen = 0;
    for (std::int64_t b = 0; b < c.B; ++b)
      for (std::int64_t i = 0; i < c.S; ++i) {
        const AttnRowRule r = attn_row_rule(o, d, b, i);
        for (std::int64_t n = 0; n < c.nh; ++n)
          for (std::int64_t key = 0; key < tk; ++key) {
            const bool want = attn_row_visible(r, key) && valid[static_cast<std::size_t>(b * tk + key)] != 0;
            const bool got = out.data<float>()[((b * c.S + i) * c.nh + n) * hd + key] > 0.f;
            bad += want != got;
            seen += want;
          }
      }
    CHECK(seen > 0);
    CHECK(bad == 0);
  }
}
