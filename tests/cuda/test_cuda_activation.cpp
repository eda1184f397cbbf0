// CUDA gated GELU-tanh (layers/ops/activation.h) and the logit softcap (softcap / softcap_backward of
// layers/ops/head.h) against the CPU ops. Runs only with a GPU (else exit 77). Inputs are rounded to
// bf16 first and the CPU ops run on f32 copies of the rounded values. Tolerances:
//  - geglu and its backward (f32 outputs): the kernel evaluates gelu_tanh in fp32 through the logistic
//    form g·σ(2z) (no cancellation for g << 0) with expf and IEEE divisions: a few ulp relative to the
//    terms, so |cuda − cpu| <= 1e-5·|cpu| + 1e-6 (forward) / 1e-5 (backward, where gelu' crosses 0 and
//    the products of three factors cancel) of max |cpu|.
//  - the routing-weight gradient d_w = Σ_F d_act·gelu·u: an fp32 sum over F in a fixed order, error
//    <= (F/threads + log2(threads) + 3)·2^-24 of Σ_F |terms| (< 3e-6 for F <= 704), checked at 1e-5 of
//    that row's Σ |terms|.
//  - softcap: cap·tanhf(x/cap) with tanhf within 2 ulp on both sides: 4e-6 relative; its backward is the
//    same fp32 operations in the same order on both sides (1e-6 relative).
//  - bf16 outputs add one rounding: 2^-8 relative.
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

double rtol_for(DType out, double f32_tol) { return out == DType::BF16 ? kBf16 + f32_tol : f32_tol; }

Shape half_last(Shape s) {
  s.back() /= 2;
  return s;
}
Shape leading(const Shape& s) { return Shape(s.begin(), s.end() - 1); }

double ref_gelu_tanh(double x) {
  return 0.5 * x * (1.0 + std::tanh(0.79788456080286535588 * (x + 0.044715 * x * x * x)));
}

// The CPU table's shapes, a 26B expert width, F = 0 (no channels) and no rows.
const Shape kShapes[] = {{1, 2}, {1, 14}, {5, 14}, {3, 4, 32}, {17, 66}, {2, 704}, {9, 1408}, {3, 0}, {0, 8}};

struct Types {
  DType in, out;
};
const Types kTypes[] = {
    {DType::F32, DType::F32}, {DType::BF16, DType::BF16}, {DType::BF16, DType::F32}, {DType::F32, DType::BF16}};

}  // namespace

TEST_CASE("cuda geglu and geglu_weighted match the CPU ops") {
  std::uint32_t seed = 1;
  for (const Shape& s : kShapes)
    for (const Types& ty : kTypes) {
      CAPTURE(shape_str(s));
      CAPTURE(dtype_name(ty.in));
      CAPTURE(dtype_name(ty.out));
      const Tensor gu = rounded(random_tensor(s, seed++, 4.0f));  // gates well into both tails
      Tensor w = random_tensor(leading(s), seed++, 1.0f);
      for (std::int64_t i = 0; i < w.numel(); ++i) w.data<float>()[i] = std::fabs(w.data<float>()[i]);
      Tensor act = Tensor::empty(half_last(s), DType::F32), actw = act.clone();
      geglu(gu, act);
      geglu_weighted(gu, w, actw);

      const Tensor ggu = on_device(gu, ty.in), gw = w.to(Device::CUDA);
      Tensor gact = Tensor::empty(half_last(s), ty.out, Device::CUDA), gactw = gact.clone();
      geglu(ggu, gact);
      geglu_weighted(ggu, gw, gactw);
      CHECK(worst(on_host(gact), act, rtol_for(ty.out, 1e-5), 1e-6) <= 1);
      CHECK(worst(on_host(gactw), actw, rtol_for(ty.out, 1e-5), 1e-6) <= 1);
    }
}

