// `dgemma bench`: measures the building blocks on this machine - GEMM on the CPU (OpenBLAS, f32) and,
// when a GPU is present, on CUDA (cuBLASLt, bf16 in / fp32 accumulate) - and the collectives of the
// host communicator - and, with --what ops, every model op at a model-like shape on the CPU (f32) and on
// CUDA (bf16) when a GPU is present, as achieved GB/s (memory-bound ops: bytes read + written) or
// TFLOP/s (GEMM-shaped ops), with the fraction of the device's theoretical peak on CUDA.
// Prints a table on rank 0; with --json also writes it as JSON lines.
//
// --what fsdp and --what ep model the communication of one training step of a model config (--preset
// or --model-config) on a mesh (the MPI world, or a hypothetical --world N, with --ep): the bytes each
// rank moves per FSDP unit and per MoE layer, the model state each rank holds, and - when the job runs
// on more than one rank and --world is not a hypothetical size - the GB/s of the real collectives
// (all-gather / reduce-scatter over the unit's group; MeshExpertExchange and the reference recipe's
// all-gather + all-reduce over the ep group) on buffers of those sizes.
//
// --what model (jobs/bench_model.cpp) times the model's passes on the CPU for a model config (--preset,
// tiny by default there, or --model-config): encoder forward, decoder forward, one generation denoising
// step with the sampler, and one SFT step (forward + backward + AdamW), min and median over --iters.
#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <random>

#include "io/hf_config.h"
#include "io/hf_model.h"
#include "io/presets.h"
#include "jobs/jobs.h"
#include "jobs/log.h"
#include "jobs/device_choice.h"
#include "layers/device.h"
#include "layers/ops.h"
#include "optim/adamw.h"
#include "parallel/expert_parallel.h"
#include "parallel/fsdp.h"
#include "parallel/mesh.h"
#include "parallel/plan.h"

