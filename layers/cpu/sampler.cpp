// The fused sampler step, lm_head_sampler (layers/ops/head.h): one pass over the vocabulary per
// denoising step instead of three (lm_head_entropy_argmax, lm_head_sample, lm_head_soft_embedding each
// recomputed every logits chunk). Per chunk: one GEMM for the logits [T, chunk]; per row the online
// statistics (running max m, s = Σ exp(lg - m), a = Σ exp(lg - m)·(lg - m), the argmax), the soft
// weights p = exp(lg - m) and the chunk's probability mass; then P·E into the soft accumulator. After
// the pass the inverse-CDF scan of each row's sample runs on one chunk (see head.h). The core,
// lm_head_sampler_pass, also serves lm_head_entropy_argmax and lm_head_soft_embedding on the CPU, so
// the fused op's results are theirs bit for bit; the sample scan is lm_head_sample's.
//
// Precision: exp(lg - m) is the vectorised fp32 exp (<= 2 ulp, layers/cpu/vmath.h), the sums
// s = Σ p and a = Σ p·(lg - m) run in double (lg - m exact in double), so entropy and log-sum-exp are
// good to ~1e-7 relative; the sample's inverse-CDF scan keeps double exp(lg - logsumexp).
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

void check_cpu_args(const char* op, const Tensor& hidden, const Tensor& embedding, float temperature,
                    const Tensor& uniforms, const Tensor& entropy, const Tensor& argmax, const Tensor& sampled,
                    const Tensor& soft, const LmHeadOpts& o) {
  DG_CHECK(hidden.ndim() == 2 && embedding.ndim() == 2, "{}: hidden {} and embedding {} should be [T, H] and [V, H]",
           op, hidden.describe(), embedding.describe());
  const std::int64_t t_count = hidden.size(0), hdim = embedding.size(1);
  expect(op, "hidden", hidden, DType::F32, {t_count, hdim});
  expect(op, "embedding", embedding, DType::F32, {embedding.size(0), hdim});
  if (embedding.size(0) < 1) fail("{}: empty vocabulary in {}", op, embedding.describe());
  if (o.vocab_chunk < 1) fail("{}: vocab_chunk {} must be positive", op, o.vocab_chunk);
  if (!(o.softcap >= 0.0f) || !std::isfinite(o.softcap)) fail("{}: softcap {} must be >= 0 (0: none)", op, o.softcap);
  if (!(temperature > 0.0f) || !std::isfinite(temperature))
    fail("{}: temperature {} must be positive and finite", op, temperature);
  expect(op, "uniforms", uniforms, DType::F32, {t_count});
  expect(op, "entropy", entropy, DType::F32, {t_count});
  expect(op, "argmax", argmax, DType::I32, {t_count});
  expect(op, "sampled", sampled, DType::I32, {t_count});
  expect(op, "soft", soft, DType::F32, {t_count, hdim});
  const float* u = uniforms.data<float>();
  for (std::int64_t t = 0; t < t_count; ++t)
    if (!(u[t] >= 0.0f && u[t] < 1.0f)) fail("{}: uniform {} of row {} outside [0, 1)", op, u[t], t);
}

struct RowStats {
  float m = -std::numeric_limits<float>::infinity();  // running max of lg
  double s = 0, a = 0;  // Σ exp(lg - m) and Σ exp(lg - m)·(lg - m): entropy = log s - a/s
  std::int32_t argmax = 0;
};

// Σ exp(lg - m) over one chunk of a row, m the row's running max after that chunk.
struct ChunkMass {
  float m;
  double sum;
};

using f64v2 = double __attribute__((vector_size(16)));

struct ExpSums {
  double s, a;
};

