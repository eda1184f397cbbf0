// CUDA attention (layers/cuda/attention.cu) against the CPU op, on the mask x shape table of
// tests/ops/test_attention.cpp (every AttnMaskKind, full and sliding windows, GQA 1-4, with and
// without a cache, key padding, empty rows, ragged canvases) plus shapes that span several 32-row /
// 32-key tiles, odd head dims (1, 33, 40, 72) and the model's head dims 256 and 512. Runs only with a
// GPU (else exit 77).
//
// Method: random inputs in [-1, 1] are rounded to the device dtype first (bf16 or f32) and the CPU op
// runs on f32 copies of exactly those values; for the backward both ops get the same out (the
// device forward's, as stored in its dtype), lse and d_out. The remaining differences are fp32
// summation order (online softmax vs two-pass, chunked dot products, other reduction trees) and the
// rounding of outputs stored in bf16.
// Tolerances, relative to the CPU result's largest magnitude (max_rel_diff):
//  - f32 outputs: out 2e-5, dQ/dK/dV 1e-4, lse 2e-5 absolute per max(1, |lse|). Scores are sums of hd
//    products of magnitude <= 1 with fp32 rounding ~hd * 2^-24 * |s| (<= 1e-5 at hd = 512), which exp
//    carries to the probabilities; the backward's dS = P (dP - D) subtracts O(1) terms, doubling it.
//    A mask or indexing error moves results by O(0.1).
//  - bf16 outputs (out, dQ, dK, dV): one rounding to bf16 (8 significant bits) moves an element by
//    at most half an ulp, 2^-8 of the power of two below it, hence at most 2^-8 of the largest
//    magnitude; plus 1e-4 for the fp32 differences above: 2^-8 + 1e-4. (Observed on an emulation of
//    the kernels: <= 3.6e-3 for bf16, <= 1e-5 for f32.)
//  - d_k_cache / d_v_cache accumulated into f32 buffers that start at random values: 1e-4 for both
//    input dtypes (the sum is formed in fp32; only the inputs are bf16); into bf16 buffers: 2^-8 + 1e-4.
#include <doctest/doctest.h>

#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>

#include "tests/op_test_util.h"

using namespace dg;
using dg::test::max_rel_diff;
using dg::test::random_tensor;

