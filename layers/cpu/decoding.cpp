// CPU implementations and dispatchers of the generation-path ops (layers/ops/decoding.h). The CPU code is
// the reference the CUDA kernels reproduce: the entropy-bound acceptance sorts a row stably by entropy
// and sums in fp32 in that order; the stopping rule's mean entropy is an fp64 sum in ascending position.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <vector>

#include "layers/cpu/parallel.h"
#include "layers/ops.h"

namespace dg {

namespace {

bool given(const Tensor& t) { return t.defined() && t.numel() > 0; }

Shape trailing(const Tensor& t) { return Shape(t.shape().begin() + 2, t.shape().end()); }

void check_i32(const char* op, const char* what, const Tensor& t, const Shape& shape) {
  DG_CHECK(t.defined() && t.dtype() == DType::I32 && t.shape() == shape, "{}: {} {} should be i32 {}", op, what,
           t.describe(), shape_str(shape));
}

}  // namespace

void fill_(Tensor& x, double value) {
  DG_CHECK(x.defined(), "fill_: undefined tensor");
  if (x.dtype() == DType::I32)
    DG_CHECK(value == std::trunc(value) && value >= std::numeric_limits<std::int32_t>::min() &&
                 value <= std::numeric_limits<std::int32_t>::max(),
             "fill_: {} is not an i32 value (tensor {})", value, x.describe());
  if (any_on_cuda({&x})) return cuda::fill_(x, value);
  if (x.dtype() == DType::I32) {
    std::fill_n(x.data<std::int32_t>(), x.numel(), static_cast<std::int32_t>(value));
  } else {
    DG_CHECK(x.dtype() == DType::F32, "fill_: {} must be f32 or i32 on the CPU", x.describe());
    std::fill_n(x.data<float>(), x.numel(), static_cast<float>(value));
  }
}

void token_positions(const Tensor& row_offset, std::int64_t start, Tensor& positions) {
  DG_CHECK(positions.defined() && positions.dtype() == DType::I32 && positions.ndim() == 2,
           "token_positions: positions {} should be i32 [B, S]", positions.describe());
  const std::int64_t B = positions.size(0), S = positions.size(1);
  const bool shifted = given(row_offset);
  if (shifted) check_i32("token_positions", "row_offset", row_offset, {B});
  const Tensor* off_t = shifted ? &row_offset : nullptr;  // an empty offset is not an operand
  if (any_on_cuda({off_t, &positions})) {
    require_cuda("token_positions", {off_t, &positions});
    return cuda::token_positions(row_offset, start, positions);
  }
  std::int32_t* p = positions.data<std::int32_t>();
  const std::int32_t* off = shifted ? row_offset.data<std::int32_t>() : nullptr;
  for (std::int64_t b = 0; b < B; ++b) {
    const std::int64_t first = start + (shifted ? off[b] : 0);
    for (std::int64_t t = 0; t < S; ++t) p[b * S + t] = static_cast<std::int32_t>(std::max<std::int64_t>(first + t, 0));
  }
}

void concat_tokens(const Tensor& a, const Tensor& b, Tensor& out) {
  DG_CHECK(b.defined() && b.ndim() >= 2, "concat_tokens: b {} should be [B, T, ...]", b.describe());
  const std::int64_t B = b.size(0), T1 = b.size(1);
  const bool has_a = given(a);
  if (has_a)
    DG_CHECK(a.dtype() == b.dtype() && a.ndim() == b.ndim() && a.size(0) == B && trailing(a) == trailing(b),
             "concat_tokens: a {} and b {} differ in batch, trailing shape or dtype", a.describe(), b.describe());
  const std::int64_t T0 = has_a ? a.size(1) : 0;
  DG_CHECK(out.defined() && out.dtype() == b.dtype() && out.ndim() == b.ndim() && out.size(0) == B &&
               trailing(out) == trailing(b) && out.size(1) <= T0 + T1,
           "concat_tokens: out {} should be [{}, <= {}, ...] like b {}", out.describe(), B, T0 + T1, b.describe());
  const Tensor* a_t = has_a ? &a : nullptr;  // an empty a is not an operand
  if (any_on_cuda({a_t, &b, &out})) {
    require_cuda("concat_tokens", {a_t, &b, &out});
    return cuda::concat_tokens(a, b, out);
  }
  const std::int64_t K = out.size(1), skip = T0 + T1 - K;
  const std::size_t token = static_cast<std::size_t>(shape_numel(trailing(b))) * dtype_size(b.dtype());
  const char* pa = has_a ? static_cast<const char*>(a.raw()) : nullptr;
  const char* pb = static_cast<const char*>(b.raw());
  char* po = static_cast<char*>(out.raw());
  cpu::parallel_for("decoding.concat_tokens", B, K * static_cast<std::int64_t>(token) / 4, [&](std::int64_t bi) {
    for (std::int64_t t = skip; t < T0 + T1; ++t) {
      const char* src = t < T0 ? pa + static_cast<std::size_t>(bi * T0 + t) * token
                               : pb + static_cast<std::size_t>(bi * T1 + t - T0) * token;
      if (token) std::memcpy(po + static_cast<std::size_t>(bi * K + t - skip) * token, src, token);
    }
  });
}

void entropy_bound_accept_rows(const Tensor& entropy, double gamma, Tensor& accepted) {
  DG_CHECK(entropy.defined() && entropy.dtype() == DType::F32 && entropy.ndim() == 2,
           "entropy_bound_accept_rows: entropy {} should be f32 [R, C]", entropy.describe());
  check_i32("entropy_bound_accept_rows", "accepted", accepted, entropy.shape());
  if (any_on_cuda({&entropy, &accepted})) {
    require_cuda("entropy_bound_accept_rows", {&entropy, &accepted});
    return cuda::entropy_bound_accept_rows(entropy, gamma, accepted);
  }
  const std::int64_t R = entropy.size(0), C = entropy.size(1);
  const float g = static_cast<float>(gamma);
  const float* pe = entropy.data<float>();
  std::int32_t* pacc = accepted.data<std::int32_t>();
  cpu::parallel_ranges("decoding.entropy_bound.rows", R, 16 * C, [&](std::int64_t r0, std::int64_t r1) {
    std::vector<std::int64_t> order(static_cast<std::size_t>(C));
    for (std::int64_t r = r0; r < r1; ++r) {
      const float* e = pe + r * C;
      std::int32_t* acc = pacc + r * C;
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(), [&](std::int64_t x, std::int64_t y) { return e[x] < e[y]; });
      float cs = 0;
      for (std::int64_t j : order) {
        cs += e[j];
        acc[j] = cs - e[j] <= g ? 1 : 0;
      }
    }
  });
}

