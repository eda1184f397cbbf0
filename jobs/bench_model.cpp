// `dgemma bench --what model`: the model's own passes, timed in-process on the CPU for one model config
// (--preset, tiny unless given, or --model-config FILE|DIR: a Hugging Face directory's weights are loaded
// when it holds them, otherwise the model is randomly initialised as `dgemma init` does):
//
//   encoder forward   encode() of a [batch, prompt-len] prompt batch into a fresh KV cache
//   decoder forward   decode() of one [batch, canvas] canvas over that cache (no self-conditioning input)
//   generation step   one denoising step of generate() (decoder, the sampler's vocabulary pass, entropy-bound
//                     acceptance, renoise, stop flags), as `dgemma generate` runs it (batch-invariant GEMMs,
//                     constant weights packed once: layers/gemm_weights.h):
//                     the time between two of generate()'s per-step progress calls; the stopping rule is
//                     set so that no row stops, so every interval is a full step of the whole batch
//   sft step          one `dgemma sft` optimizer step of one micro-batch of [batch, prompt-len + canvas]
//                     tokens (the canvas is one block; self-conditioning pass 1 on every row): zero grads,
//                     forward + hand-written backward on a 1-rank FSDP schedule (as sft on one rank),
//                     global grad norm, clip, AdamW
//
// Each runs once to warm up and then --iters times; the table gives the min and the median. Every rank
// benchmarks alone (a 1-rank communicator); rank 0 prints. scripts/bench_vs_hf.py runs this next to the
// Hugging Face PyTorch implementation at the same shapes.
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>

#include "io/hf_config.h"
#include "io/hf_model.h"
#include "io/presets.h"
#include "jobs/jobs.h"
#include "jobs/log.h"
#include "jobs/model_load.h"
#include "layers/gemm_weights.h"
#include "layers/generation.h"
#include "layers/init.h"
#include "layers/ops.h"
#include "layers/train.h"
#include "optim/adamw.h"
#include "parallel/fsdp.h"
#include "parallel/mesh.h"
#include "parallel/plan.h"

namespace dg {

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

struct Timing {
  std::string name, shape;
  std::vector<double> seconds;  // one per timed run
  double tokens = 0;            // tokens one run processes (for the rate)