namespace {

constexpr double kBf16Tol = 0.00390625 + 1e-4;  // one bf16 rounding (2^-8 of the largest magnitude) + fp32 order

struct Case {
  const char* name;
  AttnMask mask;
  std::int64_t B, S, Tc, nh, nkv, hd;
  std::vector<AttnExample> examples = {};
  std::vector<std::array<std::int64_t, 3>> padding = {};  // {example, first key, end key}: padded keys
  float scale = 1.0f;
};

const std::vector<Case>& cases() {
  using K = AttnMaskKind;
  // clang-format off
  static const std::vector<Case> table = {
      // the table of tests/ops/test_attention.cpp
      {"causal full, no cache, nh = nkv", {K::Causal, 0, 0}, 2, 9, 0, 2, 2, 8},
      {"causal full, cache, GQA 2, scale 0.5", {K::Causal, 0, 0}, 2, 6, 5, 4, 2, 8, {}, {}, 0.5f},
      {"causal sliding W=4 < S, GQA 3", {K::Causal, 4, 0}, 2, 11, 0, 6, 2, 8},
      {"causal sliding W=3, cache, left padding (empty rows)", {K::Causal, 3, 0}, 2, 5, 4, 2, 1, 8, {}, {{1, 0, 6}}},
      {"causal full, right padding", {K::Causal, 0, 0}, 2, 7, 0, 2, 2, 8, {}, {{0, 5, 7}}},
      {"generation full, left-padded cache, GQA 2", {K::Generation, 0, 0}, 2, 5, 7, 4, 2, 8, {}, {{1, 0, 3}}},
      {"generation sliding W=4, untrimmed cache", {K::Generation, 4, 0}, 2, 5, 7, 2, 1, 8},
      {"generation, no cache", {K::Generation, 0, 0}, 2, 6, 0, 2, 2, 8},
      {"canvas full, GQA 2, ragged canvases", {K::Canvas, 0, 3}, 2, 6, 12, 4, 2, 8, {{4, 6}, {2, 5}}},
      {"canvas sliding W=4", {K::Canvas, 4, 3}, 2, 6, 12, 2, 2, 8, {{4, 6}, {7, 5}}},
      {"canvas single block (v1 layout, no encoder visible)", {K::Canvas, 0, 6}, 2, 6, 6, 2, 1, 8, {{0, 6}, {0, 4}}},
      {"canvas sliding W=2, encoder tail padding", {K::Canvas, 2, 2}, 2, 4, 9, 2, 2, 8, {{3, 4}, {5, 3}},
       {{0, 7, 9}, {1, 8, 9}}},
      // several query and key tiles, odd head dims, tiles straddling the cache / own boundary
      {"causal sliding W=37, cache 41, GQA 4, hd 40, padding", {K::Causal, 37, 0}, 2, 70, 41, 4, 1, 40, {},
       {{1, 0, 45}, {0, 100, 111}}},
      {"causal full, no cache, 3 query tiles, hd 33", {K::Causal, 0, 0}, 1, 97, 0, 2, 2, 33},
      {"generation sliding W=20, cache 50, hd 72", {K::Generation, 20, 0}, 1, 45, 50, 2, 2, 72},
      {"generation full, cache 64, GQA 2, padding", {K::Generation, 0, 0}, 2, 33, 64, 4, 2, 16, {}, {{0, 0, 30}}},
      {"canvas Bk=16 W=6 (gaps between block windows), hd 33", {K::Canvas, 6, 16}, 2, 80, 100, 2, 1, 33,
       {{10, 75}, {3, 80}}},
      {"canvas Bk=40 full, hd 64, scale 0.125", {K::Canvas, 0, 40}, 1, 90, 130, 1, 1, 64, {{30, 90}}, {}, 0.125f},
      {"canvas Bk=8 W=30, ragged, tail padding", {K::Canvas, 30, 8}, 2, 40, 60, 2, 2, 24, {{5, 40}, {12, 33}},
       {{0, 45, 60}, {1, 45, 60}}},
      {"causal, hd 1", {K::Causal, 0, 0}, 1, 5, 2, 1, 1, 1},
      // the model's head dims (sliding 256, full 512): the largest shared-memory footprints
      {"causal sliding W=16, hd 256, GQA 2, scale 0.0625", {K::Causal, 16, 0}, 1, 40, 9, 2, 1, 256, {}, {}, 0.0625f},
      {"canvas Bk=8, hd 512, scale 0.044", {K::Canvas, 0, 8}, 1, 20, 30, 2, 1, 512, {{6, 20}}, {}, 0.044f},
  };
  // clang-format on
  return table;
}

Tensor round_to(const Tensor& t, DType dt) { return dt == DType::F32 ? t.clone() : t.to(dt).to(DType::F32); }
Tensor to_device(const Tensor& t, DType dt) {
  if (!t.defined()) return Tensor();
  return (dt == DType::F32 || t.dtype() != DType::F32 ? t : t.to(dt)).to(Device::CUDA);
}
Tensor to_host_f32(const Tensor& t) {
  Tensor h = t.to(Device::CPU);
  return h.dtype() == DType::F32 ? h : h.to(DType::F32);
}
const char* dname(DType dt) { return dt == DType::F32 ? "f32" : "bf16"; }

// Inputs of one case, rounded to the dtype: host f32 copies and device tensors.
struct Inputs {
  Tensor q, k, v, k_cache, v_cache;       // host f32
  Tensor dq, dk, dv, dk_cache, dv_cache;  // device, dtype (named d* for "device")
  AttnOpts host_opts, dev_opts;
};

Inputs make_inputs(const Case& c, DType dt, std::uint32_t seed) {
  Inputs in;
  in.q = round_to(random_tensor({c.B, c.S, c.nh, c.hd}, seed), dt);
  in.k = round_to(random_tensor({c.B, c.S, c.nkv, c.hd}, seed + 1), dt);
  in.v = round_to(random_tensor({c.B, c.S, c.nkv, c.hd}, seed + 2), dt);
  if (c.Tc > 0) {
    in.k_cache = round_to(random_tensor({c.B, c.Tc, c.nkv, c.hd}, seed + 3), dt);
    in.v_cache = round_to(random_tensor({c.B, c.Tc, c.nkv, c.hd}, seed + 4), dt);
  }
  in.dq = to_device(in.q, dt);
  in.dk = to_device(in.k, dt);
  in.dv = to_device(in.v, dt);
  in.dk_cache = to_device(in.k_cache, dt);
  in.dv_cache = to_device(in.v_cache, dt);
  in.host_opts.mask = c.mask;
  in.host_opts.examples = c.examples;
  in.host_opts.scale = c.scale;
  if (!c.padding.empty()) {
    const std::int64_t tk = c.Tc + c.S;
    std::vector<std::int32_t> valid(static_cast<std::size_t>(c.B * tk), 1);
    for (const auto& p : c.padding)
      for (std::int64_t key = p[1]; key < p[2]; ++key) valid[static_cast<std::size_t>(p[0] * tk + key)] = 0;
    in.host_opts.key_valid = Tensor::from_i32({c.B, tk}, valid);
  }
  in.dev_opts = in.host_opts;
  if (in.host_opts.key_valid.defined()) in.dev_opts.key_valid = in.host_opts.key_valid.to(Device::CUDA);
  return in;
}

// lse comparison: equal infinities on empty rows, else |got - want| / max(1, |want|).
struct LseCheck {
  double err = 0;
  int inf_mismatch = 0, empty_rows = 0;
};
LseCheck compare_lse(const Tensor& got, const Tensor& want) {
  LseCheck r;
  for (std::int64_t i = 0; i < want.numel(); ++i) {
    const float g = got.data<float>()[i], w = want.data<float>()[i];
    if (std::isinf(w)) {
      ++r.empty_rows;
      r.inf_mismatch += !(std::isinf(g) && g > 0);
    } else {
      r.err = std::max(r.err, std::fabs(double(g) - w) / std::max(1.0, std::fabs(double(w))));
    }
  }
  return r;
}

bool bitwise_equal(const Tensor& a, const Tensor& b) {
  if (!a.defined() || !b.defined()) return a.defined() == b.defined();
  const Tensor ha = a.to(Device::CPU), hb = b.to(Device::CPU);
  return ha.nbytes() == hb.nbytes() && std::memcmp(ha.raw(), hb.raw(), ha.nbytes()) == 0;
}

struct DevGrads {
  Tensor q, k, v, k_cache, v_cache;
};

// Device gradient buffers: d_q, d_k, d_v in `dt` filled with garbage (they are written), the cache
// gradients f32 (or `cache_dt`) holding `g0` (they accumulate).
DevGrads device_grads(const Case& c, DType dt, const Tensor& g0, DType cache_dt = DType::F32) {
  auto garbage = [&](Shape s) {
    Tensor h = Tensor::from(s, std::vector<float>(static_cast<std::size_t>(shape_numel(s)), 1e3f));
    return to_device(h, dt);
  };
  DevGrads g{garbage({c.B, c.S, c.nh, c.hd}), garbage({c.B, c.S, c.nkv, c.hd}), garbage({c.B, c.S, c.nkv, c.hd}),
             Tensor(), Tensor()};
  if (c.Tc > 0) {
    g.k_cache = to_device(g0, cache_dt);
    g.v_cache = to_device(g0, cache_dt);
  }
  return g;
}

}  // namespace

