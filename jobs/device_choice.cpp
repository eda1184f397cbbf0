// --device resolution (see device_choice.h).
#include "jobs/device_choice.h"

#include "jobs/log.h"

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

}  // namespace dg