namespace dg {

void bench_options(po::options_description& d) {
  add_device_option(d);
  add_threads_option(d);
  d.add_options()
      ("what", po::value<std::string>()->default_value("all"), "gemm, comm, ops, fsdp, ep, model or all (= gemm and comm)")
      ("tokens", po::value<std::int64_t>()->value_name("N"), "ops: tokens per call (rows, default 2048); ep: tokens per rank per micro-batch, the T of each MoE call (default 4096)")
      ("hidden", po::value<std::int64_t>()->default_value(2816), "ops: hidden size (2816 = 26B-A4B)")
      ("vocab", po::value<std::int64_t>()->default_value(32768), "ops: vocabulary rows for the LM-head ops")
      ("m", po::value<std::int64_t>()->default_value(512), "GEMM rows of A and C")
      ("n", po::value<std::int64_t>()->default_value(512), "GEMM columns of B and C")
      ("k", po::value<std::int64_t>()->default_value(512), "GEMM inner dimension")
      ("iters", po::value<int>()->default_value(10), "timed repetitions per measurement")
      ("comm-mb", po::value<double>()->default_value(16.0, "16.0"), "collective message size per rank, MiB")
      ("preset", po::value<std::string>()->default_value("diffusiongemma-26b-a4b"), "fsdp, ep, model: the model config, a built-in preset (tiny, diffusiongemma-26b-a4b; model: tiny unless given)")
      ("model-config", po::value<std::string>()->value_name("FILE"), "fsdp, ep, model: a config.json (or an HF model directory) instead of --preset (model: a directory's weights are loaded when it has them, otherwise random weights)")
      ("batch", po::value<int>()->default_value(4), "model: prompts per batch (and examples of the SFT micro-batch)")
      ("prompt-len", po::value<int>()->default_value(64), "model: prompt tokens per row (the SFT sequence is the prompt plus one canvas)")
      ("ep", po::value<int>()->default_value(1), "fsdp, ep: expert-parallel size of the mesh (divides the world size and the number of experts)")
      ("world", po::value<int>()->default_value(0), "fsdp, ep: compute the bytes for a mesh of this many ranks instead of the MPI world (bytes only, nothing is timed)")
      ("dtype", po::value<std::string>()->default_value("both"), "fsdp, ep: bytes per element of the compute copies and the exchanged rows: bf16 (GPU), f32 (CPU backend) or both")
      ("reshard-after-forward", po::value<bool>()->default_value(true), "fsdp: as sft's option (true: each layer unit is gathered once per forward pass and once for its backward)")
      ("max-buffer-mb", po::value<double>()->default_value(2048.0, "2048.0"), "fsdp, ep: largest buffers one rank may allocate for a timed collective, MiB (larger ones are skipped with a note)")
      ("json", po::value<std::string>()->value_name("FILE"), "also write results as JSON lines to FILE");
}

namespace {

using Clock = std::chrono::steady_clock;

struct Result {
  std::string name, device, shape;
  double seconds, rate;
  std::string unit;
  double peak_fraction = -1;  // of the device's theoretical peak, when known
};

std::int64_t tokens_or(const po::variables_map& vm, std::int64_t fallback) {
  return vm.count("tokens") ? vm["tokens"].as<std::int64_t>() : fallback;
}

template <class F>
double time_best(int iters, F&& f) {
  f();  // warm-up (allocations, cuBLASLt heuristics, OpenBLAS threads)
  double best = 1e30;
  for (int i = 0; i < iters; ++i) {
    const auto t0 = Clock::now();
    f();
    best = std::min(best, std::chrono::duration<double>(Clock::now() - t0).count());
  }
  return best;
}

Tensor random_f32(Shape s, std::uint32_t seed) {
  Tensor t = Tensor::empty(std::move(s), DType::F32);
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  for (std::int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = u(rng);
  return t;
}

void bench_gemm(JobContext& ctx, std::vector<Result>& out) {
  const auto m = ctx.vm["m"].as<std::int64_t>(), n = ctx.vm["n"].as<std::int64_t>(),
             k = ctx.vm["k"].as<std::int64_t>();
  const int iters = ctx.vm["iters"].as<int>();
  const double flops = 2.0 * static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k);
  const std::string shape = fmt::format("{}x{}x{}", m, n, k);
  const Tensor a = random_f32({m, k}, 1), b = random_f32({k, n}, 2), bt = random_f32({n, k}, 3);
  Tensor c = Tensor::empty({m, n}, DType::F32);
  const bool cuda = ctx.rt.cuda_device >= 0;
  Tensor da, db, dc, dc32;
  if (cuda) {
    da = a.to(Device::CUDA).to(DType::BF16), db = b.to(Device::CUDA).to(DType::BF16);
    dc = Tensor::empty({m, n}, DType::BF16, Device::CUDA), dc32 = Tensor::empty({m, n}, DType::F32, Device::CUDA);
  }
  // Each GEMM plain and in batch-invariant mode (fixed row tiles, what `generate` runs), side by side.
  const bool was_invariant = batch_invariant();
  for (bool inv : {false, true}) {
    set_batch_invariant(inv);
    const std::string mode = inv ? " (batch-invariant)" : "";
    for (bool tb : {false, true}) {
      const double s = time_best(iters, [&] { gemm(a, tb ? bt : b, c, {.trans_b = tb}); });
      out.push_back({(tb ? "gemm NT f32" : "gemm NN f32") + mode, "cpu", shape, s, flops / s * 1e-12, "TFLOP/s"});
    }
    if (cuda) {
      const double s = time_best(iters, [&] { gemm(da, db, dc, {}), cuda_synchronize(); });
      out.push_back({"gemm NN bf16->bf16" + mode, "cuda", shape, s, flops / s * 1e-12, "TFLOP/s"});
      const double s32 = time_best(iters, [&] { gemm(da, db, dc32, {.beta = 1.f}), cuda_synchronize(); });
      out.push_back({"gemm NN bf16->f32 +=" + mode, "cuda", shape, s32, flops / s32 * 1e-12, "TFLOP/s"});
    }
  }
  set_batch_invariant(was_invariant);
}

void bench_comm(JobContext& ctx, std::vector<Result>& out) {
  Comm& c = *ctx.rt.world;
  const int iters = ctx.vm["iters"].as<int>();
  const auto count = static_cast<std::int64_t>(ctx.vm["comm-mb"].as<double>() * 1024 * 1024 / 4);
  const double p = c.size();
  const std::string shape = fmt::format("{} f32 x {} ranks", count, c.size());
  Tensor buf = random_f32({count}, 4);
  Tensor big = Tensor::empty({count * c.size()}, DType::F32);
  Tensor small = Tensor::empty({count}, DType::F32);
  // Bus bandwidth as nccl-tests defines it, so numbers compare across rank counts.
  const double bytes = static_cast<double>(count) * 4;
  double s = time_best(iters, [&] { all_reduce(c, buf); });
  out.push_back({"all_reduce", "mpi", shape, s, bytes * 2 * (p - 1) / p / s / 1e9, "GB/s bus"});
  s = time_best(iters, [&] { all_gather(c, small, big); });
  out.push_back({"all_gather", "mpi", shape, s, bytes * (p - 1) / s / 1e9, "GB/s bus"});
  s = time_best(iters, [&] { reduce_scatter(c, big, small); });
  out.push_back({"reduce_scatter", "mpi", shape, s, bytes * (p - 1) / s / 1e9, "GB/s bus"});
}

// Every op of layers/ops.h on one device: the CPU in f32, CUDA in bf16 (statistics f32).
void bench_ops(JobContext& ctx, std::vector<Result>& out) {
  const auto T = tokens_or(ctx.vm, 2048), H = ctx.vm["hidden"].as<std::int64_t>(),
             V = ctx.vm["vocab"].as<std::int64_t>();
  const int iters = ctx.vm["iters"].as<int>();
  std::vector<Device> devices = {Device::CPU};
  if (resolve_device(ctx, "bench", true) == Device::CUDA) devices.push_back(Device::CUDA);
  for (const Device dev : devices) {
    const bool gpu = dev == Device::CUDA;
    const DType act = gpu ? DType::BF16 : DType::F32;
    const double esz = gpu ? 2.0 : 4.0;
    const DevicePeaks peaks = gpu ? cuda_device_peaks(ctx.rt.cuda_device) : DevicePeaks{};
    auto put = [&](const Tensor& t, DType d) { return gpu ? t.to(Device::CUDA).to(d) : t.to(d); };
    auto empty = [&](Shape sh, DType d) { return Tensor::empty(std::move(sh), d, dev); };
    auto sync = [&] {
      if (gpu) cuda_synchronize();
    };
    auto record = [&](const std::string& name, const std::string& shape, double sec, double bytes, double flops) {
      Result r{name, device_name(dev), shape, sec, 0, ""};
      if (flops > 0) {
        r.rate = flops / sec * 1e-12;
        r.unit = "TFLOP/s";
        if (peaks.bf16_tflops > 0) r.peak_fraction = r.rate / peaks.bf16_tflops;
      } else {
        r.rate = bytes / sec * 1e-9;
        r.unit = "GB/s";
        if (peaks.mem_gb_per_s > 0) r.peak_fraction = r.rate / peaks.mem_gb_per_s;
      }
      out.push_back(r);
    };
    // Runs one op, reporting "not available" for ops the backend does not implement yet.
    auto run = [&](const std::string& name, const std::string& shape, double bytes, double flops, auto&& f) {
      try {
        const double sec = time_best(iters, [&] { f(), sync(); });
        record(name, shape, sec, bytes, flops);
      } catch (const Error& e) {
        log::warn("bench: {} on {}: {}", name, device_name(dev), e.what());
      }
    };
    const std::string th = fmt::format("{}x{}", T, H);
    Tensor x = put(random_f32({T, H}, 11), act), w = put(random_f32({H}, 12), act);
    Tensor y = empty({T, H}, act), rstd = empty({T}, DType::F32);
    run("rms_norm", th, esz * (2.0 * T * H + H) + 4.0 * T, 0, [&] { rms_norm(x, &w, 1e-6f, y, rstd); });
    Tensor dx = empty({T, H}, act), dw = put(Tensor::zeros({H}, DType::F32), act);
    run("rms_norm_backward", th, esz * (4.0 * T * H + 2 * H), 0,
        [&] { rms_norm_backward(y, x, &w, rstd, dx, &dw); });
    const std::int64_t F = 2112;
    Tensor gu = put(random_f32({T, 2 * F}, 13), act), a = empty({T, F}, act), dgu = empty({T, 2 * F}, act);
    run("geglu", fmt::format("{}x{}", T, 2 * F), esz * 3.0 * T * F, 0, [&] { geglu(gu, a); });
    run("geglu_backward", fmt::format("{}x{}", T, 2 * F), esz * 5.0 * T * F, 0, [&] { geglu_backward(a, gu, dgu); });
    const std::int64_t nh = 16, hd = 256, Sq = std::min<std::int64_t>(T, 1024);
    Tensor pos = Tensor::empty({Sq}, DType::I32);
    for (std::int64_t i = 0; i < Sq; ++i) pos.data<std::int32_t>()[i] = static_cast<std::int32_t>(i);
    Tensor inv = Tensor::empty({hd / 2}, DType::F32), cs = Tensor::empty({Sq, hd / 2}, DType::F32),
           sn = Tensor::empty({Sq, hd / 2}, DType::F32);
    rope_inv_freq({RopeType::Default, hd, 10000.0, 1.0}, inv);
    rope_table(pos, inv, cs, sn);
    Tensor q = put(random_f32({Sq, nh, hd}, 14), act), qr = empty({Sq, nh, hd}, act);
    Tensor csd = put(cs, DType::F32), snd = put(sn, DType::F32);
    run("rope", fmt::format("{}x{}x{}", Sq, nh, hd), esz * 2.0 * Sq * nh * hd + 8.0 * Sq * hd / 2, 0,
        [&] { rope(q, csd, snd, qr); });
    // Attention: the full-layer-like causal pass over Sq tokens (half the score matrix is visible).
    const std::int64_t nkv = 8;
    Tensor aq = put(random_f32({1, Sq, nh, hd}, 15), act), ak = put(random_f32({1, Sq, nkv, hd}, 16), act),
           av = put(random_f32({1, Sq, nkv, hd}, 17), act), ao = empty({1, Sq, nh, hd}, act),
           alse = empty({1, nh, Sq}, DType::F32);
    AttnOpts ao_opts;
    ao_opts.mask = {AttnMaskKind::Causal, 0, 0};
    const double attn_flops = 2.0 * 2.0 * nh * hd * (double(Sq) * double(Sq + 1) / 2.0);
    run("attention causal", fmt::format("1x{}x{}x{} gqa {}", Sq, nh, hd, nh / nkv), 0, attn_flops,
        [&] { attention(aq, ak, av, Tensor(), Tensor(), ao_opts, ao, alse); });
    // Experts: 8 local experts, top-k rows spread evenly (T rows in all).
    const std::int64_t E = 8, Fm = 704;
    Tensor counts = Tensor::empty({E}, DType::I32);
    for (std::int64_t e = 0; e < E; ++e) counts.data<std::int32_t>()[e] = static_cast<std::int32_t>(T / E + (e < T % E));
    Tensor gx = put(random_f32({T, H}, 18), act), gw = put(random_f32({E, H, 2 * Fm}, 19), act),
           gy = empty({T, 2 * Fm}, act), gcounts = gpu ? counts.to(Device::CUDA) : counts;
    run("grouped_gemm", fmt::format("{} rows x {}x{} x {} experts", T, H, 2 * Fm, E), 0, 2.0 * T * H * 2 * Fm,
        [&] { grouped_gemm(gx, gw, gcounts, gy); });
    // Fused softcapped cross-entropy over V vocabulary rows.
    Tensor emb = put(random_f32({V, H}, 20), act), hid = put(random_f32({T, H}, 21), act);
    Tensor tgt = Tensor::empty({T}, DType::I32), msk = Tensor::empty({T}, DType::F32);
    for (std::int64_t i = 0; i < T; ++i) {
      tgt.data<std::int32_t>()[i] = static_cast<std::int32_t>(i % V);
      msk.data<float>()[i] = 1.0f;
    }
    Tensor dtgt = gpu ? tgt.to(Device::CUDA) : tgt, dmsk = gpu ? msk.to(Device::CUDA) : msk,
           lse = empty({T}, DType::F32);
    run("lm_head_cross_entropy", fmt::format("{}x{} vocab {}", T, H, V), 0, 2.0 * T * H * V,
        [&] { lm_head_cross_entropy(hid, emb, dtgt, dmsk, double(T), lse, {}); });
    Tensor ids = Tensor::empty({T}, DType::I32);
    for (std::int64_t i = 0; i < T; ++i) ids.data<std::int32_t>()[i] = static_cast<std::int32_t>((i * 7919) % V);
    Tensor dids = gpu ? ids.to(Device::CUDA) : ids, eo = empty({T, H}, act);
    run("embedding", fmt::format("{} ids x {}", T, H), esz * 2.0 * T * H, 0, [&] { embedding(dids, emb, 53.0f, eo); });
  }
}


// ---- fsdp / ep: the communication of one training step on a mesh -------------------------------------

constexpr double kGB = 1e9, kMB = 1e6;

std::string gb(double bytes) { return bytes == 0 ? "0" : bytes >= kGB ? fmt::format("{:.2f} GB", bytes / kGB) : fmt::format("{:.1f} MB", bytes / kMB); }
std::string count_str(double n) {
  return n >= 1e9 ? fmt::format("{:.3f} B", n / 1e9) : n >= 1e6 ? fmt::format("{:.1f} M", n / 1e6) : fmt::format("{:.0f}", n);
}

ModelConfig bench_model(const po::variables_map& vm, std::string& where) {
  nlohmann::json j;
  if (vm.count("model-config")) {
    std::string f = vm["model-config"].as<std::string>();
    if (std::filesystem::is_directory(f)) f = (std::filesystem::path(f) / "config.json").string();
    j = read_json_file(f);
    where = f;
  } else {
    j = preset_config(vm["preset"].as<std::string>());
    where = "preset " + vm["preset"].as<std::string>();
  }
  return parse_model_config(j, where);
}

// The mesh the bytes are computed for: the MPI world, or a hypothetical --world.
struct MeshSize {
  int world = 1, ep = 1;
  bool timed = false;  // the real world: collectives can be measured
  int replicas() const { return world / ep; }
};

MeshSize bench_mesh(JobContext& ctx, const ModelConfig& c) {
  MeshSize m;
  const int asked = ctx.vm["world"].as<int>();
  if (asked < 0) fail_config("bench: --world must be positive (0: the MPI world)");
  m.world = asked > 0 ? asked : ctx.rt.world->size();
  m.ep = ctx.vm["ep"].as<int>();
  if (m.ep < 1) fail_config("bench: --ep {} must be at least 1", m.ep);
  if (m.world % m.ep != 0) fail_config("bench: --ep {} does not divide the world size {}", m.ep, m.world);
  if (c.num_experts % m.ep != 0) fail_config("bench: --ep {} does not divide the model's {} experts", m.ep, c.num_experts);
  m.timed = m.world == ctx.rt.world->size() && m.world > 1;
  return m;
}

std::vector<std::pair<std::string, double>> bench_dtypes(const po::variables_map& vm) {
  const std::string d = vm["dtype"].as<std::string>();
  if (d == "bf16") return {{"bf16", 2.0}};
  if (d == "f32") return {{"f32", 4.0}};
  return {{"bf16", 2.0}, {"f32", 4.0}};
}

// Best over iters of the slowest rank's time (a barrier before each repetition).
template <class F>
double time_collective(Comm& c, int iters, F&& f) {
  f();  // warm-up
  double best = 1e30;
  for (int i = 0; i < iters; ++i) {
    c.barrier();
    const auto t0 = Clock::now();
    f();
    std::int64_t ns = std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count();
    c.all_reduce(&ns, &ns, 1, DType::I64, ReduceOp::Max);
    best = std::min(best, static_cast<double>(ns) * 1e-9);
  }
  return best;
}

// The units of the plan grouped by shape: root, the dense unit of a sliding and of a full layer, the
// experts unit of a layer (each with how many units share it).
struct UnitKind {
  std::string name, kind;
  int count = 0;
  bool expert_group = false;
  int g = 1;                      // the unit's group size
  std::int64_t numel = 0, chunk = 0;  // elements on this ep rank; owned (padded) share
  int gathers = 1;                // all-gathers of one unit per micro-batch
  std::int64_t padded() const { return chunk * g; }
};

std::vector<UnitKind> unit_kinds(const ModelConfig& c, const MeshSize& m, bool reshard) {
  ParallelPlanOptions o;
  o.reshard_after_forward = reshard;
  std::vector<UnitKind> kinds;
  for (const UnitSpec& u : diffusion_gemma_plan(c, o, sft_trainable)) {
    std::int64_t numel = 0;
    for (const UnitTensor& t : u.tensors) numel += shape_numel(t.param.shape) / (t.expert ? m.ep : 1);
    const bool ex = u.group == UnitGroup::ExpertReplica;
    std::string kind = u.unit == ParamSchedule::kRootUnit ? "root"
                       : ex                               ? "experts"
                       : c.layer(u.unit).type == LayerType::Full ? "dense, full attn"
                                                                 : "dense, sliding";
    auto it = std::find_if(kinds.begin(), kinds.end(), [&](const UnitKind& k) { return k.kind == kind && k.numel == numel; });
    if (it != kinds.end()) {
      ++it->count;
      continue;
    }
    UnitKind k;
    k.name = u.name;
    k.kind = kind;
    k.count = 1;
    k.expert_group = ex;
    k.g = ex ? m.replicas() : m.world;
    k.numel = numel;
    k.chunk = (numel + k.g - 1) / k.g;
    // Per micro-batch: the root once (held from the first forward use to the last backward use); a
    // layer unit once per forward pass (encode, decode 1, decode 2) and once for its backward when it
    // reshards after forward, else once.
    k.gathers = u.unit == ParamSchedule::kRootUnit ? 1 : (u.reshard_after_forward ? 4 : 1);
    kinds.push_back(k);
  }
  return kinds;
}

void bench_fsdp(JobContext& ctx, std::vector<Result>& out) {
  std::string where;
  const ModelConfig c = bench_model(ctx.vm, where);
  const MeshSize m = bench_mesh(ctx, c);
  const bool reshard = ctx.vm["reshard-after-forward"].as<bool>();
  const std::vector<UnitKind> kinds = unit_kinds(c, m, reshard);
  std::int64_t total_params = 0;
  for (const ParamSpec& p : model_params(c)) total_params += shape_numel(p.shape);
  std::int64_t expert_params = 0;
  for (const ParamSpec& p : model_params(c))
    if (p.name.find(".moe.experts.") != std::string::npos) expert_params += shape_numel(p.shape);

  log::info("fsdp: {} ({}), {} parameters ({} dense + {} expert)", where, c.summary(), count_str(double(total_params)),
            count_str(double(total_params - expert_params)), count_str(double(expert_params)));
  log::info("fsdp: mesh world {} = fsdp {} (dense units and root), ep {} x expert replicas {} ({} of {} experts per rank){}",
            m.world, m.world, m.ep, m.replicas(), c.num_experts / m.ep, c.num_experts,
            m.world == ctx.rt.world->size() ? "" : fmt::format(" - hypothetical (--world {}; the job has {} rank(s)): bytes only", m.world, ctx.rt.world->size()));
  log::info("fsdp: per rank; g = group size; all-gather received = (g-1)/g x padded unit; reduce-scatter sent = the same");
  for (const auto& [dname, esz] : bench_dtypes(ctx.vm)) {
    log::info("");
    log::info("fsdp traffic, {} compute copies and gradients ({} B/element{})", dname, esz,
              esz == 2 ? ", the CUDA backend" : ", the CPU backend");
    log::info("{:<18} {:<17} {:>5} {:<15} {:>11} {:>11} {:>14} {:>14} {:>9}", "unit", "kind", "units", "group", "elements",
              "gathered", "all-gather rx", "red.-scat. tx", "gathers/mb");
    double ag = 0, rs = 0;
    for (const UnitKind& k : kinds) {
      const double padded = double(k.padded()) * esz, moved = double(k.g - 1) * double(k.chunk) * esz;
      log::info("{:<18} {:<17} {:>5} {:<15} {:>11} {:>11} {:>14} {:>14} {:>9}", k.name, k.kind, k.count,
                fmt::format("{} {}", k.expert_group ? "replica" : "world", k.g), count_str(double(k.numel)), gb(padded),
                gb(moved), gb(moved), k.gathers);
      ag += moved * k.count * k.gathers;
      rs += moved * k.count;
    }
    log::info("per micro-batch and rank: all-gathers receive {}, reduce-scatters send {} ({} layers, reshard after forward {})",
              gb(ag), gb(rs), c.num_layers, reshard);
  }

  // Model state per rank: each rank owns one padded share of every unit (fp32 master, two Adam moments,
  // gradient: 16 bytes per element); the working set is the root's compute copy and gradient buffer (held
  // for the whole micro-batch) plus, in the backward, a layer being computed and the prefetched one below
  // it (compute copies) and the layer's gradient buffer.
  std::int64_t held = 0, root = 0, dense_max = 0, experts_max = 0;
  for (const UnitKind& k : kinds) {
    held += k.chunk * k.count;
    if (k.kind == "root")
      root = k.padded();
    else if (k.kind == "experts")
      experts_max = std::max(experts_max, k.padded());
    else
      dense_max = std::max(dense_max, k.padded());
  }
  const std::int64_t layer = dense_max + experts_max;  // the largest layer: dense unit + experts unit
  std::int64_t all_layers = 0;                          // every layer unit (kept gathered without resharding)
  for (const UnitKind& k : kinds)
    if (k.kind != "root") all_layers += k.padded() * k.count;
  log::info("");
  log::info("memory per rank: {} of the model's {} parameters owned -> {} at rest (16 B each: fp32 master, 2 Adam moments, gradient)",
            count_str(double(held)), count_str(double(total_params)), gb(16.0 * double(held)));
  for (const auto& [dname, esz] : bench_dtypes(ctx.vm)) {
    // Without resharding every layer stays gathered from its first forward use to its backward.
    const double compute = (double(root) + (reshard ? 2.0 * double(layer) : double(all_layers))) * esz,
                 grads = (double(root) + double(layer)) * 4.0;
    log::info("  working set ({} compute copies, fp32 gradient buffers): root + {} gathered {} + root and 1 layer "
              "gradient {} = {}; at rest + working set = {} (activations not included)",
              dname, reshard ? "2 layers" : "all layers", gb(compute), gb(grads), gb(compute + grads),
              gb(16.0 * double(held) + compute + grads));
  }

  if (!m.timed) {
    log::info("fsdp: {}", m.world == 1 ? "one rank: nothing to time" : "hypothetical mesh: nothing timed");
    return;
  }
  // Measured: the collectives of one unit of each kind, on f32 host buffers (MpiComm) over its group.
  Mesh mesh = make_mesh(*ctx.rt.world, m.ep, c.num_experts, ctx.rt.node_id);
  const int iters = ctx.vm["iters"].as<int>();
  const double cap = ctx.vm["max-buffer-mb"].as<double>() * 1024 * 1024;
  for (const UnitKind& k : kinds) {
    Comm& g = k.expert_group ? *mesh.replica : *mesh.world;
    const std::string label = k.name;
    if (g.size() == 1) {
      log::info("fsdp: {}: group of 1 rank, no traffic (its gather is a local copy)", label);
      continue;
    }
    const double need = double(k.chunk) * double(g.size() + 1) * 4.0;
    if (need > cap) {
      log::warn("fsdp: {}: skipped, its buffers need {} per rank (> --max-buffer-mb {})", label, gb(need),
                ctx.vm["max-buffer-mb"].as<double>());
      continue;
    }
    Tensor part = random_f32({k.chunk}, 5), full = Tensor::empty({k.padded()}, DType::F32);
    const double moved = double(g.size() - 1) * double(k.chunk) * 4.0;
    const std::string shape = fmt::format("{} f32 x {} ({} {})", gb(double(k.padded()) * 4), g.size(),
                                          k.expert_group ? "replica" : "world", g.size());
    double s = time_collective(g, iters, [&] { all_gather(g, part, full); });
    out.push_back({"all_gather " + label, "mpi", shape, s, moved / s / kGB, "GB/s rx"});
    s = time_collective(g, iters, [&] { reduce_scatter(g, full, part); });
    out.push_back({"reduce_scatter " + label, "mpi", shape, s, moved / s / kGB, "GB/s tx"});
  }
}

void bench_ep(JobContext& ctx, std::vector<Result>& out) {
  std::string where;
  const ModelConfig c = bench_model(ctx.vm, where);
  const MeshSize m = bench_mesh(ctx, c);
  const std::int64_t T = tokens_or(ctx.vm, 4096), H = c.hidden_size, k = c.top_k, E = c.num_experts;
  const double ep = m.ep;
  if (E <= 0 || k <= 0) fail_config("bench: --what ep needs a MoE model ({} has {} experts, top-{})", where, E, k);
  log::info("ep: {} ({}), T = {} tokens per rank per MoE call, top-{} of {} experts, H {}", where, c.summary(), T, k, E, H);
  log::info("ep: mesh world {}, ep {} ({} experts per rank){}", m.world, m.ep, E / m.ep,
            m.world == ctx.rt.world->size() ? "" : " - hypothetical (--world): bytes only");
  // Routing uniform over E: a row goes to another rank of the ep group with probability (ep-1)/ep.
  const double rows_out = double(T) * double(k) * (ep - 1) / ep;
  for (const auto& [dname, esz] : bench_dtypes(ctx.vm)) {
    const double row = double(H) * esz;
    // Ours: dispatch sends rows_out rows and (uniform routing) receives as many; combine returns them.
    const double ours_rx = 2 * rows_out * row, ours_tx = ours_rx;
    // Reference: all-gather of the ep group's tokens ((ep-1)·T rows received and, ring, sent) and an
    // all-reduce of the [ep·T, H] outputs over the ep group (2·(ep-1)/ep of it received and sent).
    const double ag = (ep - 1) * double(T) * row, ar = 2 * (ep - 1) / ep * ep * double(T) * row;
    const double ref_rx = ag + ar, ref_tx = ag + ar;
    log::info("");
    log::info("ep traffic per rank and MoE layer call, {} rows ({} B/element)", dname, esz);
    log::info("{:<44} {:>12} {:>12} {:>12}", "", "received", "sent", "sent+recv");
    log::info("{:<44} {:>12} {:>12} {:>12}", fmt::format("ours: dispatch ({:.0f} rows leave the rank)", rows_out), gb(ours_rx / 2),
              gb(ours_tx / 2), gb(ours_rx));
    log::info("{:<44} {:>12} {:>12} {:>12}", "ours: combine (the same rows back)", gb(ours_rx / 2), gb(ours_tx / 2), gb(ours_rx));
    log::info("{:<44} {:>12} {:>12} {:>12}", "ours: total", gb(ours_rx), gb(ours_tx), gb(ours_rx + ours_tx));
    log::info("{:<44} {:>12} {:>12} {:>12}", fmt::format("reference: all-gather [{}x{}, {}]", m.ep, T, H), gb(ag), gb(ag), gb(2 * ag));
    log::info("{:<44} {:>12} {:>12} {:>12}", fmt::format("reference: all-reduce [{}x{}, {}]", m.ep, T, H), gb(ar), gb(ar), gb(2 * ar));
    log::info("{:<44} {:>12} {:>12} {:>12}", "reference: total", gb(ref_rx), gb(ref_tx), gb(ref_rx + ref_tx));
    if (m.ep == 1) {
      log::info("ep 1: every expert is local, neither scheme moves anything");
      continue;
    }
    const double ratio = ours_rx / ref_rx;
    log::info("ratio ours/reference = {:.4f} (= 2k/(3 ep) = {:.4f}; 1/ep = {:.4f}; top-k/E = {}/{} = {:.4f})", ratio,
              2.0 * double(k) / (3.0 * ep), 1.0 / ep, k, E, double(k) / double(E));
    log::info("check ratio <= 1/ep: {} (the ratio is 2k/(3 ep) whatever E is: <= 1/ep needs top-k <= 1.5)",
              ratio <= 1.0 / ep + 1e-12 ? "PASS" : "FAIL");
    log::info("check ratio < 1 (ours moves less than the reference): {}", ratio < 1.0 ? "PASS" : "FAIL");
  }
  log::info("");
  log::info("ep: per micro-batch each MoE layer runs 3 forward calls (encode, decode 1, decode 2; T = tokens of the pass) "
            "and 2 backward calls (decode 2, encode) with the same traffic each");
  if (!m.timed || m.ep == 1) {
    log::info("ep: {}", m.ep == 1 ? "--ep 1: nothing to time" : m.world == 1 ? "one rank: nothing to time" : "hypothetical mesh: nothing timed");
    return;
  }

  Mesh mesh = make_mesh(*ctx.rt.world, m.ep, E, ctx.rt.node_id);
  const int iters = ctx.vm["iters"].as<int>();
  const double cap = ctx.vm["max-buffer-mb"].as<double>() * 1024 * 1024;
  const std::int64_t N = T * k;
  // Ours: rows, by-source copy, received rows, by-source copy back, returned rows (about 5 x N rows).
  const double need = 5.0 * double(N) * double(H) * 4.0;
  if (need > cap) {
    log::warn("ep: exchange not timed: its buffers need {} per rank (> --max-buffer-mb {}); lower --tokens", gb(need),
              ctx.vm["max-buffer-mb"].as<double>());
  } else {
    // Random top-k routing, uniform over E (k distinct experts per token), seeded by rank.
    std::mt19937 rng(1234u + static_cast<std::uint32_t>(ctx.rt.rank));
    std::vector<std::int32_t> experts(static_cast<std::size_t>(E));
    Tensor counts = Tensor::zeros({E}, DType::I32);
    for (std::int64_t t = 0; t < T; ++t) {
      for (std::int64_t e = 0; e < E; ++e) experts[static_cast<std::size_t>(e)] = static_cast<std::int32_t>(e);
      for (std::int64_t j = 0; j < k; ++j) {
        std::uniform_int_distribution<std::int64_t> pick(j, E - 1);
        std::swap(experts[static_cast<std::size_t>(j)], experts[static_cast<std::size_t>(pick(rng))]);
        ++counts.data<std::int32_t>()[experts[static_cast<std::size_t>(j)]];
      }
    }
    MeshExpertExchange ex(mesh);
    Tensor rows = random_f32({N, H}, 6), back = Tensor::empty({N, H}, DType::F32);
    ExpertRoute r = ex.route(counts);
    Tensor recv = Tensor::empty({r.received, H}, DType::F32);
    const double s = time_collective(*mesh.world, iters, [&] {
      r = ex.route(counts);
      ex.to_owners(r, rows, recv);
      ex.to_sources(r, recv, back);
    });
    // Bytes of one iteration (route + to_owners + to_sources), averaged over the ranks.
    std::int64_t bytes[2] = {static_cast<std::int64_t>(ex.traffic().sent_bytes + ex.traffic().received_bytes),
                             ex.traffic().exchanges};
    mesh.world->all_reduce(bytes, bytes, 2, DType::I64, ReduceOp::Sum);
    const double per_iter = double(bytes[0]) / double(bytes[1]) * 2.0;  // two exchanges per iteration
    const double model = 4 * rows_out * double(H) * 4.0;
    const std::string shape = fmt::format("{}x{} top-{} of {}, ep {}", T, H, k, E, m.ep);
    out.push_back({"ep exchange (ours)", "mpi", shape, s, per_iter / s / kGB, "GB/s tx+rx"});
    // The phases alone: the count exchange, and each direction of the rows (half the bytes each).
    const double s_route = time_collective(*mesh.world, iters, [&] { r = ex.route(counts); });
    out.push_back({"ep route (counts)", "mpi", shape, s_route, 0, ""});
    const double s_out = time_collective(*mesh.world, iters, [&] { ex.to_owners(r, rows, recv); });
    out.push_back({"ep to_owners (dispatch)", "mpi", shape, s_out, per_iter / 2 / s_out / kGB, "GB/s tx+rx"});
    const double s_back = time_collective(*mesh.world, iters, [&] { ex.to_sources(r, recv, back); });
    out.push_back({"ep to_sources (combine)", "mpi", shape, s_back, per_iter / 2 / s_back / kGB, "GB/s tx+rx"});
    log::info("ep: measured exchange moved {} per rank per call (sent + received; model {})", gb(per_iter), gb(model));
    const bool same = std::abs(per_iter - model) <= 0.05 * model;
    log::info("ep: measured bytes within 5% of the uniform-routing model: {}", same ? "yes" : "no");
  }
  // The reference scheme on the same ep group: all-gather of the tokens, all-reduce of the outputs.
  const double need_ref = (2.0 * ep + 1.0) * double(T) * double(H) * 4.0;
  if (need_ref > cap) {
    log::warn("ep: reference not timed: its buffers need {} per rank (> --max-buffer-mb {}); lower --tokens", gb(need_ref),
              ctx.vm["max-buffer-mb"].as<double>());
    return;
  }
  Comm& g = *mesh.ep_group;
  Tensor x = random_f32({T, H}, 7), all = Tensor::empty({m.ep * T, H}, DType::F32), y = random_f32({m.ep * T, H}, 8);
  const double s = time_collective(g, iters, [&] {
    all_gather(g, x, all);
    all_reduce(g, y);
  });
  const double moved = 2.0 * ((ep - 1) * double(T) + 2 * (ep - 1) * double(T)) * double(H) * 4.0;
  out.push_back({"ep reference ag+ar", "mpi", fmt::format("{}x{}, ep {}", T, H, m.ep), s, moved / s / kGB, "GB/s tx+rx"});
}

}  // namespace

int bench_model_run(JobContext& ctx);  // jobs/bench_model.cpp

int bench_run(JobContext& ctx) {
  const std::string what = ctx.vm["what"].as<std::string>();
  static const std::vector<std::string> whats = {"gemm", "comm", "ops", "fsdp", "ep", "model", "all"};
  if (std::find(whats.begin(), whats.end(), what) == whats.end())
    fail_config("bench: --what must be gemm, comm, ops or all (= gemm and comm), or fsdp, ep or model; not '{}'", what);
  if (ctx.vm.count("tokens") && ctx.vm["tokens"].as<std::int64_t>() <= 0) fail_config("bench: --tokens must be positive");
  log::info("bench: device {}", device_name(resolve_device(ctx, "bench", true)));
  resolve_threads(ctx, "bench");
  for (const char* dim : {"hidden", "vocab"})
    if (ctx.vm[dim].as<std::int64_t>() <= 0) fail_config("bench: --{} must be positive", dim);
  const std::string dtype = ctx.vm["dtype"].as<std::string>();
  if (dtype != "bf16" && dtype != "f32" && dtype != "both")
    fail_config("bench: --dtype must be bf16, f32 or both, not '{}'", dtype);
  if (ctx.vm["max-buffer-mb"].as<double>() <= 0) fail_config("bench: --max-buffer-mb must be positive");
  for (const char* dim : {"m", "n", "k"})
    if (ctx.vm[dim].as<std::int64_t>() <= 0) fail_config("bench: --{} must be positive", dim);
  if (ctx.vm["iters"].as<int>() <= 0) fail_config("bench: --iters must be positive");
  if (ctx.vm["comm-mb"].as<double>() <= 0) fail_config("bench: --comm-mb must be positive");
  if (what == "model") return bench_model_run(ctx);  // its own table (min and median)

  std::vector<Result> results;
  if (what == "gemm" || what == "all") bench_gemm(ctx, results);
  if (what == "comm" || what == "all") bench_comm(ctx, results);
  if (what == "ops") bench_ops(ctx, results);  // not in "all": seconds to minutes on a CPU
  if (what == "fsdp") bench_fsdp(ctx, results);
  if (what == "ep") bench_ep(ctx, results);

  if (ctx.rt.cuda_device >= 0) {
    const DevicePeaks p = cuda_device_peaks(ctx.rt.cuda_device);
    log::info("device peaks: {:.0f} GB/s DRAM, {:.0f} TFLOP/s dense bf16", p.mem_gb_per_s, p.bf16_tflops);
  }
  if (!results.empty()) {
    if (what == "fsdp" || what == "ep") log::info("");
    log::info("{:<32} {:<6} {:<34} {:>12} {:>18} {:>7}", "benchmark", "device", "shape", "best time", "rate", "peak");
  }
  for (const Result& r : results)
    log::info("{:<32} {:<6} {:<34} {:>9.3f} ms {:>8.3f} {:<9} {:>7}", r.name, r.device, r.shape, r.seconds * 1e3,
              r.rate, r.unit, r.peak_fraction >= 0 ? fmt::format("{:.1f}%", 100 * r.peak_fraction) : "");
  if (ctx.vm.count("json") && ctx.rt.rank == 0) {
    const std::string path = ctx.vm["json"].as<std::string>();
    const std::string tmp = path + ".tmp";
    {
      std::ofstream f(tmp);
      if (!f) fail("cannot write {}", tmp);
      for (const Result& r : results)
        f << fmt::format(R"({{"benchmark":"{}","device":"{}","shape":"{}","seconds":{},"rate":{},"unit":"{}","peak_fraction":{}}})",
                         r.name, r.device, r.shape, r.seconds, r.rate, r.unit, r.peak_fraction)
          << '\n';
      if (!f.flush()) fail("error writing {}", tmp);
    }
    if (std::rename(tmp.c_str(), path.c_str()) != 0) fail("cannot rename {} to {}", tmp, path);
    log::info("results written to {}", path);
  }
  return 0;
}

}  // namespace dg