TEST_CASE("cuda attention forward matches the CPU op (f32 and bf16, every mask kind)") {
  std::uint32_t seed = 100;
  for (const Case& c : cases())
    for (DType dt : {DType::F32, DType::BF16}) {
      CAPTURE(std::string(c.name));
      CAPTURE(std::string(dname(dt)));
      const Inputs in = make_inputs(c, dt, seed += 10);
      Tensor ref = Tensor::empty({c.B, c.S, c.nh, c.hd}, DType::F32), ref_lse = Tensor::empty({c.B, c.nh, c.S}, DType::F32);
      attention(in.q, in.k, in.v, in.k_cache, in.v_cache, in.host_opts, ref, ref_lse);

      Tensor out = Tensor::empty(ref.shape(), dt, Device::CUDA), lse = Tensor::empty(ref_lse.shape(), DType::F32, Device::CUDA);
      attention(in.dq, in.dk, in.dv, in.dk_cache, in.dv_cache, in.dev_opts, out, lse);
      CHECK(max_rel_diff(to_host_f32(out), ref) < (dt == DType::F32 ? 2e-5 : kBf16Tol));
      const LseCheck l = compare_lse(to_host_f32(lse), ref_lse);
      CHECK(l.err < 2e-5);
      CHECK(l.inf_mismatch == 0);
      if (std::string(c.name).find("empty rows") != std::string::npos) CHECK(l.empty_rows > 0);

      // f32 output from bf16 inputs, and no lse (generation): the same values
      if (dt == DType::BF16) {
        Tensor out32 = Tensor::empty(ref.shape(), DType::F32, Device::CUDA), none;
        attention(in.dq, in.dk, in.dv, in.dk_cache, in.dv_cache, in.dev_opts, out32, none);
        CHECK(max_rel_diff(to_host_f32(out32), ref) < 2e-5);
      }
    }
}

