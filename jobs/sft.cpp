// `dgemma sft`: block-diffusion supervised fine-tuning (spec/training.md), read top to bottom:
//   setup      model (an HF directory, or the built-in tiny preset), tokenizer, dataset, cursor,
//              optimizer state (flat fp32 masters + moments, sharded over the ranks), resume
//   each step  global batch from the cursor -> per micro-batch: layout, noise, global normalisers ->
//              forward + hand-written backward (layers/train.h) -> reduce-scatter, clip, AdamW,
//              all-gather -> log line + metrics JSONL -> checkpoint every N steps
//   stop       SIGUSR1/SIGTERM agreed at a step boundary: checkpoint and exit 42 (requeue, --resume)
//   end        final checkpoint and a Hugging Face export of the trained weights
// Resuming from a checkpoint on the same mesh reproduces the losses bit for bit on the CPU backend:
// all randomness is keyed by (seed, step, sample index), the cursor and the optimizer state are saved.
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <sstream>

#include "jobs/exit_codes.h"
#include "jobs/log.h"
#include "io/atomic_file.h"
#include "io/builtin.h"
#include "io/checkpoint.h"
#include "io/hf_config.h"
#include "io/hf_model.h"
#include "io/hf_writer.h"
#include "io/presets.h"
#include "io/safetensors.h"
#include "io/sft_data.h"
#include "jobs/carried.h"
#include "jobs/device_choice.h"
#include "jobs/export.h"
#include "jobs/checkpoint_group.h"
#include "jobs/jobs.h"
#include "layers/init.h"
#include "layers/noise.h"
#include "layers/train.h"
#include "optim/adamw.h"
#include "optim/schedule.h"
#include "parallel/expert_parallel.h"
#include "parallel/fsdp.h"
#include "parallel/mesh.h"
#include "parallel/plan.h"

