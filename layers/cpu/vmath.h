// Vectorised fp32 exp and tanh for the CPU ops (CPU-internal, not part of the op
// interface). Written with GCC/Clang vector extensions over 4 lanes (the SSE2 width of x86-64's
// baseline: no -march flags needed, no 32-byte vector ABI issue), so they vectorise at the project's
// -O2. The same IEEE operations run per lane on any target (no FMA contraction under -std=c++20), so
// results do not depend on the instruction set, nor a value's result on its lane.
//
// exp: Cephes expf - n = round(x·log2 e), r = x - n·ln2 (two-part ln2), a degree-6 polynomial on
// |r| <= ln2/2, then · 2^n applied as two power-of-two factors (n = 128 near the top of the range).
// x > 88.72284 gives +inf, NaN gives NaN, and x < ln FLT_MIN = -87.33654 gives 0: results below the
// smallest normal float are flushed (absolute error < 1.2e-38; a softmax weight that small is 0 to
// fp32 sums anyway), which keeps every lane on the fast path (x86 subnormal arithmetic takes ~100x).
// tanh: Cephes tanhf - an odd polynomial for |x| < 0.625, 1 - 2/(exp(2|x|) + 1) (sign restored) above.
// Measured against double (tests/ops/test_vmath.cpp, 2M points): exp max 0.98 ulp on [-87.3, 88.72],
// tanh max 1.27 ulp on [-12, 12]; the test bounds are
// 1.5 and 2 ulp (relative error <= 1.8e-7 and 2.4e-7).
#pragma once
#include <cstdint>
#include <cstring>

namespace dg::cpu::vm {

constexpr int kLanes = 4;
using f32v = float __attribute__((vector_size(16)));
using i32v = std::int32_t __attribute__((vector_size(16)));

inline f32v splat(float x) { return f32v{} + x; }
inline f32v load(const float* p) {
  f32v v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store(float* p, f32v v) { std::memcpy(p, &v, sizeof v); }
inline f32v select(i32v mask, f32v a, f32v b) { return mask ? a : b; }
inline f32v abs(f32v x) { return reinterpret_cast<f32v>(reinterpret_cast<i32v>(x) & 0x7fffffff); }

// 2^n for integer n in [-126, 127] (the exponent field built directly).
inline f32v pow2i(i32v n) { return reinterpret_cast<f32v>((n + 127) << 23); }

inline f32v exp(f32v x) {
  const f32v hi = splat(88.72283935546875f), lo = splat(-87.33654f);  // ln FLT_MAX, ln FLT_MIN
  const i32v nan = x != x, over = x > hi, under = x < lo;
  f32v xc = select(over, hi, select(under, splat(0.0f), x));  // no subnormal intermediates (slow on x86)
  const f32v shifter = splat(12582912.0f);  // 1.5·2^23: adding and subtracting it rounds to an integer
  const f32v n = (xc * splat(1.44269504088896341f) + shifter) - shifter;
  f32v r = xc - n * splat(0.693359375f);
  r = r - n * splat(-2.12194440e-4f);
  f32v p = splat(1.9875691500e-4f);
  p = p * r + splat(1.3981999507e-3f);
  p = p * r + splat(8.3334519073e-3f);
  p = p * r + splat(4.1665795894e-2f);
  p = p * r + splat(1.6666665459e-1f);
  p = p * r + splat(5.0000001201e-1f);
  p = p * (r * r) + r + splat(1.0f);
  const i32v ni = __builtin_convertvector(n, i32v), n1 = ni >> 1, n2 = ni - n1;  // each in [-63, 64]
  f32v y = p * pow2i(n1) * pow2i(n2);
  y = select(over, splat(__builtin_inff()), select(under, splat(0.0f), y));
  return select(nan, x, y);
}

inline f32v tanh(f32v x) {
  const f32v ax = abs(x);
  const f32v z = x * x;
  f32v p = splat(-5.70498872745e-3f);
  p = p * z + splat(2.06390887954e-2f);
  p = p * z - splat(5.37397155531e-2f);
  p = p * z + splat(1.33314422036e-1f);
  p = p * z - splat(3.33332819422e-1f);
  const f32v small = p * z * x + x;
  const f32v e = exp(splat(2.0f) * select(ax > splat(9.5f), splat(9.5f), ax));  // tanh(9.5) rounds to 1
  const f32v big_abs = splat(1.0f) - splat(2.0f) / (e + splat(1.0f));
  const f32v big = reinterpret_cast<f32v>(reinterpret_cast<i32v>(big_abs) |
                                          (reinterpret_cast<i32v>(x) & static_cast<std::int32_t>(0x80000000u)));
  return select(ax < splat(0.625f), small, select(x != x, x, big));
}

// Scalar forms (one lane of the vector code, so the same result as an element of an array).
inline float exp(float x) { return exp(splat(x))[0]; }
inline float tanh(float x) { return tanh(splat(x))[0]; }

// Applies f (f32v -> f32v) to n floats of x into y (y may be x); the tail goes through a padded vector.
template <class F>
inline void map(const float* x, float* y, std::int64_t n, F&& f) {
  std::int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) store(y + i, f(load(x + i)));
  if (i < n) {
    float buf[kLanes] = {};
    std::memcpy(buf, x + i, sizeof(float) * static_cast<std::size_t>(n - i));
    store(buf, f(load(buf)));
    std::memcpy(y + i, buf, sizeof(float) * static_cast<std::size_t>(n - i));
  }
}

// Σ exp(x - m) over x [n] (fp32 exp, double sum in four lanes added in a fixed order); p [n] (may be
// x) receives the fp32 exp(x - m) when given.
inline double exp_sum(const float* x, std::int64_t n, float m, float* p = nullptr) {
  using f64v2 = double __attribute__((vector_size(16)));
  f64v2 s0{}, s1{};
  for (std::int64_t i = 0; i < n; i += kLanes) {
    const std::int64_t k = n - i < kLanes ? n - i : kLanes;
    float buf[kLanes] = {};
    std::memcpy(buf, x + i, sizeof(float) * static_cast<std::size_t>(k));
    f32v e = exp(load(buf) - splat(m));
    for (std::int64_t l = k; l < kLanes; ++l) e[l] = 0.0f;
    if (p) {
      store(buf, e);
      std::memcpy(p + i, buf, sizeof(float) * static_cast<std::size_t>(k));
    }
    s0 += __builtin_convertvector(__builtin_shufflevector(e, e, 0, 1), f64v2);
    s1 += __builtin_convertvector(__builtin_shufflevector(e, e, 2, 3), f64v2);
  }
  return (s0[0] + s0[1]) + (s1[0] + s1[1]);
}

}  // namespace dg::cpu::vm
