// CUDA RoPE ops (layers/ops/rope.h) against the CPU ops. Runs only with a GPU (else exit 77).
// Tolerances:
//  - rope_table, f32: the angle is the same fp32 product on both sides and cos/sin are evaluated in
//    double and rounded once to fp32; CUDA's double cos/sin are within 2 ulp of double, so the fp32
//    results can differ only by a rounding flip: <= 1 fp32 ulp of |v| <= 1, i.e. 2^-23 absolute.
//  - rope_table, bf16 (the §8.4 cast): the CPU table rounded to bf16, up to one bf16 ulp (2^-8 for
//    |v| <= 1) where an fp32 flip lands on a bf16 tie.
//  - rope / rope_backward: each output is x1·c ∓ x2·s with the products and the sum rounded to fp32 on
//    both sides (the kernel avoids fused multiply-adds), so f32 agrees to rounding (checked at 1e-6 of
//    max |y|); bf16 outputs add one rounding, 2^-8 relative. Inputs are bf16-rounded for both sides.
#include <doctest/doctest.h>

#include <cmath>

#include "tests/op_test_util.h"

using namespace dg;
using dg::test::max_abs_diff;
using dg::test::random_tensor;

namespace {

constexpr double kBf16 = 1.0 / 256;

Tensor rounded(const Tensor& t) { return t.to(DType::BF16).to(DType::F32); }
Tensor on_device(const Tensor& t, DType dtype) { return t.to(dtype).to(Device::CUDA); }
Tensor on_host(const Tensor& t) {
  Tensor h = t.to(Device::CPU);
  return h.dtype() == DType::F32 ? h : h.to(DType::F32);
}

double worst(const Tensor& got, const Tensor& ref, double rtol, double atol) {
  REQUIRE(got.numel() == ref.numel());
  double scale = 0;
  for (std::int64_t i = 0; i < ref.numel(); ++i) scale = std::max(scale, std::fabs(double(ref.data<float>()[i])));
  double w = 0;
  for (std::int64_t i = 0; i < ref.numel(); ++i) {
    const double r = ref.data<float>()[i], g = got.data<float>()[i];
    w = std::max(w, std::fabs(g - r) / (rtol * std::fabs(r) + atol * scale + 1e-30));
  }
  return w;
}

Tensor inv_freq_of(const RopeParams& p) {
  Tensor f = Tensor::empty({p.head_dim / 2}, DType::F32);
  rope_inv_freq(p, f);
  return f;
}

struct Case {
  RopeParams params;
  std::int64_t heads;
  std::vector<std::int32_t> positions;
};

// The CPU table's cases (both layer types of the 26B, odd head dims, big positions) and T = 0.
const Case kCases[] = {
    {{RopeType::Default, 2, 1e4, 1.0}, 1, {0}},
    {{RopeType::Default, 6, 1e4, 1.0}, 3, {5, 2, 9}},
    {{RopeType::Default, 16, 1e4, 1.0}, 2, {7, 3, 1000, 0, 5}},
    {{RopeType::Proportional, 16, 1e6, 0.25}, 2, {20, 21, 22, 23, 24, 25, 26}},
    {{RopeType::Proportional, 12, 1e6, 0.25}, 1, {131071, 4}},
    {{RopeType::Proportional, 64, 1e6, 0.25}, 3, {100, 1, 262143}},
    {{RopeType::Default, 256, 1e4, 1.0}, 16, {0, 1023, 4, 77, 5000}},
    {{RopeType::Proportional, 512, 1e6, 0.25}, 2, {3, 200001, 262143}},
    {{RopeType::Default, 8, 1e4, 1.0}, 2, {}},
};

}  // namespace

TEST_CASE("cuda rope_table equals the CPU table (f32) and its bf16 cast") {
  for (const Case& c : kCases) {
    CAPTURE(c.params.head_dim);
    const std::int64_t T = std::int64_t(c.positions.size()), half = c.params.head_dim / 2;
    const Tensor f = inv_freq_of(c.params), pos = Tensor::from_i32({T}, c.positions);
    Tensor cos = Tensor::empty({T, half}, DType::F32), sin = Tensor::empty({T, half}, DType::F32);
    rope_table(pos, f, cos, sin);

    const Tensor gpos = pos.to(Device::CUDA), gf = f.to(Device::CUDA);
    Tensor gcos = Tensor::empty({T, half}, DType::F32, Device::CUDA), gsin = gcos.clone();
    rope_table(gpos, gf, gcos, gsin);
    CHECK(max_abs_diff(on_host(gcos), cos) <= std::ldexp(1.0, -23));
    CHECK(max_abs_diff(on_host(gsin), sin) <= std::ldexp(1.0, -23));

    Tensor bcos = Tensor::empty({T, half}, DType::BF16, Device::CUDA), bsin = bcos.clone();
    rope_table(gpos, gf, bcos, bsin);
    CHECK(max_abs_diff(on_host(bcos), rounded(cos)) <= kBf16);
    CHECK(max_abs_diff(on_host(bsin), rounded(sin)) <= kBf16);
  }
}