namespace dg {

namespace fs = std::filesystem;
using nlohmann::json;

void sft_options(po::options_description& d) {
  add_device_option(d);
  add_threads_option(d);
  d.add_options()
      ("model", po::value<std::string>()->value_name("DIR"), "HF model directory to fine-tune (default: the built-in tiny preset)")
      ("preset", po::value<std::string>()->default_value("tiny"), "random model when --model is not given")
      ("data", po::value<std::string>()->value_name("FILE"), "JSONL chat examples (default: the built-in tiny task, jobs/examples/tiny-task/train.jsonl)")
      ("on-data-error", po::value<std::string>()->default_value("skip"), "a bad data line: skip (reported) or fail")
      ("truncation", po::value<std::string>()->default_value("right"), "examples longer than --seq-len: right (cut, as the recipe) or drop")
      ("out", po::value<std::string>()->default_value("sft-run"), "run directory: checkpoints/, metrics.jsonl, hf-final/")
      ("steps", po::value<int>()->default_value(600), "optimizer steps")
      ("micro-batch", po::value<int>()->default_value(16), "examples per micro-batch per rank")
      ("accumulation", po::value<int>()->default_value(1), "micro-batches per step")
      ("seq-len", po::value<int>()->default_value(256), "max tokens per example (prompt + response + EOS fill)")
      ("lr", po::value<double>()->default_value(3e-3, "3e-3"), "peak learning rate")
      ("min-lr", po::value<double>()->default_value(3e-4, "3e-4"), "final learning rate of the cosine decay")
      ("warmup", po::value<int>()->default_value(20), "linear warmup steps")
      ("weight-decay", po::value<double>()->default_value(1e-4, "1e-4"), "AdamW weight decay")
      ("beta1", po::value<double>()->default_value(0.95, "0.95"), "AdamW beta1")
      ("beta2", po::value<double>()->default_value(0.99, "0.99"), "AdamW beta2")
      ("adam-eps", po::value<double>()->default_value(1e-8, "1e-8"), "AdamW epsilon")
      ("grad-clip", po::value<double>()->default_value(1.0, "1.0"), "global gradient-norm clip")
      ("ar-weight", po::value<double>()->default_value(1.0, "1.0"), "weight of the encoder AR loss")
      ("seed", po::value<std::uint64_t>()->default_value(42), "seed of data order, noise and init")
      ("ep", po::value<int>()->default_value(1), "expert-parallel size: ranks that split the experts (divides the world size and the number of experts; inside a node)")
      ("recompute", po::value<bool>()->default_value(false), "activation recompute: keep only each layer's input in the forward and recompute the layer before its backward (less memory, about one more forward of compute)")
      ("reshard-after-forward", po::value<bool>()->default_value(true), "free each layer's gathered parameters after its forward (false: keep them until its backward; more memory, fewer all-gathers)")
      ("checkpoint-every", po::value<int>()->default_value(200), "steps between checkpoints (0: only at the end)")
      ("resume", po::bool_switch(), "continue from OUT/checkpoints/latest")
      ("export", po::value<bool>()->default_value(true), "write OUT/hf-final at the end")
      ("export-dtype", po::value<std::string>()->default_value("bf16"), "dtype of the exported weights: bf16 or f32")
      ("dump-batches", po::value<std::string>()->value_name("DIR"), "write every micro-batch drawn (ids, canvas, masks, coins, normalisers) as DIR/step_SSSSS_mbMM_rankRRRRR.safetensors (for reference checks)")
      ("stop-after", po::value<int>()->default_value(0), "testing: behave as if signalled after this many steps");
}

namespace {

using Clock = std::chrono::steady_clock;

struct Run {
  ModelConfig config;
  json config_json, generation_json;
  std::optional<HfTensorReader> hf;    // the input model's tensors (unset: the preset, randomly initialised)
  std::string model_dir;               // the input model; empty: the preset
  std::optional<Tokenizer> tokenizer;  // always set by open_run_model
  std::string tokenizer_dir;  // copied into the export; empty: the built-in tokenizer
};

// The model's configuration and where its weights come from; no weights are read here.
Run open_run_model(const JobContext& ctx) {
  Run r{};
  if (ctx.vm.count("model")) {
    const std::string dir = ctx.vm["model"].as<std::string>();
    if (!fs::is_directory(dir)) fail_config("sft: --model {} is not a Hugging Face model directory", dir);
    r.config_json = read_json_file((fs::path(dir) / "config.json").string());
    r.config = parse_model_config(r.config_json, (fs::path(dir) / "config.json").string());
    const fs::path gen = fs::path(dir) / "generation_config.json";
    r.generation_json = fs::exists(gen) ? read_json_file(gen.string()) : default_generation_config(r.config_json);
    r.hf.emplace(dir, r.config);
    r.model_dir = dir;
    r.tokenizer = Tokenizer::load(dir);
    r.tokenizer_dir = dir;
    return r;
  }
  r.config_json = preset_config(ctx.vm["preset"].as<std::string>());
  r.config = parse_model_config(r.config_json, "preset " + ctx.vm["preset"].as<std::string>());
  r.generation_json = default_generation_config(r.config_json);
  r.tokenizer = builtin_tokenizer();
  return r;
}

// Fills a rank's owned slices of a fresh run: from the HF model, or the preset's random init (keyed by
// (seed, tensor index, element), so every slice is produced alone).
SliceLoader initial_weights(const Run& run, std::uint64_t seed) {
  if (run.hf) return [&run](const std::string& name, const Shape&, std::int64_t b, std::int64_t e, float* dst) { run.hf->read(name, b, e, dst); };
  std::map<std::string, std::uint64_t> index;
  for (const ParamSpec& p : model_params(run.config)) index.emplace(p.name, index.size());
  return [index, seed](const std::string& name, const Shape&, std::int64_t b, std::int64_t e, float* dst) {
    init_parameter(name, seed, index.at(name), 0.02f, b, e - b, dst);
  };
}

// Each rank writes only its slices: the masters of every tensor (frozen ones included: they are the
// model's weights) and the Adam moments of the trainable ones, as flat ranges of the named global tensors,
// so a checkpoint does not depend on the mesh that wrote it; and its share of the carried tensors.
void save_checkpoint(Comm& world, const std::string& dir, std::int64_t step, const Run& run, const FsdpModel& model,
                     const CarriedTensors& carried, const Mesh& mesh, std::int64_t optimizer_step,
                     const SftCursor& cursor, const json& train_section) {
  CheckpointWriterOptions opts;
  opts.overwrite = true;  // a resumed run may save a step again
  CommCheckpointGroup group(world);
  CheckpointWriter w(group, dir, step, opts);
  // A failed write (disk full, I/O error) or read (a carried tensor's source) stops this rank's writing; the
  // writer keeps the error and commit() reports it on every rank together and removes the partial
  // step_N.tmp (exit 1, no hang).
  try {
    for (const auto& unit : model.units())
      for (const OwnedSlice& s : unit->owned()) {
        const Slice slice = Slice::range(s.begin, s.end);
        w.add(checkpoint_key("master", s.name), s.shape, slice, s.master);
        if (!s.trainable) continue;
        w.add(checkpoint_key("exp_avg", s.name), s.shape, slice, s.exp_avg);
        w.add(checkpoint_key("exp_avg_sq", s.name), s.shape, slice, s.exp_avg_sq);
      }
    carried.write(world.rank(), world.size(), w);
  } catch (const std::exception& e) {
    w.record_failure(e.what());
  }
  w.set_section("hf_config", run.config_json);
  w.set_section("hf_generation_config", run.generation_json);
  w.set_section("mesh", mesh.to_json());
  json train = train_section;
  train["step"] = step;
  train["optimizer_step"] = optimizer_step;
  train["cursor"] = cursor.state();
  w.set_section("train", train);
  const std::string done = w.commit();
  log::info("sft: checkpoint {}", done);
}

// Reads this rank's slices of a checkpoint saved on any mesh. Checkpoints of earlier versions keep the
// frozen tensors under "param/" only: those are read from there.
void load_checkpoint(CheckpointReader& r, FsdpModel& model) {
  for (const auto& unit : model.units())
    for (OwnedSlice& s : unit->owned()) {
      const Slice slice = Slice::range(s.begin, s.end);
      const std::string master = checkpoint_key("master", s.name);
      const std::string key = r.has(master) || s.trainable ? master : checkpoint_key("param", s.name);
      r.expect(key, s.shape, DType::F32);
      r.read(key, slice, s.master);
      if (!s.trainable) continue;
      r.read(checkpoint_key("exp_avg", s.name), slice, s.exp_avg);
      r.read(checkpoint_key("exp_avg_sq", s.name), slice, s.exp_avg_sq);
    }
}

// One micro-batch as the model saw it (scripts/sft_reference_check.py replays these in PyTorch).
void dump_batch(const fs::path& dir, std::int64_t step, int mb, int rank, const SftBatch& b, const NoisedCanvas& nz,
                double lr) {
  auto i64 = [](const std::vector<std::int64_t>& v) {
    Tensor t = Tensor::empty({static_cast<std::int64_t>(v.size())}, DType::I64);
    std::copy(v.begin(), v.end(), t.data<std::int64_t>());
    return t;
  };
  std::vector<std::int32_t> coin(b.sc_coin.begin(), b.sc_coin.end()), block(nz.block.begin(), nz.block.end());
  SafetensorsWriteOptions o;
  o.metadata = std::map<std::string, std::string>{{"format", "pt"},
                                                  {"step", std::to_string(step)},
                                                  {"n_diff", fmt::format("{}", b.n_diff)},
                                                  {"n_ar", fmt::format("{}", b.n_ar)},
                                                  {"lr", fmt::format("{}", lr)}};
  save_safetensors((dir / fmt::format("step_{:05d}_mb{:02d}_rank{:05d}.safetensors", step, mb, rank)).string(),
                   std::vector<std::pair<std::string, Tensor>>{{"clean", b.clean}, {"clean_valid", b.clean_valid}, {"canvas", b.canvas},
                    {"prompt_len", i64(b.prompt_len)}, {"canvas_len", i64(b.canvas_len)},
                    {"diff_targets", b.diff_targets}, {"diff_mask", b.diff_mask}, {"ar_targets", b.ar_targets},
                    {"ar_mask", b.ar_mask}, {"sc_coin", Tensor::from_i32({static_cast<std::int64_t>(coin.size())}, coin)},
                    {"block", Tensor::from_i32({static_cast<std::int64_t>(block.size())}, block)}},
                   o);
}

Tensor i32_tensor(Shape s, const std::vector<std::int32_t>& v) { return Tensor::from_i32(std::move(s), v); }
Tensor f32_from_u8(Shape s, const std::vector<std::uint8_t>& v) {
  std::vector<float> f(v.begin(), v.end());
  return Tensor::from(std::move(s), f);
}

}  // namespace

int sft_run(JobContext& ctx) {
  const auto& vm = ctx.vm;
  Comm& world = *ctx.rt.world;
  for (const char* o : {"steps", "micro-batch", "accumulation", "seq-len"})
    if (vm[o].as<int>() <= 0) fail_config("sft: --{} must be positive (got {})", o, vm[o].as<int>());
  const int steps = vm["steps"].as<int>();
  if (vm["warmup"].as<int>() < 0 || vm["warmup"].as<int>() >= steps)
    fail_config("sft: --warmup {} must be in [0, --steps {})", vm["warmup"].as<int>(), steps);
  for (const char* o : {"ar-weight", "lr", "min-lr", "weight-decay", "grad-clip", "adam-eps"}) {
    const double v = vm[o].as<double>();
    if (!std::isfinite(v) || v < 0) fail_config("sft: --{} must be a finite number >= 0 (got {})", o, v);
  }
  for (const char* o : {"checkpoint-every", "stop-after"})
    if (vm[o].as<int>() < 0) fail_config("sft: --{} must be >= 0 (got {})", o, vm[o].as<int>());
  if (const fs::path o = vm["out"].as<std::string>(); fs::exists(o) && !fs::is_directory(o))
    fail_config("sft: --out {} exists and is not a directory (the run directory: checkpoints/, metrics.jsonl, hf-final/)",
                o.string());
  const std::string export_dtype = vm["export-dtype"].as<std::string>();
  if (export_dtype != "bf16" && export_dtype != "f32") fail_config("sft: --export-dtype must be bf16 or f32, not '{}'", export_dtype);
  fs::path dump_dir;
  if (vm.count("dump-batches")) {
    dump_dir = vm["dump-batches"].as<std::string>();
    fs::create_directories(dump_dir);
  }
  const fs::path out = vm["out"].as<std::string>(), ckpt_dir = out / "checkpoints", metrics_path = out / "metrics.jsonl";
  const bool resume = vm["resume"].as<bool>();
  if (!resume && fs::exists(ckpt_dir) && latest_checkpoint_step(ckpt_dir.string()))
    fail_config("{} already holds checkpoints: pass --resume to continue, or choose another --out", ckpt_dir.string());

  const Device device = resolve_device(ctx, "sft", /*cuda_path_ready=*/false);
  resolve_threads(ctx, "sft");
  log::info("sft: device {}", device_name(device));
  Run run = open_run_model(ctx);
  const ModelConfig& c = run.config;
  Mesh mesh = make_mesh(world, vm["ep"].as<int>(), c.num_experts, ctx.rt.node_id);
  log::info("sft: mesh {}", mesh.describe());
  ParallelPlanOptions plan_opts;
  plan_opts.reshard_after_forward = vm["reshard-after-forward"].as<bool>();
  FsdpModel model(c, diffusion_gemma_plan(c, plan_opts, sft_trainable), mesh);
  std::unique_ptr<MeshExpertExchange> exchange;
  if (mesh.ep > 1) exchange = std::make_unique<MeshExpertExchange>(mesh);
  const TrainParallel par{&model, exchange.get(), vm["recompute"].as<bool>()};
  SftDataOptions dopt;
  dopt.max_seq_len = vm["seq-len"].as<int>();
  const std::string on_err = vm["on-data-error"].as<std::string>(), trunc = vm["truncation"].as<std::string>();
  if (on_err != "skip" && on_err != "fail") fail_config("sft: --on-data-error must be skip or fail, not '{}'", on_err);
  if (trunc != "right" && trunc != "drop") fail_config("sft: --truncation must be right or drop, not '{}'", trunc);
  dopt.fail_on_error = on_err == "fail";
  dopt.truncation = trunc == "right" ? SftTruncation::Right : SftTruncation::Drop;
  dopt.canvas_length = c.canvas_length;
  dopt.pad_id = c.pad_token_id;
  dopt.eos_fill_id = run.tokenizer_dir.empty() ? c.eos_token_ids.front() : resolve_eos_fill_id(run.tokenizer_dir, *run.tokenizer);
  SftDataset data;
  if (vm.count("data")) {
    data = load_sft_dataset(vm["data"].as<std::string>(), *run.tokenizer, dopt);
  } else {
    std::istringstream in{std::string(builtin::tiny_task_train_jsonl())};
    data = read_sft_dataset(in, "<built-in jobs/examples/tiny-task/train.jsonl>", *run.tokenizer, dopt);
  }
  for (std::size_t i = 0; i < data.skipped.size(); ++i) {
    if (i == 20) {
      log::warn("sft: ... and {} more skipped line(s)", data.skipped.size() - 20);
      break;
    }
    log::warn("{}:{}: {} (skipped)", data.path, data.skipped[i].line, data.skipped[i].message);
  }
  log::info("sft: model {}", c.summary());
  log::info("sft: data {}", data.stats.summary());
  if (data.stats.max_token_id >= c.vocab_size)
    fail_config("sft: the tokenizer produces id {} but the model's vocabulary has {}", data.stats.max_token_id, c.vocab_size);

  SftBatchShape shape;
  shape.micro_batch = vm["micro-batch"].as<int>();
  shape.accumulation = vm["accumulation"].as<int>();
  shape.dp = world.size();
  const std::uint64_t seed = vm["seed"].as<std::uint64_t>();
  std::optional<CheckpointReader> resume_from;
  if (resume) {
    if (!latest_checkpoint_step(ckpt_dir.string())) fail_config("sft: --resume but {} holds no checkpoint", ckpt_dir.string());
    resume_from.emplace(CheckpointReader::open(ckpt_dir.string()));
    // The global batch is part of the run: on another world size keep it by adjusting the accumulation.
    const json& train = resume_from->section("train");
    const std::int64_t saved = train.at("micro_batch").get<std::int64_t>() * train.at("accumulation").get<std::int64_t>() *
                               train.at("world_size").get<std::int64_t>();
    if (saved != shape.global_batch()) {
      const std::int64_t per_step = static_cast<std::int64_t>(shape.micro_batch) * shape.dp;
      if (saved % per_step != 0)
        fail_config("sft: {} was saved with a global batch of {} examples; --micro-batch {} on {} ranks cannot make "
                    "it (it needs a multiple of {}): choose --micro-batch so that {} is divisible by micro-batch x ranks",
                    resume_from->dir(), saved, shape.micro_batch, shape.dp, per_step, saved);
      log::warn("sft: resuming a run with global batch {} on {} ranks: --accumulation {} instead of {}", saved, shape.dp,
                saved / per_step, shape.accumulation);
      shape.accumulation = static_cast<int>(saved / per_step);
    }
  }
  SftCursor cursor(static_cast<std::int64_t>(data.examples.size()), seed, shape.global_batch(), data.fingerprint);
  std::int64_t trainable = 0, held = 0;
  for (const auto& u : model.units())
    for (const OwnedSlice& sl : u->owned()) {
      held += sl.end - sl.begin;
      if (sl.trainable) trainable += sl.end - sl.begin;
    }
  world.all_reduce(&trainable, &trainable, 1, DType::I64, ReduceOp::Sum);
  AdamWOptions adam;
  adam.beta1 = vm["beta1"].as<double>();
  adam.beta2 = vm["beta2"].as<double>();
  adam.weight_decay = vm["weight-decay"].as<double>();
  adam.max_grad_norm = vm["grad-clip"].as<double>();
  adam.eps = vm["adam-eps"].as<double>();
  validate(adam);
  LrSchedule sched;
  sched.max_lr = vm["lr"].as<double>();
  sched.min_lr = vm["min-lr"].as<double>();
  sched.warmup_steps = vm["warmup"].as<int>();
  sched.decay_steps = steps;
  validate(sched);
  NoiseOptions nopt;
  nopt.seed = seed;
  nopt.vocab_size = c.vocab_size;
  nopt.canvas_length = c.canvas_length;
  SftLossScale lscale;
  lscale.ar_weight = vm["ar-weight"].as<double>();

  // What the text model does not use (vision tower, ...) goes into every checkpoint and the export unchanged.
  const CarriedTensors carried = CarriedTensors::for_run(resume_from ? &*resume_from : nullptr, run.model_dir,
                                                         run.config_json, c, seed,
                                                         export_dtype == "bf16" ? DType::BF16 : DType::F32);
  if (carried.count() > 0)
    log::info("sft: carrying what the text model does not use: {}", carried.describe());
  std::int64_t step = 0, optimizer_steps = 0;
  if (resume_from) {
    load_checkpoint(*resume_from, model);
    const json& train = resume_from->section("train");
    step = train.at("step").get<std::int64_t>();
    optimizer_steps = train.at("optimizer_step").get<std::int64_t>();
    cursor.restore(train.at("cursor"));
    log::info("sft: resumed from {} at step {}", resume_from->dir(), step);
    resume_from.reset();
  } else {
    model.load(initial_weights(run, seed));
  }
  run.hf.reset();  // unmap the input model: its pages would otherwise stay in every rank's memory
  log::info("sft: this rank holds {} of the model's parameters at rest ({:.1f} MB of fp32 masters, moments and gradients)",
            held, static_cast<double>(held) * 16.0 / 1e6);
  const fs::path stopped_marker = out / "STOPPED";
  if (world.rank() == 0) {
    fs::create_directories(out);
    write_file_atomic((out / "config.ini").string(), ctx.resolved_config, true);
    std::error_code ec;
    fs::remove(stopped_marker, ec);  // a marker of an earlier stop: this run continues from there
    // Metrics of steps after the checkpoint we resumed from are redone: drop them.
    std::string kept;
    if (std::ifstream in(metrics_path); in) {
      for (std::string line; std::getline(in, line);) {
        try {
          if (json::parse(line).at("step").get<std::int64_t>() <= step) kept += line + "\n";
        } catch (const std::exception&) {
        }
      }
    }
    write_file_atomic(metrics_path.string(), kept, true);
  }
  std::ofstream metrics;
  if (world.rank() == 0) metrics.open(metrics_path, std::ios::app);
  const json train_section = {{"seed", seed}, {"micro_batch", shape.micro_batch}, {"accumulation", shape.accumulation},
                              {"world_size", world.size()}, {"global_batch", shape.global_batch()}, {"steps", steps},
                              {"device", device_name(device)}};
  log::info("sft: {} examples, global batch {} ({} x {} x {} ranks), {} steps, {} trainable parameters", data.examples.size(),
            shape.global_batch(), shape.micro_batch, shape.accumulation, shape.dp, steps, trainable);

  const auto t0 = Clock::now();
  const int every = vm["checkpoint-every"].as<int>(), stop_after = vm["stop-after"].as<int>();
  int steps_this_run = 0;
  while (step < steps) {
    const std::vector<std::int64_t> global = cursor.next_global_batch();
    // Lay out and noise every micro-batch first: the loss normalisers are global token counts.
    std::vector<SftMicroBatch> mbs;
    std::vector<NoisedCanvas> noised;
    std::int64_t counts[2] = {0, 0};
    for (int m = 0; m < shape.accumulation; ++m) {
      const std::vector<std::int64_t> samples = shape.sample_indices(world.rank(), m);
      std::vector<std::int64_t> examples;
      for (std::int64_t k : samples) examples.push_back(global[static_cast<std::size_t>(k)]);
      mbs.push_back(assemble_micro_batch(data, examples, samples, dopt));
      const SftMicroBatch& mb = mbs.back();
      noised.push_back(noise_canvas({mb.B, mb.R, mb.canvas_target, mb.canvas_len, mb.sample_index}, step, nopt));
      counts[0] += noised.back().diffusion_tokens;
      counts[1] += mb.ar_pairs;
    }
    world.all_reduce(counts, counts, 2, DType::I64, ReduceOp::Sum);

    model.zero_grad();
    StepLosses total;
    reset_host_reads();
    const std::int64_t allocs_before = allocation_stats().system_allocations;
    for (int m = 0; m < shape.accumulation; ++m) {
      const SftMicroBatch& mb = mbs[static_cast<std::size_t>(m)];
      const NoisedCanvas& nz = noised[static_cast<std::size_t>(m)];
      SftBatch b;
      b.clean = i32_tensor({mb.B, mb.S}, mb.input_ids);
      b.clean_valid = i32_tensor({mb.B, mb.S}, std::vector<std::int32_t>(mb.attention.begin(), mb.attention.end()));
      b.canvas = i32_tensor({mb.B, mb.R}, nz.canvas_ids);
      b.prompt_len.assign(mb.prompt_len.begin(), mb.prompt_len.end());
      b.canvas_len.assign(mb.canvas_len.begin(), mb.canvas_len.end());
      b.diff_targets = i32_tensor({mb.B, mb.R}, nz.target_ids);
      b.diff_mask = f32_from_u8({mb.B, mb.R}, nz.loss_mask);
      b.ar_targets = Tensor::empty({mb.B, mb.S}, DType::I32);
      b.ar_mask = Tensor::empty({mb.B, mb.S}, DType::F32);
      sft_ar_targets(b.clean, b.clean_valid, b.ar_targets, b.ar_mask);
      b.sc_coin = nz.self_cond;
      b.n_diff = std::max<double>(1.0, static_cast<double>(counts[0]));
      b.n_ar = std::max<double>(1.0, static_cast<double>(counts[1]));
      if (!dump_dir.empty()) dump_batch(dump_dir, step, m, world.rank(), b, nz, learning_rate(sched, step));
      StepLosses l;
      {
        ModelPathScope in_step;  // strict-device mode: from here on the model's tensors are "on the device"
        l = sft_forward_backward(c, model.weights(), to_model_device(b), model.grads(), lscale, par);
      }
      total.diffusion += l.diffusion;
      total.ar += l.ar;
      total.total += l.total;
    }
    float sums[3] = {static_cast<float>(total.diffusion), static_cast<float>(total.ar), static_cast<float>(total.total)};
    world.all_reduce(sums, sums, 3, DType::F32, ReduceOp::Sum);  // each rank holds its share of the global means
    const double lr = learning_rate(sched, step);
    // The gradients are in the owners' slices already (reduce-scattered during the backward).
    StepStats st;
    ModelPathScope in_update;
    st.grad_norm = global_grad_norm(world, model);
    if (!std::isfinite(st.grad_norm))
      fail("sft: step {}: the gradient norm is {} (a NaN or Inf in the loss or the gradients); the weights were not "
           "updated, the last checkpoint is intact: lower --lr or check the data",
           step + 1, st.grad_norm);
    st.clip_coef = clip_coefficient(st.grad_norm, adam.max_grad_norm);
    ++optimizer_steps;
    for (const auto& unit : model.units()) {
      std::vector<AdamWSlice> slices;
      for (const OwnedSlice& o : unit->owned())
        if (o.trainable)
          slices.push_back({o.master, o.exp_avg, o.exp_avg_sq, o.grad, true});
      adamw_update(slices, adam, lr, st.clip_coef, optimizer_steps);
    }
    if (strict_device_mode() && step == 0 && world.rank() == 0) {
      std::string reads;
      for (const auto& [name, n] : host_reads()) reads += fmt::format(" {}={}", name, n);
      log::info("sft: strict-device mode: host reads in step 1:{}", reads);
    }
    ++step;
    ++steps_this_run;
    const std::int64_t step_allocations = allocation_stats().system_allocations - allocs_before;

    const double elapsed = std::chrono::duration<double>(Clock::now() - t0).count();
    const double tokens_per_s = static_cast<double>(counts[0] + counts[1]) * steps_this_run / std::max(elapsed, 1e-9);
    const double eta = elapsed / steps_this_run * (steps - step);
    log::info("step {:>5}/{} | loss {:.4f} (diffusion {:.4f}, ar {:.4f}) | grad norm {:.3f} | lr {:.2e} | {:.0f} tok/s | ETA {:.0f} s",
              step, steps, sums[2], sums[0], sums[1], st.grad_norm, lr, tokens_per_s, eta);
    if (world.rank() == 0) {
      metrics << json{{"step", step}, {"loss", sums[2]}, {"diffusion_loss", sums[0]}, {"ar_loss", sums[1]},
                      {"grad_norm", st.grad_norm}, {"clip_coef", st.clip_coef}, {"lr", lr},
                      {"diffusion_tokens", counts[0]}, {"ar_tokens", counts[1]}, {"elapsed_s", elapsed},
                      {"host_allocations", step_allocations}}
                     .dump()
              << '\n';
      metrics.flush();
    }
    const bool stop = ctx.rt.stop_requested() || (stop_after > 0 && steps_this_run >= stop_after);
    // The marker tells a batch script to requeue even when the launcher does not pass exit 42 on (mpirun
    // exits 1 after forwarding a SIGTERM, whatever its ranks returned). It is written before the
    // checkpoint: a launcher that kills the ranks during the save must still leave it (resume then starts
    // from the newest complete checkpoint).
    if (stop && step < steps && world.rank() == 0)
      write_file_atomic(stopped_marker.string(), fmt::format("step {}\n", step), true);
    if (stop || step == steps || (every > 0 && step % every == 0))
      save_checkpoint(world, ckpt_dir.string(), step, run, model, carried, mesh, optimizer_steps, cursor, train_section);
    if (stop && step < steps) {
      log::info("sft: stopped at step {} after checkpointing; rerun with --resume to continue (exit {})", step,
                static_cast<int>(kExitStoppedOnSignal));
      return kExitStoppedOnSignal;
    }
  }
  if (vm["export"].as<bool>()) {
    // Streamed from the final checkpoint (saved above at step == steps): no rank holds the whole model.
    HfExportOptions eo;
    eo.role = "master";
    eo.dtype = export_dtype;
    eo.overwrite = true;
    eo.report = false;
    eo.set_config_dtype = true;
    if (!run.tokenizer_dir.empty()) {
      for (const char* f : {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"})
        if (fs::exists(fs::path(run.tokenizer_dir) / f)) eo.extra_files.push_back((fs::path(run.tokenizer_dir) / f).string());
    } else {
      eo.extra_contents = builtin_tokenizer_files();
    }
    const fs::path dir = out / "hf-final";
    export_checkpoint_to_hf(world, checkpoint_step_dir(ckpt_dir.string(), step), dir.string(), eo);
    log::info("sft: exported {}", dir.string());
  }
  world.barrier();
  return 0;
}

}  // namespace dg