  double min() const { return *std::min_element(seconds.begin(), seconds.end()); }
  double median() const {
    std::vector<double> s = seconds;
    std::sort(s.begin(), s.end());
    const std::size_t n = s.size();
    return n % 2 ? s[n / 2] : 0.5 * (s[n / 2 - 1] + s[n / 2]);
  }
};

// One warm-up call, then `iters` timed ones.
template <class F>
std::vector<double> time_runs(int iters, F&& f) {
  f();
  std::vector<double> s;
  for (int i = 0; i < iters; ++i) {
    const auto t0 = Clock::now();
    f();
    s.push_back(since(t0));
  }
  return s;
}

struct BenchModel {
  ModelConfig c;
  ModelWeights w;
  std::string where;
};

bool has_weights(const fs::path& dir) {
  return fs::exists(dir / "model.safetensors") || fs::exists(dir / "model.safetensors.index.json");
}

// --model-config DIR with weights: loaded; a config file, a directory without weights or a preset: the
// random initialisation of `dgemma init` (N(0, 0.02), norms and scales 1; seed 0).
BenchModel load_bench_model(const po::variables_map& vm) {
  BenchModel m;
  nlohmann::json j;
  if (vm.count("model-config")) {
    fs::path p = vm["model-config"].as<std::string>();
    if (fs::is_directory(p) && has_weights(p)) {
      HfModel hf = load_hf_model(p.string());
      return {hf.config, std::move(hf.weights), p.string() + " (its weights)"};
    }
    if (fs::is_directory(p)) p /= "config.json";
    j = read_json_file(p.string());
    m.where = p.string() + " (random weights)";
  } else {
    // The fsdp/ep default (the 26B preset) does not fit a CPU benchmark: model defaults to tiny.
    const std::string preset = vm["preset"].defaulted() ? "tiny" : vm["preset"].as<std::string>();
    j = preset_config(preset);
    m.where = "preset " + preset + " (random weights)";
  }
  m.c = parse_model_config(j, m.where);
  m.w = allocate_model(m.c);
  std::uint64_t index = 0;
  for (const ParamSpec& p : model_params(m.c)) {
    Tensor t = p.get(m.w);
    init_parameter(p.name, /*seed=*/0, index++, 0.02f, 0, t.numel(), t.data<float>());
  }
  return m;
}

std::vector<std::int32_t> random_ids(std::int64_t n, int vocab, std::mt19937& rng) {
  std::uniform_int_distribution<std::int32_t> pick(3, vocab - 1);  // no pad / eos / bos
  std::vector<std::int32_t> v(static_cast<std::size_t>(n));
  for (auto& x : v) x = pick(rng);
  return v;
}

// One micro-batch of the SFT step: B rows of a prompt of L tokens and one canvas block of C tokens,
// every position valid; the canvas is noised uniformly, the diffusion loss covers the whole block.
SftBatch sft_batch(const ModelConfig& c, std::int64_t B, std::int64_t L, std::mt19937& rng) {
  const std::int64_t C = c.canvas_length, S = L + C;
  const std::vector<std::int32_t> clean = random_ids(B * S, c.vocab_size, rng);
  std::vector<std::int32_t> targets;
  for (std::int64_t b = 0; b < B; ++b)
    targets.insert(targets.end(), clean.begin() + b * S + L, clean.begin() + (b + 1) * S);
  SftBatch batch;
  batch.clean = Tensor::from_i32({B, S}, clean);
  batch.canvas = Tensor::from_i32({B, C}, random_ids(B * C, c.vocab_size, rng));
  batch.prompt_len.assign(static_cast<std::size_t>(B), L);
  batch.canvas_len.assign(static_cast<std::size_t>(B), C);
  batch.diff_targets = Tensor::from_i32({B, C}, targets);
  batch.diff_mask = Tensor::from({B, C}, std::vector<float>(static_cast<std::size_t>(B * C), 1.0f));
  batch.ar_targets = Tensor::empty({B, S}, DType::I32);
  batch.ar_mask = Tensor::empty({B, S}, DType::F32);
  sft_ar_targets(batch.clean, Tensor(), batch.ar_targets, batch.ar_mask);
  batch.sc_coin.assign(static_cast<std::size_t>(B), 1);
  batch.n_diff = static_cast<double>(B * C);
  batch.n_ar = static_cast<double>(B * (S - 1));
  return batch;
}

// The timed body of sft.cpp's step loop for one micro-batch on one rank.
std::vector<double> time_sft_step(JobContext& ctx, const BenchModel& m, const SftBatch& batch, int iters) {
  const ModelConfig& c = m.c;
  std::unique_ptr<Comm> self = ctx.rt.world->split(ctx.rt.rank, 0);
  Mesh mesh = make_mesh(*self, 1, c.num_experts, 0);
  FsdpModel model(c, diffusion_gemma_plan(c, ParallelPlanOptions{}, sft_trainable), mesh);
  std::map<std::string, Tensor> by_name;
  for (const NamedTensor& t : model_tensors(c, m.w)) by_name.emplace(t.name, t.tensor);
  model.load([&](const std::string& name, const Shape&, std::int64_t b, std::int64_t e, float* dst) {
    const float* src = by_name.at(name).data<float>();
    std::copy(src + b, src + e, dst);
  });
  const TrainParallel par{&model, nullptr, false};
  const AdamWOptions adam;
  std::int64_t step = 0;
  return time_runs(iters, [&] {
    model.zero_grad();
    sft_forward_backward(c, model.weights(), batch, model.grads(), SftLossScale{}, par);
    const double clip = clip_coefficient(global_grad_norm(*mesh.world, model), adam.max_grad_norm);
    ++step;
    for (const auto& unit : model.units()) {
      std::vector<AdamWSlice> slices;
      for (const OwnedSlice& o : unit->owned())
        if (o.trainable) slices.push_back({o.master, o.exp_avg, o.exp_avg_sq, o.grad, true});
      adamw_update(slices, adam, 1e-4, clip, step);
    }
  });
}

// One generate() call of `iters` + 1 denoising steps over one canvas: the intervals between its progress
// calls after the first (which also holds the prompt's encoder pass) are whole denoising steps.
std::vector<double> time_generation_step(const BenchModel& m, const std::vector<std::int32_t>& prompts, std::int64_t B,
                                         std::int64_t L, int iters) {
  GenerationConfig g;
  g.max_new_tokens = m.c.canvas_length;
  g.max_denoising_steps = iters + 1;
  g.confidence_threshold = 1e-30;  // (> 0 is required) no row is ever confident enough to stop early
  g.eos_token_ids = m.c.eos_token_ids;
  g.pad_token_id = m.c.pad_token_id;
  std::vector<GenerationRequest> reqs;
  for (std::int64_t b = 0; b < B; ++b)
    reqs.push_back({{prompts.begin() + b * L, prompts.begin() + (b + 1) * L}, static_cast<std::uint64_t>(b), -1});
  const bool was_invariant = batch_invariant();
  set_batch_invariant(true);  // `dgemma generate`'s default
  std::vector<Tensor> weights;  // and, as there, the weights packed once (their first use is the untimed step)
  for (const NamedTensor& t : model_tensors(m.c, m.w)) weights.push_back(t.tensor);
  const ConstantWeights packed_weights(weights);
  std::vector<double> steps;
  Clock::time_point last{};
  generate(m.c, m.w, reqs, g, [&](std::int64_t) {
    if (last != Clock::time_point{}) steps.push_back(since(last));
    last = Clock::now();
  });
  set_batch_invariant(was_invariant);
  if (static_cast<int>(steps.size()) != iters)
    fail("bench: generation ran {} timed denoising steps instead of {} (a row stopped early)", steps.size(), iters);
  return steps;
}

void write_json(const std::string& path, const std::vector<Timing>& rows, const BenchModel& m, std::int64_t params) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp);
    if (!f) fail("cannot write {}", tmp);
    for (const Timing& t : rows)
      f << nlohmann::json{{"benchmark", t.name},   {"shape", t.shape},          {"model", m.where},
                          {"parameters", params},  {"iters", t.seconds.size()}, {"min_s", t.min()},
                          {"median_s", t.median()}, {"seconds", t.seconds},      {"tokens", t.tokens}}
               .dump()
        << '\n';
    if (!f.flush()) fail("error writing {}", tmp);
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) fail("cannot rename {} to {}", tmp, path);
  log::info("results written to {}", path);
}

}  // namespace

