// The SFT batch the training tests share: two examples of S = 16 tokens on a model with canvas width 12.
#pragma once
#include <cstdint>
#include <random>
#include <utility>
#include <vector>

#include "layers/train.h"

namespace dg::test {

struct SftTestLayout {
  std::int64_t P, R, sel;  // prompt length, canvas (response + fill) length, selected block
};

// Two examples, S = 16: example 0 has P = 5, R = 8 (2 blocks) and 3 pad tokens; example 1 P = 3, R = 12
// (3 blocks) and 1 pad token. Canvas width 12. Noise: half of the response tokens replaced.
inline SftBatch make_sft_batch(const ModelConfig& c, std::vector<std::uint8_t> coin, bool all_blocks = false,
                              std::uint32_t seed = 11) {
  const std::vector<SftTestLayout> ex = {{5, 8, 1}, {3, 12, 2}};
  const std::int64_t B = 2, S = 16, R = 12, Bk = c.canvas_length;
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> tok(3, c.vocab_size - 1);
  SftBatch b;
  b.clean = Tensor::zeros({B, S}, DType::I32);
  b.clean_valid = Tensor::zeros({B, S}, DType::I32);
  b.canvas = Tensor::zeros({B, R}, DType::I32);
  b.diff_targets = Tensor::zeros({B, R}, DType::I32);
  b.diff_mask = Tensor::zeros({B, R}, DType::F32);
  for (std::int64_t i = 0; i < B; ++i) {
    const SftTestLayout& e = ex[static_cast<std::size_t>(i)];
    b.prompt_len.push_back(e.P);
    b.canvas_len.push_back(e.R);
    for (std::int64_t t = 0; t < e.P + e.R; ++t) {
      b.clean.data<std::int32_t>()[i * S + t] = tok(rng);
      b.clean_valid.data<std::int32_t>()[i * S + t] = 1;
    }
    for (std::int64_t j = 0; j < e.R; ++j) {
      const std::int32_t clean = b.clean.data<std::int32_t>()[i * S + e.P + j];
      b.canvas.data<std::int32_t>()[i * R + j] = rng() % 2 ? tok(rng) : clean;
      b.diff_targets.data<std::int32_t>()[i * R + j] = clean;
      b.diff_mask.data<float>()[i * R + j] = all_blocks || j / Bk == e.sel ? 1.0f : 0.0f;
    }
  }
  sft_ar_targets(b.clean, b.clean_valid, b.ar_targets, b.ar_mask);
  b.sc_coin = std::move(coin);
  double nd = 0, na = 0;
  for (std::int64_t i = 0; i < b.diff_mask.numel(); ++i) nd += b.diff_mask.data<float>()[i];
  for (std::int64_t i = 0; i < b.ar_mask.numel(); ++i) na += b.ar_mask.data<float>()[i];
  b.n_diff = nd;
  b.n_ar = na;
  return b;
}

}  // namespace dg::test
