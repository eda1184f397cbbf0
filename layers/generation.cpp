#include "layers/generation.h"

#include <algorithm>

#include "layers/ops.h"
#include "layers/random.h"

namespace dg {

void GenerationConfig::validate() const {
  if (max_new_tokens <= 0) fail_config("generation: max_new_tokens must be positive, got {}", max_new_tokens);
  if (max_length < 0) fail_config("generation: max_length must be positive, got {}", max_length);
  if (max_denoising_steps <= 0)
    fail_config("generation: max_denoising_steps must be positive, got {}", max_denoising_steps);
  if (!(entropy_bound > 0)) fail_config("generation: entropy_bound must be > 0, got {}", entropy_bound);
  if (!(t_min >= 0 && t_max > t_min)) fail_config("generation: need t_max > t_min >= 0, got t_min {} t_max {}", t_min, t_max);
  if (stability_threshold < 0) fail_config("generation: stability_threshold must be >= 0, got {}", stability_threshold);
  if (!(confidence_threshold > 0))
    fail_config("generation: confidence_threshold must be > 0, got {}", confidence_threshold);
  if (vocab_chunk <= 0) fail_config("generation: vocab_chunk must be positive");
  if (pad_token_id < -1) fail_config("generation: pad_token_id must be >= 0 (or -1: unset), got {}", pad_token_id);
}

float step_temperature(const GenerationConfig& g, std::int64_t remaining) {
  const double fraction = static_cast<double>(remaining) / static_cast<double>(g.max_denoising_steps);
  return static_cast<float>(g.t_min + (g.t_max - g.t_min) * fraction);
}

int request_max_new_tokens(const GenerationConfig& g, const GenerationRequest& req) {
  const int max_new = req.max_new_tokens > 0 ? req.max_new_tokens : g.max_new_tokens;
  if (g.max_length > 0 && max_new == 256) return g.max_length - static_cast<int>(req.prompt.size());
  return max_new;
}

namespace {

bool is_eos(const GenerationConfig& g, std::int32_t id) {
  return std::find(g.eos_token_ids.begin(), g.eos_token_ids.end(), id) != g.eos_token_ids.end();
}

}  // namespace

std::vector<bool> entropy_bound_accept(const float* entropy, std::int64_t C, double gamma) {
  // The op on host memory (the views are not device-resident: this is the host reference).
  const Tensor e = Tensor::view_of(const_cast<float*>(entropy), {1, C}, DType::F32);
  Tensor acc = Tensor::host_empty({1, C}, DType::I32);
  entropy_bound_accept_rows(e, gamma, acc);
  std::vector<bool> accepted(static_cast<std::size_t>(C));
  for (std::int64_t j = 0; j < C; ++j) accepted[static_cast<std::size_t>(j)] = acc.data<std::int32_t>()[j] != 0;
  return accepted;
}

namespace {

// A host-built staging tensor (a function of the requests, the seed and the step) uploaded to the
// model's device: in strict-device mode the copy made inside the model path is device-resident.
template <class T, class F>
Tensor upload(Device dev, Shape shape, DType dtype, F&& value) {
  Tensor h = Tensor::host_empty(std::move(shape), dtype);
  T* p = h.data<T>();
  for (std::int64_t i = 0; i < h.numel(); ++i) p[i] = value(i);
  return h.to(dev);
}

template <class T>
std::vector<T> host_values(const Tensor& t) {
  const Tensor h = read_to_host(t, "trace");
  return std::vector<T>(h.data<T>(), h.data<T>() + h.numel());
}

}  // namespace

// Host <-> device traffic of a batch (DESIGN.md "Runtime"): the prompts, the random canvases, the
// uniforms and renoise tokens of every step (functions of the seed, the step and the request) and the
// committed canvases after EOS handling go up; two named reads come back: the stop flags of every step
// ("stop_flags", B i32: the lock-step loop ends when every row has stopped) and the argmax canvas of
// every canvas ("canvas", B·C i32: the committed tokens, EOS handling and the results).
std::vector<GenerationResult> generate(const ModelConfig& c, const ModelWeights& w,
                                       const std::vector<GenerationRequest>& requests, const GenerationConfig& g,
                                       const GenerationProgress& progress, const DenoisingTrace& trace) {
  g.validate();
  const std::int64_t B = static_cast<std::int64_t>(requests.size()), C = c.canvas_length, H = c.hidden_size;
  const std::int64_t V = c.vocab_size, N = g.max_denoising_steps, M = g.stability_threshold;
  std::vector<GenerationResult> results(static_cast<std::size_t>(B));
  if (B == 0) return results;
  const Device dev = w.embed_tokens.device();
  auto sample_index = [&](std::int64_t b) { return requests[static_cast<std::size_t>(b)].sample_index; };

  // Left-pad the prompts to one length; shift positions so padding does not move a row's positions.
  std::int64_t L = 0;
  for (const auto& r : requests) {
    if (r.prompt.empty()) fail_config("generation: request {} has an empty prompt", r.sample_index);
    L = std::max<std::int64_t>(L, static_cast<std::int64_t>(r.prompt.size()));
  }
  std::vector<std::int64_t> pad(static_cast<std::size_t>(B));
  std::vector<int> canvases_allowed(static_cast<std::size_t>(B));
  for (std::int64_t b = 0; b < B; ++b) {
    const auto& req = requests[static_cast<std::size_t>(b)];
    pad[static_cast<std::size_t>(b)] = L - static_cast<std::int64_t>(req.prompt.size());
    for (std::size_t t = 0; t < req.prompt.size(); ++t)  // checked here: the device copy is not read back
      if (req.prompt[t] < 0 || req.prompt[t] >= V)
        fail("encode: token id {} at row {}, position {} is outside the vocabulary [0, {})", req.prompt[t], b,
             pad[static_cast<std::size_t>(b)] + static_cast<std::int64_t>(t), V);
    const int max_new = std::max(0, request_max_new_tokens(g, req));
    canvases_allowed[static_cast<std::size_t>(b)] = static_cast<int>((max_new + C - 1) / C);
  }
  // What fills prompt padding and the canvases re-encoded after EOS (masked or never read: any id does).
  const std::int32_t filler = static_cast<std::int32_t>(std::max(0, g.pad_token_id));
  auto prompt_at = [&](std::int64_t i, bool want_valid) -> std::int32_t {
    const std::int64_t b = i / L, t = i % L, p = pad[static_cast<std::size_t>(b)];
    if (t < p) return want_valid ? 0 : filler;
    return want_valid ? 1 : requests[static_cast<std::size_t>(b)].prompt[static_cast<std::size_t>(t - p)];
  };
  const Tensor ids = upload<std::int32_t>(dev, {B, L}, DType::I32, [&](std::int64_t i) { return prompt_at(i, false); });
  const Tensor valid = upload<std::int32_t>(dev, {B, L}, DType::I32, [&](std::int64_t i) { return prompt_at(i, true); });
  KVCache cache;
  cache.row_offset = upload<std::int32_t>(dev, {B}, DType::I32, [&](std::int64_t b) {
    return static_cast<std::int32_t>(-pad[static_cast<std::size_t>(b)]);
  });
  const int n_canvases = *std::max_element(canvases_allowed.begin(), canvases_allowed.end());
  encode(c, w, ids, valid, cache);

  const float scale = embed_scale(H, w.embed_tokens.dtype());
  const LmHeadOpts head{static_cast<float>(c.final_logit_softcapping), g.vocab_chunk};
  std::vector<bool> finished(static_cast<std::size_t>(B), false);
  for (std::size_t b = 0; b < finished.size(); ++b)  // no room for a canvas (max_length below the prompt)
    if (canvases_allowed[b] == 0) finished[b] = true, results[b].finish_reason = "length";
  std::int64_t passes_total = 0;
  std::vector<std::int32_t> committed(static_cast<std::size_t>(B * C));  // the last committed canvas (host)
  // Uniform tokens in [0, V) keyed by (purpose, step, request, position), row-major [B, C].
  auto random_tokens = [&](rng::Purpose purpose, std::uint64_t step) {
    return upload<std::int32_t>(dev, {B, C}, DType::I32, [&](std::int64_t i) {
      return static_cast<std::int32_t>(rng::below(
          rng::key(g.seed, purpose, step, sample_index(i / C), static_cast<std::uint64_t>(i % C)),
          static_cast<std::uint32_t>(V)));
    });
  };

  for (int ci = 0; ci < n_canvases; ++ci) {
    if (ci > 0) {  // re-encode the last committed canvas
      const Tensor last = upload<std::int32_t>(dev, {B, C}, DType::I32,
                                               [&](std::int64_t i) { return committed[static_cast<std::size_t>(i)]; });
      encode(c, w, last, Tensor(), cache);
    }
    Tensor x = random_tokens(rng::Purpose::CanvasInit, static_cast<std::uint64_t>(ci));
    Tensor amax = x.clone();
    Tensor soft;  // self-conditioning input, reset for every canvas
    std::vector<bool> done(static_cast<std::size_t>(B), false);  // host copy of done_dev after each step
    Tensor done_dev = Tensor::zeros({B}, DType::I32, dev);
    // Stability history: the last M argmax canvases per row (initialised to -1: never equal).
    Tensor history = Tensor::empty({B, M, C}, DType::I32, dev);
    fill_(history, -1);

    for (std::int64_t s = N; s >= 1; --s) {
      const std::uint64_t step = static_cast<std::uint64_t>(ci) * static_cast<std::uint64_t>(N) +
                                 static_cast<std::uint64_t>(N - s);
      for (std::int64_t b = 0; b < B; ++b)
        if (!done[static_cast<std::size_t>(b)] && !finished[static_cast<std::size_t>(b)])
          ++results[static_cast<std::size_t>(b)].denoising_steps;
      DenoisingStepTrace st;
      if (trace) {
        st.canvas = ci;
        st.remaining = s;
        for (std::int64_t b = 0; b < B; ++b)
          st.active.push_back(!done[static_cast<std::size_t>(b)] && !finished[static_cast<std::size_t>(b)]);
        st.x = host_values<std::int32_t>(x);
      }
      const Tensor hidden = decode_soft(c, w, x, soft, cache).reshape({B * C, H});
      const float temperature = step_temperature(g, s);
      Tensor entropy = Tensor::empty({B * C}, DType::F32, dev), step_amax = Tensor::empty({B * C}, DType::I32, dev),
             sampled = Tensor::empty({B * C}, DType::I32, dev), next_soft = Tensor::empty({B * C, H}, DType::F32, dev);
      const Tensor uniforms = upload<float>(dev, {B * C}, DType::F32, [&](std::int64_t i) {
        return rng::uniform(rng::key(g.seed, rng::Purpose::Sample, step, sample_index(i / C), static_cast<std::uint64_t>(i % C)));
      });
      // One vocabulary pass: entropy, argmax, the categorical sample and the self-conditioning input.
      lm_head_sampler(hidden, w.embed_tokens, temperature, scale, uniforms, entropy, step_amax, sampled, next_soft,
                      head);

      // Frozen rows keep x, argmax and the self-conditioning input (a device copy per frozen row).
      if (soft.defined())
        for (std::int64_t b = 0; b < B; ++b)
          if (done[static_cast<std::size_t>(b)])
            next_soft.rows(b * C, (b + 1) * C).copy_from(soft.reshape({B * C, H}).rows(b * C, (b + 1) * C));
      Tensor accepted = Tensor::empty({B, C}, DType::I32, dev);
      entropy_bound_accept_rows(entropy.reshape({B, C}), g.entropy_bound, accepted);
      const Tensor renoise = random_tokens(rng::Purpose::Renoise, step);
      Tensor amax2 = amax.reshape({B, C});
      denoise_update(x, amax2, history, done_dev, accepted, sampled.reshape({B, C}), renoise, step_amax.reshape({B, C}),
                     entropy.reshape({B, C}), g.confidence_threshold);
      const Tensor flags = read_to_host(done_dev, "stop_flags");
      for (std::int64_t b = 0; b < B; ++b) done[static_cast<std::size_t>(b)] = flags.data<std::int32_t>()[b] != 0;
      if (trace) {
        st.entropy = host_values<float>(entropy);
        st.argmax = host_values<std::int32_t>(step_amax);
        st.sampled = host_values<std::int32_t>(sampled);
        st.accepted = host_values<std::int32_t>(accepted);
        st.stopped.assign(done.begin(), done.end());
        trace(st);
      }

      soft = next_soft.reshape({B, C, H});
      passes_total += B;
      if (progress) progress(passes_total);
      bool all = true;
      for (std::int64_t b = 0; b < B; ++b) all = all && (done[static_cast<std::size_t>(b)] || finished[static_cast<std::size_t>(b)]);
      if (all) break;
    }

    // Commit the argmax canvas; EOS and pad handling (model.md §7.7), on the host copy.
    const Tensor canvas = read_to_host(amax, "canvas");
    const std::int32_t* top = canvas.data<std::int32_t>();
    for (std::int64_t b = 0; b < B; ++b) {
      const std::size_t bs = static_cast<std::size_t>(b);
      std::int32_t* out = committed.data() + b * C;
      std::copy_n(top + b * C, C, out);
      GenerationResult& r = results[bs];
      if (finished[bs]) {
        std::fill(out, out + C, filler);
        continue;
      }
      ++r.canvases;
      bool eos = false;
      for (std::int64_t j = 0; j < C; ++j) {
        if (eos) {
          out[j] = filler;
          continue;
        }
        r.tokens.push_back(out[j]);
        if (out[j] != g.pad_token_id) ++r.completion_tokens;  // with pad unset (-1), every token counts
        eos = is_eos(g, out[j]);
      }
      if (eos) {
        finished[bs] = true;
        r.finish_reason = "stop";
      } else if (r.canvases >= canvases_allowed[bs]) {
        finished[bs] = true;
        r.finish_reason = "length";
      }
    }
    if (std::all_of(finished.begin(), finished.end(), [](bool f) { return f; })) break;
  }
  for (GenerationResult& r : results) {
    if (r.finish_reason.empty()) r.finish_reason = "length";
    r.tokens_per_forward = r.denoising_steps ? static_cast<double>(r.completion_tokens) / static_cast<double>(r.denoising_steps) : 0.0;
  }
  return results;
}

}  // namespace dg
