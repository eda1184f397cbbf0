// SFT noising of a micro-batch's canvas with keyed randomness; see noise.h for the formulas.
#include "layers/noise.h"

#include <algorithm>

#include "layers/error.h"
#include "layers/random.h"

namespace dg {

namespace {

std::uint64_t key(const NoiseOptions& o, rng::Purpose p, std::int64_t step, std::int64_t k, std::int64_t j) {
  return rng::key(o.seed, p, static_cast<std::uint64_t>(step), static_cast<std::uint64_t>(k),
                  static_cast<std::uint64_t>(j));
}

}  // namespace

double noise_level(const NoiseOptions& o, std::int64_t step, std::int64_t k) {
  return o.eps + (1.0 - o.eps) * rng::uniform_double(key(o, rng::Purpose::NoiseLevel, step, k, 0));
}

bool self_cond_coin(const NoiseOptions& o, std::int64_t step, std::int64_t k) {
  return rng::uniform_double(key(o, rng::Purpose::SelfCondCoin, step, k, 0)) < o.self_cond_p;
}

int choose_block(const NoiseOptions& o, std::int64_t step, std::int64_t k, int canvas_len) {
  const int nblocks = std::max(1, (canvas_len - 1) / o.canvas_length + 1);
  return static_cast<int>(rng::below(key(o, rng::Purpose::BlockChoice, step, k, 0), static_cast<std::uint32_t>(nblocks)));
}

NoisedCanvas noise_canvas(const NoiseInput& in, std::int64_t step, const NoiseOptions& o) {
  DG_CHECK(in.B > 0 && in.R > 0, "empty canvas {}x{}", in.B, in.R);
  const std::size_t B = static_cast<std::size_t>(in.B), R = static_cast<std::size_t>(in.R);
  DG_CHECK(in.clean.size() == B * R && in.canvas_len.size() == B && in.sample_index.size() == B,
           "noise input sizes: clean {} canvas_len {} sample_index {} for {}x{}", in.clean.size(), in.canvas_len.size(),
           in.sample_index.size(), B, R);
  DG_CHECK(o.vocab_size > 0 && o.canvas_length > 0 && o.eps >= 0.0 && o.eps <= 1.0, "bad noise options");
  NoisedCanvas out;
  out.B = in.B;
  out.R = in.R;
  out.canvas_ids.assign(in.clean.begin(), in.clean.end());
  out.target_ids.assign(in.clean.begin(), in.clean.end());
  out.noised.assign(B * R, 0);
  out.loss_mask.assign(B * R, 0);
  out.t.resize(B);
  out.self_cond.resize(B);
  out.block.resize(B);
  const std::uint32_t V = static_cast<std::uint32_t>(o.vocab_size);
  for (std::size_t b = 0; b < B; ++b) {
    const std::int64_t k = in.sample_index[b];
    const int len = in.canvas_len[b];
    DG_CHECK(len >= 1 && static_cast<std::size_t>(len) <= R, "row {}: canvas length {} outside [1, {}]", b, len, R);
    const double t = noise_level(o, step, k);
    out.t[b] = static_cast<float>(t);
    out.self_cond[b] = self_cond_coin(o, step, k);
    const int block = choose_block(o, step, k, len);
    out.block[b] = block;
    for (int j = 0; j < len; ++j) {
      const std::size_t at = b * R + static_cast<std::size_t>(j);
      if (rng::uniform_double(key(o, rng::Purpose::NoiseMask, step, k, j)) < t) {
        out.canvas_ids[at] = static_cast<std::int32_t>(rng::below(key(o, rng::Purpose::NoiseToken, step, k, j), V));
        out.noised[at] = 1;
        ++out.noised_tokens;
      }
      if (j / o.canvas_length == block) {
        out.loss_mask[at] = 1;
        ++out.diffusion_tokens;
      }
    }
  }
  return out;
}

}  // namespace dg