TEST_CASE("cuda attention backward matches the CPU op; cache gradients accumulate, own ones are written") {
  std::uint32_t seed = 500;
  for (const Case& c : cases())
    for (DType dt : {DType::F32, DType::BF16}) {
      CAPTURE(std::string(c.name));
      CAPTURE(std::string(dname(dt)));
      const Inputs in = make_inputs(c, dt, seed += 10);
      Tensor out = Tensor::empty({c.B, c.S, c.nh, c.hd}, dt, Device::CUDA);
      Tensor lse = Tensor::empty({c.B, c.nh, c.S}, DType::F32, Device::CUDA);
      attention(in.dq, in.dk, in.dv, in.dk_cache, in.dv_cache, in.dev_opts, out, lse);
      const Tensor w = round_to(random_tensor(out.shape(), seed + 7), dt);  // d_out
      const Tensor g0 = random_tensor({c.B, c.Tc, c.nkv, c.hd}, seed + 8);  // what the cache buffers already hold

      // CPU on the same out (as stored), lse and d_out
      Tensor rq = Tensor::empty(in.q.shape(), DType::F32), rk = Tensor::empty(in.k.shape(), DType::F32),
             rv = Tensor::empty(in.k.shape(), DType::F32), rkc, rvc;
      if (c.Tc > 0) {
        rkc = g0.clone();
        rvc = g0.clone();
      }
      attention_backward(in.q, in.k, in.v, in.k_cache, in.v_cache, in.host_opts, to_host_f32(out), to_host_f32(lse), w,
                         rq, rk, rv, rkc, rvc);

      DevGrads g = device_grads(c, dt, g0);
      const Tensor dw = to_device(w, dt);
      attention_backward(in.dq, in.dk, in.dv, in.dk_cache, in.dv_cache, in.dev_opts, out, lse, dw, g.q, g.k, g.v,
                         g.k_cache, g.v_cache);
      const double tol = dt == DType::F32 ? 1e-4 : kBf16Tol;
      CHECK(max_rel_diff(to_host_f32(g.q), rq) < tol);
      CHECK(max_rel_diff(to_host_f32(g.k), rk) < tol);
      CHECK(max_rel_diff(to_host_f32(g.v), rv) < tol);
      if (c.Tc > 0) {
        CHECK(max_rel_diff(to_host_f32(g.k_cache), rkc) < 1e-4);
        CHECK(max_rel_diff(to_host_f32(g.v_cache), rvc) < 1e-4);
      }

      // undefined cache-gradient buffers are skipped; the rest is unchanged
      if (c.Tc > 0) {
        DevGrads skip = device_grads(c, dt, g0);
        skip.k_cache = Tensor();
        skip.v_cache = Tensor();
        attention_backward(in.dq, in.dk, in.dv, in.dk_cache, in.dv_cache, in.dev_opts, out, lse, dw, skip.q, skip.k,
                           skip.v, skip.k_cache, skip.v_cache);
        CHECK(bitwise_equal(skip.q, g.q));
        CHECK(bitwise_equal(skip.k, g.k));
        CHECK(bitwise_equal(skip.v, g.v));
      }
    }
}

