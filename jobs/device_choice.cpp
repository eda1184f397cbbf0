// --device resolution (see device_choice.h).
#include "jobs/device_choice.h"

#include <sched.h>

#include <cstdlib>
#include <string>
#include <thread>

#include "jobs/log.h"
#include "layers/ops.h"

namespace dg {

void add_device_option(po::options_description& d) {
  d.add_options()("device", po::value<std::string>()->default_value("auto"),
                  "where the tensors live: auto (cuda when a GPU is visible, else cpu), cpu or cuda");
}

Device resolve_device(const JobContext& ctx, const char* job, bool cuda_path_ready) {
  const std::string want = ctx.vm["device"].as<std::string>();
  if (want != "auto" && want != "cpu" && want != "cuda")
    fail_config("{}: --device must be auto, cpu or cuda, not '{}'", job, want);
  const bool gpu = ctx.rt.cuda_device >= 0;
  if (want == "cpu") return Device::CPU;
  if (want == "cuda") {
    if (!cuda_built()) fail_config("{}: --device cuda, but this dgemma was built without CUDA (no nvcc at build time)", job);
    if (!gpu) fail_config("{}: --device cuda, but no usable CUDA device is visible to this rank ({} found)", job, cuda_device_count());
    if (!cuda_path_ready)
      fail_config("{}: --device cuda: the device-resident runtime of this job is not complete yet (its ops run on the "
                  "GPU, the job's driver does not); use --device cpu",
                  job);
    return Device::CUDA;
  }
  if (gpu && !cuda_path_ready) {
    log::warn("{}: a GPU is visible but the job's device-resident runtime is not complete yet: running on the CPU", job);
    return Device::CPU;
  }
  return gpu ? Device::CUDA : Device::CPU;
}

void add_threads_option(po::options_description& d) {
  d.add_options()("threads", po::value<int>()->default_value(0),
                  "CPU threads of this rank: its GEMMs and its other CPU ops (0: OPENBLAS_NUM_THREADS, else the cores "
                  "the rank is bound to, else cores / ranks on the node)");
}

int resolve_threads(const JobContext& ctx, const char* job) {
  const int asked = ctx.vm["threads"].as<int>();
  if (asked < 0 || asked > 4096) fail_config("{}: --threads must be in [0, 4096] (0: automatic), not {}", job, asked);
  int n = asked;
  std::string why = "--threads";
  if (n == 0) {
    cpu_set_t set;
    const int bound = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : 0;
    const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    const char* env = std::getenv("OPENBLAS_NUM_THREADS");
    if (env != nullptr && std::atoi(env) > 0) {
      n = std::atoi(env);
      why = "OPENBLAS_NUM_THREADS";
    } else if (bound > 0 && bound < cores) {
      n = bound;
      why = fmt::format("the {} cores this rank is bound to", bound);
    } else {
      n = std::max(1, cores / std::max(1, ctx.rt.local_size));
      why = fmt::format("{} cores / {} ranks on the node", cores, ctx.rt.local_size);
    }
  }
  set_cpu_threads(n);
  log::info("{}: {} CPU thread{} per rank ({})", job, n, n == 1 ? "" : "s", why);
  return n;
}

}  // namespace dg
