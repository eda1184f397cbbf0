// SFT noising of a micro-batch's canvas (training.md §3, D3PM-uniform), with counter-based randomness
// (layers/random.h) keyed by (seed, purpose, step, global sample index k, canvas position j): the
// result for one example depends only on its clean canvas, its canvas length, k and the step, never on
// the rank, the other rows of the batch or the padded width R.
//
// Per example b (k = sample_index[b], R_b = canvas_len[b], all j < R_b are supervised, §2.2):
//   t_b      = eps + (1 - eps) * U(key(NoiseLevel, step, k, 0))        eps = 0.001: ONE level per example
//   noised   = U(key(NoiseMask, step, k, j)) < t_b                      i.i.d. per supervised position
//   token    = below(key(NoiseToken, step, k, j), V)                    uniform over the FULL vocabulary,
//              special tokens included; it MAY equal the clean token (still counted as noised), §3
//   coin_b   = U(key(SelfCondCoin, step, k, 0)) < self_cond_p          self-conditioning gate, p = 0.5
//   nblocks  = max(1, (R_b - 1) / Bk + 1) ; block_b = below(key(BlockChoice, step, k, 0), nblocks)
//   loss_mask[b, j] = (j < R_b) & (j / Bk == block_b)                   one block per example per step
// Positions j >= R_b (row padding) are never noised and carry no loss; the prompt is not in the canvas.
//
// Decision (open question Q5): the coin and the block are drawn per example, keyed by the global sample
// index, not shared across the ranks of a step as NeMo's (step, micro-batch) seeds do. NeMo's exact
// seeds are not reproduced (checklist item 2 allows any counter-based generator keyed on step and
// sample). The diffusion loss is flat (§5.2): every position of the selected block counts, corrupted or
// not, so diffusion_tokens (this micro-batch's share of N_diff) is the sum of loss_mask.
#pragma once
#include <cstdint>
#include <span>
#include <vector>

namespace dg {

struct NoiseOptions {
  std::uint64_t seed = 42;
  int vocab_size = 262144;  // V: replacements are uniform in [0, V)
  int canvas_length = 256;  // Bk: block size for the block choice
  double eps = 1e-3;        // t ~ U(eps, 1)
  double self_cond_p = 0.5; // probability of the self-conditioning coin
};

// A micro-batch's canvas, as laid out by io/sft_data.h's assemble_micro_batch.
struct NoiseInput {
  int B = 0, R = 0;
  std::span<const std::int32_t> clean;         // [B,R] clean canvas ids (the diffusion targets)
  std::span<const std::int32_t> canvas_len;    // [B] R_b: supervised positions are j < R_b
  std::span<const std::int64_t> sample_index;  // [B] global sample index k of each row
};

struct NoisedCanvas {
  int B = 0, R = 0;
  std::vector<std::int32_t> canvas_ids;  // [B,R] decoder input: clean with the noised positions replaced
  std::vector<std::int32_t> target_ids;  // [B,R] diffusion targets (the clean canvas)
  std::vector<std::uint8_t> noised;      // [B,R] 1 where a replacement was drawn (diagnostics)
  std::vector<std::uint8_t> loss_mask;   // [B,R] the selected block's valid positions
  std::vector<float> t;                  // [B] noise level
  std::vector<std::uint8_t> self_cond;   // [B] self-conditioning coin
  std::vector<std::int32_t> block;       // [B] selected block
  std::int64_t diffusion_tokens = 0;     // sum of loss_mask: this micro-batch's share of N_diff
  std::int64_t noised_tokens = 0;        // sum of noised
};

NoisedCanvas noise_canvas(const NoiseInput& in, std::int64_t step, const NoiseOptions& options);

// The per-example draws alone (used by noise_canvas; exposed for tests and logs).
double noise_level(const NoiseOptions& options, std::int64_t step, std::int64_t sample_index);
bool self_cond_coin(const NoiseOptions& options, std::int64_t step, std::int64_t sample_index);
int choose_block(const NoiseOptions& options, std::int64_t step, std::int64_t sample_index, int canvas_len);

}  // namespace dg
