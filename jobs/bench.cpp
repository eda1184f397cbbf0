// `dgemma bench`: measures the building blocks on this machine - GEMM on the CPU (OpenBLAS, f32) and,
// when a GPU is present, on CUDA (cuBLASLt, bf16 in / fp32 accumulate) - and the collectives of the
// host communicator - and, with --what ops, every model op at a model-like shape on the CPU (f32) and on
// CUDA (bf16) when a GPU is present, as achieved GB/s (memory-bound ops: bytes read + written) or
// TFLOP/s (GEMM-shaped ops), with the fraction of the device's theoretical peak on CUDA.
// Prints a table on rank 0; with --json also writes it as JSON lines.
#include <chrono>
#include <fstream>
#include <random>

#include "app/log.h"
#include "jobs/jobs.h"
#include "layers/device.h"
#include "layers/ops.h"

namespace dg {

void bench_options(po::options_description& d) {
  d.add_options()
      ("what", po::value<std::string>()->default_value("all"), "gemm, comm, ops or all")
      ("tokens", po::value<std::int64_t>()->default_value(2048), "ops: tokens per call (rows)")
      ("hidden", po::value<std::int64_t>()->default_value(2816), "ops: hidden size (2816 = 26B-A4B)")
      ("vocab", po::value<std::int64_t>()->default_value(32768), "ops: vocabulary rows for the LM-head ops")
      ("m", po::value<std::int64_t>()->default_value(512), "GEMM rows of A and C")
      ("n", po::value<std::int64_t>()->default_value(512), "GEMM columns of B and C")
      ("k", po::value<std::int64_t>()->default_value(512), "GEMM inner dimension")
      ("iters", po::value<int>()->default_value(10), "timed repetitions per measurement")
      ("comm-mb", po::value<double>()->default_value(16.0), "collective message size per rank, MiB")
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
  Tensor a = random_f32({m, k}, 1), b = random_f32({k, n}, 2);
  Tensor c = Tensor::empty({m, n}, DType::F32);
  for (bool tb : {false, true}) {
    Tensor bb = tb ? random_f32({n, k}, 3) : b;
    const double s = time_best(iters, [&] { gemm(a, bb, c, {.trans_b = tb}); });
    out.push_back({tb ? "gemm NT f32" : "gemm NN f32", "cpu", shape, s, flops / s * 1e-12, "TFLOP/s"});
  }
  if (ctx.rt.cuda_device >= 0) {
    Tensor da = a.to(Device::CUDA).to(DType::BF16), db = b.to(Device::CUDA).to(DType::BF16);
    Tensor dc = Tensor::empty({m, n}, DType::BF16, Device::CUDA);
    Tensor dc32 = Tensor::empty({m, n}, DType::F32, Device::CUDA);
    const double s = time_best(iters, [&] { gemm(da, db, dc, {}), cuda_synchronize(); });
    out.push_back({"gemm NN bf16->bf16", "cuda", shape, s, flops / s * 1e-12, "TFLOP/s"});
    const double s32 = time_best(iters, [&] { gemm(da, db, dc32, {.beta = 1.f}), cuda_synchronize(); });
    out.push_back({"gemm NN bf16->f32 +=", "cuda", shape, s32, flops / s32 * 1e-12, "TFLOP/s"});
  }
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
  const auto T = ctx.vm["tokens"].as<std::int64_t>(), H = ctx.vm["hidden"].as<std::int64_t>(),
             V = ctx.vm["vocab"].as<std::int64_t>();
  const int iters = ctx.vm["iters"].as<int>();
  std::vector<Device> devices = {Device::CPU};
  if (ctx.rt.cuda_device >= 0) devices.push_back(Device::CUDA);
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

}  // namespace

int bench_run(JobContext& ctx) {
  const std::string what = ctx.vm["what"].as<std::string>();
  if (what != "gemm" && what != "comm" && what != "ops" && what != "all")
    fail_config("bench: --what must be gemm, comm, ops or all, not '{}'", what);
  for (const char* dim : {"tokens", "hidden", "vocab"})
    if (ctx.vm[dim].as<std::int64_t>() <= 0) fail_config("bench: --{} must be positive", dim);
  for (const char* dim : {"m", "n", "k"})
    if (ctx.vm[dim].as<std::int64_t>() <= 0) fail_config("bench: --{} must be positive", dim);
  if (ctx.vm["iters"].as<int>() <= 0) fail_config("bench: --iters must be positive");
  if (ctx.vm["comm-mb"].as<double>() <= 0) fail_config("bench: --comm-mb must be positive");

  std::vector<Result> results;
  if (what == "gemm" || what == "all") bench_gemm(ctx, results);
  if (what == "comm" || what == "all") bench_comm(ctx, results);
  if (what == "ops") bench_ops(ctx, results);  // not in "all": seconds to minutes on a CPU

  if (ctx.rt.cuda_device >= 0) {
    const DevicePeaks p = cuda_device_peaks(ctx.rt.cuda_device);
    log::info("device peaks: {:.0f} GB/s DRAM, {:.0f} TFLOP/s dense bf16", p.mem_gb_per_s, p.bf16_tflops);
  }
  log::info("{:<22} {:<6} {:<34} {:>12} {:>16} {:>7}", "benchmark", "device", "shape", "best time", "rate", "peak");
  for (const Result& r : results)
    log::info("{:<22} {:<6} {:<34} {:>9.3f} ms {:>8.3f} {:<7} {:>7}", r.name, r.device, r.shape, r.seconds * 1e3,
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