void denoise_update(Tensor& x, Tensor& amax, Tensor& history, Tensor& done, const Tensor& accepted,
                    const Tensor& sampled, const Tensor& renoise, const Tensor& step_amax, const Tensor& entropy,
                    double confidence_threshold) {
  const char* op = "denoise_update";
  DG_CHECK(x.defined() && x.ndim() == 2, "{}: x {} should be i32 [B, C]", op, x.describe());
  const std::int64_t B = x.size(0), C = x.size(1);
  const Shape bc{B, C};
  check_i32(op, "x", x, bc);
  check_i32(op, "amax", amax, bc);
  check_i32(op, "accepted", accepted, bc);
  check_i32(op, "sampled", sampled, bc);
  check_i32(op, "renoise", renoise, bc);
  check_i32(op, "step_amax", step_amax, bc);
  check_i32(op, "done", done, {B});
  DG_CHECK(entropy.defined() && entropy.dtype() == DType::F32 && entropy.shape() == bc,
           "{}: entropy {} should be f32 {}", op, entropy.describe(), shape_str(bc));
  DG_CHECK(history.defined() && history.dtype() == DType::I32 && history.ndim() == 3 && history.size(0) == B &&
               history.size(2) == C,
           "{}: history {} should be i32 [{}, M, {}]", op, history.describe(), B, C);
  if (any_on_cuda({&x, &amax, &history, &done, &accepted, &sampled, &renoise, &step_amax, &entropy})) {
    require_cuda(op, {&x, &amax, &history, &done, &accepted, &sampled, &renoise, &step_amax, &entropy});
    return cuda::denoise_update(x, amax, history, done, accepted, sampled, renoise, step_amax, entropy,
                                confidence_threshold);
  }
  const std::int64_t M = history.size(1);
  std::int32_t* px = x.data<std::int32_t>();
  std::int32_t* pa = amax.data<std::int32_t>();
  std::int32_t* ph = M > 0 ? history.data<std::int32_t>() : nullptr;
  std::int32_t* pd = done.data<std::int32_t>();
  const std::int32_t* acc = accepted.data<std::int32_t>();
  const std::int32_t* smp = sampled.data<std::int32_t>();
  const std::int32_t* ren = renoise.data<std::int32_t>();
  const std::int32_t* cur_all = step_amax.data<std::int32_t>();
  const float* ent = entropy.data<float>();
  for (std::int64_t b = 0; b < B; ++b) {
    if (pd[b] != 0) continue;  // frozen
    for (std::int64_t j = 0; j < C; ++j) px[b * C + j] = acc[b * C + j] ? smp[b * C + j] : ren[b * C + j];
    const std::int32_t* cur = cur_all + b * C;
    std::copy_n(cur, C, pa + b * C);
    bool stable = true;
    for (std::int64_t m = 0; m < M; ++m) stable = stable && std::equal(cur, cur + C, ph + (b * M + m) * C);
    if (M > 0) {
      std::int32_t* h = ph + b * M * C;
      std::copy(h + C, h + M * C, h);  // drop the oldest
      std::copy_n(cur, C, h + (M - 1) * C);
    }
    double mean = 0;
    for (std::int64_t j = 0; j < C; ++j) mean += ent[b * C + j];
    mean /= static_cast<double>(C);
    if (stable && mean < confidence_threshold) pd[b] = 1;
  }
}

}  // namespace dg