TEST_CASE("cuda attention is deterministic: two runs are bitwise equal") {
  for (std::size_t i : {std::size_t{8}, std::size_t{12}, std::size_t{16}, std::size_t{20}}) {
    const Case& c = cases()[i];
    for (DType dt : {DType::F32, DType::BF16}) {
      CAPTURE(std::string(c.name));
      CAPTURE(std::string(dname(dt)));
      const Inputs in = make_inputs(c, dt, 700 + static_cast<std::uint32_t>(i));
      const Tensor g0 = random_tensor({c.B, c.Tc, c.nkv, c.hd}, 777);
      const Tensor dw = to_device(round_to(random_tensor({c.B, c.S, c.nh, c.hd}, 778), dt), dt);
      Tensor out[2], lse[2];
      DevGrads g[2];
      for (int r = 0; r < 2; ++r) {
        out[r] = Tensor::empty({c.B, c.S, c.nh, c.hd}, dt, Device::CUDA);
        lse[r] = Tensor::empty({c.B, c.nh, c.S}, DType::F32, Device::CUDA);
        attention(in.dq, in.dk, in.dv, in.dk_cache, in.dv_cache, in.dev_opts, out[r], lse[r]);
        g[r] = device_grads(c, dt, g0);
        attention_backward(in.dq, in.dk, in.dv, in.dk_cache, in.dv_cache, in.dev_opts, out[0], lse[0], dw, g[r].q,
                           g[r].k, g[r].v, g[r].k_cache, g[r].v_cache);
      }
      CHECK(bitwise_equal(out[0], out[1]));
      CHECK(bitwise_equal(lse[0], lse[1]));
      CHECK(bitwise_equal(g[0].q, g[1].q));
      CHECK(bitwise_equal(g[0].k, g[1].k));
      CHECK(bitwise_equal(g[0].v, g[1].v));
      CHECK(bitwise_equal(g[0].k_cache, g[1].k_cache));
      CHECK(bitwise_equal(g[0].v_cache, g[1].v_cache));
    }
  }
}

