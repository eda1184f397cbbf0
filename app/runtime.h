// Process start-up shared by every job: MPI (under mpirun, srun or as a plain process), rank, size
// and node-local rank from MPI, the GPU picked by local rank, and the stop-signal flag.
#pragma once
#include <memory>
#include <string>

#include "parallel/comm.h"

namespace dg {

struct Runtime {
  int rank = 0, size = 1;
  int local_rank = 0, local_size = 1;  // within the node (MPI_Comm_split_type SHARED)
  int nodes = 1;
  int node_id = 0;                     // the world rank of this node's first rank (same on a node)
  int cuda_device = -1;                // selected device ordinal, -1 when running on the CPU
  std::string device_description;      // "cpu" or the GPU's name and memory
  std::unique_ptr<Comm> world;         // host comm over all ranks

  // True on every rank once any rank got SIGUSR1 or SIGTERM: one all-reduce, call it at step boundaries.
  bool stop_requested();
};

// MPI_Init (FUNNELED), identity, device choice (local_rank % device_count unless use_gpu is false),
// SIGUSR1/SIGTERM handlers that only set a flag.
Runtime start_runtime(int* argc, char*** argv, bool use_gpu);
void finish_runtime(Runtime& rt);
// Abort every rank (after a rank-local error that the others cannot know about).
[[noreturn]] void abort_all(int code);

void install_stop_signal_handlers();  // SIGUSR1/SIGTERM only set a flag (done by start_runtime)
bool local_stop_signal();             // this process received SIGUSR1/SIGTERM
void raise_stop_signal_for_test();

}  // namespace dg
