// CPU (fp32) output-head ops: softcap, the fused chunked softcapped cross-entropy (forward and
// backward), and the sampler's chunked entropy / argmax / categorical sample. Declarations and the
// math: layers/ops/head.h. Per-row reductions accumulate in double; tanh and exp are the vectorised
// fp32 ones of layers/cpu/vmath.h (<= 3 ulp); the sample's inverse-CDF scan keeps double exp.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "layers/cpu/check.h"
#include "layers/cpu/head_chunk.h"
#include "layers/cpu/parallel.h"
#include "layers/cpu/vmath.h"
#include "layers/ops.h"

namespace dg {
namespace vm = cpu::vm;
namespace {

using cpu::expect;

// Checks hidden [T,H] and embedding [V,H] and the options; returns V.
std::int64_t check_head(const char* op, const Tensor& hidden, const Tensor& embedding, const LmHeadOpts& o) {
  DG_CHECK(hidden.ndim() == 2 && embedding.ndim() == 2, "{}: hidden {} and embedding {} should be [T, H] and [V, H]",
           op, hidden.describe(), embedding.describe());
  expect(op, "hidden", hidden, DType::F32, {hidden.size(0), embedding.size(1)});
  expect(op, "embedding", embedding, DType::F32, {embedding.size(0), embedding.size(1)});
  if (embedding.size(0) < 1) fail("{}: empty vocabulary in {}", op, embedding.describe());
  if (o.vocab_chunk < 1) fail("{}: vocab_chunk {} must be positive", op, o.vocab_chunk);
  if (!(o.softcap >= 0.0f) || !std::isfinite(o.softcap)) fail("{}: softcap {} must be >= 0 (0: none)", op, o.softcap);
  return embedding.size(0);
}

void check_temperature(const char* op, float temperature) {
  if (!(temperature > 0.0f) || !std::isfinite(temperature))
    fail("{}: temperature {} must be positive and finite", op, temperature);
}

// The rows of hidden a loss op works on: those with nonzero weight, packed when some are skipped.
struct WeightedRows {
  std::vector<std::int64_t> row;  // original row of packed row r
  std::vector<float> packed;      // [n, H] copy when rows are skipped
  const float* h = nullptr;       // rows to use: hidden itself or packed
  std::int64_t n() const { return static_cast<std::int64_t>(row.size()); }
};

WeightedRows weighted_rows(const char* op, const Tensor& hidden, const Tensor& targets, const Tensor& loss_mask,
                           std::int64_t v) {
  const std::int64_t t_count = hidden.size(0), hdim = hidden.size(1);
  expect(op, "targets", targets, DType::I32, {t_count});
  expect(op, "loss_mask", loss_mask, DType::F32, {t_count});
  const float* w = loss_mask.data<float>();
  const std::int32_t* tg = targets.data<std::int32_t>();
  WeightedRows rows;
  for (std::int64_t t = 0; t < t_count; ++t) {
    if (w[t] == 0.0f) continue;
    if (tg[t] < 0 || tg[t] >= v) fail("{}: target {} of row {} (weight {}) outside [0, {})", op, tg[t], t, w[t], v);
    rows.row.push_back(t);
  }
  const float* ph = hidden.data<float>();
  rows.h = ph;
  if (rows.n() < t_count) {
    rows.packed.resize(static_cast<std::size_t>(rows.n() * hdim));
    for (std::int64_t r = 0; r < rows.n(); ++r)
      std::copy(ph + rows.row[r] * hdim, ph + (rows.row[r] + 1) * hdim, rows.packed.data() + r * hdim);
    rows.h = rows.packed.data();
  }
  return rows;
}

void check_normaliser(const char* op, double normaliser) {
  if (!(normaliser > 0.0) || !std::isfinite(normaliser)) fail("{}: normaliser {} must be positive", op, normaliser);
}

}  // namespace

namespace cpu {

void lm_head_chunk_logits(const float* h, std::int64_t n, std::int64_t hdim, const float* emb, std::int64_t v0,
                          std::int64_t vc, float cap, float temperature, float* out) {
  sgemm(false, true, n, vc, hdim, 1.0f, h, hdim, emb + v0 * hdim, hdim, 0.0f, out, vc);
  if (cap == 0.0f && temperature == 1.0f) return;
  const vm::f32v c = vm::splat(cap), temp = vm::splat(temperature);
  // by rows (an element's result does not depend on its lane, vmath.h)
  parallel_for("head.logits.softcap", n, 30 * vc, [&](std::int64_t r) {
    float* row = out + r * vc;
    if (cap > 0.0f && temperature != 1.0f)
      vm::map(row, row, vc, [&](vm::f32v x) { return (c * vm::tanh(x / c)) / temp; });
    else if (cap > 0.0f)
      vm::map(row, row, vc, [&](vm::f32v x) { return c * vm::tanh(x / c); });
    else
      vm::map(row, row, vc, [&](vm::f32v x) { return x / temp; });
  });
}

}  // namespace cpu

// ---- Softcap ----------------------------------------------------------------------------------------

void softcap(const Tensor& x, float cap, Tensor& y) {
  if (any_on_cuda({&x, &y})) {
    DG_CHECK(x.defined() && y.defined() && y.shape() == x.shape(), "softcap: y {} should have the shape of x {}",
             y.describe(), x.describe());
    if (!(cap >= 0.0f) || !std::isfinite(cap)) fail("softcap: cap {} must be >= 0 (0: none)", cap);
    require_cuda("softcap", {&x, &y});
    cuda::softcap(x, cap, y);
    return;
  }
  require_cpu("softcap", {&x, &y});
  expect("softcap", "x", x, DType::F32, x.shape());
  expect("softcap", "y", y, DType::F32, x.shape());
  if (!(cap >= 0.0f) || !std::isfinite(cap)) fail("softcap: cap {} must be >= 0 (0: none)", cap);
  const float* px = x.data<float>();
  float* py = y.data<float>();
  const vm::f32v c = vm::splat(cap);
  constexpr std::int64_t kBlock = 4096;  // elements per item (a multiple of the lanes)
  const std::int64_t n = x.numel();
  cpu::parallel_for("head.softcap", (n + kBlock - 1) / kBlock, 30 * kBlock, [&](std::int64_t b) {
    const std::int64_t i0 = b * kBlock, len = std::min(kBlock, n - i0);
    if (cap > 0.0f)
      vm::map(px + i0, py + i0, len, [&](vm::f32v v) { return c * vm::tanh(v / c); });
    else if (py != px)
      std::copy_n(px + i0, len, py + i0);
  });
}

void softcap_backward(const Tensor& y, const Tensor& dy, float cap, Tensor& dx) {
  if (any_on_cuda({&y, &dy, &dx})) {
    DG_CHECK(y.defined() && dy.defined() && dx.defined() && dy.shape() == y.shape() && dx.shape() == y.shape(),
             "softcap_backward: dy {} and dx {} should have the shape of y {}", dy.describe(), dx.describe(),
             y.describe());
    if (!(cap >= 0.0f) || !std::isfinite(cap)) fail("softcap_backward: cap {} must be >= 0 (0: none)", cap);
    require_cuda("softcap_backward", {&y, &dy, &dx});
    cuda::softcap_backward(y, dy, cap, dx);
    return;
  }
  require_cpu("softcap_backward", {&y, &dy, &dx});
  expect("softcap_backward", "y", y, DType::F32, y.shape());
  expect("softcap_backward", "dy", dy, DType::F32, y.shape());
  expect("softcap_backward", "dx", dx, DType::F32, y.shape());
  if (!(cap >= 0.0f) || !std::isfinite(cap)) fail("softcap_backward: cap {} must be >= 0 (0: none)", cap);
  const float* py = y.data<float>();
  const float* pdy = dy.data<float>();
  float* pdx = dx.data<float>();
  constexpr std::int64_t kBlock = 4096;
  const std::int64_t n = y.numel();
  cpu::parallel_for("head.softcap_backward", (n + kBlock - 1) / kBlock, 4 * kBlock, [&](std::int64_t b) {
    for (std::int64_t i = b * kBlock; i < std::min(n, (b + 1) * kBlock); ++i) {
      const float u = cap > 0.0f ? py[i] / cap : 0.0f;
      pdx[i] = pdy[i] * (1.0f - u * u);
    }
  });
}

// ---- shape checks of the device path (dtypes are checked by dg::cuda; the CPU path keeps its own
// dtype-and-shape checks and messages) ----

namespace {

void expect_shape(const char* op, const char* name, const Tensor& t, const Shape& shape) {
  if (!t.defined() || t.shape() != shape)
    fail("{}: {} should be {}, got {}", op, name, shape_str(shape), t.defined() ? t.describe() : std::string("nothing"));
}

// hidden [T,H], embedding [V,H] (V >= 1) and the options, whatever their dtypes.
void check_head_shapes(const char* op, const Tensor& hidden, const Tensor& embedding, const LmHeadOpts& o) {
  DG_CHECK(hidden.ndim() == 2 && embedding.ndim() == 2, "{}: hidden {} and embedding {} should be [T, H] and [V, H]",
           op, hidden.describe(), embedding.describe());
  expect_shape(op, "hidden", hidden, {hidden.size(0), embedding.size(1)});
  if (embedding.size(0) < 1) fail("{}: empty vocabulary in {}", op, embedding.describe());
  if (o.vocab_chunk < 1) fail("{}: vocab_chunk {} must be positive", op, o.vocab_chunk);
  if (!(o.softcap >= 0.0f) || !std::isfinite(o.softcap)) fail("{}: softcap {} must be >= 0 (0: none)", op, o.softcap);
}

}  // namespace

// ---- Fused cross-entropy ------------------------------------------------------------------------------

double lm_head_cross_entropy(const Tensor& hidden, const Tensor& embedding, const Tensor& targets,
                             const Tensor& loss_mask, double normaliser, Tensor& lse, const LmHeadOpts& opts) {
  const char* op = "lm_head_cross_entropy";
  if (any_on_cuda({&hidden, &embedding, &targets, &loss_mask, &lse})) {
    require_cuda(op, {&hidden, &embedding, &targets, &loss_mask, &lse});
    check_head_shapes(op, hidden, embedding, opts);
    check_normaliser(op, normaliser);
    const std::int64_t t_count = hidden.size(0);
    expect_shape(op, "targets", targets, {t_count});
    expect_shape(op, "loss_mask", loss_mask, {t_count});
    expect_shape(op, "lse", lse, {t_count});
    return cuda::lm_head_cross_entropy(hidden, embedding, targets, loss_mask, normaliser, lse, opts);
  }
  require_cpu(op, {&hidden, &embedding, &targets, &loss_mask, &lse});
  const std::int64_t v = check_head(op, hidden, embedding, opts);
  check_normaliser(op, normaliser);
  expect(op, "lse", lse, DType::F32, {hidden.size(0)});
  const WeightedRows rows = weighted_rows(op, hidden, targets, loss_mask, v);
  const std::int64_t n = rows.n(), hdim = hidden.size(1), chunk = std::min(opts.vocab_chunk, v);
  const std::int32_t* tg = targets.data<std::int32_t>();
  const float* w = loss_mask.data<float>();

  // streaming log-sum-exp per row: running max m, running Σ exp(s - m), and the target logit
  std::vector<float> m(static_cast<std::size_t>(n), -std::numeric_limits<float>::infinity());
  std::vector<double> sum(static_cast<std::size_t>(n), 0.0);
  std::vector<float> target_logit(static_cast<std::size_t>(n), 0.0f);
  std::vector<float> scratch(static_cast<std::size_t>(n * chunk));
  for (std::int64_t v0 = 0; v0 < v && n > 0; v0 += chunk) {
    const std::int64_t vc = std::min(chunk, v - v0);
    cpu::lm_head_chunk_logits(rows.h, n, hdim, embedding.data<float>(), v0, vc, opts.softcap, 1.0f, scratch.data());
    cpu::parallel_for("head.cross_entropy.rows", n, 20 * vc, [&](std::int64_t r) {
      const float* s = scratch.data() + r * vc;
      const float mc = *std::max_element(s, s + vc);
      if (mc > m[r]) {
        sum[r] *= std::exp(static_cast<double>(m[r]) - mc);  // exp(-inf) = 0 on the first chunk
        m[r] = mc;
      }
      const std::int64_t target = tg[rows.row[r]];
      if (target >= v0 && target < v0 + vc) target_logit[r] = s[target - v0];
      sum[r] += vm::exp_sum(s, vc, m[r]);
    });
  }
  float* plse = lse.data<float>();
  std::fill(plse, plse + hidden.size(0), 0.0f);
  double loss = 0;
  for (std::int64_t r = 0; r < n; ++r) {
    const double row_lse = static_cast<double>(m[r]) + std::log(sum[r]);
    plse[rows.row[r]] = static_cast<float>(row_lse);
    loss += static_cast<double>(w[rows.row[r]]) * (row_lse - target_logit[r]);
  }
  return loss / normaliser;
}

void lm_head_cross_entropy_backward(const Tensor& hidden, const Tensor& embedding, const Tensor& targets,
                                    const Tensor& loss_mask, double normaliser, const Tensor& lse, float dloss,
                                    Tensor& dhidden, Tensor* dembedding, const LmHeadOpts& opts) {
  const char* op = "lm_head_cross_entropy_backward";
  if (any_on_cuda({&hidden, &embedding, &targets, &loss_mask, &lse, &dhidden, dembedding})) {
    require_cuda(op, {&hidden, &embedding, &targets, &loss_mask, &lse, &dhidden, dembedding});
    check_head_shapes(op, hidden, embedding, opts);
    check_normaliser(op, normaliser);
    const std::int64_t t_count = hidden.size(0);
    expect_shape(op, "targets", targets, {t_count});
    expect_shape(op, "loss_mask", loss_mask, {t_count});
    expect_shape(op, "lse", lse, {t_count});
    expect_shape(op, "dhidden", dhidden, hidden.shape());
    if (dembedding) expect_shape(op, "dembedding", *dembedding, embedding.shape());
    cuda::lm_head_cross_entropy_backward(hidden, embedding, targets, loss_mask, normaliser, lse, dloss, dhidden,
                                         dembedding, opts);
    return;
  }
  require_cpu(op, {&hidden, &embedding, &targets, &loss_mask, &lse, &dhidden, dembedding});
  const std::int64_t v = check_head(op, hidden, embedding, opts);
  check_normaliser(op, normaliser);
  const std::int64_t t_count = hidden.size(0), hdim = hidden.size(1), chunk = std::min(opts.vocab_chunk, v);
  expect(op, "lse", lse, DType::F32, {t_count});
  expect(op, "dhidden", dhidden, DType::F32, {t_count, hdim});
  if (dembedding) expect(op, "dembedding", *dembedding, DType::F32, {v, hdim});
  const WeightedRows rows = weighted_rows(op, hidden, targets, loss_mask, v);
  const std::int64_t n = rows.n();
  const std::int32_t* tg = targets.data<std::int32_t>();
  const float* w = loss_mask.data<float>();
  const float* plse = lse.data<float>();
  const float* emb = embedding.data<float>();
  const float cap = opts.softcap;

  float* pdh = dhidden.data<float>();
  std::fill(pdh, pdh + t_count * hdim, 0.0f);
  if (n == 0) return;
  std::vector<float> dh_packed(n < t_count ? static_cast<std::size_t>(n * hdim) : 0);
  float* dh = n < t_count ? dh_packed.data() : pdh;
  std::vector<float> g(static_cast<std::size_t>(n * chunk));
  for (std::int64_t v0 = 0; v0 < v; v0 += chunk) {
    const std::int64_t vc = std::min(chunk, v - v0);
    cpu::lm_head_chunk_logits(rows.h, n, hdim, emb, v0, vc, cap, 1.0f, g.data());
    cpu::parallel_for("head.cross_entropy_backward.rows", n, 20 * vc, [&](std::int64_t r) {
      const std::int64_t t = rows.row[r];
      const float coef = static_cast<float>(static_cast<double>(dloss) * w[t] / normaliser);
      float* s = g.data() + r * vc;
      // d = softmax - onehot, times the softcap derivative; the target's element is redone with its -1
      auto dlogit = [&](vm::f32v x, vm::f32v onehot) {
        vm::f32v d = vm::exp(x - vm::splat(plse[t])) - onehot;
        if (cap > 0.0f) d = d * (vm::splat(1.0f) - (x / vm::splat(cap)) * (x / vm::splat(cap)));
        return vm::splat(coef) * d;
      };
      const std::int64_t target = tg[t] - v0;
      const float s_target = target >= 0 && target < vc ? s[target] : 0.0f;
      vm::map(s, s, vc, [&](vm::f32v x) { return dlogit(x, vm::splat(0.0f)); });
      if (target >= 0 && target < vc) s[target] = dlogit(vm::splat(s_target), vm::splat(1.0f))[0];
    });
    cpu::sgemm(false, false, n, hdim, vc, 1.0f, g.data(), vc, emb + v0 * hdim, hdim, v0 == 0 ? 0.0f : 1.0f, dh,
               hdim);
    if (dembedding)
      cpu::sgemm(true, false, vc, hdim, n, 1.0f, g.data(), vc, rows.h, hdim, 1.0f,
                 dembedding->data<float>() + v0 * hdim, hdim);
  }
  if (n < t_count)
    for (std::int64_t r = 0; r < n; ++r)
      std::copy(dh + r * hdim, dh + (r + 1) * hdim, pdh + rows.row[r] * hdim);
}

// ---- Sampler statistics -------------------------------------------------------------------------------

void lm_head_entropy_argmax(const Tensor& hidden, const Tensor& embedding, float temperature, Tensor& entropy,
                            Tensor& argmax, Tensor* logsumexp, const LmHeadOpts& opts) {
  const char* op = "lm_head_entropy_argmax";
  if (any_on_cuda({&hidden, &embedding, &entropy, &argmax, logsumexp})) {
    require_cuda(op, {&hidden, &embedding, &entropy, &argmax, logsumexp});
    check_head_shapes(op, hidden, embedding, opts);
    check_temperature(op, temperature);
    const std::int64_t t_count = hidden.size(0);
    expect_shape(op, "entropy", entropy, {t_count});
    expect_shape(op, "argmax", argmax, {t_count});
    if (logsumexp) expect_shape(op, "logsumexp", *logsumexp, {t_count});
    cuda::lm_head_entropy_argmax(hidden, embedding, temperature, entropy, argmax, logsumexp, opts);
    return;
  }
  require_cpu(op, {&hidden, &embedding, &entropy, &argmax, logsumexp});
  const std::int64_t v = check_head(op, hidden, embedding, opts);
  check_temperature(op, temperature);
  const std::int64_t t_count = hidden.size(0), hdim = hidden.size(1), chunk = std::min(opts.vocab_chunk, v);
  expect(op, "entropy", entropy, DType::F32, {t_count});
  expect(op, "argmax", argmax, DType::I32, {t_count});
  if (logsumexp) expect(op, "logsumexp", *logsumexp, DType::F32, {t_count});

  // the sampler core (layers/cpu/sampler.cpp), so that lm_head_sampler gives these values bit for bit
  cpu::SamplerOutputs out;
  out.entropy = entropy.data<float>();
  out.argmax = argmax.data<std::int32_t>();
  out.logsumexp = logsumexp ? logsumexp->data<float>() : nullptr;
  cpu::lm_head_sampler_pass(hidden.data<float>(), t_count, hdim, embedding.data<float>(), v, chunk, opts.softcap,
                            temperature, out);
}

void lm_head_sample(const Tensor& hidden, const Tensor& embedding, float temperature, const Tensor& logsumexp,
                    const Tensor& uniforms, Tensor& sampled, const LmHeadOpts& opts) {
  const char* op = "lm_head_sample";
  if (any_on_cuda({&hidden, &embedding, &logsumexp, &uniforms, &sampled})) {
    require_cuda(op, {&hidden, &embedding, &logsumexp, &uniforms, &sampled});
    check_head_shapes(op, hidden, embedding, opts);
    check_temperature(op, temperature);
    const std::int64_t t_count = hidden.size(0);
    expect_shape(op, "logsumexp", logsumexp, {t_count});
    expect_shape(op, "uniforms", uniforms, {t_count});
    expect_shape(op, "sampled", sampled, {t_count});
    cuda::lm_head_sample(hidden, embedding, temperature, logsumexp, uniforms, sampled, opts);
    return;
  }
  require_cpu(op, {&hidden, &embedding, &logsumexp, &uniforms, &sampled});
  const std::int64_t v = check_head(op, hidden, embedding, opts);
  check_temperature(op, temperature);
  const std::int64_t t_count = hidden.size(0), hdim = hidden.size(1), chunk = std::min(opts.vocab_chunk, v);
  expect(op, "logsumexp", logsumexp, DType::F32, {t_count});
  expect(op, "uniforms", uniforms, DType::F32, {t_count});
  expect(op, "sampled", sampled, DType::I32, {t_count});
  const float* u = uniforms.data<float>();
  const float* lse = logsumexp.data<float>();
  for (std::int64_t t = 0; t < t_count; ++t)
    if (!(u[t] >= 0.0f && u[t] < 1.0f)) fail("{}: uniform {} of row {} outside [0, 1)", op, u[t], t);

  std::int32_t* out = sampled.data<std::int32_t>();
  std::vector<double> cum(static_cast<std::size_t>(t_count), 0.0);
  std::vector<std::int32_t> last_nonzero(static_cast<std::size_t>(t_count), 0);
  std::vector<char> done(static_cast<std::size_t>(t_count), 0);
  std::int64_t remaining = t_count;
  std::vector<float> scratch(static_cast<std::size_t>(t_count * chunk));
  for (std::int64_t v0 = 0; v0 < v && remaining > 0; v0 += chunk) {
    const std::int64_t vc = std::min(chunk, v - v0);
    cpu::lm_head_chunk_logits(hidden.data<float>(), t_count, hdim, embedding.data<float>(), v0, vc, opts.softcap,
                              temperature, scratch.data());
    cpu::parallel_for("head.sample.rows", t_count, 20 * vc, [&](std::int64_t t) {
      if (done[t]) return;
      const float* lg = scratch.data() + t * vc;
      for (std::int64_t c = 0; c < vc; ++c) {
        const double p = std::exp(static_cast<double>(lg[c]) - lse[t]);
        if (p > 0) last_nonzero[t] = static_cast<std::int32_t>(v0 + c);
        cum[t] += p;
        if (cum[t] > u[t]) {
          out[t] = static_cast<std::int32_t>(v0 + c);
          done[t] = 1;
          return;
        }
      }
    });
    remaining = t_count - std::count(done.begin(), done.end(), 1);
  }
  for (std::int64_t t = 0; t < t_count; ++t)
    if (!done[t]) out[t] = last_nonzero[t];
}

}  // namespace dg