// Batch invariance: a batch entry's left padding (forced by longer batch mates) must not change the bits
// of its rows. The key tiles are anchored at the entry's first valid key, so the same valid keys are
// summed in the same groups whatever the padding. Generation (left-padded cache + canvas) and a causal
// sliding encoder pass (left-padded own keys), paddings across and at tile boundaries (tiles of 32 keys).
TEST_CASE("cuda attention forward is batch-invariant: left padding does not change a row's bits") {
  const std::int64_t P = 70, S = 8, nh = 4, nkv = 2, hd = 64;
  // [1, pad + rows, heads, hd]: `pad` rows of garbage in front of `t`'s rows
  auto padded = [](const Tensor& t, std::int64_t pad) {
    const std::int64_t row = t.numel() / t.size(1);
    std::vector<float> v(static_cast<std::size_t>(pad * row), 7.5f);
    v.insert(v.end(), t.data<float>(), t.data<float>() + t.numel());
    return Tensor::from({1, pad + t.size(1), t.size(2), t.size(3)}, v);
  };
  auto valid_after = [](std::int64_t pad, std::int64_t total) {
    std::vector<std::int32_t> v(static_cast<std::size_t>(total), 1);
    std::fill(v.begin(), v.begin() + pad, 0);
    return Tensor::from_i32({1, total}, v).to(Device::CUDA);
  };
  for (DType dt : {DType::F32, DType::BF16}) {
    CAPTURE(std::string(dname(dt)));
    const Tensor q = round_to(random_tensor({1, S, nh, hd}, 41), dt), k = round_to(random_tensor({1, S, nkv, hd}, 42), dt),
                 v = round_to(random_tensor({1, S, nkv, hd}, 43), dt);
    const Tensor kc = round_to(random_tensor({1, P, nkv, hd}, 44), dt), vc = round_to(random_tensor({1, P, nkv, hd}, 45), dt);
    const Tensor pq = round_to(random_tensor({1, P, nh, hd}, 46), dt);
    // generation: canvas rows over a cache with `pad` padded keys in front
    auto generation = [&](std::int64_t pad) {
      AttnOpts o;
      o.mask = {AttnMaskKind::Generation, 0, 0};
      o.key_valid = valid_after(pad, pad + P + S);
      Tensor out = Tensor::empty({1, S, nh, hd}, DType::F32, Device::CUDA), none;
      attention(to_device(q, dt), to_device(k, dt), to_device(v, dt), to_device(padded(kc, pad), dt),
                to_device(padded(vc, pad), dt), o, out, none);
      return to_host_f32(out);
    };
    // encoder: a causal sliding pass over `pad` padded tokens and the prompt; the prompt's rows returned
    auto encoder = [&](std::int64_t pad) {
      AttnOpts o;
      o.mask = {AttnMaskKind::Causal, 40, 0};
      o.key_valid = valid_after(pad, pad + P);
      Tensor out = Tensor::empty({1, pad + P, nh, hd}, DType::F32, Device::CUDA), none, no_cache;
      attention(to_device(padded(pq, pad), dt), to_device(padded(kc, pad), dt), to_device(padded(vc, pad), dt),
                no_cache, no_cache, o, out, none);
      return to_host_f32(out).reshape({pad + P, nh * hd}).rows(pad, pad + P).clone();
    };
    const Tensor gen0 = generation(0), enc0 = encoder(0);
    for (std::int64_t pad : {1, 13, 31, 32, 45}) {
      CAPTURE(pad);
      CHECK(bitwise_equal(generation(pad), gen0));
      CHECK(bitwise_equal(encoder(pad), enc0));
    }
  }
}

TEST_CASE("cuda attention attends exactly the keys of the rule and the padding (one-hot values)") {
  // q = 0: a row's probabilities are uniform over the keys it sees; v of key c is e_c, so
  // out[.., c] > 0 iff the row sees key c. Compared with attn_row_rule() and key_valid exactly.
  for (const Case& c : cases()) {
    if (c.Tc + c.S > 200) continue;
    CAPTURE(std::string(c.name));
    const std::int64_t tk = c.Tc + c.S, hd = tk;
    Tensor q = Tensor::zeros({c.B, c.S, c.nh, hd}, DType::F32);
    Tensor k = random_tensor({c.B, c.S, c.nkv, hd}, 11);
    Tensor v = Tensor::zeros({c.B, c.S, c.nkv, hd}, DType::F32), kc, vc;
    for (std::int64_t b = 0; b < c.B; ++b)
      for (std::int64_t j = 0; j < c.S; ++j)
        for (std::int64_t g = 0; g < c.nkv; ++g) v.data<float>()[((b * c.S + j) * c.nkv + g) * hd + c.Tc + j] = 1.f;
    if (c.Tc > 0) {
      kc = random_tensor({c.B, c.Tc, c.nkv, hd}, 12);
      vc = Tensor::zeros({c.B, c.Tc, c.nkv, hd}, DType::F32);
      for (std::int64_t b = 0; b < c.B; ++b)
        for (std::int64_t j = 0; j < c.Tc; ++j)
          for (std::int64_t g = 0; g < c.nkv; ++g) vc.data<float>()[((b * c.Tc + j) * c.nkv + g) * hd + j] = 1.f;
    }
    const Inputs in = make_inputs(c, DType::F32, 1);  // only for the options
    Tensor out = Tensor::empty(q.shape(), DType::F32, Device::CUDA), none;
    attention(q.to(Device::CUDA), k.to(Device::CUDA), v.to(Device::CUDA), to_device(kc, DType::F32),
              to_device(vc, DType::F32), in.dev_opts, out, none);
    const Tensor h = out.to(Device::CPU);
    const AttnDims d = attn_dims(q, k, v, kc, vc, in.host_opts);
    int bad = 0;
    for (std::int64_t b = 0; b < c.B; ++b)
      for (std::int64_t i = 0; i < c.S; ++i) {
        const AttnRowRule r = attn_row_rule(in.host_opts, d, b, i);
        for (std::int64_t n = 0; n < c.nh; ++n)
          for (std::int64_t key = 0; key < tk; ++key) {
            const bool valid = !in.host_opts.key_valid.defined() ||
                               in.host_opts.key_valid.data<std::int32_t>()[b * tk + key] != 0;
            const bool want = attn_row_visible(r, key) && valid;
            bad += want != (h.data<float>()[((b * c.S + i) * c.nh + n) * hd + key] > 0.f);
          }
      }
    CHECK(bad == 0);
  }
}