TEST_CASE("cuda geglu backwards match the CPU ops, including the routing-weight gradient") {
  std::uint32_t seed = 100;
  for (const Shape& s : kShapes)
    for (const Types& ty : kTypes) {
      CAPTURE(shape_str(s));
      CAPTURE(dtype_name(ty.in));
      CAPTURE(dtype_name(ty.out));
      const Tensor gu = rounded(random_tensor(s, seed++, 4.0f));
      const Tensor da = rounded(random_tensor(half_last(s), seed++, 1.0f));
      const Tensor w = random_tensor(leading(s), seed++, 1.0f);
      Tensor dgu = Tensor::empty(s, DType::F32), dguw = dgu.clone(), dw = Tensor::empty(leading(s), DType::F32);
      geglu_backward(da, gu, dgu);
      geglu_weighted_backward(da, gu, w, dguw, dw);

      const Tensor ggu = on_device(gu, ty.in), gda = on_device(da, ty.in), gw = w.to(Device::CUDA);
      Tensor gdgu = Tensor::empty(s, ty.out, Device::CUDA), gdguw = gdgu.clone();
      Tensor gdw = Tensor::empty(leading(s), DType::F32, Device::CUDA);
      if (gdw.numel() > 0) gdw.copy_from(Tensor::from(leading(s), std::vector<float>(std::size_t(gdw.numel()), 7.f)));
      geglu_backward(gda, ggu, gdgu);
      geglu_weighted_backward(gda, ggu, gw, gdguw, gdw);
      CHECK(worst(on_host(gdgu), dgu, rtol_for(ty.out, 1e-5), 1e-5) <= 1);
      CHECK(worst(on_host(gdguw), dguw, rtol_for(ty.out, 1e-5), 1e-5) <= 1);

      // d_w against 1e-5 of each row's Σ |d_act · gelu · u| (written, so the 7s are gone even for F = 0)
      const Tensor hdw = on_host(gdw);
      const std::int64_t f = s.back() / 2, rows = dw.numel();
      double worst_dw = 0;
      for (std::int64_t r = 0; r < rows; ++r) {
        double mag = 0;
        for (std::int64_t i = 0; i < f; ++i) {
          const double g = gu.data<float>()[r * 2 * f + i], u = gu.data<float>()[r * 2 * f + f + i];
          mag += std::fabs(double(da.data<float>()[r * f + i]) * ref_gelu_tanh(g) * u);
        }
        worst_dw = std::max(worst_dw, std::fabs(double(hdw.data<float>()[r]) - dw.data<float>()[r]) / (1e-5 * mag + 1e-30));
      }
      CHECK(worst_dw <= 1);
    }
}

TEST_CASE("cuda geglu is reproducible and rejects bad dtypes and mixed devices") {
  const Tensor gu = on_device(random_tensor({33, 96}, 5, 3.0f), DType::BF16);
  const Tensor da = on_device(random_tensor({33, 48}, 6), DType::BF16);
  const Tensor w = random_tensor({33}, 7).to(Device::CUDA);
  Tensor a = Tensor::empty({33, 96}, DType::BF16, Device::CUDA), b = a.clone();
  Tensor dwa = Tensor::empty({33}, DType::F32, Device::CUDA), dwb = dwa.clone();
  geglu_weighted_backward(da, gu, w, a, dwa);
  geglu_weighted_backward(da, gu, w, b, dwb);
  CHECK(max_abs_diff(on_host(a), on_host(b)) == 0);
  CHECK(max_abs_diff(on_host(dwa), on_host(dwb)) == 0);

  Tensor act = Tensor::empty({33, 48}, DType::BF16, Device::CUDA);
  const Tensor w16 = on_device(random_tensor({33}, 8), DType::BF16);
  CHECK_THROWS_WITH_AS(geglu_weighted(gu, w16, act), doctest::Contains("must be f32"), Error);
  Tensor act_cpu = Tensor::empty({33, 48}, DType::F32);
  CHECK_THROWS_WITH_AS(geglu(gu, act_cpu), doctest::Contains("on the CPU"), Error);
}

TEST_CASE("cuda softcap and softcap_backward match the CPU ops") {
  std::uint32_t seed = 200;
  for (const float cap : {30.0f, 1.5f, 0.0f})
    for (const Shape& s : {Shape{1}, Shape{7, 13}, Shape{3, 1000}, Shape{0, 5}})
      for (const Types& ty : kTypes) {
        CAPTURE(cap);
        CAPTURE(shape_str(s));
        CAPTURE(dtype_name(ty.in));
        CAPTURE(dtype_name(ty.out));
        const Tensor x = rounded(random_tensor(s, seed++, 80.0f));  // beyond the cap on both sides
        const Tensor dy = rounded(random_tensor(s, seed++, 1.0f));
        Tensor y = Tensor::empty(s, DType::F32), dx = Tensor::empty(s, DType::F32);
        softcap(x, cap, y);
        const Tensor yin = ty.in == DType::BF16 ? rounded(y) : y;  // the backward's input as the device sees it
        softcap_backward(yin, dy, cap, dx);

        Tensor gy = Tensor::empty(s, ty.out, Device::CUDA), gdx = Tensor::empty(s, ty.out, Device::CUDA);
        softcap(on_device(x, ty.in), cap, gy);
        softcap_backward(on_device(yin, ty.in), on_device(dy, ty.in), cap, gdx);
        CHECK(worst(on_host(gy), y, rtol_for(ty.out, 4e-6), 0) <= 1);
        CHECK(worst(on_host(gdx), dx, rtol_for(ty.out, 1e-6), 1e-7) <= 1);

        Tensor inplace = on_device(x, ty.in);  // y = x
        softcap(inplace, cap, inplace);
        CHECK(worst(on_host(inplace), y, rtol_for(ty.in, 4e-6), 0) <= 1);
      }
  Tensor g = Tensor::empty({4}, DType::F32, Device::CUDA);
  CHECK_THROWS_WITH_AS(softcap(g, -1.0f, g), doctest::Contains("must be >= 0"), Error);
  Tensor i32 = Tensor::empty({4}, DType::I32, Device::CUDA);
  CHECK_THROWS_WITH_AS(softcap(g, 30.0f, i32), doctest::Contains("bf16 or f32"), Error);
}
