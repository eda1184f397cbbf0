// CUDA RMSNorm (layers/ops/norm.h) against the CPU op. Runs only with a GPU (else exit 77).
// Inputs are rounded to bf16 first and the CPU op runs on f32 copies of the rounded values, so the only
// differences are (a) fp32 row sums on the device vs double on the CPU and (b) the final rounding of
// bf16 outputs. Tolerances, per element, |cuda − cpu| <= rtol·|cpu| + atol·max|cpu|:
//  - f32 outputs: y, rstd, dx rtol = atol = 1e-5. A row sum of d squares in fp32, strided over the
//    threads and then a tree, has a relative error <= (d/threads + log2(threads))·2^-24 <= 1.2e-6 for
//    the shapes here, which rstd and every output inherit (~10x margin). dx = rstd·(g − x̂·c) can
//    cancel, hence the atol of the row scale.
//  - dweight (f32, accumulated over up to 300 rows in fp32 chunk sums): atol 5e-5 of max |dweight|.
//  - bf16 outputs: rtol = 2^-8 (one rounding to 8 significant bits) on top of the f32 tolerance.
#include <doctest/doctest.h>

#include <cmath>

#include "tests/op_test_util.h"

using namespace dg;
using dg::test::max_abs_diff;
using dg::test::random_tensor;

namespace {

constexpr float kEps = 1e-6f;
constexpr double kBf16 = 1.0 / 256;  // 2^-8: relative rounding error of a bf16 output

Shape leading(const Shape& s) { return Shape(s.begin(), s.end() - 1); }
Tensor rounded(const Tensor& t) { return t.to(DType::BF16).to(DType::F32); }
Tensor on_device(const Tensor& t, DType dtype) { return t.to(dtype).to(Device::CUDA); }
Tensor on_host(const Tensor& t) {
  Tensor h = t.to(Device::CPU);
  return h.dtype() == DType::F32 ? h : h.to(DType::F32);
}

// max over elements of |got − ref| / (rtol·|ref| + atol·max|ref|): <= 1 passes.
double worst(const Tensor& got, const Tensor& ref, double rtol, double atol) {
  REQUIRE(got.numel() == ref.numel());
  double scale = 0;
  for (std::int64_t i = 0; i < ref.numel(); ++i) scale = std::max(scale, std::fabs(double(ref.data<float>()[i])));
  double w = 0;
  for (std::int64_t i = 0; i < ref.numel(); ++i) {
    const double r = ref.data<float>()[i], g = got.data<float>()[i];
    const double tol = rtol * std::fabs(r) + atol * scale + 1e-30;
    w = std::max(w, std::fabs(g - r) / tol);
  }
  return w;
}

struct Case {
  Shape x;
  bool weighted;
};

// The CPU table's shapes, the 26B hidden size, enough rows for several dweight chunks, and no rows.
const Case kCases[] = {
    {{1, 1}, true},      {{1, 7}, false},    {{5, 33}, true},     {{4, 64}, false},  {{3, 4, 16}, true},
    {{2, 3, 5}, false},  {{1, 2, 8}, true},  {{2, 2, 512}, true}, {{6, 3, 17}, false}, {{3, 2816}, true},
    {{300, 256}, true},  {{75, 4, 33}, true}, {{0, 8}, true},
};

struct Types {
  DType act, weight, dweight;
};
const Types kTypes[] = {{DType::F32, DType::F32, DType::F32},
                        {DType::BF16, DType::BF16, DType::F32},
                        {DType::BF16, DType::F32, DType::F32},
                        {DType::BF16, DType::BF16, DType::BF16}};

double rtol_for(DType out, double f32_tol) { return out == DType::BF16 ? kBf16 + f32_tol : f32_tol; }

}  // namespace