TEST_CASE("cuda attention: bf16 cache-gradient accumulators, empty caches, empty rows") {
  const Case& c = cases()[9];  // canvas sliding, cache
  const Inputs in = make_inputs(c, DType::BF16, 900);
  Tensor out = Tensor::empty({c.B, c.S, c.nh, c.hd}, DType::BF16, Device::CUDA);
  Tensor lse = Tensor::empty({c.B, c.nh, c.S}, DType::F32, Device::CUDA);
  attention(in.dq, in.dk, in.dv, in.dk_cache, in.dv_cache, in.dev_opts, out, lse);
  const Tensor w = round_to(random_tensor(out.shape(), 901), DType::BF16);
  const Tensor g0 = round_to(random_tensor({c.B, c.Tc, c.nkv, c.hd}, 902), DType::BF16);
  Tensor rq = Tensor::empty(in.q.shape(), DType::F32), rk = Tensor::empty(in.k.shape(), DType::F32),
         rv = Tensor::empty(in.k.shape(), DType::F32), rkc = g0.clone(), rvc = g0.clone();
  attention_backward(in.q, in.k, in.v, in.k_cache, in.v_cache, in.host_opts, to_host_f32(out), to_host_f32(lse), w, rq,
                     rk, rv, rkc, rvc);
  DevGrads g = device_grads(c, DType::BF16, g0, DType::BF16);
  attention_backward(in.dq, in.dk, in.dv, in.dk_cache, in.dv_cache, in.dev_opts, out, lse, to_device(w, DType::BF16),
                     g.q, g.k, g.v, g.k_cache, g.v_cache);
  CHECK(max_rel_diff(to_host_f32(g.k_cache), rkc) < kBf16Tol);  // one bf16 rounding of g0 + gradient
  CHECK(max_rel_diff(to_host_f32(g.v_cache), rvc) < kBf16Tol);

  // an explicitly empty [B, 0, nkv, hd] cache is the same as none
  const Case& nc = cases()[0];
  const Inputs ni = make_inputs(nc, DType::F32, 910);
  Tensor o1 = Tensor::empty({nc.B, nc.S, nc.nh, nc.hd}, DType::F32, Device::CUDA), o2 = o1.clone(), none;
  const Tensor empty_cache = Tensor::empty({nc.B, 0, nc.nkv, nc.hd}, DType::F32, Device::CUDA);
  attention(ni.dq, ni.dk, ni.dv, ni.dk_cache, ni.dv_cache, ni.dev_opts, o1, none);
  attention(ni.dq, ni.dk, ni.dv, empty_cache, empty_cache, ni.dev_opts, o2, none);
  CHECK(bitwise_equal(o1, o2));

  // a query that sees no key: out 0, lse +inf, zero gradients (cases()[3], example 1, rows 0 and 1)
  const Case& ec = cases()[3];
  const Inputs ei = make_inputs(ec, DType::F32, 920);
  Tensor eo = Tensor::empty({ec.B, ec.S, ec.nh, ec.hd}, DType::F32, Device::CUDA);
  Tensor el = Tensor::empty({ec.B, ec.nh, ec.S}, DType::F32, Device::CUDA);
  attention(ei.dq, ei.dk, ei.dv, ei.dk_cache, ei.dv_cache, ei.dev_opts, eo, el);
  DevGrads eg = device_grads(ec, DType::F32, Tensor::zeros({ec.B, ec.Tc, ec.nkv, ec.hd}, DType::F32));
  attention_backward(ei.dq, ei.dk, ei.dv, ei.dk_cache, ei.dv_cache, ei.dev_opts, eo, el,
                     random_tensor(eo.shape(), 921).to(Device::CUDA), eg.q, eg.k, eg.v, eg.k_cache, eg.v_cache);
  const Tensor ho = eo.to(Device::CPU), hl = el.to(Device::CPU), hq = eg.q.to(Device::CPU);
  for (std::int64_t i = 0; i < 2; ++i)
    for (std::int64_t n = 0; n < ec.nh; ++n) {
      CHECK(std::isinf(hl.data<float>()[(1 * ec.nh + n) * ec.S + i]));
      for (std::int64_t x = 0; x < ec.hd; ++x) {
        const std::int64_t at = ((1 * ec.S + i) * ec.nh + n) * ec.hd + x;
        CHECK(ho.data<float>()[at] == 0.0f);
        CHECK(hq.data<float>()[at] == 0.0f);
      }
    }
  const Tensor hkc = eg.k_cache.to(Device::CPU);  // example 1's cache is all padding: no gradient
  for (std::int64_t x = 0; x < ec.Tc * ec.nkv * ec.hd; ++x) CHECK(hkc.data<float>()[ec.Tc * ec.nkv * ec.hd + x] == 0.0f);
}