// p [n] = exp(x - m) in fp32; returns Σ p and Σ p·(x - m) (x - m in double), accumulated in four double
// lanes (lane l takes the elements l mod 4) added in a fixed order: a function of x and m only.
ExpSums exp_sums(const float* x, std::int64_t n, float m, float* p) {
  f64v2 s0{}, s1{}, a0{}, a1{};
  const vm::f32v mv = vm::splat(m);
  const f64v2 md = {static_cast<double>(m), static_cast<double>(m)};
  for (std::int64_t i = 0; i < n; i += vm::kLanes) {
    const std::int64_t k = std::min<std::int64_t>(vm::kLanes, n - i);
    float buf[vm::kLanes] = {m, m, m, m};  // padding: x - m = 0, its p zeroed below
    std::copy_n(x + i, k, buf);
    const vm::f32v xv = vm::load(buf);
    vm::f32v e = vm::exp(xv - mv);
    for (std::int64_t l = k; l < vm::kLanes; ++l) e[l] = 0.0f;
    vm::store(buf, e);
    std::copy_n(buf, k, p + i);
    const f64v2 elo = __builtin_convertvector(__builtin_shufflevector(e, e, 0, 1), f64v2);
    const f64v2 ehi = __builtin_convertvector(__builtin_shufflevector(e, e, 2, 3), f64v2);
    s0 += elo;
    s1 += ehi;
    a0 += elo * (__builtin_convertvector(__builtin_shufflevector(xv, xv, 0, 1), f64v2) - md);
    a1 += ehi * (__builtin_convertvector(__builtin_shufflevector(xv, xv, 2, 3), f64v2) - md);
  }
  return {(s0[0] + s0[1]) + (s1[0] + s1[1]), (a0[0] + a0[1]) + (a1[0] + a1[1])};
}

// Folds the chunk lg [vc] (vocabulary ids v0 ..) into a row's statistics and writes its soft weights
// p [vc] = exp(lg - m) for the updated max m. Returns the factor the row's soft accumulator is to be
// multiplied by (0 on the first chunk, 1 when the max did not move).
double fold_chunk(RowStats& st, const float* lg, std::int64_t vc, std::int64_t v0, float* p, ChunkMass& mass) {
  const std::int64_t best = std::max_element(lg, lg + vc) - lg;  // first of equal maxima
  const float mc = lg[best];
  double rescale = 1.0;
  if (mc > st.m) {  // strictly greater: an equal maximum in a later chunk keeps the earlier id
    rescale = std::isinf(st.m) ? 0.0 : std::exp(static_cast<double>(st.m) - mc);
    if (st.s > 0) {
      const double shift = static_cast<double>(st.m) - mc;
      st.a = rescale * (st.a + st.s * shift);
      st.s *= rescale;
    }
    st.m = mc;
    st.argmax = static_cast<std::int32_t>(v0 + best);
  }
  const ExpSums e = exp_sums(lg, vc, st.m, p);
  st.s += e.s;
  st.a += e.a;
  mass = {st.m, e.s};
  return rescale;
}

// The inverse-CDF scan of lm_head_sample over one chunk lg [vc] (ids v0 ..): cum += exp(lg - lse) in
// double, ascending; true (and *out) at the first id where cum > u. last_nonzero: the last id with p > 0.
bool scan_chunk(const float* lg, std::int64_t vc, std::int64_t v0, double lse, double u, double& cum,
                std::int32_t& last_nonzero, std::int32_t* out) {
  for (std::int64_t c = 0; c < vc; ++c) {
    const double p = std::exp(static_cast<double>(lg[c]) - lse);
    if (p > 0) last_nonzero = static_cast<std::int32_t>(v0 + c);
    cum += p;
    if (cum > u) {
      *out = static_cast<std::int32_t>(v0 + c);
      return true;
    }
  }
  return false;
}

// The pass's geometry and inputs, shared by the sample resolution below.
struct Pass {
  const float* h;
  const float* emb;
  std::int64_t t_count, hdim, v, chunk, n_chunks;
  float cap, temperature;
  std::int64_t v0(std::int64_t j) const { return j * chunk; }
  std::int64_t width(std::int64_t j) const { return std::min(chunk, v - j * chunk); }
  // Logits of chunk j for row t alone, into buf.
  const float* row_chunk(std::int64_t t, std::int64_t j, std::vector<float>& buf) const {
    buf.resize(static_cast<std::size_t>(chunk));
    cpu::lm_head_chunk_logits(h + t * hdim, 1, hdim, emb, v0(j), width(j), cap, temperature, buf.data());
    return buf.data();
  }
};