int bench_model_run(JobContext& ctx) {
  const auto& vm = ctx.vm;
  const int iters = vm["iters"].as<int>();
  const std::int64_t B = vm["batch"].as<int>(), L = vm["prompt-len"].as<int>();
  if (B <= 0 || L <= 0) fail_config("bench: --batch and --prompt-len must be positive");
  const BenchModel m = load_bench_model(vm);
  const ModelConfig& c = m.c;
  const std::int64_t C = c.canvas_length;
  std::int64_t params = 0;
  for (const ParamSpec& p : model_params(c)) params += shape_numel(p.shape);
  log::info("bench model: {}: {}, {:.1f} M parameters (f32, CPU)", m.where, c.summary(), double(params) / 1e6);
  log::info("bench model: batch {}, prompt {} tokens, canvas {}; {} timed runs each after one warm-up; {} CPU threads",
            B, L, C, iters, cpu_threads());

  std::mt19937 rng(1234);
  const std::vector<std::int32_t> prompt_ids = random_ids(B * L, c.vocab_size, rng);
  const Tensor prompts = Tensor::from_i32({B, L}, prompt_ids);
  const Tensor canvas = Tensor::from_i32({B, C}, random_ids(B * C, c.vocab_size, rng));
  std::vector<Timing> rows;
  rows.push_back({"encoder forward", fmt::format("{}x{} prompt", B, L), time_runs(iters, [&] {
                    KVCache cache;
                    encode(c, m.w, prompts, Tensor(), cache);
                  }), double(B * L)});
  KVCache cache;
  encode(c, m.w, prompts, Tensor(), cache);
  rows.push_back({"decoder forward", fmt::format("{}x{} canvas", B, C),
                  time_runs(iters, [&] { decode(c, m.w, canvas, Tensor(), cache); }), double(B * C)});
  rows.push_back({"generation step", fmt::format("{}x{} canvas + sampler", B, C),
                  time_generation_step(m, prompt_ids, B, L, iters), double(B * C)});
  rows.push_back({"sft step", fmt::format("{}x({}+{}) fwd+bwd+AdamW", B, L, C),
                  time_sft_step(ctx, m, sft_batch(c, B, L, rng), iters), double(B * (L + C))});

  log::info("");
  log::info("{:<18} {:<28} {:>12} {:>12} {:>14}", "benchmark", "shape", "min", "median", "tokens/s (min)");
  for (const Timing& t : rows)
    log::info("{:<18} {:<28} {:>9.3f} ms {:>9.3f} ms {:>14.0f}", t.name, t.shape, t.min() * 1e3, t.median() * 1e3,
              t.tokens / t.min());
  if (vm.count("json") && ctx.rt.rank == 0) write_json(vm["json"].as<std::string>(), rows, m, params);
  return 0;
}

}  // namespace dg
