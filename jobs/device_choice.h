// `--device auto|cpu|cuda` of the compute jobs (sft, generate, bench): which backend a job's tensors
// live on. auto is cuda when start-up picked a GPU for this rank (and the job's CUDA path is complete),
// else cpu; cuda without a usable GPU, or before the job's CUDA path is complete, is a ConfigError
// (exit 2) that says which. The resolved device is printed by the job and saved with its outputs.
#pragma once
#include "jobs/jobs.h"
#include "layers/device.h"

namespace dg {

void add_device_option(po::options_description& d);
Device resolve_device(const JobContext& ctx, const char* job, bool cuda_path_ready);

}  // namespace dg
