// lm_head_soft_embedding: shape checks and dispatch (device tensors go to dg::cuda, layers/cuda/head.cpp),
// and the CPU path: the one-pass sampler core (chunked logits, online softmax, accumulated soft embedding).
#include <algorithm>

#include "layers/cpu/head_chunk.h"
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
  DG_CHECK(hidden.dtype() == DType::F32 && embedding.dtype() == DType::F32 && soft.dtype() == DType::F32,
           "lm_head_soft_embedding: the CPU op is f32 only: hidden {}, embedding {}, soft {}", hidden.describe(),
           embedding.describe(), soft.describe());
  const std::int64_t V = embedding.size(0);
  DG_CHECK(V >= 1, "lm_head_soft_embedding: empty vocabulary in {}", embedding.describe());
  // The sampler core (layers/cpu/sampler.cpp), so that lm_head_sampler's soft output is this bit for bit.
  cpu::SamplerOutputs out;
  out.soft = soft.data<float>();
  out.scale = scale;
  cpu::lm_head_sampler_pass(hidden.data<float>(), hidden.size(0), hidden.size(1), embedding.data<float>(), V,
                            std::min(opts.vocab_chunk, V), opts.softcap, temperature, out);
}

}  // namespace dg