TEST_CASE("cuda rope_table rejects a negative position like the CPU op") {
  const Tensor f = inv_freq_of({RopeType::Default, 8, 1e4, 1.0}).to(Device::CUDA);
  const Tensor pos = Tensor::from_i32({3}, {0, -2, 5}).to(Device::CUDA);
  Tensor cos = Tensor::empty({3, 4}, DType::F32, Device::CUDA), sin = cos.clone();
  CHECK_THROWS_WITH_AS(rope_table(pos, f, cos, sin), doctest::Contains("position -2 of token 1 is negative"), Error);
}

TEST_CASE("cuda rope and rope_backward match the CPU ops (f32 and bf16, in place)") {
  std::uint32_t seed = 1;
  for (const Case& c : kCases) {
    for (const DType dt : {DType::F32, DType::BF16}) {
      CAPTURE(c.params.head_dim);
      CAPTURE(c.heads);
      CAPTURE(dtype_name(dt));
      const std::int64_t T = std::int64_t(c.positions.size()), hd = c.params.head_dim, half = hd / 2;
      const Shape s{T, c.heads, hd};
      Tensor cos = Tensor::empty({T, half}, DType::F32), sin = Tensor::empty({T, half}, DType::F32);
      rope_table(Tensor::from_i32({T}, c.positions), inv_freq_of(c.params), cos, sin);
      if (dt == DType::BF16) {  // the production path: the table is cast to bf16 before use
        cos = rounded(cos);
        sin = rounded(sin);
      }
      const Tensor x = rounded(random_tensor(s, seed++, 2.0f)), dy = rounded(random_tensor(s, seed++));
      Tensor y = Tensor::empty(s, DType::F32), dx = Tensor::empty(s, DType::F32);
      rope(x, cos, sin, y);
      rope_backward(dy, cos, sin, dx);

      const Tensor gcos = on_device(cos, dt), gsin = on_device(sin, dt);
      const Tensor gx = on_device(x, dt), gdy = on_device(dy, dt);
      const double rtol = dt == DType::BF16 ? kBf16 : 0;
      Tensor gy = Tensor::empty(s, dt, Device::CUDA), gdx = Tensor::empty(s, dt, Device::CUDA);
      rope(gx, gcos, gsin, gy);
      rope_backward(gdy, gcos, gsin, gdx);
      CHECK(worst(on_host(gy), y, rtol, 1e-6) <= 1);
      CHECK(worst(on_host(gdx), dx, rtol, 1e-6) <= 1);

      Tensor inplace = gx.clone();  // y = x
      rope(inplace, gcos, gsin, inplace);
      CHECK(max_abs_diff(on_host(inplace), on_host(gy)) == 0);
      // dx = dy in place; undoes the rotation up to rounding: in bf16 each output carries the rounding of
      // two rotated inputs (<= 2^-8 · √2 max|x| each) plus its own, so 4 · 2^-8 of max |x|.
      rope_backward(inplace, gcos, gsin, inplace);
      CHECK(worst(on_host(inplace), x, 0, dt == DType::BF16 ? 4 * kBf16 : 1e-5) <= 1);
    }
  }
}

TEST_CASE("cuda rope with an f32 table on bf16 activations, and mixed devices rejected") {
  const Shape s{3, 2, 16};
  Tensor cos = Tensor::empty({3, 8}, DType::F32), sin = Tensor::empty({3, 8}, DType::F32);
  rope_table(Tensor::from_i32({3}, {4, 9, 1}), inv_freq_of({RopeType::Default, 16, 1e4, 1.0}), cos, sin);
  const Tensor x = rounded(random_tensor(s, 3));
  Tensor y = Tensor::empty(s, DType::F32);
  rope(x, cos, sin, y);
  const Tensor gcos = cos.to(Device::CUDA), gsin = sin.to(Device::CUDA);
  Tensor gy = Tensor::empty(s, DType::BF16, Device::CUDA);
  rope(on_device(x, DType::BF16), gcos, gsin, gy);
  CHECK(worst(on_host(gy), y, kBf16, 1e-6) <= 1);
  CHECK_THROWS_WITH_AS(rope(x, gcos, gsin, gy), doctest::Contains("on the CPU"), Error);
  Tensor g32 = Tensor::empty(s, DType::F32, Device::CUDA);
  CHECK_THROWS_WITH_AS(rope(on_device(x, DType::BF16), gcos, gsin, g32), doctest::Contains("both bf16 or both f32"),
                       Error);
}
