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

// `--threads N` (0: auto) of the same jobs: the threads of the rank's CPU GEMMs and other CPU ops (one count,
// set_cpu_threads), set once and printed.
// auto: OPENBLAS_NUM_THREADS when set, else the cores the rank may run on when it is bound to some (mpirun
// --bind-to core, srun --cpu-bind), else its share of the node's cores (cores / ranks on the node): the
// ranks of a node never oversubscribe it. Returns the count.
void add_threads_option(po::options_description& d);
int resolve_threads(const JobContext& ctx, const char* job);

}  // namespace dg
