// lm_head_soft_embedding: shape checks and dispatch (device tensors go to dg::cuda, layers/cuda/head.cpp),
// and the CPU path: chunked logits, online softmax, accumulated soft embedding.
#include <cmath>
#include <limits>
#include <vector>

#include "layers/ops.h"

namespace dg {

void lm_head_soft_embedding(const Tensor& hidden, const Tensor& embedding, float temperature, float scale,
                            Tensor& soft, const LmHeadOpts& opts) {
  DG_CHECK(hidden.ndim() == 2 && embedding.ndim() == 2 && hidden.size(1) == embedding.size(1) &&
               soft.shape() == hidden.shape(),
           "lm_head_soft_embedding: hidden {}, embedding {}, soft {}", hidden.describe(), embedding.describe(),
           soft.describe());
  DG_CHECK(temperature > 0 && opts.vocab_chunk > 0, "lm_head_soft_embedding: temperature {} chunk {}", temperature,
           opts.vocab_chunk);
  if (any_on_cuda({&hidden, &embedding, &soft})) {
    require_cuda("lm_head_soft_embedding", {&hidden, &embedding, &soft});
    cuda::lm_head_soft_embedding(hidden, embedding, temperature, scale, soft, opts);
    return;
  }
  require_cpu("lm_head_soft_embedding", {&hidden, &embedding, &soft});
  const std::int64_t T = hidden.size(0), H = hidden.size(1), V = embedding.size(0);
  const std::int64_t chunk = std::min(opts.vocab_chunk, std::max<std::int64_t>(V, 1));
  Tensor lg = Tensor::empty({T, chunk}, DType::F32);
  std::vector<double> zsum(static_cast<std::size_t>(T), 0.0);
  std::vector<float> mrun(static_cast<std::size_t>(T), -std::numeric_limits<float>::infinity());
  std::vector<double> acc(static_cast<std::size_t>(T * H), 0.0);
  Tensor part = Tensor::empty({T, H}, DType::F32);
  for (std::int64_t v0 = 0; v0 < V; v0 += chunk) {
    const std::int64_t n = std::min(chunk, V - v0);
    Tensor l = lg.reshape({T * chunk}).rows(0, T * n).reshape({T, n});
    gemm(hidden, embedding.rows(v0, v0 + n), l, {.trans_b = true});
    if (opts.softcap > 0) softcap(l, opts.softcap, l);
    float* pl = l.data<float>();
    for (std::int64_t t = 0; t < T; ++t) {
      float m = mrun[static_cast<std::size_t>(t)];
      for (std::int64_t j = 0; j < n; ++j) m = std::max(m, pl[t * n + j] / temperature);
      const double rescale = std::isinf(mrun[static_cast<std::size_t>(t)]) ? 0.0 : std::exp(double(mrun[static_cast<std::size_t>(t)]) - m);
      zsum[static_cast<std::size_t>(t)] *= rescale;
      for (std::int64_t h = 0; h < H; ++h) acc[static_cast<std::size_t>(t * H + h)] *= rescale;
      mrun[static_cast<std::size_t>(t)] = m;
      for (std::int64_t j = 0; j < n; ++j) {
        const float p = std::exp(pl[t * n + j] / temperature - m);
        pl[t * n + j] = p;
        zsum[static_cast<std::size_t>(t)] += p;
      }
    }
    gemm(l, embedding.rows(v0, v0 + n), part, {});  // [T, n] @ [n, H]
    for (std::int64_t i = 0; i < T * H; ++i) acc[static_cast<std::size_t>(i)] += part.data<float>()[i];
  }
  float* out = soft.data<float>();
  for (std::int64_t t = 0; t < T; ++t)
    for (std::int64_t h = 0; h < H; ++h)
      out[t * H + h] = static_cast<float>(acc[static_cast<std::size_t>(t * H + h)] / zsum[static_cast<std::size_t>(t)] * scale);
}

}  // namespace dg