TEST_CASE("cuda attention rejects mixed devices and dtypes with a message") {
  const Case& c = cases()[5];  // generation, cache, key padding
  const Inputs in = make_inputs(c, DType::BF16, 990);
  Tensor out = Tensor::empty({c.B, c.S, c.nh, c.hd}, DType::BF16, Device::CUDA);
  Tensor lse = Tensor::empty({c.B, c.nh, c.S}, DType::F32, Device::CUDA);
  CHECK_THROWS_WITH_AS(attention(in.dq, in.dk, in.dv, in.k_cache, in.v_cache, in.dev_opts, out, lse),
                       doctest::Contains("is on the CPU while other operands are on the device"), Error);
  CHECK_THROWS_WITH_AS(attention(in.dq, in.dk, in.dv, in.dk_cache, in.dv_cache, in.host_opts, out, lse),
                       doctest::Contains("is on the CPU while other operands are on the device"), Error);
  const Tensor k32 = in.k.to(Device::CUDA);
  CHECK_THROWS_WITH_AS(attention(in.dq, k32, in.dv, in.dk_cache, in.dv_cache, in.dev_opts, out, lse),
                       doctest::Contains("one dtype"), Error);
  Tensor lse16 = Tensor::empty({c.B, c.nh, c.S}, DType::BF16, Device::CUDA);
  CHECK_THROWS_WITH_AS(attention(in.dq, in.dk, in.dv, in.dk_cache, in.dv_cache, in.dev_opts, out, lse16),
                       doctest::Contains("lse must be f32"), Error);
  Tensor bad_out = Tensor::empty({c.B, c.S, c.nh, c.hd + 1}, DType::BF16, Device::CUDA);
  CHECK_THROWS_WITH_AS(attention(in.dq, in.dk, in.dv, in.dk_cache, in.dv_cache, in.dev_opts, bad_out, lse),
                       doctest::Contains("out (like q)"), Error);
  Tensor none;
  DevGrads g = device_grads(c, DType::BF16, Tensor::zeros({c.B, c.Tc, c.nkv, c.hd}, DType::F32));
  CHECK_THROWS_WITH_AS(attention_backward(in.dq, in.dk, in.dv, in.dk_cache, in.dv_cache, in.dev_opts, out, none, out,
                                          g.q, g.k, g.v, g.k_cache, g.v_cache),
                       doctest::Contains("needs the forward's lse"), Error);
}
