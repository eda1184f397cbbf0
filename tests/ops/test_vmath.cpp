// The vectorised fp32 exp and tanh of the CPU ops (layers/cpu/vmath.h) against double over dense grids
// of fp32 inputs, in ulps of the double result, plus their special values, lane independence (a value's
// result does not depend on its lane or its neighbours) and exp_sum.
//
// Bounds (measured: exp 0.98 ulp over [-87.3, 88.72], tanh 1.27 ulp over [-12, 12], 2M points each):
// exp <= 1.5 ulp on normal results (relative error <= 1.8e-7), tanh <= 2 ulp (<= 2.4e-7); exp results
// below FLT_MIN are flushed to 0.
#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "layers/cpu/vmath.h"

namespace vm = dg::cpu::vm;

namespace {

// |got - ref| in units of the fp32 ulp at ref (ref normal).
double ulps(float got, double ref) {
  const int e = std::ilogb(ref);
  return std::fabs(double(got) - ref) / std::ldexp(1.0, e - 23);
}

// Max ulp error of f against ref over n evenly spaced fp32 inputs in [lo, hi]; worst input in *at.
template <class F, class R>
double max_ulps(F&& f, R&& ref, double lo, double hi, int n, float* at) {
  double worst = 0;
  for (int i = 0; i <= n; ++i) {
    const float x = static_cast<float>(lo + (hi - lo) * i / n);
    const double want = ref(double(x));
    if (std::fabs(want) < std::numeric_limits<float>::min()) continue;
    const double u = ulps(f(x), want);
    if (u > worst) {
      worst = u;
      *at = x;
    }
  }
  return worst;
}

}  // namespace

TEST_CASE("vectorised fp32 exp: <= 1.5 ulp against double, and its special values") {
  float at = 0;
  const double e_ulps = max_ulps([](float x) { return vm::exp(x); }, [](double x) { return std::exp(x); }, -87.3, 88.72,
                                 2000000, &at);
  MESSAGE("exp: max " << e_ulps << " ulp at x = " << at);
  CHECK(e_ulps <= 1.5);
  // the softmax range (x - max <= 0), finer
  const double s_ulps = max_ulps([](float x) { return vm::exp(x); }, [](double x) { return std::exp(x); }, -20.0, 0.0,
                                 2000000, &at);
  CHECK(s_ulps <= 1.5);
  CHECK(vm::exp(0.0f) == 1.0f);  // the row maximum's weight is exactly 1
  CHECK(vm::exp(-std::numeric_limits<float>::infinity()) == 0.0f);
  CHECK(vm::exp(-104.0f) == 0.0f);
  CHECK(vm::exp(-87.3f) > 0.0f);  // just above ln FLT_MIN: the smallest normal results
  CHECK(vm::exp(89.0f) == std::numeric_limits<float>::infinity());
  CHECK(std::isnan(vm::exp(std::numeric_limits<float>::quiet_NaN())));
  for (float x = -103.9f; x < -87.34f; x += 0.37f) {  // results below FLT_MIN flush to 0
    CAPTURE(x);
    CHECK(vm::exp(x) == 0.0f);
  }
}

TEST_CASE("vectorised fp32 tanh: <= 2 ulp against double, odd, saturating") {
  float at = 0;
  const double t_ulps = max_ulps([](float x) { return vm::tanh(x); }, [](double x) { return std::tanh(x); }, -12.0,
                                 12.0, 2000000, &at);
  MESSAGE("tanh: max " << t_ulps << " ulp at x = " << at);
  CHECK(t_ulps <= 2.0);
  const double small = max_ulps([](float x) { return vm::tanh(x); }, [](double x) { return std::tanh(x); }, -1e-3, 1e-3,
                                100000, &at);
  CHECK(small <= 2.0);  // near 0: relative accuracy (the polynomial branch), no cancellation
  for (float x : {0.1f, 0.7f, 3.0f, 9.4f})
    CHECK(vm::tanh(-x) == -vm::tanh(x));
  CHECK(vm::tanh(30.0f) == 1.0f);
  CHECK(vm::tanh(-1e30f) == -1.0f);
  CHECK(std::isnan(vm::tanh(std::numeric_limits<float>::quiet_NaN())));
}

TEST_CASE("vectorised math: a lane's result depends on its value only; exp_sum") {
  // the same value in every lane and position of an array, among different neighbours
  std::vector<float> x(23), y(23);
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = (i % 3 == 0) ? -1.2345f : float(i) * 0.37f - 4.0f;
  vm::map(x.data(), y.data(), std::int64_t(x.size()), [](vm::f32v v) { return vm::exp(v); });
  for (std::size_t i = 0; i < x.size(); ++i) CHECK(y[i] == vm::exp(x[i]));
  // exp_sum: Σ exp(x - m) in double over the fp32 exps, with p written
  std::vector<float> p(x.size());
  const float m = 4.5f;
  const double s = vm::exp_sum(x.data(), std::int64_t(x.size()), m, p.data());
  double want = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    CHECK(p[i] == vm::exp(x[i] - m));
    want += std::exp(double(x[i]) - m);
  }
  CHECK(std::fabs(s - want) <= 3e-7 * want);
  CHECK(vm::exp_sum(x.data(), 0, m) == 0.0);
}
