// Block-diffusion generation (spec/model.md §7): the outer block-autoregressive loop over canvases, the
// denoising steps with the linear temperature schedule, the entropy-bound sampler, renoising, the
// stable-and-confident stopping rule, self-conditioning on the temperature-scaled logits, committing
// the argmax canvas and re-encoding it, EOS and pad handling, and the metrics.
//
// A batch runs in lock-step: prompts are left-padded to one length (positions shifted per row so that
// every row computes what it would compute alone), rows that stop denoising are frozen, finished rows
// get pad canvases. All randomness is keyed by (seed, purpose, step, request.sample_index, position)
// (layers/random.h), so a request's output does not depend on its batch mates or on the rank it ran
// on. Logits are never held as [B, C, V]: statistics, samples and the self-conditioning input are
// computed from the hidden states in vocabulary chunks.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "layers/model.h"

namespace dg {

struct GenerationConfig {
  int max_new_tokens = 256;         // rounded UP to whole canvases (the reference never truncates)
  int max_length = 0;               // 0: unset; else, while max_new_tokens is 256: max_length - prompt length
  int max_denoising_steps = 48;
  double entropy_bound = 0.1;       // EntropyBoundSampler gamma
  double t_min = 0.4, t_max = 0.8;  // temperature schedule: t_min + (t_max - t_min) * s / N, s = N ... 1
  int stability_threshold = 1;      // argmax canvases that must agree (0: always stable)
  double confidence_threshold = 0.005;
  std::vector<int> eos_token_ids{1};  // empty: no EOS stops (the reference without an eos_token_id)
  int pad_token_id = -1;             // -1: unset (the reference's None): no generated token counts as pad
  std::uint64_t seed = 0;
  std::int64_t vocab_chunk = 16384;

  void validate() const;  // ConfigError naming the field, the rules of model.md §7.1
};

// The temperature of the denoising step with `remaining` steps left (N ... 1), in the reference's order of
// operations: t_min + (t_max - t_min) * (remaining / N) in double, then rounded to the fp32 the logits are
// divided by.
float step_temperature(const GenerationConfig& g, std::int64_t remaining);

struct GenerationRequest {
  std::vector<std::int32_t> prompt;  // token ids (chat template already applied)
  std::uint64_t sample_index = 0;    // global index of the request: keys its random numbers
  int max_new_tokens = -1;           // per-request override (-1: the config's)
};

// The tokens a request may generate, by the reference's rule: its own max_new_tokens, else the config's;
// when that is the default 256 and max_length is set, max_length - the prompt's length (the reference
// takes the batch's padded length; here each request is its own batch, so results stay batch-invariant).
// Zero or less: no canvas.
int request_max_new_tokens(const GenerationConfig& g, const GenerationRequest& req);

struct GenerationResult {
  std::vector<std::int32_t> tokens;  // generated tokens, through the first EOS (pads dropped)
  std::int64_t completion_tokens = 0;  // generated tokens that are not pad (the reference's count)
  int canvases = 0;                  // canvases emitted for this request
  std::int64_t denoising_steps = 0;  // decoder passes during which the row was active
  double tokens_per_forward = 0;     // completion_tokens / denoising_steps
  std::string finish_reason;         // "stop" (an EOS was generated) or "length"
};

// The entropy-bound acceptance of one canvas row (model.md §7.4): positions sorted by entropy; a
// position is accepted when the sum of the entropies before it in that order is <= gamma (computed as
// inclusive prefix - own, in fp32, as the reference). The lowest-entropy position is always accepted.
std::vector<bool> entropy_bound_accept(const float* entropy, std::int64_t n, double gamma);

// Progress hook, called after each denoising step with the number of decoder passes so far.
using GenerationProgress = std::function<void(std::int64_t decoder_passes)>;

// One denoising step of a batch, for replaying a reference trajectory (tests/test_generation_replay.cpp).
// Rows are the requests in order, positions row-major [B, C]. Built only when a trace hook is given: it
// costs host reads (named "trace") that the untraced loop does not make.
struct DenoisingStepTrace {
  int canvas = 0;                // canvas index
  std::int64_t remaining = 0;    // s: N ... 1
  std::vector<bool> active;      // [B] rows that took part: not stopped denoising, not finished by EOS
  std::vector<std::int32_t> x;   // [B*C] the canvas fed to the decoder
  std::vector<float> entropy;    // [B*C] entropy of the processed (softcapped, temperature-scaled) logits
  std::vector<std::int32_t> argmax, sampled, accepted;  // [B*C] (accepted: 0/1)
  std::vector<bool> stopped;     // [B] the stable-and-confident decision after the step
};
using DenoisingTrace = std::function<void(const DenoisingStepTrace&)>;

std::vector<GenerationResult> generate(const ModelConfig& c, const ModelWeights& w,
                                       const std::vector<GenerationRequest>& requests, const GenerationConfig& g,
                                       const GenerationProgress& progress = nullptr,
                                       const DenoisingTrace& trace = nullptr);

}  // namespace dg