TEST_CASE("cuda rms_norm forward and backward match the CPU op (f32, bf16, mixed weight dtypes)") {
  std::uint32_t seed = 1;
  for (const Case& c : kCases) {
    for (const Types& ty : kTypes) {
      CAPTURE(shape_str(c.x));
      CAPTURE(c.weighted);
      CAPTURE(dtype_name(ty.act));
      CAPTURE(dtype_name(ty.weight));
      CAPTURE(dtype_name(ty.dweight));
      const std::int64_t d = c.x.back();
      const Tensor x = rounded(random_tensor(c.x, seed++, 2.0f));
      const Tensor w = rounded(random_tensor({d}, seed++, 1.5f));
      const Tensor dy = rounded(random_tensor(c.x, seed++, 1.0f));
      const Tensor dw0 = rounded(random_tensor({d}, seed++, 0.5f));
      const Tensor* wp = c.weighted ? &w : nullptr;

      // CPU reference
      Tensor y = Tensor::empty(c.x, DType::F32), rstd = Tensor::empty(leading(c.x), DType::F32);
      rms_norm(x, wp, kEps, y, rstd);
      Tensor dx = Tensor::empty(c.x, DType::F32), dw = dw0.clone();
      rms_norm_backward(dy, x, wp, rstd, dx, c.weighted ? &dw : nullptr);

      // device
      const Tensor gx = on_device(x, ty.act), gw = on_device(w, ty.weight), gdy = on_device(dy, ty.act);
      const Tensor* gwp = c.weighted ? &gw : nullptr;
      Tensor gy = Tensor::empty(c.x, ty.act, Device::CUDA), grstd = Tensor::empty(leading(c.x), DType::F32, Device::CUDA);
      rms_norm(gx, gwp, kEps, gy, grstd);
      CHECK(worst(on_host(grstd), rstd, 1e-5, 0) <= 1);
      CHECK(worst(on_host(gy), y, rtol_for(ty.act, 1e-5), 1e-5) <= 1);

      // The backward gets the CPU's rstd so that it is checked on its own.
      const Tensor grstd_cpu = rstd.to(Device::CUDA);
      Tensor gdx = Tensor::empty(c.x, ty.act, Device::CUDA), gdw = on_device(dw0, ty.dweight);
      rms_norm_backward(gdy, gx, gwp, grstd_cpu, gdx, c.weighted ? &gdw : nullptr);
      CHECK(worst(on_host(gdx), dx, rtol_for(ty.act, 1e-5), 1e-5) <= 1);
      if (c.weighted) CHECK(worst(on_host(gdw), dw, rtol_for(ty.dweight, 0), 5e-5) <= 1);
    }
  }
}

TEST_CASE("cuda rms_norm in place (y = x, dx = dy) and bitwise reproducible") {
  const Shape s{7, 3, 40};
  const Tensor x = rounded(random_tensor(s, 11, 3.0f)), w = rounded(random_tensor({40}, 12));
  const Tensor dy = rounded(random_tensor(s, 13));
  const Tensor gx = on_device(x, DType::BF16), gw = on_device(w, DType::BF16), gdy = on_device(dy, DType::BF16);

  Tensor out = Tensor::empty(s, DType::BF16, Device::CUDA), rstd = Tensor::empty({7, 3}, DType::F32, Device::CUDA);
  rms_norm(gx, &gw, kEps, out, rstd);
  Tensor inplace = gx.clone(), rstd2 = Tensor::empty({7, 3}, DType::F32, Device::CUDA);
  rms_norm(inplace, &gw, kEps, inplace, rstd2);
  CHECK(max_abs_diff(on_host(inplace), on_host(out)) == 0);

  Tensor dx = Tensor::empty(s, DType::BF16, Device::CUDA), dwa = Tensor::zeros({40}, DType::F32, Device::CUDA);
  rms_norm_backward(gdy, gx, &gw, rstd, dx, &dwa);
  Tensor dyx = gdy.clone(), dwb = Tensor::zeros({40}, DType::F32, Device::CUDA);
  rms_norm_backward(dyx, gx, &gw, rstd, dyx, &dwb);
  CHECK(max_abs_diff(on_host(dyx), on_host(dx)) == 0);
  CHECK(max_abs_diff(on_host(dwa), on_host(dwb)) == 0);  // same order every run: no atomics
}

TEST_CASE("cuda rms_norm rejects mixed devices and unsupported dtypes") {
  const Tensor x = random_tensor({2, 8}, 1);
  Tensor gy = Tensor::empty({2, 8}, DType::F32, Device::CUDA), grstd = Tensor::empty({2}, DType::F32, Device::CUDA);
  Tensor rstd_cpu = Tensor::empty({2}, DType::F32);
  CHECK_THROWS_WITH_AS(rms_norm(x.to(Device::CUDA), nullptr, kEps, gy, rstd_cpu), doctest::Contains("on the CPU"),
                       Error);
  Tensor gx16 = on_device(x, DType::BF16);
  CHECK_THROWS_WITH_AS(rms_norm(gx16, nullptr, kEps, gy, grstd), doctest::Contains("all bf16 or all f32"), Error);
  Tensor gr16 = Tensor::empty({2}, DType::BF16, Device::CUDA);
  CHECK_THROWS_WITH_AS(rms_norm(x.to(Device::CUDA), nullptr, kEps, gy, gr16), doctest::Contains("rstd"), Error);
}