// Finishes row t's sample from chunk j (logits lg) with the mass before it `cum`: scans on through
// later chunks if rounding left the crossing beyond j; with no crossing at all, the last id with p > 0
// (searching back before j if needed), 0 when there is none, as lm_head_sample.
void finish_sample(const Pass& ps, std::int64_t t, std::int64_t j, const float* lg, const float* last_chunk,
                   double lse, double u, double cum, std::int32_t* out) {
  std::vector<float> buf;
  std::int32_t last_nonzero = -1;
  for (std::int64_t jj = j; jj < ps.n_chunks; ++jj) {
    const float* l = jj == j ? lg : jj == ps.n_chunks - 1 ? last_chunk : ps.row_chunk(t, jj, buf);
    if (scan_chunk(l, ps.width(jj), ps.v0(jj), lse, u, cum, last_nonzero, out)) return;
  }
  for (std::int64_t jj = j - 1; jj >= 0 && last_nonzero < 0; --jj) {
    const float* l = ps.row_chunk(t, jj, buf);
    for (std::int64_t c = ps.width(jj) - 1; c >= 0 && last_nonzero < 0; --c)
      if (std::exp(static_cast<double>(l[c]) - lse) > 0) last_nonzero = static_cast<std::int32_t>(ps.v0(jj) + c);
  }
  *out = std::max(last_nonzero, 0);
}

// The samples of every row after the pass. A row's start chunk is the first whose cumulative mass
// (chunk masses rescaled to the row's log-sum-exp) exceeds the uniform; rows starting in the last chunk
// scan the kept logits `last_chunk` [T, width], the others have their chunk recomputed, one GEMM per
// start chunk for the rows that share it.
void sample_rows(const Pass& ps, const std::vector<ChunkMass>& mass, const std::vector<float>& lse, const float* u,
                 const float* last_chunk, std::int32_t* out) {
  const std::int64_t last = ps.n_chunks - 1;
  std::vector<std::int64_t> start(static_cast<std::size_t>(ps.t_count), last);
  std::vector<double> before(static_cast<std::size_t>(ps.t_count), 0.0);
  for (std::int64_t t = 0; t < ps.t_count; ++t) {
    const std::size_t ts = static_cast<std::size_t>(t);
    for (std::int64_t j = 0; j < last; ++j) {
      const ChunkMass& cm = mass[static_cast<std::size_t>(t * ps.n_chunks + j)];
      const double m = cm.sum * std::exp(static_cast<double>(cm.m) - lse[ts]);
      if (before[ts] + m > u[t]) {
        start[ts] = j;
        break;
      }
      before[ts] += m;
    }
  }
  std::vector<float> packed_h, logits;
  for (std::int64_t j = 0; j < last; ++j) {
    std::vector<std::int64_t> rows;
    for (std::int64_t t = 0; t < ps.t_count; ++t)
      if (start[static_cast<std::size_t>(t)] == j) rows.push_back(t);
    if (rows.empty()) continue;
    const std::int64_t n = static_cast<std::int64_t>(rows.size()), w = ps.width(j);
    packed_h.resize(static_cast<std::size_t>(n * ps.hdim));
    logits.resize(static_cast<std::size_t>(n * w));
    for (std::int64_t r = 0; r < n; ++r)
      std::copy_n(ps.h + rows[static_cast<std::size_t>(r)] * ps.hdim, ps.hdim, packed_h.data() + r * ps.hdim);
    cpu::lm_head_chunk_logits(packed_h.data(), n, ps.hdim, ps.emb, ps.v0(j), w, ps.cap, ps.temperature,
                              logits.data());
    for (std::int64_t r = 0; r < n; ++r) {
      const std::int64_t t = rows[static_cast<std::size_t>(r)];
      finish_sample(ps, t, j, logits.data() + r * w, last_chunk + t * ps.width(last), lse[static_cast<std::size_t>(t)],
                    u[t], before[static_cast<std::size_t>(t)], out + t);
    }
  }
  for (std::int64_t t = 0; t < ps.t_count; ++t)
    if (start[static_cast<std::size_t>(t)] == last) {
      const float* lg = last_chunk + t * ps.width(last);
      finish_sample(ps, t, last, lg, lg, lse[static_cast<std::size_t>(t)], u[t], before[static_cast<std::size_t>(t)],
                    out + t);
    }
}

}  // namespace

namespace cpu {

void lm_head_sampler_pass(const float* h, std::int64_t t_count, std::int64_t hdim, const float* emb, std::int64_t v,
                          std::int64_t chunk, float cap, float temperature, const SamplerOutputs& out) {
  if (t_count == 0) return;
  const Pass ps{h, emb, t_count, hdim, v, chunk, (v + chunk - 1) / chunk, cap, temperature};
  const std::size_t rows = static_cast<std::size_t>(t_count);
  const std::size_t hsz = out.soft ? rows * static_cast<std::size_t>(hdim) : 0;
  std::vector<RowStats> st(rows);
  std::vector<ChunkMass> mass(rows * static_cast<std::size_t>(ps.n_chunks));
  std::vector<float> lg(rows * static_cast<std::size_t>(chunk)), p(lg.size()), part(hsz);
  std::vector<double> acc(hsz, 0.0);  // Σ p·E per row, relative to the row's running max
  for (std::int64_t j = 0; j < ps.n_chunks; ++j) {
    const std::int64_t v0 = ps.v0(j), vc = ps.width(j);
    lm_head_chunk_logits(h, t_count, hdim, emb, v0, vc, cap, temperature, lg.data());
    parallel_for("sampler.fold.rows", t_count, 12 * vc, [&](std::int64_t t) {
      const double rescale = fold_chunk(st[static_cast<std::size_t>(t)], lg.data() + t * vc, vc, v0, p.data() + t * vc,
                                        mass[static_cast<std::size_t>(t * ps.n_chunks + j)]);
      if (out.soft && rescale != 1.0)
        for (std::int64_t i = t * hdim; i < (t + 1) * hdim; ++i) acc[static_cast<std::size_t>(i)] *= rescale;
    });
    if (!out.soft) continue;
    sgemm(false, false, t_count, hdim, vc, 1.0f, p.data(), vc, emb + v0 * hdim, hdim, 0.0f, part.data(), hdim);
    parallel_for("sampler.soft.accumulate", t_count, hdim, [&](std::int64_t t) {
      for (std::size_t i = static_cast<std::size_t>(t * hdim); i < static_cast<std::size_t>((t + 1) * hdim); ++i)
        acc[i] += part[i];
    });
  }
  std::vector<float> lse(rows);
  parallel_for("sampler.finish.rows", t_count, out.soft ? 2 * hdim : 1, [&](std::int64_t t) {
    const RowStats& r = st[static_cast<std::size_t>(t)];
    lse[static_cast<std::size_t>(t)] = static_cast<float>(static_cast<double>(r.m) + std::log(r.s));
    if (out.entropy) out.entropy[t] = static_cast<float>(std::max(0.0, std::log(r.s) - r.a / r.s));
    if (out.argmax) out.argmax[t] = r.argmax;
    if (out.logsumexp) out.logsumexp[t] = lse[static_cast<std::size_t>(t)];
    if (out.soft)
      for (std::int64_t i = t * hdim; i < (t + 1) * hdim; ++i)
        out.soft[i] = static_cast<float>(acc[static_cast<std::size_t>(i)] / r.s * out.scale);
  });
  if (out.sampled) sample_rows(ps, mass, lse, out.uniforms, lg.data(), out.sampled);
}

}  // namespace cpu

void lm_head_sampler(const Tensor& hidden, const Tensor& embedding, float temperature, float scale,
                     const Tensor& uniforms, Tensor& entropy, Tensor& argmax, Tensor& sampled, Tensor& soft,
                     const LmHeadOpts& opts) {
  const char* op = "lm_head_sampler";
  if (any_on_cuda({&hidden, &embedding, &uniforms, &entropy, &argmax, &sampled, &soft})) {
    require_cuda(op, {&hidden, &embedding, &uniforms, &entropy, &argmax, &sampled, &soft});
    DG_CHECK(hidden.ndim() == 2, "{}: hidden {} should be [T, H]", op, hidden.describe());
    Tensor lse = Tensor::empty({hidden.size(0)}, DType::F32, Device::CUDA);
    lm_head_entropy_argmax(hidden, embedding, temperature, entropy, argmax, &lse, opts);
    lm_head_sample(hidden, embedding, temperature, lse, uniforms, sampled, opts);
    lm_head_soft_embedding(hidden, embedding, temperature, scale, soft, opts);
    return;
  }
  require_cpu(op, {&hidden, &embedding, &uniforms, &entropy, &argmax, &sampled, &soft});
  check_cpu_args(op, hidden, embedding, temperature, uniforms, entropy, argmax, sampled, soft, opts);
  cpu::SamplerOutputs out;
  out.entropy = entropy.data<float>();
  out.argmax = argmax.data<std::int32_t>();
  out.soft = soft.data<float>();
  out.scale = scale;
  out.uniforms = uniforms.data<float>();
  out.sampled = sampled.data<std::int32_t>();
  cpu::lm_head_sampler_pass(hidden.data<float>(), hidden.size(0), hidden.size(1), embedding.data<float>(),
                            embedding.size(0), std::min(opts.vocab_chunk, embedding.size(0)), opts.softcap, temperature,
                            out);
}

}  // namespace dg
